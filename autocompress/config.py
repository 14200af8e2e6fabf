"""The spec's seven config classes, the YAML run file, and validation before any work.

(Over 400 lines on purpose: the classes are the spec's contract and are read side by side with it.)

Field names and defaults follow `spec/auto-compression-api.rst` (and PaddleSlim's defaults where the
spec gives none). Every class forbids unknown keys: a typo is an error naming the key and the
allowed ones, never a silent ignore. Extensions beyond the spec are marked "extension".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .paddle_names import LR_SCHEDULERS, OPTIMIZERS, QUANTIZABLE_OP_TYPES

PTQ_ALGOS = ("KL", "hist", "mse", "avg", "abs_max")
WEIGHT_QUANTIZE_TYPES = ("abs_max", "channel_wise_abs_max")
DISTILL_LOSSES = ("l2_loss", "soft_label_loss", "fsp_loss", "kl_loss", "cosine_loss", "l1_loss")
METRICS = ("top1", "top5", "fidelity")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _one_of(value, allowed, what: str):
    """A value or list of values, each from `allowed`; the error lists the allowed ones."""
    for item in _as_list(value):
        if item not in allowed:
            raise ValueError(f"unknown {what} {item!r}; allowed: {list(allowed)}")
    return value


class QuantizationConfig(_Config):
    quantize_op_types: list[str] = Field(
        default_factory=lambda: ["conv2d", "depthwise_conv2d", "mul", "matmul", "matmul_v2"])
    weight_bits: int = 8
    activation_bits: int = 8
    is_full_quantize: bool = False
    not_quant_pattern: Union[str, list[str]] = Field(default_factory=lambda: ["skip_quant"])
    # extension: the backend whose kernels the deployed model runs on, used to select models: 'onednn'
    # (Paddle Inference, int8 switch on), 'openvino' (OpenVINO on the ONNX QDQ export placed for its
    # kernels, program/qdq_openvino.py), 'tensorrt', 'none' (the simulated metric)
    deploy_backend: Literal["onednn", "openvino", "tensorrt", "none"] = "onednn"

    @field_validator("weight_bits", "activation_bits")
    @classmethod
    def _bits(cls, v):
        if not 2 <= v <= 16:
            raise ValueError(f"must be between 2 and 16 bits, got {v}")
        return v

    @field_validator("not_quant_pattern")
    @classmethod
    def _pattern_list(cls, v):
        return _as_list(v)

    @model_validator(mode="after")
    def _op_types_known(self):
        unknown = [t for t in self.quantize_op_types if t not in QUANTIZABLE_OP_TYPES]
        if unknown:
            raise ValueError(
                f"quantize_op_types has unknown op types {unknown}; allowed: {sorted(QUANTIZABLE_OP_TYPES)}")
        return self

    @model_validator(mode="after")
    def _bits_run_on_the_backend(self):
        if self.weight_bits > 8:
            raise ValueError(f"weight_bits={self.weight_bits}: quantized weights are stored as int8 (Paddle's "
                             "dequantize_linear has no kernel for wider integers); use weight_bits 2 to 8")
        other = [f"{k}={getattr(self, k)}" for k in ("weight_bits", "activation_bits") if getattr(self, k) != 8]
        if other and self.deploy_backend != "none":
            raise ValueError(
                f"{' and '.join(other)}: the int8 kernels of deploy_backend '{self.deploy_backend}' run 8-bit "
                "quantization only (Paddle Inference refuses other bit_length values). Set deploy_backend: none "
                "(models are then selected by the simulated metric; the saved model runs on Paddle Inference's FP32 "
                "kernels with its weights dequantized), or use 8 bits")
        return self

    @model_validator(mode="after")
    def _op_types_run_on_the_backend(self):
        if "conv2d_transpose" in self.quantize_op_types and self.deploy_backend == "onednn":
            # measured: Paddle 3.3.1's oneDNN int8 pass leaves the transposed conv's weight int8 and its
            # conv2d_transpose_bias kernel stops ("data type float32 does not match int8")
            raise ValueError("quantize_op_types has conv2d_transpose, which Paddle Inference's oneDNN int8 "
                             "kernels cannot run (the model would fail on that runtime). Drop it, or set "
                             "deploy_backend: openvino (OpenVINO runs it in int8) or none")
        return self


class HyperParameterOptimizationConfig(_Config):
    ptq_algo: Union[str, list[str]] = Field(default_factory=lambda: ["KL", "hist", "avg", "mse"])
    bias_correct: Union[bool, list[bool]] = Field(default_factory=lambda: [True, False])
    weight_quantize_type: Union[str, list[str]] = Field(default_factory=lambda: ["channel_wise_abs_max"])
    hist_percent: Union[float, list[float]] = Field(default_factory=lambda: [0.98, 0.999])
    batch_size: Union[int, list[int]] = Field(default_factory=lambda: [10, 30])
    batch_num: Union[int, list[int]] = Field(default_factory=lambda: [10, 30])
    max_quant_count: int = 20
    # extensions
    search_algo: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    finalists: int = Field(3, description="best trials re-evaluated on the deployment backend")
    fp32_fallback: Optional[int] = Field(
        None, description="at most this many int8 layers may be kept in FP32 when the deployed metric misses "
                          "the target; 0 = off; None = automatic (only when a target is missed, cap 10% of "
                          "the int8 layers). See autocompress/quant/fallback.py")
    fallback_ranking: Literal["cost", "noise"] = Field(
        "cost", description="order in which the FP32 fallback tries layers: 'cost' = quantization noise per "
                            "share of the int8 work (cheap noisy layers first: the int8 speed-up is kept); "
                            "'noise' = quantization noise alone (accuracy first, whatever the layer costs)")
    subset_eval: Optional[float] = Field(
        None, description="evaluate each trial first on this fraction of the eval batches; only trials close to "
                          "the best subset metric get the full evaluation (needs an evaluator that takes `limit`)")

    @field_validator("ptq_algo")
    @classmethod
    def _algo(cls, v):
        return _one_of(v, PTQ_ALGOS, "ptq_algo")

    @field_validator("weight_quantize_type")
    @classmethod
    def _wqt(cls, v):
        return _one_of(v, WEIGHT_QUANTIZE_TYPES, "weight_quantize_type")

    @field_validator("hist_percent")
    @classmethod
    def _percent(cls, v):
        for p in _as_list(v):
            if not 0.0 < p <= 1.0:
                raise ValueError(f"hist_percent values must be in (0, 1], got {p}")
        return v

    @field_validator("batch_size", "batch_num")
    @classmethod
    def _positive(cls, v):
        for n in _as_list(v):
            if n < 1:
                raise ValueError(f"must be >= 1, got {n}")
        return v

    @field_validator("max_quant_count", "finalists")
    @classmethod
    def _count(cls, v):
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("fp32_fallback")
    @classmethod
    def _fallback(cls, v):
        if v is not None and v < 0:
            raise ValueError(f"must be >= 0 (0 = off, N = at most N layers in FP32) or null (automatic), got {v}")
        return v

    @field_validator("subset_eval")
    @classmethod
    def _subset(cls, v):
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError(f"must be in (0, 1) (a fraction of the eval batches) or null (off), got {v}")
        return v

    @field_validator("ptq_algo", "bias_correct", "weight_quantize_type", "hist_percent", "batch_size",
                     "batch_num")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty list leaves nothing to search; give at least one value")
        return v


class DistillationConfig(_Config):
    distill_loss: Union[str, list[str]] = "l2_loss"
    distill_node_pair: Optional[list[str]] = None
    distill_lambda: Union[float, list[float]] = 1.0
    teacher_model_dir: Optional[str] = None
    teacher_model_filename: Optional[str] = None
    teacher_params_filename: Optional[str] = None
    merge_feed: bool = True

    @field_validator("distill_loss")
    @classmethod
    def _loss(cls, v):
        return _one_of(v, DISTILL_LOSSES, "distill_loss")

    @field_validator("distill_node_pair")
    @classmethod
    def _pairs(cls, v):
        if v is not None and len(v) % 2:
            raise ValueError(f"needs (teacher, student) node pairs: got {len(v)} names, an odd number")
        return v

    @model_validator(mode="after")
    def _lambda_len(self):
        losses, lambdas = _as_list(self.distill_loss), _as_list(self.distill_lambda)
        if len(lambdas) != len(losses):
            raise ValueError(
                f"distill_lambda has {len(lambdas)} values but distill_loss has {len(losses)}; give one "
                "weight per loss")
        return self


class MultiTeacherDistillationConfig(_Config):
    distill_loss: list[str] = Field(default_factory=lambda: ["l2_loss"])
    distill_node_pair: Optional[list[list[str]]] = None
    distill_lambda: list[float] = Field(default_factory=lambda: [1.0])
    teacher_model_dir: list[str]
    teacher_model_filename: Optional[list[Optional[str]]] = None
    teacher_params_filename: Optional[list[Optional[str]]] = None
    merge_feed: bool = True

    @field_validator("distill_loss")
    @classmethod
    def _loss(cls, v):
        return DistillationConfig._loss(v)

    @field_validator("distill_node_pair")
    @classmethod
    def _pairs(cls, v):
        for i, pairs in enumerate(v or []):
            if len(pairs) % 2:
                raise ValueError(f"distill_node_pair[{i}] has {len(pairs)} names, an odd number; "
                                 "needs (teacher, student) pairs")
        return v

    @model_validator(mode="after")
    def _lengths(self):
        n = len(self.teacher_model_dir)
        if n < 1:
            raise ValueError("teacher_model_dir needs at least one teacher")
        for key in ("distill_loss", "distill_lambda"):
            if len(getattr(self, key)) != n:
                raise ValueError(f"{key} has {len(getattr(self, key))} entries but there are {n} teachers "
                                 "(teacher_model_dir); give one per teacher")
        for key in ("distill_node_pair", "teacher_model_filename", "teacher_params_filename"):
            value = getattr(self, key)
            if value is not None and len(value) != n:
                raise ValueError(f"{key} has {len(value)} entries but there are {n} teachers")
        return self


class PruneConfig(_Config):
    prune_algo: Literal["prune", "asp"] = "prune"
    pruned_ratio: float = 0.25
    prune_params_name: Optional[list[str]] = None
    criterion: Literal["l1_norm", "bn_scale", "geometry_median", "activation"] = "l1_norm"  # activation: needs data
    # extension: kept channels per layer rounded to a multiple of this (1 = exactly pruned_ratio); CPU
    # kernels work in blocks of 8 / 16 channels (PP-OCR cls pruned at 0.25 on ONNX Runtime, batch 6:
    # 0.82x the FP32 speed with ragged counts, 1.19x rounded to 8: benchmarks/deployed.py)
    channel_multiple: int = Field(8, ge=1)

    @field_validator("pruned_ratio")
    @classmethod
    def _ratio(cls, v):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _asp_is_2_4(self):
        # set explicitly (even to the default): with ASP it would be silently meaningless
        given = sorted({"pruned_ratio", "criterion", "channel_multiple"} & self.model_fields_set)
        if self.prune_algo == "asp" and given:
            raise ValueError(f"{' and '.join(given)} cannot be used with prune_algo 'asp': ASP is fixed 2:4 (50%) "
                             "sparsity of the weights in prune_params_name. Remove it, or use prune_algo 'prune' "
                             "for a ratio / criterion (channel pruning)")
        return self


class UnstructurePruneConfig(_Config):
    prune_strategy: Optional[Literal["gmp"]] = None
    prune_mode: Literal["ratio", "threshold"] = "ratio"
    threshold: Optional[float] = None
    prune_ratio: float = 0.55
    gmp_config: Optional[dict[str, Any]] = None
    prune_params_type: Optional[Literal["conv1x1_only"]] = None
    local_sparsity: bool = False

    @field_validator("prune_ratio")
    @classmethod
    def _ratio(cls, v):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _mode(self):
        if self.prune_mode == "threshold" and self.threshold is None:
            raise ValueError("prune_mode 'threshold' needs a threshold (e.g. threshold: 0.01)")
        if self.prune_strategy == "gmp" and self.prune_mode != "ratio":
            raise ValueError("prune_strategy 'gmp' ramps a ratio; use prune_mode 'ratio'")
        allowed = {"stable_iterations", "pruning_iterations", "tunning_iterations", "resume_iteration",
                   "pruning_steps", "prune_steps", "initial_ratio"}
        unknown = set(self.gmp_config or {}) - allowed
        if unknown:
            raise ValueError(f"gmp_config has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        return self


class TrainConfig(_Config):
    epochs: Optional[int] = None
    train_iter: Optional[int] = None
    learning_rate: Any = 0.02  # float, or an LRScheduler object (API), or {type: Name, **args} (YAML)
    optimizer: str = "SGD"
    optim_args: Optional[dict[str, Any]] = None
    eval_iter: int = 1000
    logging_iter: int = 10
    origin_metric: Optional[float] = None
    target_metric: Optional[float] = None
    use_fleet: bool = False
    amp_config: Optional[dict[str, Any]] = None
    recompute_config: Optional[dict[str, Any]] = None
    sharding_config: Optional[dict[str, Any]] = None

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v):
        if v not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {v!r}; allowed (paddle.optimizer): {sorted(OPTIMIZERS)}")
        return v

    @field_validator("learning_rate")
    @classmethod
    def _lr(cls, v):
        if isinstance(v, (int, float)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"must be a positive number, got {v}")
            return float(v)
        if isinstance(v, dict):
            kind = v.get("type")
            if kind not in LR_SCHEDULERS:
                raise ValueError(f"a scheduler needs 'type' from paddle.optimizer.lr: {sorted(LR_SCHEDULERS)}; "
                                 f"got {kind!r}")
            return v
        if type(v).__name__ and hasattr(v, "step") and hasattr(v, "get_lr"):
            return v  # an LRScheduler object passed through the API
        raise ValueError(f"must be a float, an LRScheduler or {{type: <scheduler>, ...}}, got {v!r}")

    @model_validator(mode="after")
    def _length_and_fleet(self):
        if self.epochs is None and self.train_iter is None:
            raise ValueError("TrainConfig needs epochs or train_iter: set how long to train")
        for key in ("epochs", "train_iter"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        for key in ("recompute_config", "sharding_config"):
            if getattr(self, key) and not self.use_fleet:
                raise ValueError(f"{key} only works with the fleet API; set use_fleet: true (and launch with "
                                 "python -m paddle.distributed.launch) or remove it")
        return self

    @field_validator("amp_config")
    @classmethod
    def _amp(cls, v, info):
        if v and not info.data.get("use_fleet"):  # under fleet: DistributedStrategy.amp_configs' keys
            from .train.amp import problem

            bad = problem(v)
            if bad:
                raise ValueError(bad)
        return v

    @field_validator("eval_iter", "logging_iter")
    @classmethod
    def _iters(cls, v):
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v


STRATEGY_CLASSES = {c.__name__: c for c in (
    QuantizationConfig, DistillationConfig, MultiTeacherDistillationConfig,
    HyperParameterOptimizationConfig, PruneConfig, UnstructurePruneConfig)}


def _format_validation_error(section: str, err: ValidationError, cls=None) -> str:
    lines = []
    owner = cls
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        where = f"{section}.{key}" if key else section
        if e["type"] == "extra_forbidden":
            known = owner or STRATEGY_CLASSES.get(section) or {"TrainConfig": TrainConfig}.get(section)
            allowed = sorted(known.model_fields) if known and len(e["loc"]) == 1 else []
            lines.append(f"{where}: unknown key; allowed keys: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
    return "; ".join(lines)


def build(cls, value, section: str | None = None):
    """Turn an object, dict or None into a validated config object, or raise ConfigError."""
    section = section or cls.__name__
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{section} must be a mapping or a {cls.__name__} object, got {type(value).__name__}")
    try:
        return cls(**value)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(section, err, cls)) from None


class EvalSection(_Config):
    metric: str = "top1"
    max_drop: float = 0.01
    drop_type: Literal["absolute", "relative"] = "absolute"

    @field_validator("metric")
    @classmethod
    def _metric(cls, v):
        if v not in METRICS and ":" not in v:
            raise ValueError(f"unknown metric {v!r}; allowed: {list(METRICS)} or a plugin 'package.module:function'")
        return v

    @field_validator("max_drop")
    @classmethod
    def _drop(cls, v):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"must be a non-negative number, got {v}")
        return v


RUNTIMES = ("onednn", "paddle-cpu", "openvino", "onnxruntime", "gpu", "tensorrt")


class DeploySection(_Config):
    """Extension: where and how the compressed model is deployed, for the latency the summary reports.

    runtimes: every runtime the model will run on (latency measured on each, warm, interleaved with
    the original): 'onednn' (Paddle Inference CPU with oneDNN; int8 switch on for int8 models),
    'paddle-cpu' (a stock paddle.inference.Config), 'openvino' (OpenVINO reading the Paddle model, an int8 one
    through its ONNX QDQ export; `pip install 'autocompress[openvino,onnx]'`), 'onnxruntime' (ONNX Runtime CPU on the model's ONNX export,
    int8 as QDQ; `pip install 'autocompress[onnx]'`), 'gpu', 'tensorrt'. Default: the job's own target.
    A job without QuantizationConfig whose runtimes start with 'paddle-cpu' is selected on that runtime
    (otherwise on oneDNN; int8 jobs on QuantizationConfig.deploy_backend).
    batch_size: the deployment batch (default: the first eval batch's size); batch 1 is measured too.
    allow_slower: a compressed model slower than the original on a named runtime at the deployment
    batch misses the target unless this is true (it is always a warning).
    """

    runtimes: Optional[list[Literal[RUNTIMES]]] = Field(None, min_length=1)
    batch_size: Optional[int] = Field(None, ge=1)
    allow_slower: bool = False


class ModelSection(_Config):
    model_dir: str
    model_filename: Optional[str] = None
    params_filename: Optional[str] = None


class DataSection(_Config):
    train: Optional[str] = None
    eval: Optional[str] = None
    calib: Optional[str] = None
    test: Optional[str] = None  # extension: held-out data for the reported metric (selection never sees it)
    batch_size: int = 32  # extension: loader batch size for training and evaluation


class RunConfig(_Config):
    """A whole YAML run file (DESIGN §5): the spec's configs plus CLI / pipeline sections."""

    Model: ModelSection
    Data: DataSection
    Eval: EvalSection = Field(default_factory=EvalSection)
    Deploy: DeploySection = Field(default_factory=DeploySection)
    Device: str = "cpu"
    SaveDir: str = "./output"
    strategy: dict[str, Any] = Field(default_factory=dict)
    combination: str = ""
    train: Optional[TrainConfig] = None


RUN_SECTIONS = ("Model", "Data", "Eval", "Deploy", "Device", "SaveDir", "TrainConfig", "Auto")


def load_run_config(source, base_dir: str | Path | None = None) -> RunConfig:
    """Load and validate a YAML run file (path, YAML text or dict). Relative paths resolve against
    the file's folder so a config works from any working directory."""
    if isinstance(source, (str, Path)) and Path(source).exists():
        base_dir = Path(source).resolve().parent if base_dir is None else Path(base_dir)
        text = Path(source).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from None
    elif isinstance(source, dict):
        data = source
    else:
        raise ConfigError(f"config file {source} does not exist")
    if not isinstance(data, dict):
        raise ConfigError(f"{source if isinstance(source, (str, Path)) else 'the run config'}: a run config must be a YAML mapping with sections "
                          f"{list(RUN_SECTIONS)} plus strategy configs {sorted(STRATEGY_CLASSES)}")
    unknown = [k for k in data if k not in RUN_SECTIONS and k not in STRATEGY_CLASSES]
    if unknown:
        raise ConfigError(f"unknown top-level keys {unknown}; allowed: {list(RUN_SECTIONS)} + "
                          f"{sorted(STRATEGY_CLASSES)}")
    if "Auto" in data:
        configs, train, combination = _auto_sections(data)
    else:
        from . import strategies  # the registry imports these classes

        chosen, configs = strategies.resolve({k: data[k] for k in data if k in STRATEGY_CLASSES})
        train = strategies.resolve_train_config(chosen, data.get("TrainConfig"), "TrainConfig")
        combination = chosen.name
    sections = {}
    for key, cls in (("Model", ModelSection), ("Data", DataSection), ("Eval", EvalSection), ("Deploy", DeploySection)):
        if key in ("Eval", "Deploy") and key not in data:
            continue
        if key not in data:
            raise ConfigError(f"missing section {key}")
        sections[key] = build(cls, data[key], key)
    if base_dir is not None:
        sections["Model"].model_dir = _resolve(sections["Model"].model_dir, base_dir)
        for field in ("train", "eval", "calib", "test"):
            value = getattr(sections["Data"], field)
            if value:
                setattr(sections["Data"], field, _resolve(value, base_dir))
    save_dir = str(data.get("SaveDir", "./output"))  # like --save-dir: relative to the working directory
    try:
        return RunConfig(**sections, Device=str(data.get("Device", "cpu")), SaveDir=save_dir,
                         strategy=configs, combination=combination,
                         train=train)
    except ValidationError as err:
        raise ConfigError(_format_validation_error("config", err)) from None


def _auto_sections(data: dict):
    """`Auto:` in a run file: auto mode picks the strategies, so strategy configs and Deploy are errors."""
    from .auto.config import build_auto, check_auto_train

    clash = sorted(k for k in data if k in STRATEGY_CLASSES or k == "Deploy")
    if clash:
        raise ConfigError(f"the run config has Auto and {clash}: auto mode chooses the strategies and measures on "
                          f"Auto.target at Auto.batch_size; remove {clash}, or remove Auto to run one strategy")
    train = None if data.get("TrainConfig") is None else build(TrainConfig, data["TrainConfig"], "TrainConfig")
    auto = build_auto(data["Auto"])
    check_auto_train(auto, train)
    return {"Auto": auto}, train, "auto"


def _resolve(value: str, base_dir: Path) -> str:
    if "://" in value or Path(value).is_absolute():
        return value
    return str((Path(base_dir) / value).resolve())
