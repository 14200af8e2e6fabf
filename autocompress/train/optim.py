"""Optimizer, learning rate and gradient clipping from TrainConfig.

`learning_rate`: a float, an `LRScheduler` object (API), or `{type: <paddle.optimizer.lr class>,
**args}` (YAML). `optimizer`: a class name from `paddle.optimizer`. `optim_args`: the optimizer's
own keyword arguments (weight_decay, beta1, ...) plus `grad_clip` (a class name from `paddle.nn`,
e.g. ClipGradByValue; the spec's spelling `grid_clip` is accepted too) and `grad_clip_args`, or a
paddle.nn clip object. Callables and objects (apply_decay_param_fun, regularizers) pass through; the
checkpoint fingerprint identifies them by name and attributes (checkpoint.stable_identity).
Every unknown name is a ConfigError listing what is allowed.
"""
from __future__ import annotations

import inspect

from ..errors import ConfigError

_CLIP_KEYS = ("grad_clip", "grid_clip")  # the spec writes "grid_clip"; both mean the same


def build_lr(learning_rate):
    """A float or a fresh LRScheduler."""
    import paddle.optimizer.lr as plr

    if isinstance(learning_rate, (int, float)):
        return float(learning_rate)
    if isinstance(learning_rate, plr.LRScheduler):
        return learning_rate
    if isinstance(learning_rate, dict):
        args = dict(learning_rate)
        kind = args.pop("type", None)
        cls = getattr(plr, str(kind), None)
        if not (isinstance(cls, type) and issubclass(cls, plr.LRScheduler)):
            raise ConfigError(f"TrainConfig.learning_rate.type {kind!r} is not a scheduler in "
                              f"paddle.optimizer.lr; allowed: {_schedulers()}")
        _check_kwargs(cls, args, f"TrainConfig.learning_rate ({kind})")
        try:
            return cls(**args)
        except (TypeError, ValueError, AssertionError) as err:
            raise ConfigError(f"TrainConfig.learning_rate ({kind}): {err}") from None
    raise ConfigError(f"TrainConfig.learning_rate must be a float, an LRScheduler or {{type: ..., ...}}; "
                      f"got {learning_rate!r}")


def build_optimizer(name: str, learning_rate, optim_args: dict | None):
    import paddle.nn as nn
    import paddle.optimizer as po

    cls = getattr(po, name, None)
    if not (isinstance(cls, type) and issubclass(cls, po.Optimizer)):
        names = sorted(n for n in dir(po) if isinstance(getattr(po, n), type)
                       and issubclass(getattr(po, n), po.Optimizer) and n != "Optimizer")
        raise ConfigError(f"TrainConfig.optimizer {name!r} is not in paddle.optimizer; allowed: {names}")
    args = dict(optim_args or {})
    clip_name = None
    for key in _CLIP_KEYS:
        if key in args:
            clip_name = args.pop(key)
    clip_args = args.pop("grad_clip_args", None) or {}
    if clip_args and clip_name is None:
        raise ConfigError("TrainConfig.optim_args.grad_clip_args is set but grad_clip is not; name the "
                          "clip class, e.g. grad_clip: ClipGradByNorm")
    if isinstance(clip_name, nn.clip.ClipGradBase):  # an object through the API, as PaddleSlim passes it
        if clip_args:
            raise ConfigError("TrainConfig.optim_args.grad_clip_args only names the arguments of a grad_clip class "
                              "name (grad_clip: ClipGradByNorm); with a grad_clip object, set them on the object")
        args["grad_clip"] = clip_name
    elif clip_name is not None:
        clips = sorted(n for n in dir(nn) if n.startswith("ClipGrad"))
        clip_cls = getattr(nn, str(clip_name), None)
        if clip_name not in clips or clip_cls is None:
            raise ConfigError(f"TrainConfig.optim_args.grad_clip {clip_name!r} is not a paddle.nn clip class; "
                              f"allowed: {clips}")
        _check_kwargs(clip_cls, clip_args, f"TrainConfig.optim_args.grad_clip_args ({clip_name})")
        args["grad_clip"] = clip_cls(**clip_args)
    for fixed in ("learning_rate", "parameters"):
        if fixed in args:
            raise ConfigError(f"TrainConfig.optim_args.{fixed} is set by the trainer; "
                              + ("use TrainConfig.learning_rate" if fixed == "learning_rate" else "remove it"))
    _check_kwargs(cls, args, f"TrainConfig.optim_args ({name})", ("learning_rate", "parameters"))
    try:
        return cls(learning_rate=learning_rate, **args)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"TrainConfig.optim_args ({name}): {err}") from None


def current_lr(learning_rate) -> float:
    return float(learning_rate() if callable(learning_rate) else learning_rate)


def _check_kwargs(cls, args: dict, where: str, set_by_trainer=()) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n in params if n != "self" and n not in set_by_trainer]
    unknown = [k for k in args if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown arguments {unknown}; allowed: {allowed}")


def _schedulers() -> list[str]:
    import paddle.optimizer.lr as plr

    return sorted(n for n in dir(plr) if isinstance(getattr(plr, n), type)
                  and issubclass(getattr(plr, n), plr.LRScheduler) and n != "LRScheduler")
