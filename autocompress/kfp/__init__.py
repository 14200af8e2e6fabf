"""Kubeflow layer: components (one per stage), pipelines (one per strategy), the folder adapters the
components call, and the CLI's Kubeflow verbs (local runs, compile, submit, schedule).

Why here and not in top-level `components/` / `pipelines/` packages: an installed `autocompress run`
compiles and runs these pipelines locally, so they must ship in the wheel, and generic top-level names
would collide in site-packages. The repository's top-level `pipelines/compiled/` holds the compiled
IR YAML (generated, committed, not installed) and `components/compiled/` the per-stage component
specs for people composing their own pipelines.

Only this subpackage imports `kfp`, and only where it is used (`require_kfp`): the engine
(`autocompress.*` outside `kfp/`) never does.
"""
from ..errors import AutoCompressError
from .image import CPU_IMAGE, GPU_IMAGE, IMAGE_REPOSITORY


class KFPError(AutoCompressError):
    """A Kubeflow Pipelines problem: missing kfp, unreachable endpoint, failed run."""


def require_kfp():
    """The kfp module, or a KFPError that says how to install it."""
    try:
        import kfp
        from kfp import kubernetes  # noqa: F401  (the pipelines need kfp-kubernetes too)
    except ImportError:
        raise KFPError("Kubeflow features need the kfp packages: pip install kfp kfp-kubernetes; "
                       "`autocompress run --in-process` works without them") from None
    return kfp


def first_line(err) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def pipelines_module():
    require_kfp()
    from . import pipelines

    return pipelines


__all__ = ["CPU_IMAGE", "GPU_IMAGE", "IMAGE_REPOSITORY", "KFPError", "first_line", "pipelines_module", "require_kfp"]
