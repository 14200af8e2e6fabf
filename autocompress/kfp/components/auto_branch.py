from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def auto_branch(family: str, plan: Input[Artifact], model: Input[Model], train_data: Input[Dataset], eval_data: Input[Dataset],
                test_data: Input[Dataset], calib_data: Input[Dataset], config: str, candidates: Output[Artifact],
                metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute", device: str = "cpu",
                batch_size: int = 32):
    """One branch of auto mode: its family of candidates (a chain after its parent), each run and
    measured on the deployment target against the original, while the time budget lasts. A retried
    branch reuses the candidates an earlier attempt finished (next to the output artifact)."""
    from autocompress.kfp import adapters, auto_adapters

    records = auto_adapters.branch(family, plan.path, model.path, train_data.path, eval_data.path, test_data.path,
                                   calib_data.path, config, candidates.path, metric=metric, max_drop=max_drop,
                                   drop_type=drop_type, device=device, batch_size=batch_size,
                                   work_dir=adapters.checkpoint_location(candidates.uri, candidates.path))
    candidates.metadata.update({r["id"]: r["status"] for r in records})
