from typing import List

from kfp import dsl
from kfp.dsl import Input, Model, Output

from ..image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select_best(candidates: Input[List[Model]], best: Output[Model]):
    """Keep the best PTQ candidate by its deployed metric; merge the trial tables."""
    from autocompress.kfp import adapters

    result = adapters.select_best([c.path for c in candidates], best.path)
    best.metadata.update(result)
