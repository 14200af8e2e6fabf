"""Benchmark: the same PTQ search on PP-OCRv4 recognition as a legacy `.pdmodel` and as Paddle 3 PIR
(`inference.json`, made with `autocompress convert --to pir`), side by side.

    python benchmarks/pir_parity.py              # 4 grid trials, 64 calibration lines, 96 eval lines
    python benchmarks/pir_parity.py --trials 8

Both go through the API (`AutoCompression`, QuantizationConfig + HyperParameterOptimizationConfig)
with the same seeded grid, calibration lines and rendered labelled eval lines (character accuracy);
the deployed metric is oneDNN int8 in Paddle Inference. Prints a markdown table: format, deployed
metric of the selected model, FP32 metric, output format, latency (FP32 vs int8, batch 1 and 6),
size and wall time, and the difference between the two deployed metrics (target: <= 0.002).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from autocompress import AutoCompression
    from autocompress.data import FeedSource
    from autocompress.model_io import locate_model
    from autocompress.ocr import load_dictionary, ocr_evaluator, preprocess, rec_model_dir, render_lines
    from autocompress.program.convert import convert_to_pir

    work = Path(args.work or tempfile.mkdtemp(prefix="pir-parity-"))
    dictionary = load_dictionary()
    calib_images, _ = render_lines(64, dictionary, seed=1)
    eval_images, truths = render_lines(96, dictionary, seed=2)
    calib_x, eval_x = preprocess(calib_images), preprocess(eval_images)
    evaluate = ocr_evaluator([eval_x[i:i + 6] for i in range(0, len(eval_x), 6)],
                             [truths[i:i + 6] for i in range(0, len(truths), 6)], dictionary)
    legacy = locate_model(rec_model_dir())
    start = time.perf_counter()
    pir = convert_to_pir(legacy.model_dir, work / "pir", feed={"x": calib_x[:2]})
    convert_s = time.perf_counter() - start
    hpo = {"ptq_algo": ["hist", "avg"], "batch_num": [2, 8], "batch_size": [8], "search_algo": "grid",
           "max_quant_count": args.trials}
    rows = {}
    for name, files in (("legacy .pdmodel", legacy), ("PIR .json", pir)):
        start = time.perf_counter()
        summary = AutoCompression(
            str(files.model_dir), files.model_filename, files.params_filename, str(work / name.split()[0]),
            {"QuantizationConfig": {}, "HyperParameterOptimizationConfig": hpo}, None,
            FeedSource.from_arrays({"x": calib_x}, batch_size=8), evaluate, devices="cpu", progress=False,
            deploy={"batch_size": 6}).compression()
        rows[name] = (summary, time.perf_counter() - start)
        print(f"{name}: {summary['metric']:.4f} in {rows[name][1]:.0f} s", file=sys.stderr, flush=True)
    print(f"(PIR conversion of the FP32 model: {convert_s:.1f} s, checked in Paddle Inference)\n")
    print("| input | FP32 char acc | int8 char acc (oneDNN, selected) | output | FP32 -> int8 ms, batch 1 "
          "| FP32 -> int8 ms, batch 6 | size | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (s, seconds) in rows.items():
        lat = {r["batch"]: r for r in s["latency"]}
        out = locate_model(s["model_dir"]).model_filename
        print(f"| {name} | {s['baseline_metric']:.4f} | {s['metric']:.4f} | {out} "
              f"| {lat[1]['ms_before']:.1f} -> {lat[1]['ms_after']:.1f} | {lat[6]['ms_before']:.1f} -> "
              f"{lat[6]['ms_after']:.1f} | {s['size_bytes_before'] / 2**20:.1f} -> {s['size_bytes_after'] / 2**20:.1f} MiB "
              f"| {seconds:.0f} s |")
    metrics = [s["metric"] for s, _ in rows.values()]
    print(f"\n|legacy - PIR| deployed int8 char accuracy: {abs(metrics[0] - metrics[1]):.4f} (target <= 0.002)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
