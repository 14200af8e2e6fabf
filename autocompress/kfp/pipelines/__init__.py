"""One pipeline per strategy of the registry (`autocompress.strategies`), plus auto mode's (`auto`),
each in a GPU variant (`<name>`, the cluster default) and a CPU variant (`<name>_cpu`: no accelerator
requests; what local runs use). A strategy whose stages include `calibrate` gets the PTQ search shape;
the others the training shape (with a `prune` task when its stages include it)."""
from ... import strategies
from . import auto as _auto
from . import ptq_hpo as _ptq
from . import training as _training


def build(name: str, gpu: bool = True):
    """The pipeline function (a kfp GraphComponent) for a strategy, or for auto mode."""
    if name == _auto.NAME:
        return _auto.build(gpu)
    if name not in strategies.REGISTRY:
        raise KeyError(f"unknown pipeline {name!r}; available: {strategies.names() + [_auto.NAME]}")
    strategy = strategies.REGISTRY[name]
    shape = _ptq if "calibrate" in strategy.stages else _training
    return shape.build(strategy, gpu)


def names() -> list[str]:
    """Every compiled pipeline's name: <strategy> (GPU) and <strategy>_cpu, then auto and auto_cpu."""
    return [s.pipeline_name(gpu) for s in strategies.REGISTRY.values() for gpu in (True, False)] + \
        [_auto.pipeline_name(gpu) for gpu in (True, False)]


def by_name(name: str):
    gpu = not name.endswith("_cpu")
    return build(name if gpu else name[:-4], gpu)
