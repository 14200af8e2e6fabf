"""`autocompress demo`: auto mode on a digits CNN, end to end, in about a minute.

The model is the digits network at width 32 (WIDE_WIDTH: 2.4 M multiply-adds per image), trained on
scikit-learn's real handwritten digits on first use. The 8x8 digits CNN of the tests (width 16) is too
small for any compression to pay on a laptop CPU (its int8 model is slower than FP32); at width 32
channel pruning pays on every runtime, which is what the demo shows. Selection uses half of the
hold-out, the report's test metric the other half (the selection never sees it)."""
from __future__ import annotations

from .digits import WIDE_WIDTH, digits_model, digits_splits

DEMO_AUTO = {"target": "onednn-int8", "batch_size": 64, "time_budget": "60s", "ptq_trials": 4, "epochs": 4,
             "candidates": ["ptq", "prune", "prune+ptq"], "prune_ratios": [0.5, 0.75]}


def run_demo(save_dir="./autocompress-demo", progress: bool = True, auto: dict | None = None) -> dict:
    from ..api import AutoCompression
    from ..data import FeedSource

    model = digits_model(width=WIDE_WIDTH)
    splits = digits_splits()
    train_x, train_y = splits["train"]
    eval_x, eval_y = splits["eval"]
    half = len(eval_x) // 2
    ac = AutoCompression(
        model_dir=str(model.model_dir), model_filename=model.model_filename,
        params_filename=model.params_filename, save_dir=save_dir, strategy_config={"Auto": auto or DEMO_AUTO},
        train_config=None, train_dataloader=FeedSource.from_arrays({"x": train_x}, labels=train_y, batch_size=64),
        eval_callback=FeedSource.from_arrays({"x": eval_x[:half]}, labels=eval_y[:half], batch_size=50),
        test_dataloader=FeedSource.from_arrays({"x": eval_x[half:]}, labels=eval_y[half:], batch_size=50),
        calib_dataloader=FeedSource.from_arrays({"x": splits["calib"][0]}, batch_size=32),
        devices="cpu", metric="top1", max_drop=0.01, progress=progress)
    return ac.compression()
