"""The strategy registry: one module per combination of the spec, each declaring a `STRATEGY`.

`resolve(strategy_config)` validates a user's strategy_config (dict of class name -> dict/object, or
a list of config objects) and returns the Strategy it selects with the validated config objects.
Validation, the API, the CLI and the pipelines all go through here: adding a strategy is one module
in this package plus its example and tests.
"""
from __future__ import annotations

from ..config import STRATEGY_CLASSES, TrainConfig, build
from ..errors import ConfigError
from . import distill, multi_teacher_distill, prune_distill, ptq_hpo, qat_distill, sparse_distill
from .base import Strategy, TrainCall

REGISTRY: dict[str, Strategy] = {m.STRATEGY.name: m.STRATEGY for m in (
    ptq_hpo, qat_distill, prune_distill, sparse_distill, distill, multi_teacher_distill)}
_BY_CONFIGS = {frozenset(s.configs): s for s in REGISTRY.values()}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Strategy:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; available: {names()}") from None


def resolve(strategy_config) -> tuple[Strategy, dict]:
    """Validate `strategy_config`; returns (strategy, {class name: validated config object})."""
    if isinstance(strategy_config, (list, tuple)):
        strategy_config = {type(c).__name__: c for c in strategy_config}
    if not isinstance(strategy_config, dict) or not strategy_config:
        raise ConfigError("strategy_config must be a non-empty dict whose keys are config class names: "
                          f"{sorted(STRATEGY_CLASSES)}")
    unknown = [k for k in strategy_config if k not in STRATEGY_CLASSES]
    if unknown:
        raise ConfigError(f"strategy_config has unknown keys {unknown}; allowed: {sorted(STRATEGY_CLASSES)}")
    configs = {name: build(STRATEGY_CLASSES[name], value, name) for name, value in strategy_config.items()}
    strategy = _BY_CONFIGS.get(frozenset(configs))
    if strategy is None:
        allowed = [" + ".join(sorted(s.configs)) for s in REGISTRY.values()]
        raise ConfigError(f"unsupported strategy combination {sorted(configs)}; the supported ones are: "
                          + "; ".join(allowed))
    return strategy, configs


def resolve_train_config(strategy: Strategy, train_config, where: str = "train_config"):
    """A training strategy needs a TrainConfig; one that does not train refuses a non-null one (the
    same rule for the API, the run YAML and the pipelines)."""
    if strategy.trains:
        return build(TrainConfig, train_config, "TrainConfig")
    if train_config is not None:
        raise ConfigError(f"{where} is set but the {strategy.name} strategy does not train; pass "
                          f"{where}=None (remove TrainConfig)")
    return None


__all__ = ["REGISTRY", "Strategy", "TrainCall", "get", "names", "resolve", "resolve_train_config"]
