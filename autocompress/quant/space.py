"""The PTQ search space of HyperParameterOptimizationConfig and the samplers that walk it.

Spec semantics: for ptq_algo / bias_correct / weight_quantize_type a list is a set of choices; for
hist_percent / batch_size / batch_num a list gives bounds [min, max] sampled uniformly. A scalar is fixed.
Samplers: 'tpe' (optuna's TPE), 'random' (optuna's RandomSampler), 'grid'; all seeded.
"""
from __future__ import annotations

import dataclasses
import itertools
import random

CATEGORICAL = ("ptq_algo", "bias_correct", "weight_quantize_type")
NUMERIC = {"hist_percent": float, "batch_size": int, "batch_num": int}


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    ptq_algo: str
    bias_correct: bool
    weight_quantize_type: str
    hist_percent: float
    batch_size: int
    batch_num: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def samples(self) -> int:
        return int(self.batch_size) * int(self.batch_num)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    choices: dict      # name -> list of choices (categorical)
    bounds: dict       # name -> (low, high, type) (numeric; low == high means fixed)

    @classmethod
    def from_config(cls, hpo) -> "SearchSpace":
        choices = {}
        for name in CATEGORICAL:
            value = getattr(hpo, name)
            values = value if isinstance(value, list) else [value]
            choices[name] = list(dict.fromkeys(values))  # dedupe, keep order
        bounds = {}
        for name, kind in NUMERIC.items():
            value = getattr(hpo, name)
            values = [kind(v) for v in (value if isinstance(value, list) else [value])]
            bounds[name] = (min(values), max(values), kind)
        return cls(choices, bounds)

    @property
    def min_batch_size(self) -> int:
        return int(self.bounds["batch_size"][0])

    @property
    def max_samples(self) -> int:
        return int(self.bounds["batch_size"][1] * self.bounds["batch_num"][1])


class Sampler:
    """ask() -> TrialConfig (or None when exhausted); tell(config, value or None on failure)."""

    def ask(self):
        raise NotImplementedError

    def tell(self, config, value):
        pass


class OptunaSampler(Sampler):
    def __init__(self, space: SearchSpace, algo: str, seed: int, budget: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if algo == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, budget // 3)))
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        self.study = optuna.create_study(direction="maximize", sampler=sampler)
        self.space = space
        self.pending = {}

    def ask(self):
        trial = self.study.ask()
        params = {n: trial.suggest_categorical(n, c) if len(c) > 1 else c[0]
                  for n, c in self.space.choices.items()}
        for name, (low, high, kind) in self.space.bounds.items():
            if low == high or (name == "hist_percent" and params["ptq_algo"] != "hist"):
                params[name] = low if low == high else kind((low + high) / 2) if kind is float else low
            elif kind is int:
                params[name] = trial.suggest_int(name, int(low), int(high))
            else:
                params[name] = trial.suggest_float(name, float(low), float(high))
        config = TrialConfig(**params)
        self.pending.setdefault(config, []).append(trial)
        return config

    def tell(self, config, value):
        import optuna

        trial = self.pending[config].pop(0)
        if value is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, float(value))


class GridSampler(Sampler):
    """Every combination of the choices, with numeric ranges cut into as many levels as the budget
    allows (at least their two ends when possible), in a seeded order when the grid exceeds it."""

    def __init__(self, space: SearchSpace, seed: int, budget: int):
        combos = [dict(zip(space.choices, c)) for c in itertools.product(*space.choices.values())]
        ranged = [n for n, (lo, hi, _) in space.bounds.items() if lo != hi]

        def relevant(combo):  # hist_percent only changes the 'hist' algorithm's model
            return [n for n in ranged if n != "hist_percent" or combo["ptq_algo"] == "hist"]

        def size(levels):
            return sum(levels ** len(relevant(c)) for c in combos)

        levels = 1
        # stop when more levels add no configuration (a range no combination uses, e.g. hist_percent
        # without the 'hist' algorithm) or exceed the budget
        while ranged and size(levels) < size(levels + 1) <= budget:
            levels += 1
        if levels == 1 and ranged and budget > len(combos):
            levels = 2  # rather both ends of each range, subsampled, than midpoints only
        grid = []
        for combo in combos:
            axes = {}
            for name, (lo, hi, kind) in space.bounds.items():
                if name in relevant(combo) and levels > 1:
                    axes[name] = sorted({kind(lo + (hi - lo) * i / (levels - 1)) for i in range(levels)})
                else:
                    axes[name] = [lo if lo == hi or kind is int else kind((lo + hi) / 2)]
            for values in itertools.product(*axes.values()):
                grid.append(TrialConfig(**combo, **dict(zip(axes, values))))
        if len(grid) > budget:
            rng = random.Random(seed)
            grid = [grid[i] for i in sorted(rng.sample(range(len(grid)), budget))]
        self.grid = grid

    def ask(self):
        return self.grid.pop(0) if self.grid else None


def make_sampler(space: SearchSpace, algo: str, seed: int, budget: int) -> Sampler:
    if algo == "grid":
        return GridSampler(space, seed, budget)
    return OptunaSampler(space, algo, seed, budget)
