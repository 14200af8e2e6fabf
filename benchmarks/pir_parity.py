"""Benchmark: the same compression of a PP-OCRv4 model as a legacy `.pdmodel` and as Paddle 3 PIR
(`inference.json`, made with `autocompress convert --to pir`), side by side.

    python benchmarks/pir_parity.py              # rec: 4 grid trials, 64 calibration lines, 96 eval lines
    python benchmarks/pir_parity.py --trials 8
    python benchmarks/pir_parity.py --model det  # det: channel pruning 0.25 and GMP 0.5, both + distillation

det: both inputs get the same seeded training (rendered pages, the data of benchmarks/deployed.py: train,
select and held-out test pages), selected on the text-map IoU against FP32 and deployed on the stock
Paddle Inference runtime (`Deploy.runtimes: [paddle-cpu]`): Paddle 3.3.1 cannot run the PIR detector's
`nearest_interp` with oneDNN. Prints held-out box hmean and map IoU (the output model read by a stock
Config in its own format), the output's format, latency (original vs compressed, interleaved, one page),
size, wall time, and the legacy - PIR differences.

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
    parser.add_argument("--model", choices=("rec", "det"), default="rec")
    parser.add_argument("--trials", type=int, help="rec: PTQ trials (default 4)")
    parser.add_argument("--steps", type=int, help="det: training steps per strategy (default 80)")
    parser.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    wrong = "--steps" if args.model == "rec" and args.steps else "--trials" if args.model == "det" and args.trials else None
    if wrong:
        parser.error(f"{wrong} does not apply to --model {args.model}")
    args.trials, args.steps = args.trials or 4, args.steps or 80
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="pir-parity-"))
    return det_pruning(args, work) if args.model == "det" else rec_ptq(args, work)


def rec_ptq(args, work: Path) -> int:
    from autocompress import AutoCompression
    from autocompress.data import FeedSource
    from autocompress.model_io import locate_model
    from autocompress.ocr import load_dictionary, ocr_evaluator, preprocess, rec_model_dir, render_lines
    from autocompress.program.convert import convert_to_pir

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


def det_pruning(args, work: Path) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from deployed import MODELS, det_data, recipe

    from autocompress import AutoCompression
    from autocompress.backend import DeployTarget, inference_predictor
    from autocompress.model_io import dir_size, locate_model
    from autocompress.program.convert import convert_to_pir

    spec = MODELS["det"]
    data = det_data(spec)
    legacy = locate_model(data["model_dir"])
    start = time.perf_counter()
    pir = convert_to_pir(legacy.model_dir, work / "pir", feed={"x": data["train"][0]["x"][:1]})
    convert_s = time.perf_counter() - start
    distill, optim = recipe(legacy, spec)
    n = args.steps
    train = {"train_iter": n, "eval_iter": max(n // 4, 1), "logging_iter": 10, **optim}
    strategies = {
        "pruning 0.25": {"PruneConfig": {"pruned_ratio": 0.25, "criterion": "activation"}},
        "GMP 0.5": {"UnstructurePruneConfig": {"prune_strategy": "gmp", "prune_ratio": 0.5, "gmp_config": {
            "stable_iterations": n // 8, "pruning_iterations": n // 2, "tunning_iterations": n - n // 8 - n // 2}}},
    }
    stock = DeployTarget("paddle-cpu")
    rows = []
    for label, strategy in strategies.items():
        for fmt, files in (("legacy .pdmodel", legacy), ("PIR .json", pir)):
            start = time.perf_counter()
            summary = AutoCompression(
                str(files.model_dir), files.model_filename, files.params_filename,
                str(work / f"{label.split()[0]}-{fmt.split()[0]}"), {**strategy, "DistillationConfig": distill},
                train, data["train"], data["select"], devices="cpu", max_drop=spec["select_drop"], progress=False,
                deploy={"runtimes": ["paddle-cpu"], "batch_size": 1}).compression()
            seconds = time.perf_counter() - start
            out = locate_model(summary["model_dir"])
            score = data["score"](inference_predictor(out, target=stock))
            [lat] = [r for r in summary["latency"] if r["batch"] == 1 and r["runtime"] == "paddle-cpu"]
            rows.append({"strategy": label, "input": fmt, "output": out.model_filename, **score, "lat": lat,
                         "size": (dir_size(files), dir_size(out)), "seconds": seconds})
            print(f"{label}, {fmt}: hmean {score['hmean']:.3f}, map IoU {score['map_iou']:.3f} in {seconds:.0f} s",
                  file=sys.stderr, flush=True)
    print(f"(PIR conversion of the FP32 model: {convert_s:.1f} s, checked in Paddle Inference; {n} training steps "
          f"per run; {spec['test']} held-out pages)\n")
    print("| strategy | input | output | test hmean | test map IoU vs FP32 | FP32 -> compressed ms (stock runtime) "
          "| size | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lat, (before, after) = r["lat"], r["size"]
        print(f"| {r['strategy']} | {r['input']} | `{r['output']}` | {r['hmean']:.3f} | {r['map_iou']:.3f} "
              f"| {lat['ms_before']:.1f} -> {lat['ms_after']:.1f} ({lat['speedup']:.2f}x) "
              f"| {before / 2**20:.1f} -> {after / 2**20:.1f} MiB | {r['seconds']:.0f} s |")
    print()
    for legacy_row, pir_row in zip(rows[::2], rows[1::2]):
        print(f"{legacy_row['strategy']}: |legacy - PIR| test hmean {abs(legacy_row['hmean'] - pir_row['hmean']):.3f}, "
              f"map IoU {abs(legacy_row['map_iou'] - pir_row['map_iou']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
