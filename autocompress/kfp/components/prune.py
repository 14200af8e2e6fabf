from kfp import dsl
from kfp.dsl import Input, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def prune(model: Input[Model], config: str, pruned: Output[Model], device: str = "cpu", batch_size: int = 32):
    """Remove channels (PruneConfig); the pruned model is physically smaller."""
    from autocompress.kfp import adapters

    result = adapters.prune(model.path, config, pruned.path, device=device, batch_size=batch_size)
    pruned.metadata.update({k: v for k, v in result.items() if v is not None})
