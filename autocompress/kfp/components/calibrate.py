from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def calibrate(model: Input[Model], calib_data: Input[Dataset], config: str, stats: Output[Artifact],
              trial_shards: int = 1, device: str = "cpu", batch_size: int = 32) -> List[str]:
    """Collect activation statistics once (every PTQ trial reuses them) and split the search into
    `trial_shards` parts: the returned list drives the trials' dsl.ParallelFor."""
    from autocompress.kfp import adapters

    info = adapters.calibrate(model.path, calib_data.path, config, stats.path, device=device, batch_size=batch_size)
    stats.metadata.update({k: info[k] for k in ("tensors", "samples")})
    return adapters.plan_trials(config, trial_shards)
