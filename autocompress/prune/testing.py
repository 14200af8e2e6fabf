"""Small helpers to export dygraph layers as legacy `.pdmodel` inference models (tests, benchmarks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def randomize_norms(layer, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine params. A freshly built network has
    mean 0 / var 1 / gamma 1 / beta 0, under which several pruning bugs (e.g. forgetting beta)
    would be invisible."""
    import paddle

    rng = np.random.RandomState(seed)
    for sub in layer.sublayers(include_self=True):
        if isinstance(sub, (paddle.nn.BatchNorm2D, paddle.nn.BatchNorm1D, paddle.nn.BatchNorm)):
            c = sub.weight.shape[0]
            sub.weight.set_value(rng.uniform(0.5, 1.5, c).astype("float32"))
            sub.bias.set_value(rng.uniform(-0.5, 0.5, c).astype("float32"))
            sub._mean.set_value(rng.uniform(-0.2, 0.2, c).astype("float32"))
            sub._variance.set_value(rng.uniform(0.5, 2.0, c).astype("float32"))


def export_layer(layer, out_dir, input_shape, name: str = "x", filename: str = "inference"):
    """Save `layer` (eval mode) as `<out_dir>/<filename>.pdmodel/.pdiparams` in the legacy format.
    Returns the ModelFiles. The batch dimension is exported as -1."""
    import paddle
    from paddle.static import InputSpec

    from ..model_io import locate_model

    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    try:
        layer.eval()
        spec = [InputSpec([None, *list(input_shape)[1:]], "float32", name)]
        with paddle.pir_utils.OldIrGuard():
            paddle.jit.save(layer, str(Path(out_dir) / filename), input_spec=spec)
    finally:
        if was_static:
            paddle.enable_static()
    info = Path(out_dir) / f"{filename}.pdiparams.info"
    if info.exists():
        info.unlink()  # not part of an inference model; keeps the folder unambiguous
    return locate_model(out_dir, f"{filename}.pdmodel", f"{filename}.pdiparams")


def run_model(model, feed: dict, program=None):
    """Run a LoadedModel's program (or `program`) with a fresh executor, in the model's scope."""
    import paddle

    exe = paddle.static.Executor(paddle.CPUPlace())
    program = program if program is not None else model.program
    with paddle.static.scope_guard(model.scope):
        return exe.run(program, feed=feed, fetch_list=model.fetch_names)
