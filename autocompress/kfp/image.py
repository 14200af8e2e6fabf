"""The one place that names the image every component runs in (kfp-free, so Dockerfile tests and
the engine can import it). The tag is the package version: the image is built from the same
commit the pipelines were compiled from (images/Dockerfile*)."""
from ..version import __version__

IMAGE_REPOSITORY = "ghcr.io/autocompress/autocompress"
CPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
# stages that may run on a GPU (calibrate, trials, training, evaluation) use the CUDA build of Paddle;
# it runs on CPU nodes too
GPU_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-gpu"
