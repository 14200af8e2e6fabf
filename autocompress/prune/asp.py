"""ASP: 2:4 semi-structured sparsity (in every 4 consecutive weights along the input dimension,
keep the 2 largest), the pattern sparse tensor cores (Ampere and later, TensorRT) accelerate.

Groups run along the reduction (input) dimension, as the hardware needs:
  fc / matmul weight [K, N] (X @ W): along K for each output column (along the last axis when
  trans_y); conv filter [O, I, kh, kw]: along I for each (o, kh, kw), i.e. channel-last order.
A weight whose input dimension is not a multiple of 4 cannot hold the pattern and is skipped
(reported). The spec's `asp` covers fully-connected layers; convs are opt-in (`include_convs`).
`PruneConfig.prune_params_name` names the weights instead (as PaddleSlim's ASP excludes every
parameter not in that list): only those get masks, convs included, and a named weight that cannot
hold 2:4 is a ConfigError. ASP is 2:4 by definition: `pruned_ratio` and `criterion` are refused
with it (config.PruneConfig).
Masks are computed once from the trained weights and re-applied after every optimizer step.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .masks import MaskSet, WeightUse, read_param, weight_params

N, M = 2, 4


def _to_groups(w: np.ndarray, use: WeightUse) -> tuple[np.ndarray, callable]:
    """View `w` as [..., 4] groups along the input dim; returns (groups, inverse reshape)."""
    if use.is_conv:
        t = np.transpose(w, (0, 2, 3, 1))  # [O, kh, kw, I]
        back = lambda g: np.transpose(g.reshape(t.shape), (0, 3, 1, 2))  # noqa: E731
        return t.reshape(-1, M), back
    if use.trans_y:  # W is [N, K]: input dim last already
        return w.reshape(-1, M), lambda g: g.reshape(w.shape)
    t = w.T  # [N, K]
    return t.reshape(-1, M), lambda g: g.reshape(t.shape).T


def input_dim(use: WeightUse) -> int:
    if use.is_conv:
        return use.shape[1]
    return use.shape[-1] if use.trans_y else use.shape[0]


def _why_not(use: WeightUse) -> str | None:
    """Why `use` cannot hold the 2:4 pattern (None: it can)."""
    if use.is_conv and (use.groups != 1 or use.op_type == "conv2d_transpose"):
        return f"{use.op_type} with groups={use.groups} has no dense input dimension"
    if len(use.shape) not in (2, 4):
        return f"rank-{len(use.shape)} weight"
    if input_dim(use) % M:
        return f"input dimension {input_dim(use)} is not a multiple of {M}"
    return None


def eligible(program, include_convs: bool = False, names=None) -> tuple[dict[str, WeightUse], dict[str, str]]:
    """(eligible weights, skipped weights with the reason). `names` (PruneConfig.prune_params_name):
    exactly these weights, convs included; one that cannot hold 2:4 is a ConfigError."""
    uses = weight_params(program)
    if names is not None:
        return _named(uses, list(names)), {}
    ok, skipped = {}, {}
    for name, use in uses.items():
        if use.is_conv and not include_convs:
            continue
        why = _why_not(use)
        if why:
            skipped[name] = why
        else:
            ok[name] = use
    return ok, skipped


def _named(uses: dict[str, WeightUse], names: list[str]) -> dict[str, WeightUse]:
    valid = sorted(n for n, u in uses.items() if _why_not(u) is None)
    if not names:
        raise ConfigError(f"PruneConfig.prune_params_name is empty; give weight names from {valid} or leave it "
                          "out to mask every eligible fc / matmul weight")
    out = {}
    for name in names:
        use = uses.get(name)
        why = "not a conv / fc / matmul weight of this model" if use is None else _why_not(use)
        if why:
            raise ConfigError(f"PruneConfig.prune_params_name: {name!r} cannot get 2:4 masks: {why}. "
                              f"Weights that can: {valid}")
        out[name] = use
    return out


def mask_2_4(w: np.ndarray, use: WeightUse) -> np.ndarray:
    """Keep the N largest |w| of every M consecutive input weights."""
    groups, back = _to_groups(w, use)
    order = np.argsort(-np.abs(groups), axis=1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :N], True, axis=1)
    return back(keep)


def check_2_4(w: np.ndarray, use: WeightUse) -> float:
    """Fraction of 4-groups holding at least 2 zeros (1.0 = the pattern holds everywhere)."""
    groups, _ = _to_groups(w, use)
    return float(np.mean((groups == 0).sum(axis=1) >= M - N))


class ASPPruner:
    def __init__(self, program, scope, include_convs: bool = False, place=None, names=None):
        self.uses, self.skipped = eligible(program, include_convs, names)
        if not self.uses:
            what = "fc / matmul or conv" if include_convs else "fc / matmul"
            raise ConfigError(f"PruneConfig prune_algo 'asp': no {what} weight whose input dimension is a multiple "
                              f"of 4 (skipped: {self.skipped or 'none found'}); use prune_algo 'prune' or "
                              "UnstructurePruneConfig")
        self.scope, self.place = scope, place
        self.masks = MaskSet({})

    @property
    def names(self) -> list[str]:
        return list(self.uses)

    def prune(self) -> MaskSet:
        self.masks = MaskSet({n: mask_2_4(read_param(self.scope, n), u) for n, u in self.uses.items()})
        self.masks.apply(self.scope, self.place)
        return self.masks

    start = prune

    def step(self, *_args, **_kwargs) -> None:
        self.masks.apply(self.scope, self.place)

    @property
    def after_step(self):
        return self.step

    def report(self) -> dict:
        per = {n: check_2_4(read_param(self.scope, n), u) for n, u in self.uses.items()}
        weights = {n: read_param(self.scope, n) for n in self.uses}
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        total = sum(w.size for w in weights.values())
        return {"pattern": "2:4", "groups_ok": per, "all_groups_ok": all(v == 1.0 for v in per.values()),
                "overall": zeros / max(total, 1), "zeros": zeros, "total": total, "skipped": self.skipped,
                "per_tensor": {n: float((w == 0).mean()) for n, w in weights.items()}}


def asp_model(files, out_dir, include_convs: bool = False, place=None, names=None) -> dict:
    """One-shot 2:4 masks on a copy of `files` (never modified), saved atomically into `out_dir`;
    `names`: only these weights (PruneConfig.prune_params_name).
    Fine-tuning must keep the masks: `prune.run.run_prune_distill(..., pruned_input=True)`."""
    from .. import model_io
    from ..program.legacy import info as program_info
    from ..paddle_env import legacy_ir
    from .masks import compressed_size

    guard = model_io.InputGuard(files)
    with legacy_ir():
        model = model_io.load_model(files, place)
        pruner = ASPPruner(model.program, model.scope, include_convs=include_convs, place=place, names=names)
        pruner.prune()
        report = pruner.report()
        params = program_info.count_params(model.program)
        flops = program_info.count_flops(model.program, model.feed_names)
        saved = model_io.save_model(model, out_dir, {"strategy": "asp", "sparsity": report["overall"],
                                                     "parent": model_io.sha256_file(files.model_path)})
    guard.verify()
    return {"model_files": saved, "params_before": params, "params_after": params, "flops_before": flops,
            "flops_after": flops, "size_bytes_before": model_io.dir_size(files),
            "size_bytes_after": model_io.dir_size(saved), "sparsity": report,
            "size_before": compressed_size(files), "size_after": compressed_size(saved)}
