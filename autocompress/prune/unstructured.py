"""Unstructured (element-wise) sparsity: magnitude masks, one-shot or ramped with GMP.

`prune_mode='ratio'`: the `prune_ratio` smallest-magnitude weights become zero, per tensor
(`local_sparsity=True`) or over all eligible weights together (one global threshold, so layers
with many small weights lose more). `prune_mode='threshold'`: every |w| < `threshold` goes.

GMP (gradual magnitude pruning, Zhu & Gupta 2017; PaddleSlim's GMPUnstructuredPruner): no pruning
for `stable_iterations`, then over `pruning_iterations` the ratio climbs from `initial_ratio` to
the target in `pruning_steps` steps along a cubic curve (fast early, when the network can still
recover, slow near the target), then `tunning_iterations` fine-tune at the target. Masks are
recomputed from the current magnitudes at every ratio change and re-applied after every step.

The tuning phase is PaddleSlim's: its ratio stack repeats the target for the tuning steps, so the
ratio no longer changes and the masks stay fixed while the remaining weights recover (they are not
re-derived from the moving magnitudes). TrainConfig (epochs / train_iter) decides how long training
runs; `tunning_iterations` is the part of it reserved at the target ratio:
- not given: the rest of training after the ramp (`pruning_iterations` defaults to PaddleSlim's 45%);
- given without `pruning_iterations`: the ramp shrinks (from 45% of training) so the tuning phase fits;
- stable + pruning + tunning iterations beyond the end of training: a ConfigError (the tuning asked
  for would be cut short, which PaddleSlim does silently).
`GMPSchedule.phase(iteration)` names the phase; the report's schedule has `tuning_ends_at`.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from ..config import UnstructurePruneConfig, build
from ..errors import ConfigError
from .masks import MaskSet, read_param, scope_sparsity, weight_params

log = logging.getLogger("autocompress.prune")

PARAMS_TYPES = (None, "conv1x1_only")


def select_params(program, prune_params_type=None) -> list[str]:
    """Weights that take part: every conv / matmul / fc weight (None; never norms or biases), or
    only 1x1 conv filters ('conv1x1_only')."""
    if prune_params_type not in PARAMS_TYPES:
        raise ConfigError(f"UnstructurePruneConfig.prune_params_type {prune_params_type!r} is unknown; "
                          f"allowed: {list(PARAMS_TYPES)}")
    uses = weight_params(program)
    if prune_params_type == "conv1x1_only":
        names = [n for n, u in uses.items() if u.is_conv and len(u.shape) == 4 and u.shape[2:] == (1, 1)]
    else:
        names = list(uses)
    if not names:
        what = "1x1 convolution" if prune_params_type == "conv1x1_only" else "conv / fc"
        raise ConfigError(f"UnstructurePruneConfig: the model has no {what} weights to sparsify; "
                          + ("use prune_params_type None" if prune_params_type else "check the model"))
    return names


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries (exactly k, ties broken by position)."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= values.size:
        return np.arange(values.size)
    return np.argpartition(values, k - 1, kind="introselect")[:k]


def compute_masks(weights: dict, mode: str = "ratio", ratio: float = 0.0, threshold: float | None = None,
                  local: bool = False) -> dict:
    """name -> bool keep-mask. Exactly floor(ratio * n) zeros per tensor (local) or over all (global)."""
    if mode == "threshold":
        if threshold is None:
            raise ConfigError("prune_mode 'threshold' needs a threshold (e.g. threshold: 0.01)")
        return {n: np.abs(w) >= threshold for n, w in weights.items()}
    if mode != "ratio":
        raise ConfigError(f"prune_mode {mode!r} is unknown; allowed: ['ratio', 'threshold']")
    if local:
        masks = {}
        for n, w in weights.items():
            mask = np.ones(w.size, dtype=bool)
            mask[_smallest(np.abs(w).ravel(), int(math.floor(ratio * w.size + 1e-9)))] = False
            masks[n] = mask.reshape(w.shape)
        return masks
    names = list(weights)
    flat = np.concatenate([np.abs(weights[n]).ravel() for n in names]) if names else np.zeros(0)
    keep = np.ones(flat.size, dtype=bool)
    keep[_smallest(flat, int(math.floor(ratio * flat.size + 1e-9)))] = False
    masks, offset = {}, 0
    for n in names:
        size = weights[n].size
        masks[n] = keep[offset:offset + size].reshape(weights[n].shape)
        offset += size
    return masks


class GMPSchedule:
    """Sparsity ratio as a function of the optimizer step (see module docstring)."""

    def __init__(self, target: float, total_iters: int | None, gmp_config: dict | None):
        cfg = dict(gmp_config or {})
        if total_iters is None and not {"pruning_iterations", "tunning_iterations"} <= set(cfg):
            raise ConfigError("prune_strategy 'gmp' ramps the sparsity over training steps: give TrainConfig "
                              "epochs or train_iter, or gmp_config pruning_iterations and tunning_iterations")
        total = total_iters or 0
        self.target = float(target)
        self.stable = int(cfg.get("stable_iterations", 0))
        self.pruning = max(1, int(cfg.get("pruning_iterations", 0.45 * total)))
        steps = cfg.get("pruning_steps", cfg.get("prune_steps"))
        # PaddleSlim's default is 100 steps on long runs; short runs get one step per ~5 iterations
        self.steps = max(1, min(int(steps) if steps else 100, self.pruning))
        self.initial = float(cfg.get("initial_ratio", 0.15))
        # PaddleSlim's resume_iteration: this run's step 1 is schedule iteration start + 1
        self.start = int(cfg.get("resume_iteration", 0) or 0)
        for key in ("stable_iterations", "pruning_iterations", "tunning_iterations", "resume_iteration"):
            if key in cfg and int(cfg[key]) < 0:
                raise ConfigError(f"gmp_config.{key} must be >= 0, got {cfg[key]}")
        tunning = int(cfg["tunning_iterations"]) if "tunning_iterations" in cfg else None
        self.tunning = self._fit_tuning(tunning, total_iters, "pruning_iterations" in cfg)
        if total_iters and self.ramp_steps_left > total_iters:
            raise ConfigError(
                f"gmp_config ramps the sparsity until iteration {self.stable + self.pruning} (stable_iterations "
                f"{self.stable} + pruning_iterations {self.pruning}, resuming at {self.start}) but training runs "
                f"{total_iters} iterations; lower pruning_iterations / stable_iterations or train longer "
                "(TrainConfig epochs / train_iter)")
        if total_iters and tunning is not None and self.end > self.start + total_iters:
            raise ConfigError(
                f"gmp_config.tunning_iterations {tunning} ends the tuning phase at iteration {self.end} "
                f"(stable_iterations {self.stable} + pruning_iterations {self.pruning} + tunning_iterations "
                f"{tunning}) but training runs {total_iters} iterations (from {self.start}), so the tuning would be "
                "cut short; lower tunning_iterations or train longer (TrainConfig epochs / train_iter)")
        if not 0.0 <= self.initial <= self.target:
            raise ConfigError(f"gmp_config.initial_ratio must be in [0, prune_ratio={self.target}], got {self.initial}")

    def _fit_tuning(self, tunning: int | None, total_iters: int | None, pruning_given: bool) -> int:
        """The tuning phase's length: `tunning` as given (the default ramp shrinks to make room for it)
        or, not given, the rest of training after the ramp."""
        if not total_iters:
            return tunning or 0
        horizon = self.start + total_iters  # the schedule iteration at which training ends
        if tunning is None:
            return max(0, horizon - self.stable - self.pruning)
        if not pruning_given and self.stable + self.pruning + tunning > horizon:
            room = horizon - self.stable - tunning
            if room < 1:
                raise ConfigError(
                    f"gmp_config.tunning_iterations {tunning} leaves no iteration left for the ramp: training runs "
                    f"{total_iters} iterations (from {self.start}) and stable_iterations is {self.stable}; lower "
                    "tunning_iterations or train longer (TrainConfig epochs / train_iter)")
            self.pruning = room
            self.steps = min(self.steps, room)
        return tunning

    @property
    def end(self) -> int:
        """The schedule iteration at which the tuning phase ends."""
        return self.stable + self.pruning + self.tunning

    def phase(self, iteration: int) -> str:
        """'stable' (no masks), 'pruning' (the ramp), 'tuning' (masks fixed at the target) or 'done'
        (past the tuning phase: training may go on, the masks stay fixed)."""
        t = iteration - self.stable
        if t < 0:
            return "stable"
        if t < self.pruning:
            return "pruning"
        return "tuning" if t < self.pruning + self.tunning else "done"

    @property
    def ramp_steps_left(self) -> int:
        """This run's optimizer steps until the target ratio (resume_iteration counts as done)."""
        return max(0, self.stable + self.pruning - self.start)

    def ratio(self, iteration: int) -> float:
        t = iteration - self.stable
        if t < 0:
            return 0.0
        if t >= self.pruning:
            return self.target
        k = math.floor(t * self.steps / self.pruning)  # completed ramp steps
        return self.target + (self.initial - self.target) * (1.0 - k / self.steps) ** 3

    def to_dict(self) -> dict:
        return {"stable_iterations": self.stable, "pruning_iterations": self.pruning,
                "tunning_iterations": self.tunning, "pruning_steps": self.steps, "initial_ratio": self.initial,
                "resume_iteration": self.start, "target_ratio": self.target, "tuning_ends_at": self.end}


class UnstructuredPruner:
    """Owns the masks of one training scope. Call `step()` after every optimizer step (or pass
    `after_step` to the training loop); `prune()` once for one-shot sparsity."""

    def __init__(self, program, scope, config, total_iters: int | None = None, place=None, names=None):
        self.config = build(UnstructurePruneConfig, config)
        self.scope, self.place = scope, place
        self.names = list(names) if names is not None else select_params(program, self.config.prune_params_type)
        self.schedule = (GMPSchedule(self.config.prune_ratio, total_iters, self.config.gmp_config)
                         if self.config.prune_strategy == "gmp" else None)
        self.iteration = self.schedule.start if self.schedule else 0
        self.current_ratio = None
        self.masks = MaskSet({})
        self.history: list[tuple[int, float]] = []  # (iteration, ratio) at each mask update

    def target_ratio(self, iteration: int | None = None) -> float:
        if self.schedule is None:
            return self.config.prune_ratio
        return self.schedule.ratio(self.iteration if iteration is None else iteration)

    def prune(self, ratio: float | None = None) -> MaskSet:
        """Recompute masks from the current magnitudes at `ratio` and zero the pruned weights."""
        ratio = self.target_ratio() if ratio is None else ratio
        weights = {n: read_param(self.scope, n) for n in self.names}
        self.masks = MaskSet(compute_masks(weights, self.config.prune_mode, ratio, self.config.threshold,
                                           self.config.local_sparsity))
        self.masks.apply(self.scope, self.place)
        self.current_ratio = ratio
        self.history.append((self.iteration, ratio))
        return self.masks

    def start(self) -> None:
        """Before the first step: GMP starts at its schedule's ratio (0 while stable), one-shot at
        the target."""
        self.prune(self.target_ratio())

    def step(self, *_args, **_kwargs) -> None:
        self.iteration += 1
        ratio = self.target_ratio()
        if ratio != self.current_ratio:
            self.prune(ratio)
        else:
            self.masks.apply(self.scope, self.place)

    @property
    def after_step(self):
        return self.step

    def report(self) -> dict:
        s = scope_sparsity(self.scope, self.names)
        return {"per_tensor": s["per_tensor"], "overall": s["overall"], "zeros": s["zeros"], "total": s["total"],
                "target": None if self.config.prune_mode == "threshold" else self.config.prune_ratio,
                "mode": self.config.prune_mode, "local_sparsity": self.config.local_sparsity,
                "schedule": self.schedule.to_dict() if self.schedule else None,
                "ratio_history": self.history[-20:]}


def sparsify_model(files, config, out_dir, place=None) -> dict:
    """One-shot: load `files` (never modified), mask at the final ratio, save atomically."""
    from .. import model_io
    from ..paddle_env import legacy_ir
    from .masks import compressed_size

    config = build(UnstructurePruneConfig, config)
    guard = model_io.InputGuard(files)
    with legacy_ir():
        model = model_io.load_model(files, place)
        pruner = UnstructuredPruner(model.program, model.scope, config.model_copy(update={"prune_strategy": None}),
                                    place=place)
        before = scope_sparsity(model.scope, pruner.names)
        pruner.prune()
        report = pruner.report()
        saved = model_io.save_model(model, out_dir, {"strategy": "sparse", "sparsity": report["overall"],
                                                     "parent": model_io.sha256_file(files.model_path)})
    guard.verify()
    return {"model_files": saved, "sparsity_before": before["overall"], "sparsity": report,
            "size_before": compressed_size(files), "size_after": compressed_size(saved)}
