"""autocompress: source-free automatic compression of Paddle inference models."""
from . import paddle_env  # noqa: F401  (quiets paddle before anything imports it)
from .api import AutoCompression
from .config import (DistillationConfig, HyperParameterOptimizationConfig, MultiTeacherDistillationConfig,
                     PruneConfig, QuantizationConfig, TrainConfig, UnstructurePruneConfig)
from .version import __version__

__all__ = ["AutoCompression", "QuantizationConfig", "DistillationConfig", "MultiTeacherDistillationConfig",
           "HyperParameterOptimizationConfig", "PruneConfig", "UnstructurePruneConfig", "TrainConfig", "__version__"]
