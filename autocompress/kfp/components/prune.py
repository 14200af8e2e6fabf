from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from ..image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def prune(model: Input[Model], train_data: Input[Dataset], config: str, pruned: Output[Model], device: str = "cpu",
          batch_size: int = 32):
    """Remove channels (PruneConfig); the pruned model is physically smaller. The training data's
    batches compensate the removed channels' means (and rank channels for criterion 'activation')."""
    from autocompress.kfp import adapters

    result = adapters.prune(model.path, config, pruned.path, device=device, batch_size=batch_size,
                            train_dir=train_data.path)
    pruned.metadata.update({k: v for k, v in result.items() if v is not None})
