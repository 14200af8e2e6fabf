"""`autocompress demo`: PTQ with hyper-parameter search on the digits CNN, end to end."""
from __future__ import annotations

from .digits import digits_model, digits_splits

DEMO_STRATEGY = {
    "QuantizationConfig": {"quantize_op_types": ["conv2d", "depthwise_conv2d", "matmul_v2", "mul"]},
    "HyperParameterOptimizationConfig": {
        "ptq_algo": ["KL", "hist", "mse", "avg", "abs_max"],
        "bias_correct": [False, True],
        "weight_quantize_type": ["channel_wise_abs_max", "abs_max"],
        "hist_percent": [0.99, 0.9999],
        "batch_size": [16, 32],
        "batch_num": [2, 8],
        "max_quant_count": 12,
    },
}


def run_demo(save_dir="./autocompress-demo", progress: bool = True) -> dict:
    from ..api import AutoCompression
    from ..data import FeedSource

    model = digits_model()
    splits = digits_splits()
    calib_x, _ = splits["calib"]
    eval_x, eval_y = splits["eval"]
    ac = AutoCompression(
        model_dir=str(model.model_dir), model_filename=model.model_filename,
        params_filename=model.params_filename, save_dir=save_dir, strategy_config=DEMO_STRATEGY,
        train_config=None, train_dataloader=FeedSource.from_arrays({"x": calib_x}, batch_size=32),
        eval_callback=FeedSource.from_arrays({"x": eval_x}, labels=eval_y, batch_size=100),
        devices="cpu", metric="top1", max_drop=0.01, progress=progress)
    return ac.compression()
