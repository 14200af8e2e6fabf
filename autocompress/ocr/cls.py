"""The PP-OCR text-direction classifier (ch_ppocr_mobile_v2_cls): rendered lines, half of them turned
by 180 degrees, and top-1 on them."""
from __future__ import annotations

import numpy as np

CLS_WIDTH = 192  # the classifier reads 3 x 48 x 192 lines


def rotated_lines(n: int, dictionary: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` rendered lines preprocessed for the classifier (NCHW float32) and their labels: 0 upright,
    1 turned by 180 degrees; the orientations are shuffled, about half each."""
    from .rec import preprocess
    from .render import render_lines

    images, _ = render_lines(n, dictionary, seed=seed)
    labels = np.random.default_rng(seed).permutation(np.arange(n) % 2)
    images = [np.ascontiguousarray(im[::-1, ::-1]) if turned else im for im, turned in zip(images, labels)]
    return preprocess(images, width=CLS_WIDTH), labels.astype(np.int64)


def cls_evaluator(batches: list[np.ndarray], labels: list[np.ndarray], feed_name: str = "x"):
    """evaluate(predict, limit=None) -> top-1 over the (first `limit`) batches."""
    def evaluate(predict, limit=None):
        hits = total = 0
        for x, y in list(zip(batches, labels))[:limit]:
            hits += int((np.asarray(predict({feed_name: x})[0]).argmax(axis=1) == y).sum())
            total += len(y)
        return hits / max(total, 1)
    evaluate.num_batches = len(batches)
    return evaluate
