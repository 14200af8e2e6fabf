"""autocompress: source-free automatic compression of Paddle inference models."""
from .version import __version__

__all__ = ["__version__"]
