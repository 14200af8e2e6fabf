"""TrainConfig.amp_config -> paddle's static AMP (O1 lists, or O2 pure fp16), where the device has it.

Spec keys: O1 `custom_white_list`, `custom_black_list`, `custom_black_varnames`; O2 `use_pure_fp16`,
`use_fp16_guard`. Paddle's own decorate() arguments (init_loss_scaling, use_dynamic_loss_scaling,
dtype, level, ...) pass through. Under fleet the dict goes to `DistributedStrategy.amp_configs`
instead (see fleet.py).
"""
from __future__ import annotations

import inspect

from ..errors import ConfigError, DeviceError

_LISTS = ("custom_white_list", "custom_black_list", "custom_black_varnames")


def check_device(amp_config: dict | None, place) -> None:
    """Static AMP runs fp16/bf16 kernels on CUDA; say so on CPU instead of silently training fp32."""
    if amp_config and "cpu" in str(place).lower():
        raise DeviceError("TrainConfig.amp_config: static mixed precision (fp16, O1/O2) needs a GPU, and this "
                          "run is on CPU. Remove amp_config to train in fp32 on CPU, or run with devices='gpu'.")


def decorate(optimizer, amp_config: dict | None):
    """Wrap `optimizer` for AMP; returns (optimizer, needs_amp_init)."""
    if not amp_config:
        return optimizer, False
    import paddle.static.amp as amp

    cfg = dict(amp_config)
    lists = {k: set(cfg.pop(k)) for k in _LISTS if k in cfg}
    pure = bool(cfg.pop("use_pure_fp16", False))
    guard = cfg.pop("use_fp16_guard", None)
    level = cfg.pop("level", "O2" if pure else "O1")
    dtype = cfg.get("dtype", "float16")
    allowed = [p for p in inspect.signature(amp.decorate).parameters if p not in ("optimizer", "amp_lists", "level")]
    unknown = [k for k in cfg if k not in allowed]
    if unknown:
        raise ConfigError(f"TrainConfig.amp_config: unknown keys {unknown}; allowed: "
                          f"{sorted(list(_LISTS) + ['use_pure_fp16', 'use_fp16_guard', 'level'] + allowed)}")
    if level not in ("O1", "O2"):
        raise ConfigError(f"TrainConfig.amp_config.level must be O1 or O2, got {level!r}")
    amp_lists = amp.AutoMixedPrecisionLists(dtype=dtype, **lists) if lists else None
    if guard is not None:
        cfg["use_amp_guard"] = guard
    opt = amp.decorate(optimizer, amp_lists=amp_lists, level=level, **cfg)
    return opt, level == "O2"
