"""Which op types can be quantized: Paddle's own table, so we never promise what it cannot do."""


def _supported() -> frozenset[str]:
    from paddle.static.quantization.quant_config import SUPPORT_QUANTIZATION_OP_DICT

    return frozenset(SUPPORT_QUANTIZATION_OP_DICT)


SUPPORTED_QUANT_OPS = _supported()
