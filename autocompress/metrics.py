"""Metrics, higher is better (DESIGN §6): `top1`, `top5` with labels, label-free `fidelity` to the
original model's outputs, or a `package.module:function` plugin.

Each metric accumulates over batches: `load_metric(name).accumulator()` gives an object with
`update(outputs, target)` (target = labels, or reference outputs for fidelity) and `result()`.
`outputs` is the model's fetch list (a list of arrays) or a single array; the class-score metrics
read the first output.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from .errors import ConfigError, EvalError

BUILTIN = ("top1", "top5", "fidelity")


# ---- one-shot functions -------------------------------------------------------------------------
def top1(outputs, labels) -> float:
    return load_metric("top1")(outputs, labels)


def top5(outputs, labels) -> float:
    return load_metric("top5")(outputs, labels)


def fidelity(outputs, reference_outputs) -> float:
    """Agreement with the original model: argmax agreement for class scores [N, C], per-position argmax
    agreement for sequences [N, T, C] (e.g. OCR), exact match for integer outputs (class ids), and
    mean per-sample cosine similarity of the flattened outputs otherwise (1 - relative error for
    one value per sample). Several outputs: the mean of their scores."""
    return load_metric("fidelity")(outputs, reference_outputs)


# ---- metric objects -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    needs_labels: bool
    needs_reference: bool
    factory: Callable[[], object]

    def accumulator(self):
        return self.factory()

    def __call__(self, outputs, target) -> float:
        acc = self.factory()
        acc.update(outputs, target)
        return acc.result()


def load_metric(name) -> Metric:
    """'top1' | 'top5' | 'fidelity' | 'package.module:function' (a Metric object passes through)."""
    if isinstance(name, Metric):
        return name
    if name == "top1":
        return Metric("top1", True, False, lambda: TopK(1))
    if name == "top5":
        return Metric("top5", True, False, lambda: TopK(5))
    if name == "fidelity":
        return Metric("fidelity", False, True, Fidelity)
    if isinstance(name, str) and ":" in name:
        from .data.plugin import load_plugin

        func = load_plugin(name, "metric")
        return Metric(name, False, False, lambda: PluginMetric(func, name))
    raise ConfigError(f"unknown metric {name!r}; allowed: {list(BUILTIN)} or a plugin 'package.module:function'")


def _as_list(outputs) -> list:
    items = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [o if isinstance(o, ArgmaxRef) else np.asarray(o) for o in items]


def uses_argmax(out: np.ndarray) -> bool:
    """Fidelity compares argmaxes for float class scores [N, C] and sequences [N, T, C]."""
    return out.dtype.kind == "f" and out.ndim in (2, 3) and out.shape[-1] >= 2


@dataclasses.dataclass(frozen=True)
class ArgmaxRef:
    """A reference output kept only as its argmax: all fidelity needs for class scores, C times smaller."""

    indices: np.ndarray
    shape: tuple

    @classmethod
    def of(cls, out: np.ndarray) -> ArgmaxRef:
        return cls(np.argmax(out, axis=-1), tuple(out.shape))


class TopK:
    """Share of samples whose label is among the k highest scores (ties: the lower class index wins,
    as with argmax, so a constant output never scores as correct for every class)."""

    def __init__(self, k: int):
        self.k, self.correct, self.total = k, 0, 0

    def update(self, outputs, labels) -> None:
        if labels is None:
            raise EvalError(f"metric top{self.k} needs labels but the eval data has none; add the label as "
                            "the last field of each batch (or label_field), or use metric 'fidelity'")
        scores = _as_list(outputs)[0]
        if scores.ndim != 2:
            raise EvalError(f"top{self.k} needs class scores of shape [N, C]; the model's first output has "
                            f"shape {list(scores.shape)}. Use metric 'fidelity' or a plugin metric")
        labels = _int_labels(labels, scores.shape[0], f"top{self.k}")
        k = min(self.k, scores.shape[1])
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        self.correct += int((ranked == labels[:, None]).any(axis=1).sum())
        self.total += scores.shape[0]

    def result(self) -> float:
        if not self.total:
            raise EvalError(f"top{self.k}: no samples were evaluated")
        return self.correct / self.total


def _int_labels(labels, n: int, what: str) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.size != n:
        raise EvalError(f"{what}: got {labels.size} labels for {n} samples; labels must be [N] or [N, 1]")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise EvalError(f"{what}: labels must be class indices (integers), got non-integer values")
    elif labels.dtype.kind not in "iub":
        raise EvalError(f"{what}: labels must be class indices, got dtype {labels.dtype}")
    return labels.astype(np.int64)


class Fidelity:
    """Accumulates per-output agreement sums; the result is the mean over outputs."""

    def __init__(self):
        self.sums: list[float] = []
        self.counts: list[int] = []

    def update(self, outputs, reference) -> None:
        if reference is None:
            raise EvalError("metric fidelity needs the original model's outputs as reference; none were given")
        outs, refs = _as_list(outputs), _as_list(reference)
        if len(outs) != len(refs):
            raise EvalError(f"fidelity: the model has {len(outs)} outputs but the reference has {len(refs)}")
        if not self.sums:
            self.sums, self.counts = [0.0] * len(outs), [0] * len(outs)
        for i, (out, ref) in enumerate(zip(outs, refs)):
            if tuple(out.shape) != tuple(ref.shape):
                raise EvalError(f"fidelity: output {i} has shape {list(out.shape)} but the original model's has "
                                f"{list(ref.shape)}; for outputs of varying size use a plugin metric")
            total, count = _agreement(out, ref)
            self.sums[i] += total
            self.counts[i] += count

    def result(self) -> float:
        if not self.counts or not all(self.counts):
            raise EvalError("fidelity: no samples were evaluated")
        return float(np.mean([s / c for s, c in zip(self.sums, self.counts)]))


def _agreement(out: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """(sum of scores, number of scored items) for one output."""
    if out.size == 0:
        return 0.0, 0
    if isinstance(ref, ArgmaxRef) or uses_argmax(out):  # class scores [N, C] / sequences [N, T, C]
        ref_idx = ref.indices if isinstance(ref, ArgmaxRef) else np.argmax(ref, axis=-1)
        same = np.argmax(out, axis=-1) == ref_idx
        return float(same.sum()), int(same.size)
    if out.dtype.kind in "iub":  # class ids or masks: exact match
        return float((out == ref).sum()), int(out.size)
    n = out.shape[0] if out.ndim else 1
    a = out.reshape(n, -1).astype(np.float64)
    b = ref.reshape(n, -1).astype(np.float64)
    if a.shape[1] == 1:  # one value per sample: 1 - relative error, floored at 0
        err = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
        score = 1.0 - np.minimum(err, 1.0)
    else:
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = (a * b).sum(axis=1) / (na * nb)
        score = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, score))
    # a broken (e.g. badly quantized) model emitting NaN/inf disagrees; it must not crash the search
    score = np.where(np.isfinite(score), score, 0.0)
    return float(score.sum()), int(n)


class PluginMetric:
    """Collects all batches and calls `func(outputs: list[np.ndarray], labels)` once, so metrics that
    do not decompose over batches (F1, edit distance ratios) stay exact. Outputs whose shapes vary
    between batches cannot be concatenated: then `func` runs per batch and results are averaged,
    weighted by batch size."""

    def __init__(self, func, name: str):
        self.func, self.name = func, name
        self.outputs: list[list[np.ndarray]] = []
        self.labels: list = []

    def update(self, outputs, labels) -> None:
        self.outputs.append(_as_list(outputs))
        self.labels.append(labels)

    def result(self) -> float:
        if not self.outputs:
            raise EvalError(f"metric {self.name}: no batches were evaluated")
        try:
            merged = [np.concatenate(parts) for parts in zip(*self.outputs)]
        except ValueError:
            return self._per_batch()
        labels = None if any(lab is None for lab in self.labels) else np.concatenate(
            [np.asarray(lab) for lab in self.labels])
        return self._call(merged, labels)

    def _per_batch(self) -> float:
        sizes = [len(outs[0]) for outs in self.outputs]
        values = [self._call(outs, lab) for outs, lab in zip(self.outputs, self.labels)]
        return float(np.average(values, weights=sizes))

    def _call(self, outputs, labels) -> float:
        try:
            value = self.func(outputs, labels)
        except Exception as err:
            raise EvalError(f"metric plugin {self.name} failed: {type(err).__name__}: {err}") from err
        try:
            return float(value)
        except (TypeError, ValueError):
            raise EvalError(f"metric plugin {self.name} returned {type(value).__name__}, not a number") from None
