"""Which op types can be quantized: Paddle's own table (mirrored statically in paddle_names)."""
from ..paddle_names import QUANTIZABLE_OP_TYPES as SUPPORTED_QUANT_OPS  # noqa: F401
