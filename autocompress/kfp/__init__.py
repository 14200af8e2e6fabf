"""Kubeflow layer: components (one per stage), pipelines (one per strategy combination), and the
image they run in.

Why here and not in top-level `components/` / `pipelines/` packages: an installed `autocompress run`
compiles and runs these pipelines locally, so they must ship in the wheel, and generic top-level names
would collide in site-packages. The repository's top-level `pipelines/compiled/` holds the compiled
IR YAML (generated, committed, not installed) and `components/compiled/` the per-stage component
specs for people composing their own pipelines.

Only this subpackage imports `kfp`; the engine (`autocompress.*` outside `kfp/`) never does.
"""
from .image import CPU_IMAGE, GPU_IMAGE, IMAGE_REPOSITORY

__all__ = ["CPU_IMAGE", "GPU_IMAGE", "IMAGE_REPOSITORY"]
