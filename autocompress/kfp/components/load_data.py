from kfp import dsl
from kfp.dsl import Dataset, Output

from ..image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def load_data(data_uri: str, dataset: Output[Dataset], batch_size: int = 32, s3_endpoint: str = ""):
    """Fetch a Dataset folder (dataset.yaml + shards) and check that it reads; an empty URI gives an
    empty artifact (an optional split the run does not have)."""
    from autocompress.kfp import adapters

    adapters.use_endpoint(s3_endpoint)
    info = adapters.load_data(data_uri, dataset.path, batch_size=batch_size)
    dataset.metadata.update({k: v for k, v in info.items() if v is not None})
