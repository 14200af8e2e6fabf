from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from ..image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def auto_export(chosen: Input[Model], summary: Input[Artifact], exported: Output[Model], publish_uri: str = "",
                s3_endpoint: str = ""):
    """Auto mode's deliverable: model/ (the chosen candidate, with its metadata and model card),
    summary.json, report.md, report.html; optionally published to an object-store prefix or a folder."""
    from autocompress.kfp import adapters, auto_adapters

    adapters.use_endpoint(s3_endpoint)
    result = auto_adapters.export(chosen.path, summary.path, exported.path, publish_uri=publish_uri or None)
    exported.metadata.update({"chosen": result["summary"].get("chosen") or "",
                              "target_met": bool(result["summary"].get("target_met")),
                              "published_files": len(result["published"])})
