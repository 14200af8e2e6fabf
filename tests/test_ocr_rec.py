"""PP-OCR helpers: rendering, preprocessing, CTC decoding, character accuracy (the real PP-OCRv4 rec model)."""
import numpy as np
import pytest

from autocompress.ocr import (char_accuracy, ctc_greedy_decode, load_dictionary, preprocess, rec_model_dir,
                              render_lines)


def test_dictionary_matches_the_models_classes():
    d = load_dictionary()
    assert len(d) + 1 == 6625 and d[-1] == " "  # + the CTC blank


def test_rendered_lines_are_deterministic_and_drawable():
    d = load_dictionary()
    a, ta = render_lines(4, d, seed=3)
    b, tb = render_lines(4, d, seed=3)
    assert ta == tb and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(set(t) <= set(d) and 4 <= len(t) <= 12 for t in ta)
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 for img in a)


def test_preprocess_is_pp_ocrv4_rec_layout():
    img = np.full((24, 80, 3), 255, np.uint8)
    x = preprocess([img])
    assert x.shape == (1, 3, 48, 320) and x.dtype == np.float32
    assert x[0, :, :, :160].max() == pytest.approx(1.0) and np.all(x[0, :, :, 160:] == 0)  # white -> 1, padded


def test_ctc_decoding_merges_repeats_and_drops_blanks():
    d = ["a", "b", " "]
    steps = [0, 1, 1, 0, 1, 2, 2, 0, 3]  # blank a a blank a b b blank space
    probs = np.eye(4)[steps][None]
    assert ctc_greedy_decode(probs, d) == ["aab"]


def test_char_accuracy_counts_edits():
    assert char_accuracy(["abcd", "xy"], ["abcd", "xy"]) == 1.0
    assert char_accuracy(["abxd", "x"], ["abcd", "xy"]) == pytest.approx(1 - 2 / 6)


def test_real_pp_ocrv4_rec_reads_rendered_lines():
    from autocompress.backend import inference_predictor
    from autocompress.model_io import locate_model
    from autocompress.ocr import ocr_evaluator

    d = load_dictionary()
    images, texts = render_lines(8, d, seed=5)
    evaluate = ocr_evaluator([preprocess(images)], [texts], d)
    assert evaluate(inference_predictor(locate_model(rec_model_dir()), int8=False)) >= 0.95
