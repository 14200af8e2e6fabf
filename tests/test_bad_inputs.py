"""The bad-input matrix (issue 11): every case through the API (`runner.run_config`), `autocompress run
--in-process` and `autocompress run` (the local KFP pipeline). Each must be refused with a typed error
(API) / a non-zero exit without a traceback (CLI), a message naming the problem and the user's own
file or key, the inputs byte-identical and nothing half-written. Through `autocompress run`, every case
here is refused by the pre-flight, before the pipeline starts (no pipeline root is created).

The per-case figures (entry point, refused at validation or not, seconds to report) are collected in
FIGURES and written to $AUTOCOMPRESS_BAD_INPUT_FIGURES when set (RELIABILITY.md quotes them)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from autocompress import cli
from autocompress.errors import AutoCompressError, EvalError

FIGURES: list[dict] = []


@dataclasses.dataclass
class Env:
    root: Path
    model: Path
    data: Path
    cfg: dict
    save: Path

    def shard(self, split="train") -> Path:
        return next((self.data / split).glob("*.npz"))

    def dataset_yaml(self, split="train") -> Path:
        return self.data / split / "dataset.yaml"

    def rewrite_shard(self, split, **arrays):
        """Replace the split's shard by `arrays` (dataset.yaml's sha256 and specs updated to match, so
        only the content is wrong)."""
        import hashlib
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        self.shard(split).write_bytes(data)
        meta = yaml.safe_load(self.dataset_yaml(split).read_text())
        n = len(next(iter(arrays.values())))
        meta["shards"] = [{"file": self.shard(split).name, "samples": n, "sha256": hashlib.sha256(data).hexdigest()}]
        meta["samples"] = n
        for name, arr in arrays.items():
            spec = {"shape": list(arr.shape[1:]), "dtype": str(arr.dtype)}
            if name == meta.get("label_field"):
                meta["label"] = spec
            else:
                meta["feeds"][name] = spec
        self.dataset_yaml(split).write_text(yaml.safe_dump(meta))


@dataclasses.dataclass
class Case:
    name: str
    mutate: Callable[[Env], None]
    error: type = AutoCompressError
    says: tuple = ()        # fragments of the message (regex-free, case-insensitive)
    save_is_input: bool = False
    raw: str | None = None  # the run file's text instead of the config
    in_stage: bool = False  # through `autocompress run`: refused by a stage, not the pre-flight


def _set(path: str, value):
    def mutate(env: Env):
        node = env.cfg
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value(env) if callable(value) else value
    return mutate


def _strategy(**sections):
    def mutate(env: Env):
        for key in ("QuantizationConfig", "HyperParameterOptimizationConfig"):
            env.cfg.pop(key)
        env.cfg.update(json.loads(json.dumps(sections).replace("MODEL", str(env.model))))
        env.cfg.setdefault("TrainConfig", {"train_iter": 2, "eval_iter": 1, "learning_rate": 0.001})
    return mutate


def _both(*mutations):
    def mutate(env: Env):
        for m in mutations:
            m(env)
    return mutate


def _model_file(env: Env) -> Path:
    return env.model / "inference.pdmodel"


def _params_file(env: Env) -> Path:
    return env.model / "inference.pdiparams"


def _truncate(path_of, fraction=0.5):
    def mutate(env: Env):
        p = path_of(env)
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * fraction)])
    return mutate


def _write(path_of, data: bytes):
    def mutate(env: Env):
        path_of(env).write_bytes(data)
    return mutate


def _other_params(env: Env):
    """Params of another program (a different network) beside this model's program."""
    from autocompress.paddle_env import legacy_ir

    import paddle

    with legacy_ir():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1, 64], "float32")
            out = paddle.static.nn.fc(x, 10)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        paddle.static.save_inference_model(str(env.root / "other" / "inference"), [x], [out], exe, program=main)
    shutil.copy(env.root / "other" / "inference.pdiparams", _params_file(env))


def _nan(env: Env):
    x = np.load(env.shard())["x"].copy()
    x[0, 0, 0, 0] = np.nan
    env.rewrite_shard("train", x=x, label=np.load(env.shard())["label"])


def _inf(env: Env):
    z = np.load(env.shard("eval"))
    x = z["x"].copy()
    x[0, 0, 3, 3] = np.inf
    env.rewrite_shard("eval", x=x, label=z["label"])


def _late_nan(env: Env):
    """NaN in the last eval batch: the pre-flight reads first batches only (cheap), so through
    `autocompress run` a stage refuses it, at once (not retried)."""
    z = np.load(env.shard("eval"))
    x = z["x"].copy()
    x[-1, 0, 3, 3] = np.nan
    env.rewrite_shard("eval", x=x, label=z["label"])


def _strings(env: Env):
    lab = np.load(env.shard())["label"]
    env.rewrite_shard("train", x=np.full((len(lab), 1, 8, 8), "abc"), label=lab)


def _dataset_yaml_key(env: Env):
    meta = yaml.safe_load(env.dataset_yaml().read_text())
    meta["shard"] = meta["shards"]
    env.dataset_yaml().write_text(yaml.safe_dump(meta))


def _dataset_yaml_garbage(env: Env):
    env.dataset_yaml().write_text("feeds: [unclosed\n")


def _unlabelled_eval(env: Env):
    env.rewrite_shard("eval", x=np.load(env.shard("eval"))["x"])
    meta = yaml.safe_load(env.dataset_yaml("eval").read_text())
    meta["label_field"], meta["label"] = None, None
    env.dataset_yaml("eval").write_text(yaml.safe_dump(meta))


def _wrong_shape(env: Env):
    lab = np.load(env.shard())["label"]
    env.rewrite_shard("train", x=np.zeros((len(lab), 1, 7, 7), "float32"), label=lab)


def _wrong_feed(env: Env):
    z = np.load(env.shard())
    env.rewrite_shard("train", image=z["x"], label=z["label"])
    meta = yaml.safe_load(env.dataset_yaml().read_text())
    meta["feeds"].pop("x")
    env.dataset_yaml().write_text(yaml.safe_dump(meta))


def _object_array(env: Env):
    import io
    import zipfile

    lab = np.load(env.shard())["label"]
    x = np.empty((len(lab), 1, 8, 8), dtype=object)
    x[...] = 0.5
    buf = io.BytesIO()
    np.savez(buf, x=x, label=lab)  # pickled object array inside the shard
    env.shard().write_bytes(buf.getvalue())
    meta = yaml.safe_load(env.dataset_yaml().read_text())
    for s in meta["shards"]:
        s.pop("sha256", None)
    env.dataset_yaml().write_text(yaml.safe_dump(meta))
    assert zipfile.is_zipfile(env.shard())


def _empty_data(env: Env):
    meta = yaml.safe_load(env.dataset_yaml().read_text())
    meta["shards"], meta["samples"] = [], 0
    env.dataset_yaml().write_text(yaml.safe_dump(meta))


def _escape(env: Env):
    outside = env.root / "outside.npz"
    shutil.copy(env.shard(), outside)
    meta = yaml.safe_load(env.dataset_yaml().read_text())
    meta["shards"][0]["file"] = "../../outside.npz"
    env.dataset_yaml().write_text(yaml.safe_dump(meta))


def _save_is_file(env: Env):
    env.save.parent.mkdir(parents=True, exist_ok=True)
    env.save.write_text("not a folder")


DISTILL = {"DistillationConfig": {}}
CASES = [
    # config: unknown keys, wrong types, out of range, unsupported combinations
    Case("run file not YAML", lambda e: None, says=("run.yaml",), raw="Model: {model_dir: [\n"),
    Case("run file not a mapping", lambda e: None, says=("run.yaml",), raw="- just\n- a list\n"),
    Case("unknown key in Model", _set("Model.model_path", "x"), says=("model_path",)),
    Case("wrong type in Data", _set("Data.batch_size", "big"), says=("batch_size",)),
    Case("missing params file name", _set("Model.params_filename", "weights.pdiparams"), says=("weights.pdiparams",)),
    Case("unknown top-level key", _set("Quantisation", {}), says=("Quantisation",)),
    Case("unknown key in a config", _set("QuantizationConfig.weight_bit", 8), says=("weight_bit",)),
    Case("wrong type", _set("HyperParameterOptimizationConfig.max_quant_count", "ten"), says=("max_quant_count",)),
    Case("negative count", _set("HyperParameterOptimizationConfig.max_quant_count", -1), says=("max_quant_count",)),
    Case("bits 0", _set("QuantizationConfig.weight_bits", 0), says=("weight_bits",)),
    Case("ratio >= 1", _strategy(PruneConfig={"pruned_ratio": 1.0}, **DISTILL), says=("pruned_ratio",)),
    Case("negative batch size", _set("Data.batch_size", -4), says=("batch_size",)),
    Case("negative budget", _set("Eval.max_drop", -0.1), says=("max_drop",)),
    Case("unsupported combination", _strategy(PruneConfig={}, UnstructurePruneConfig={}, **DISTILL),
         says=("PruneConfig",)),
    Case("tensorrt on cpu", _set("QuantizationConfig.deploy_backend", "tensorrt"), says=("tensorrt",)),
    Case("negative train iterations", _strategy(**DISTILL, TrainConfig={"train_iter": -1}), says=("train_iter",)),
    # plugins, devices
    Case("unknown metric", _set("Eval.metric", "top3"), says=("top3",)),
    Case("unknown metric plugin", _set("Eval.metric", "no_such_pkg.metrics:acc"), says=("no_such_pkg",)),
    Case("unknown device", _set("Device", "tpu:0"), says=("tpu:0",)),
    Case("gpu on a CPU build", _set("Device", "gpu:0"), says=("gpu:0", "compiled")),
    # model files
    Case("missing model folder", _set("Model.model_dir", lambda e: str(e.root / "nope")), says=("nope",)),
    Case("empty model file", _write(_model_file, b""), says=("inference.pdmodel",)),
    Case("random model file", _write(_model_file, os.urandom(4096)), says=("inference.pdmodel",)),
    Case("truncated model file", _truncate(_model_file), says=("inference.pdmodel",)),
    Case("truncated params file", _truncate(_params_file), says=("inference.pdiparams",)),
    Case("params of another program", _other_params, says=("inference.pdiparams",)),
    # data
    Case("missing data folder", _set("Data.eval", lambda e: str(e.root / "no-eval")), says=("Data.eval", "no-eval")),
    Case("empty data", _empty_data, says=("shards",)),
    Case("NaN in data", _nan, says=("NaN",)),
    Case("inf in eval data", _inf, says=("inf",)),
    Case("NaN in the last eval batch", _late_nan, says=("NaN",), in_stage=True),
    Case("string array in a shard", _strings, says=("x",)),
    Case("unknown key in dataset.yaml", _dataset_yaml_key, says=("shard", "dataset.yaml")),
    Case("dataset.yaml not YAML", _dataset_yaml_garbage, says=("dataset.yaml",)),
    Case("eval data without labels", _unlabelled_eval, says=("label",)),
    Case("wrong shape", _wrong_shape, says=("shape",)),
    Case("wrong feed name", _wrong_feed, says=("image",)),
    Case("object array in a shard", _object_array, says=("shard",)),
    Case("shard path leaves the folder", _escape, says=("outside",)),
    # names in the model, teachers
    Case("distillation node not in the model",
         _strategy(DistillationConfig={"distill_node_pair": ["no_such_var", "no_such_var"]}), says=("no_such_var",)),
    Case("student node not in the model (teacher node prefixed)",
         _strategy(DistillationConfig={"distill_node_pair": ["teacher_conv2d_0.tmp_0", "no_such_student"]}),
         says=("distill_node_pair[1]", "no_such_student", "student")),
    Case("prune parameter not in the model",
         _strategy(PruneConfig={"prune_params_name": ["no_such_weight"]}, **DISTILL), says=("no_such_weight",)),
    Case("missing teacher folder", _strategy(DistillationConfig={"teacher_model_dir": "MODEL-missing"}),
         says=("teacher_model_dir", "MODEL-missing")),
    Case("missing one of several teachers",
         _strategy(MultiTeacherDistillationConfig={"teacher_model_dir": ["MODEL", "MODEL-gone"],
                                                   "distill_loss": ["l2_loss", "l2_loss"],
                                                   "distill_lambda": [1.0, 1.0]}),
         says=("teacher_model_dir[1]", "MODEL-gone")),
    # save dirs
    Case("save dir is the input", _set("SaveDir", lambda e: str(e.model)), says=("input model",), save_is_input=True),
    Case("save dir is a file", _save_is_file, says=("existing file",)),
    Case("save dir unwritable", _set("SaveDir", "/proc/autocompress-out"), says=("/proc/autocompress-out",)),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, digits_files, digits_datasets):
    root = tmp_path_factory.mktemp("bad-input-pristine")
    shutil.copytree(digits_files.model_dir, root / "model")
    for split in ("train", "eval"):
        shutil.copytree(digits_datasets / split, root / "data" / split)
    return root


def _env(tmp_path: Path, pristine: Path) -> Env:
    shutil.copytree(pristine / "model", tmp_path / "model")
    shutil.copytree(pristine / "data", tmp_path / "data")
    save = tmp_path / "out"
    cfg = {"Model": {"model_dir": str(tmp_path / "model")},
           "Data": {"train": str(tmp_path / "data" / "train"), "eval": str(tmp_path / "data" / "eval"),
                    "batch_size": 32},
           "Eval": {"metric": "top1", "max_drop": 0.5}, "Device": "cpu", "SaveDir": str(save),
           "QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
           "HyperParameterOptimizationConfig": {"ptq_algo": ["avg"], "bias_correct": [False], "batch_size": [16],
                                                "batch_num": [2], "max_quant_count": 1}}
    return Env(tmp_path, tmp_path / "model", tmp_path / "data", cfg, save)


def _snapshot(env: Env, hashes) -> dict:
    out = {"model": hashes(env.model), "data": hashes(env.data)}
    if env.save.is_file():
        out["save"] = env.save.read_bytes()
    return out


ENTRY_POINTS = ("api", "in-process", "pipeline")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused(case, entry, tmp_path, pristine, hashes, capsys):
    from autocompress.runner import run_config

    env = _env(tmp_path, pristine)
    case.mutate(env)
    path = tmp_path / "run.yaml"
    path.write_text(case.raw if case.raw is not None else yaml.safe_dump(env.cfg))
    before = _snapshot(env, hashes)
    save_existed = env.save.exists()
    start = time.perf_counter()
    if entry == "api":
        with pytest.raises(case.error) as info:
            run_config(str(path), progress=False)
        message = str(info.value)
        out = capsys.readouterr()
        printed = out.out + out.err
    else:
        argv = ["run", str(path), "--quiet"] + (["--in-process"] if entry == "in-process" else [])
        code = cli.main(argv)
        out = capsys.readouterr()
        printed = message = out.out + out.err
        assert code not in (0, 1), f"exit {code}: {printed}"  # 1: a bug (traceback); >= 2: a user error
    seconds = time.perf_counter() - start
    lowered = message.lower()
    for fragment in case.says:
        assert fragment.lower() in lowered, f"{fragment!r} not in: {message}"
    assert "Traceback" not in printed, printed
    assert _snapshot(env, hashes) == before, "an input was modified"
    in_stage = entry == "pipeline" and case.in_stage
    if in_stage:  # a stage's user error: typed, at once (no retry backoff), nothing published
        assert seconds < 25 and not (env.save / "model").exists() and not (env.save / "summary.json").exists()
        problem = message.split(" (full log: ")[0]
        assert "pipeline-root" not in problem and str(env.data) in problem  # the user's folder, not the copy
        assert [p.suffix for p in (env.save / "pipeline-root").iterdir()] == [".log"]  # no copies of the inputs
    else:
        assert "pipeline-root" not in message and "/.work/" not in message  # the user's paths, not copies
        if not case.save_is_input and not save_existed:
            assert not env.save.exists(), f"half-written output: {sorted(p.name for p in env.save.rglob('*'))}"
    FIGURES.append({"case": case.name, "entry": entry, "seconds": round(seconds, 2),
                    "refused_before_pipeline": not in_stage})


# ---- eval callbacks (API only: a Python function) --------------------------------------------------
def _raises(predict):
    raise RuntimeError("my metric broke")


CALLBACKS = [("raises", _raises, "my metric broke"), ("NaN", lambda predict: float("nan"), "nan"),
             ("not a number", lambda predict: "high", "high")]


@pytest.mark.parametrize("name,callback,says", CALLBACKS, ids=[c[0] for c in CALLBACKS])
def test_bad_eval_callback_is_refused(name, callback, says, tmp_path, pristine, digits_data, hashes):
    from autocompress import AutoCompression
    from autocompress.data.dataset import read_dataset

    env = _env(tmp_path, pristine)
    before = _snapshot(env, hashes)
    ac = AutoCompression(str(env.model), None, None, str(env.save),
                         {k: env.cfg[k] for k in ("QuantizationConfig", "HyperParameterOptimizationConfig")}, None,
                         read_dataset(env.data / "train"), callback, devices="cpu", progress=False)
    start = time.perf_counter()
    with pytest.raises(EvalError) as info:
        ac.compression()
    assert says.lower() in str(info.value).lower() and "eval_callback" in str(info.value)
    assert _snapshot(env, hashes) == before
    assert not env.save.exists() or not any(env.save.iterdir())
    FIGURES.append({"case": f"eval callback {name}", "entry": "api", "seconds": round(time.perf_counter() - start, 2),
                    "refused_before_pipeline": True})


def teardown_module(module):
    target = os.environ.get("AUTOCOMPRESS_BAD_INPUT_FIGURES")
    if target and FIGURES:
        Path(target).write_text(json.dumps(FIGURES, indent=1))
