"""What auto mode tries, in which order, and what it leaves out on a target where it cannot pay.

Each candidate is one of the spec's strategy combinations with its configs filled in, or a chain (a
strategy run on another candidate's output: pruning + distillation, then int8). Cheap candidates
come first so that a short time budget still gets a result: the PTQ search (statistics once, no
training), channel pruning at each ratio, int8 of the pruned models, then QAT and the sparsity kinds.
"""
from __future__ import annotations

import dataclasses

from .config import INT8_KINDS, KINDS, AutoConfig

# the QuantizationConfig.deploy_backend whose kernels an int8 candidate is selected on, per target
INT8_BACKEND = {"paddle-cpu": "none", "onednn-int8": "onednn", "openvino": "openvino", "gpu": "tensorrt"}
# OpenVINO runs transposed convolutions in int8 (with the sigmoid after them fused: PP-OCRv4 det's head)
OPENVINO_OP_TYPES = ["conv2d", "depthwise_conv2d", "conv2d_transpose", "mul", "matmul", "matmul_v2"]


def int8_config(target: str) -> dict:
    """The QuantizationConfig fields of an int8 candidate on `target`."""
    backend = INT8_BACKEND[target]
    return {"deploy_backend": backend, **({"quantize_op_types": OPENVINO_OP_TYPES} if backend == "openvino" else {})}
# Why a kind is left out by default on a target (naming it in `candidates` runs it anyway).
NO_GAIN = {
    ("paddle-cpu", "int8"): "a stock paddle.inference.Config has no int8 kernels: int8 models run there "
                            "(correctly) 3-4x slower than FP32 (measured on PP-OCRv4)",
    ("cpu", "asp"): "2:4 sparsity is fast only on GPUs with sparse tensor cores (TensorRT); dense CPU kernels "
                    "run a 2:4-sparse model at the dense speed",
    ("any", "sparse"): "unstructured sparsity keeps the dense shapes: Paddle Inference, OpenVINO and TensorRT run "
                       "it at the dense speed (it shrinks only a compressed download)",
}


@dataclasses.dataclass(frozen=True)
class Candidate:
    id: str
    kind: str
    label: str
    strategy_config: dict
    trains: bool
    parent: str | None = None           # a chain runs on this candidate's output model

    @property
    def chain(self) -> list[str]:
        return [self.parent, self.id] if self.parent else [self.id]


@dataclasses.dataclass(frozen=True)
class Skipped:
    id: str
    kind: str
    label: str
    reason: str


def plan(auto: AutoConfig) -> tuple[list[Candidate], list[Skipped]]:
    """The candidates to run, in order, and those left out with the reason."""
    requested = auto.candidates
    kinds = [k for k in KINDS if requested is None or k in requested]
    quant = int8_config(auto.target)
    run: list[Candidate] = []
    skipped: list[Skipped] = []
    for kind in kinds:
        for cand in _of_kind(kind, auto, quant):
            reason = None if requested is not None else _no_gain(kind, auto.target)
            if reason:
                skipped.append(Skipped(cand.id, kind, cand.label, reason))
            else:
                run.append(cand)
    ids = {c.id for c in run}
    run = [c for c in run if c.parent is None or c.parent in ids]  # a chain needs its parent
    return run, skipped


RATIO_STEP = 0.05  # refined pruning ratios are multiples of this
MAX_RATIO = 0.9


def refinements(auto: AutoConfig, records: dict, planned: list[Candidate]) -> list[Candidate]:
    """The next pruning ratio to try from what the finished pruning candidates showed: halfway
    between the largest ratio within the budget (0 if none) and the smallest one over it, or halfway
    to MAX_RATIO when all fit; rounded to RATIO_STEP. With its int8 chain when the plan has chains.
    Empty when pruning is not planned, a ratio was left unrun (the time went first) or the gap is down
    to one step."""
    results = {}
    for rec in records.values():
        if rec.get("kind") == "prune" and rec.get("status") == "not_run":
            return []  # a ratio of the plan did not run: nothing to refine around, and no time for more
        if rec.get("kind") == "prune" and rec.get("status") == "done":
            results[rec["strategy_config"]["PruneConfig"]["pruned_ratio"]] = bool(rec.get("within_budget"))
    if not results:
        return []
    low = max((r for r, ok in results.items() if ok), default=0.0)
    high = min((r for r, ok in results.items() if not ok and r > low), default=MAX_RATIO)
    ratio = round(round((low + high) / 2 / RATIO_STEP) * RATIO_STEP, 4)
    if ratio - low < RATIO_STEP / 2 or high - ratio < RATIO_STEP / 2 or ratio in results:
        return []
    one = auto.model_copy(update={"prune_ratios": [ratio]})
    quant = int8_config(auto.target)
    chains = any(c.kind == "prune+ptq" for c in planned)
    return _of_kind("prune", one, quant) + (_of_kind("prune+ptq", one, quant) if chains else [])


def _no_gain(kind: str, target: str) -> str | None:
    if kind in INT8_KINDS and target == "paddle-cpu":
        return NO_GAIN[("paddle-cpu", "int8")]
    if kind == "asp" and target != "gpu":
        return NO_GAIN[("cpu", "asp")]
    if kind == "sparse":
        return NO_GAIN[("any", "sparse")]
    return None


def _of_kind(kind: str, auto: AutoConfig, quant: dict) -> list[Candidate]:
    distill = {"DistillationConfig": {}}
    if kind == "ptq":
        return [Candidate("ptq", kind, "int8 PTQ search", {
            "QuantizationConfig": quant,
            "HyperParameterOptimizationConfig": {"max_quant_count": auto.ptq_trials}}, trains=False)]
    if kind == "prune":
        return [Candidate(f"prune-{r:g}", kind, f"channel pruning {r:g} + distillation",
                          {"PruneConfig": {"prune_algo": "prune", "pruned_ratio": r}, **distill}, trains=True)
                for r in auto.prune_ratios]
    if kind == "prune+ptq":
        return [Candidate(f"prune-{r:g}+ptq", kind, f"channel pruning {r:g} + distillation, then int8 PTQ", {
            "QuantizationConfig": quant,
            "HyperParameterOptimizationConfig": {"max_quant_count": auto.ptq_trials}}, trains=False,
            parent=f"prune-{r:g}") for r in auto.prune_ratios]
    if kind == "qat":
        return [Candidate("qat", kind, "int8 QAT + distillation", {"QuantizationConfig": quant, **distill},
                          trains=True)]
    if kind == "asp":
        return [Candidate("asp", kind, "ASP 2:4 sparsity + distillation",
                          {"PruneConfig": {"prune_algo": "asp"}, **distill}, trains=True)]
    if kind == "sparse":
        return [Candidate("sparse", kind, "unstructured sparsity 0.55 + distillation",
                          {"UnstructurePruneConfig": {"prune_ratio": 0.55}, **distill}, trains=True)]
    raise ValueError(f"unknown candidate kind {kind!r}; known: {list(KINDS)}")
