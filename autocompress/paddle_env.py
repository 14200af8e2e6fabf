"""One place that knows how Paddle must be set up: static mode, the legacy IR, devices, quiet logs.

Legacy `.pdmodel` programs only load with the PIR API off; we switch it off per call with
`paddle.pir_utils.OldIrGuard` so users never have to set flags themselves.
"""
from __future__ import annotations

import contextlib
import os
import re

import warnings

os.environ.setdefault("GLOG_minloglevel", "2")  # paddle's C++ INFO lines drown our progress bars
# paddle warns at import that ccache is missing (it only matters for building C++ extensions)
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)

from .errors import DeviceError

_DEVICE_RE = re.compile(r"^(cpu|gpu|xpu|npu)(?::(\d+))?$")


class _DefaultDevice(str):
    """The spec's default `devices='gpu'`. Unlike an explicit 'gpu', it falls back to CPU
    (with a warning) on a CPU-only build, so the spec's signature works out of the box."""


DEFAULT_DEVICE = _DefaultDevice("gpu")


def paddle():
    import paddle as _paddle

    _paddle.enable_static()
    return _paddle


@contextlib.contextmanager
def legacy_ir():
    """Static mode with the PIR API off: the mode `paddle.static.quantization` and `.pdmodel` need."""
    pd = paddle()
    with pd.pir_utils.OldIrGuard():
        yield pd


def _compiled_with(kind: str) -> bool:
    import paddle as _paddle

    checks = {
        "cpu": lambda: True,
        "gpu": _paddle.is_compiled_with_cuda,
        "xpu": _paddle.is_compiled_with_xpu,
        "npu": lambda: "npu" in _paddle.device.get_all_custom_device_type(),
    }
    return bool(checks[kind]())


def resolve_device(devices: str | None):
    """Map the spec's `devices` string to a Paddle place.

    Accepts cpu, gpu, gpu:x, xpu:x, npu, npu:x. An explicitly requested accelerator that this
    Paddle build lacks is an error; the spec's *default* 'gpu' falls back to CPU with a warning.
    """
    import logging

    import paddle as _paddle

    text = "cpu" if devices is None else str(devices).strip().lower()
    match = _DEVICE_RE.match(text)
    if not match:
        raise DeviceError(
            f"devices={devices!r} is not a device. Use one of: cpu, gpu, gpu:<id>, xpu:<id>, npu, npu:<id>."
        )
    kind, index = match.group(1), int(match.group(2) or 0)
    if not _compiled_with(kind):
        if isinstance(devices, _DefaultDevice):
            logging.getLogger("autocompress").warning(
                "devices defaults to 'gpu' but this Paddle build (%s) has no CUDA; running on CPU. "
                "Pass devices='cpu' to silence this.", _paddle.__version__)
            return _paddle.CPUPlace()
        raise DeviceError(
            f"devices={devices!r}: this Paddle build ({_paddle.__version__}) was not compiled with "
            f"{kind.upper()} support. Pass devices='cpu', or install the Paddle build for {kind.upper()} "
            "(for GPUs: an official Paddle GPU image or paddlepaddle-gpu)."
        )
    if kind == "cpu":
        return _paddle.CPUPlace()
    if kind == "gpu":
        if match.group(2) is None and os.environ.get("FLAGS_selected_gpus"):
            # under paddle.distributed.launch each process owns the GPU the launcher selected for it
            index = int(os.environ["FLAGS_selected_gpus"].split(",")[0])
        return _paddle.CUDAPlace(index)
    if kind == "xpu":
        return _paddle.XPUPlace(index)
    return _paddle.CustomPlace("npu", index)


def device_string(place) -> str:
    """Inverse of resolve_device for logs and summaries."""
    text = str(place)  # e.g. Place(cpu), Place(gpu:0)
    m = re.search(r"Place\(([^)]*)\)", text)
    return m.group(1).lower() if m else text
