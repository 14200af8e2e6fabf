"""Why QAT reads worse on the int8 runtimes than in training: the observer quantize/dequantize pairs.

    python benchmarks/qat_observers.py [--models rec det] [--work DIR] [--runtimes ...]

Paddle's `convert` adds an observer pair (`only_observer`) on the output of every op it records a scale
for. Stock Paddle runs them as pass-through, as QAT trained; oneDNN, ONNX Runtime and OpenVINO quantize
each one. This takes the QAT model of benchmarks/deployed.py (the same --work folder: made there, or
here when absent) and measures programs with the same weights on each runtime: as exported, with
every observer pair removed, with only the pairs on conv / matmul / batch-norm outputs kept (the
ones the int8 convs chain through), and with every observer scale calibrated again on 8 training
batches in inference mode (`quant.qat.recalibrate_observers`, one row per --recalibrate algorithm). Held-out metric and speed-up against FP32 at the deployment batch,
interleaved, 1 thread.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_minloglevel", "2")

from deployed import DATA, MODELS, Variants  # noqa: E402

CHAIN_OPS = {"conv2d", "depthwise_conv2d", "matmul_v2", "batch_norm"}


def without_observers(files, out_dir: Path, keep_after: set[str]):
    """The model with its observer pairs removed, except those on outputs of `keep_after` op types."""
    from autocompress.model_io import load_model, save_model
    from autocompress.paddle_env import legacy_ir
    from autocompress.program.legacy.quantize import remove_pairs

    with legacy_ir():
        model = load_model(files)
        block = model.program.global_block()
        producers = {n: op for op in block.ops for n in op.output_arg_names}
        observers = [q for q in block.ops if q.type == "quantize_linear" and q.has_attr("only_observer")
                     and q.attr("only_observer")
                     and getattr(producers.get(q.input("X")[0]), "type", None) not in keep_after]
        remove_pairs(model.program, observers)
        return save_model(model, out_dir, {"precision": "int8"}), len(observers)


def recalibrated(files, calib, out_dir: Path, algo: str):
    """The model with every observer pair's scale calibrated again on `calib` (quant.qat.recalibrate_observers)."""
    from autocompress.model_io import load_model, save_model
    from autocompress.paddle_env import legacy_ir
    from autocompress.quant.qat import recalibrate_observers

    with legacy_ir():
        model = load_model(files)
        changed = recalibrate_observers(model, calib, algo)
        ratios = [new / old for old, new in changed.values() if old]
        print(f"{algo}: {len(changed)} observer scales, new / old: median {np.median(ratios):.3f}, "
              f"min {min(ratios):.3f}, max {max(ratios):.3f}", file=sys.stderr)
        return save_model(model, out_dir, {"precision": "int8"}), len(changed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=["rec", "det"], default=["rec"])
    ap.add_argument("--runtimes", nargs="+", default=["onednn", "openvino", "onnxruntime"])
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "results" / "deployed"))
    ap.add_argument("--recalibrate", nargs="*", default=["avg", "abs_max", "hist"],
                    help="also measure the model with its observer scales calibrated again by these algorithms")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from autocompress.backend import DeployTarget, compare_predictors, inference_predictor

    work = Path(args.work) / "full"
    print("| model | program | observer pairs | " + " | ".join(args.runtimes) + " |")
    print("|---|---|---|" + "---|" * len(args.runtimes))
    for name in args.models:
        spec = MODELS[name]
        data = DATA[name](spec)
        variants = Variants(name, spec, data, work, fresh=False)
        [fp32, qat] = variants.all({"qat"})
        none, n_all = without_observers(qat["files"], work / name / "qat-no-observers", set())
        chain, n_dropped = without_observers(qat["files"], work / name / "qat-chain-observers", CHAIN_OPS)
        programs = [("as exported", qat["files"], n_all), ("no observer pairs", none, 0),
                    ("pairs on conv / matmul / BN outputs only", chain, n_all - n_dropped)]
        for algo in args.recalibrate:
            files, n = recalibrated(qat["files"], data["train"][:8], work / name / f"qat-observers-{algo}", algo)
            programs.append((f"observer scales recalibrated ({algo})", files, n))
        cells = {label: [] for label, _, _ in programs}
        batch = max(data["feeds"])
        for runtime in args.runtimes:
            target = DeployTarget(runtime)
            predictors = [inference_predictor(fp32["files"], target=target)]
            predictors += [inference_predictor(f, int8=True, target=target) for _, f, _ in programs]
            times = compare_predictors(predictors, data["feeds"][batch], warmup=3, rounds=7, budget_s=3.0)
            for (label, _, _), predict, ms in zip(programs, predictors[1:], times[1:]):
                metric = data["score"](predict)[data["metrics"][0]]
                cells[label].append(f"{metric:.4f}, {times[0] / ms:.2f}x")
        for label, _, pairs in programs:
            print(f"| {name} | {label} | {pairs} | " + " | ".join(cells[label]) + " |")
    print("\nheld-out metric (rec: character accuracy, det: box hmean), speed-up vs FP32 at the deployment batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
