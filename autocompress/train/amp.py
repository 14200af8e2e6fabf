"""TrainConfig.amp_config -> paddle's static AMP (O1 lists, or O2 pure fp16), where the device has it.

`paddle.static.amp.decorate` (Paddle 3.3.1, static/amp/decorator.py) is an overload of two
functions, chosen by the keywords given:

- the fp16 form, the spec's spelling: O1 lists, O2 `use_pure_fp16` + `use_fp16_guard`, `use_bf16`;
- the common form: `level` (O1/O2/OD), `dtype` (float16/bfloat16), `master_weight`, `master_grad`,
  `use_amp_guard`.

Both take the loss-scaling keys (`init_loss_scaling`, `use_dynamic_loss_scaling`,
`incr_every_n_steps`, `decr_every_n_nan_or_inf`, `incr_ratio`, `decr_ratio`) and `use_promote`.
`custom_white_list` / `custom_black_list` / `custom_black_varnames` build the op lists. As in
PaddleSlim's ACT, `init_loss_scaling` defaults to 128 and `use_dynamic_loss_scaling` to True.
Every other key, and a config mixing the two forms, is a ConfigError. Under fleet the dict goes to
`DistributedStrategy.amp_configs` instead (see fleet.py), whose own keys Paddle checks.
"""
from __future__ import annotations

from ..errors import ConfigError, DeviceError

LISTS = ("custom_white_list", "custom_black_list", "custom_black_varnames")
SHARED_KEYS = ("init_loss_scaling", "use_dynamic_loss_scaling", "incr_every_n_steps", "decr_every_n_nan_or_inf",
               "incr_ratio", "decr_ratio", "use_promote")
FP16_FORM_KEYS = ("use_pure_fp16", "use_fp16_guard", "use_bf16")
COMMON_FORM_KEYS = ("level", "dtype", "master_weight", "master_grad", "use_amp_guard")
ALLOWED_KEYS = LISTS + SHARED_KEYS + FP16_FORM_KEYS + COMMON_FORM_KEYS
PADDLESLIM_DEFAULTS = {"init_loss_scaling": 128.0, "use_dynamic_loss_scaling": True}
LEVELS = ("O1", "O2", "OD")
DTYPES = ("float16", "bfloat16")


def problem(amp_config: dict | None) -> str | None:
    """What is wrong with a (non-fleet) amp_config, or None."""
    cfg = amp_config or {}
    unknown = [k for k in cfg if k not in ALLOWED_KEYS]
    if unknown:
        return f"unknown keys {unknown}; allowed (paddle.static.amp.decorate): {list(ALLOWED_KEYS)}"
    fp16, common = [k for k in FP16_FORM_KEYS if k in cfg], [k for k in COMMON_FORM_KEYS if k in cfg]
    if fp16 and common:
        return (f"mixes {fp16} (paddle's fp16 form: use_pure_fp16 means level O2, use_fp16_guard means "
                f"use_amp_guard, use_bf16 means dtype bfloat16) with {common}; use one spelling")
    for key in LISTS:
        if key in cfg and not (isinstance(cfg[key], (list, tuple, set)) and all(isinstance(v, str) for v in cfg[key])):
            return f"{key} must be a list of op (or var) names, got {cfg[key]!r}"
    if str(cfg.get("level", "O1")).upper() not in LEVELS:
        return f"level must be one of {list(LEVELS)}, got {cfg['level']!r}"
    if cfg.get("dtype", "float16") not in DTYPES:
        return f"dtype must be one of {list(DTYPES)}, got {cfg['dtype']!r}"
    if str(cfg.get("level", "O1")).upper() == "OD" and any(k in cfg for k in LISTS):
        return "level OD uses paddle's default white list only, so custom lists would be ignored; use level O1"
    return None


def check_device(amp_config: dict | None, place) -> None:
    """Static AMP runs fp16/bf16 kernels on CUDA; say so on CPU instead of silently training fp32."""
    if amp_config and "cpu" in str(place).lower():
        raise DeviceError("TrainConfig.amp_config: static mixed precision (fp16, O1/O2) needs a GPU, and this "
                          "run is on CPU. Remove amp_config to train in fp32 on CPU, or run with devices='gpu'.")


def decorate(optimizer, amp_config: dict | None):
    """Wrap `optimizer` for AMP; returns (optimizer, needs_amp_init)."""
    if not amp_config:
        return optimizer, False
    bad = problem(amp_config)
    if bad:
        raise ConfigError(f"TrainConfig.amp_config: {bad}")
    import paddle.static.amp as amp

    cfg = {**PADDLESLIM_DEFAULTS, **amp_config}
    lists = {k: set(cfg.pop(k)) for k in LISTS if k in cfg}
    fp16_form = any(k in cfg for k in FP16_FORM_KEYS)
    if "level" in cfg:
        cfg["level"] = str(cfg["level"]).upper()
    dtype = "bfloat16" if cfg.get("use_bf16") else cfg.get("dtype", "float16")
    amp_lists = amp.AutoMixedPrecisionLists(dtype=dtype, **lists) if lists else None
    opt = _overload(amp, fp16_form)(optimizer, amp_lists=amp_lists, **cfg)
    pure = bool(cfg.get("use_pure_fp16")) if fp16_form else cfg.get("level") == "O2"
    return opt, pure


def _overload(amp, fp16_form: bool):
    """The decorate overload for this spelling. Paddle's own dispatcher picks by keyword names but
    drops both candidates once more than 7 arguments are given, so name the one we mean."""
    try:
        from paddle.static.amp.function_overload import FunctionType, Namespace

        return Namespace.get_instance().function_map[FunctionType.FP16_ONLY if fp16_form else FunctionType.COMMON]
    except (ImportError, AttributeError, KeyError):  # another Paddle: its dispatcher decides
        return amp.decorate
