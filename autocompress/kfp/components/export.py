from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model, Output

from ..image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export(model: Input[Model], summary: Input[Artifact], exported: Output[Model], report: Output[Markdown],
           publish_uri: str = "", s3_endpoint: str = ""):
    """The deliverable: model/ (input's file names, metadata, model card), summary.json, report.md;
    optionally published to an object-store prefix or a local folder."""
    from autocompress.kfp import adapters

    adapters.use_endpoint(s3_endpoint)
    result = adapters.export(model.path, summary.path, exported.path, publish_uri=publish_uri or None)
    adapters.copy_report(exported.path, report.path)
    exported.metadata.update(adapters.ui_metadata(result["summary"]))
    exported.metadata["published_files"] = len(result["published"])
