from kfp import dsl
from kfp.dsl import Model, Output

from ..image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def load_model(model_uri: str, config: str, model: Output[Model], model_filename: str = "",
               params_filename: str = "", s3_endpoint: str = ""):
    """Fetch the inference model (local path, s3:// or minio://) untouched, with its metadata; validates
    the pipeline config first so a bad config fails here, in seconds."""
    from autocompress.kfp import adapters

    adapters.use_endpoint(s3_endpoint)
    meta = adapters.load_model(model_uri, model.path, model_filename or None, params_filename or None,
                             config=config)
    model.metadata.update(adapters.ui_metadata(meta))
