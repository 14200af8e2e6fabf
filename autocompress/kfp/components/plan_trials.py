from typing import List

from kfp import dsl

from ..image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_trials(config: str, shards: int) -> List[str]:
    """Split the PTQ search into `shards` independent parts for dsl.ParallelFor."""
    from autocompress import stages

    return stages.plan_trials(config, shards)
