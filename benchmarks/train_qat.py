"""QAT + distillation benchmark: digits (side by side with the PTQ search) and PP-OCRv4 recognition.

    /work/venv/bin/python benchmarks/train_qat.py [--part digits|ocr|all] [--ocr-steps 300]

Prints a table: FP32 metric, simulated (fake-quant) and deployed (Paddle Inference + oneDNN int8)
metric of each int8 model, fidelity to FP32 (OCR: fraction of lines decoded exactly as the FP32 model
decodes them), wall time and peak RSS of the process. Not part of the test run.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_minloglevel", "2")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def accuracy_of(files, x, y, int8):
    from autocompress.backend import inference_predictor

    predict = inference_predictor(files, int8=int8)
    out = np.concatenate([predict({"x": x[i:i + 100]})[0] for i in range(0, len(x), 100)])
    return float((out.argmax(-1) == y.reshape(-1)).mean())


def digits(work: Path) -> list[dict]:
    from autocompress.data import FeedSource
    from autocompress.demo.digits import digits_model, digits_splits
    from autocompress.evaluation import build_evaluator
    from autocompress.quant.ptq_search import run_ptq_search
    from autocompress.train import run_distill

    files = digits_model(cache_dir=work / "cache")
    sp = digits_splits()
    (xt, _), (xc, _), (xe, ye) = sp["train"], sp["calib"], sp["eval"]
    ev = build_evaluator(eval_data=FeedSource.from_arrays({"x": xe}, ye, batch_size=100), metric="top1",
                         feed_names=["x"])
    fp32 = accuracy_of(files, xe, ye, False)
    rows = [{"model": "digits", "method": "FP32", "metric": fp32, "deployed": fp32, "seconds": 0.0}]

    t = time.time()
    ptq = run_ptq_search(files, FeedSource.from_arrays({"x": xc}, batch_size=32), ev,
                         hpo_config={"max_quant_count": 8}, save_dir=work / "ptq", progress=False)
    rows.append({"model": "digits", "method": "PTQ search (8 trials)", "metric": ptq.get("simulated_metric", ptq["metric"]),
                 "deployed": accuracy_of(ptq["model_files"], xe, ye, True), "seconds": time.time() - t})

    state = {"epoch": 0}

    def shuffled():
        rng = np.random.default_rng(state["epoch"])
        state["epoch"] += 1
        order = rng.permutation(len(xt))
        for i in range(0, len(order), 32):
            yield {"x": xt[order[i:i + 32]]}

    t = time.time()
    qat = run_distill(files, FeedSource.from_any(shuffled, ["x"]), ev, {}, {
        "epochs": 3, "eval_iter": 20, "optimizer": "Adam", "learning_rate": 0.001}, work / "qat", quant_config={},
        progress=False)
    rows.append({"model": "digits", "method": "QAT + distill (3 epochs)", "metric": qat["metric"],
                 "deployed": accuracy_of(qat["model_files"], xe, ye, True), "seconds": time.time() - t})
    return rows


def ocr(work: Path, steps: int, batch: int, n_train: int, n_eval: int, fallback: int | None) -> list[dict]:
    from autocompress.backend import inference_predictor
    from autocompress.model_io import locate_model
    from autocompress.ocr.rec import (char_accuracy, ctc_greedy_decode, load_dictionary, ocr_evaluator,
                                      preprocess, rec_model_dir)
    from autocompress.ocr.render import render_lines
    from autocompress.train import run_distill

    files = locate_model(rec_model_dir())
    dictionary = load_dictionary()
    tr_imgs, _ = render_lines(n_train, dictionary, seed=1)
    ev_imgs, ev_txt = render_lines(n_eval, dictionary, seed=2)
    train_x = [preprocess(tr_imgs[i:i + batch]) for i in range(0, n_train, batch)]
    eval_x = [preprocess(ev_imgs[i:i + 10]) for i in range(0, n_eval, 10)]
    eval_t = [ev_txt[i:i + 10] for i in range(0, n_eval, 10)]
    evaluate = ocr_evaluator(eval_x, eval_t, dictionary)

    def decode_all(predict):
        return [s for x in eval_x for s in ctc_greedy_decode(np.asarray(predict({"x": x})[0]), dictionary)]

    fp32_predict = inference_predictor(files, int8=False)
    fp32_text = decode_all(fp32_predict)
    fp32_acc = char_accuracy(fp32_text, ev_txt)
    rows = [{"model": "PP-OCRv4 rec", "method": "FP32", "metric": fp32_acc, "deployed": fp32_acc,
             "fidelity": 1.0, "seconds": 0.0}]

    t = time.time()
    qat = run_distill(files, [{"x": x} for x in train_x], evaluate, {}, {
        "train_iter": steps, "eval_iter": max(steps // 3, 1), "logging_iter": 10, "optimizer": "Adam",
        "learning_rate": 2e-5}, work / "ocr_qat", quant_config={}, freeze_bn=True, progress=False,
        fp32_fallback=fallback)
    seconds = time.time() - t
    int8_text = decode_all(inference_predictor(qat["model_files"], int8=True))
    method = f"QAT + distill ({steps} steps, batch {batch})"
    rows.append({"model": "PP-OCRv4 rec", "method": f"{method}, fully int8", "metric": qat["metric"],
                 "deployed": qat["int8_deployed_metric"], "fidelity": None,
                 "seconds": seconds - qat["fallback_seconds"]})
    rows.append({"model": "PP-OCRv4 rec", "method": f"{method} + FP32 fallback ({len(qat['fp32_layers'])} layers "
                 f"FP32, {len(qat['fallback_steps'])} steps)", "metric": qat["metric"],
                 "deployed": char_accuracy(int8_text, ev_txt),
                 "fidelity": float(np.mean([a == b for a, b in zip(int8_text, fp32_text)])), "seconds": seconds})
    print("fallback:", qat["warnings"], "\nsteps:", qat["fallback_steps"], f"\nfallback seconds {qat['fallback_seconds']:.1f}")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["digits", "ocr", "all"])
    ap.add_argument("--ocr-steps", type=int, default=300)
    ap.add_argument("--ocr-batch", type=int, default=8)
    ap.add_argument("--ocr-train", type=int, default=400)
    ap.add_argument("--ocr-eval", type=int, default=100)
    ap.add_argument("--fp32-fallback", type=int, default=16,
                    help="run_distill's fp32_fallback: max layers kept FP32 (0 = off; target = FP32 metric)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("digits", "all"):
            rows += digits(Path(tmp))
        if args.part in ("ocr", "all"):
            rows += ocr(Path(tmp), args.ocr_steps, args.ocr_batch, args.ocr_train, args.ocr_eval, args.fp32_fallback)
    print("\n| model | method | simulated metric | deployed int8 metric (oneDNN) | fidelity to FP32 | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        fid = f"{r['fidelity']:.3f}" if r.get("fidelity") is not None else "-"
        print(f"| {r['model']} | {r['method']} | {r['metric']:.4f} | {r['deployed']:.4f} | {fid} | {r['seconds']:.1f} |")
    print(f"\npeak RSS of the benchmark process: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
