from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def ptq_trial(model: Input[Model], stats: Input[Artifact], calib_data: Input[Dataset], eval_data: Input[Dataset],
              config: str, trial: str, candidate: Output[Model], metrics: Output[Metrics],
              metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute", device: str = "cpu",
              batch_size: int = 32):
    """One part of the PTQ search (or one configuration), from the shared statistics."""
    from autocompress.kfp import adapters

    result = adapters.ptq_trial(model.path, stats.path, calib_data.path, eval_data.path, config, trial,
                              candidate.path, metric=metric, max_drop=max_drop, drop_type=drop_type,
                              device=device, batch_size=batch_size)
    for key in ("metric", "baseline_metric", "trials"):
        if result.get(key) is not None:
            metrics.log_metric(key, result[key])
    candidate.metadata.update({"metric": result.get("metric"), "trial": trial})
