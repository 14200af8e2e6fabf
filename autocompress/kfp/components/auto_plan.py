from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Output

from ..image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def auto_plan(config: str, plan: Output[Artifact]) -> List[str]:
    """Auto mode's plan: the returned candidate families (a chain after its parent) drive the
    branches' dsl.ParallelFor; the `plan` artifact records them, the candidates left out and why,
    and the search's start, from which every later stage counts the time budget."""
    from autocompress.kfp import auto_adapters

    info = auto_adapters.plan(config, plan.path)
    plan.metadata.update({"families": len(info["families"]), "skipped": len(info["skipped"])})
    return info["families"]
