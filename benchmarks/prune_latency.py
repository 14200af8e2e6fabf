"""Paddle Inference latency of pruned and sparse models against FP32 (same process, same threads).

    python benchmarks/prune_latency.py [--models resnet18 mobilenet_v2] [--size 64] [--threads 1]

For each model (from paddle.vision.models, random weights, exported as a legacy .pdmodel): FP32,
channel pruning at 0.25 and 0.5 (physically smaller), unstructured 75% (zeros in dense tensors)
and ASP 2:4 on fc + convs. Latencies are medians over interleaved rounds (every variant measured
once per round) so that load from other processes hits all variants alike. Expect: channel
pruning speeds up; unstructured and 2:4 sparsity do not on CPU (dense kernels multiply the zeros;
2:4 needs sparse tensor cores via TensorRT) but compress far better on disk.
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


def _variants(arch: str, size: int, root: Path) -> dict:
    import paddle
    from paddle.vision import models

    from autocompress import model_io
    from autocompress.paddle_env import legacy_ir
    from autocompress.prune.asp import ASPPruner
    from autocompress.prune.channel import prune_model
    from autocompress.prune.testing import export_layer, randomize_norms
    from autocompress.prune.unstructured import sparsify_model

    paddle.disable_static()
    paddle.seed(0)
    layer = getattr(models, arch)(num_classes=1000)
    randomize_norms(layer)
    fp32 = export_layer(layer, root / arch / "fp32", (1, 3, size, size))
    out = {"fp32": fp32}
    for ratio in (0.25, 0.5):
        out[f"channel {ratio}"] = prune_model(fp32, {"pruned_ratio": ratio}, root / arch / f"prune{ratio}")["model_files"]
    out["unstructured 75%"] = sparsify_model(fp32, {"prune_ratio": 0.75}, root / arch / "sparse")["model_files"]
    with legacy_ir():
        model = model_io.load_model(fp32)
        ASPPruner(model.program, model.scope, include_convs=True).prune()
        out["ASP 2:4"] = model_io.save_model(model, root / arch / "asp", {"strategy": "asp"})
    return out


def _measure(variants: dict, feed: dict, threads: int, rounds: int, per_round: int) -> dict:
    from autocompress.backend import inference_predictor

    predictors = {k: inference_predictor(f, int8=False, threads=threads) for k, f in variants.items()}
    for p in predictors.values():
        for _ in range(3):
            p(feed)
    times = {k: [] for k in predictors}
    for _ in range(rounds):
        for k, p in predictors.items():
            start = time.perf_counter()
            for _ in range(per_round):
                p(feed)
            times[k].append((time.perf_counter() - start) * 1000.0 / per_round)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--size", type=int, default=64, help="input height = width")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=5)
    args = parser.parse_args(argv)

    from autocompress import model_io
    from autocompress.prune.masks import compressed_size

    feed = {"x": np.random.RandomState(0).rand(1, 3, args.size, args.size).astype("float32")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            variants = _variants(arch, args.size, Path(tmp))
            ms = _measure(variants, feed, args.threads, args.rounds, args.per_round)
            for name, files in variants.items():
                s = model_io.summarize(files, {"x": [1, 3, args.size, args.size]})
                rows.append((arch, name, s["params"], s["flops"], s["size_bytes"],
                             compressed_size(files)["params_compressed_bytes"], ms[name], ms["fp32"] / ms[name]))
    print(f"\nPaddle Inference (CPU, {args.threads} thread(s)), batch 1, 3x{args.size}x{args.size}; "
          f"median of {args.rounds} interleaved rounds x {args.per_round} calls")
    head = f"{'model':<13} {'variant':<17} {'params':>10} {'MFLOPs':>9} {'size MB':>8} {'zip MB':>7} {'ms':>8} {'speedup':>8}"
    print(head)
    print("-" * len(head))
    for arch, name, params, flops, size, zsize, ms, speed in rows:
        print(f"{arch:<13} {name:<17} {params:>10,} {flops / 1e6:>9.1f} {size / 1e6:>8.2f} {zsize / 1e6:>7.2f} "
              f"{ms:>8.3f} {speed:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
