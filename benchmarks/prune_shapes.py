"""How fast can pruning make a PP-OCRv4 model on each runtime, before any training is spent on it?

    python benchmarks/prune_shapes.py [--models rec det cls] [--ratios 0.3 0.4 0.5] [--multiples 8 16]
                                      [--runtimes onednn paddle-cpu openvino onnxruntime] [--threads 1]

Latency depends on the pruned shapes, not on the weights, so each (ratio, channel_multiple) is pruned
data-free (criterion l1_norm, seconds) and timed against FP32 at the deployment batch of
benchmarks/deployed.py (rec and cls 6 lines, det one page), 1 thread, every model of a runtime
interleaved round by round with FP32 in one process (`backend.compare_latency`). The accuracy of a
ratio is what distillation buys back (benchmarks/deployed.py); this tells which ratio a runtime
needs for a speed target, and what rounding kept channels to a multiple of 8 or 16 (PruneConfig.
channel_multiple) changes there.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_minloglevel", "2")

from deployed import DATA, RUNTIMES, model_spec  # noqa: E402


def pruned_shapes(fp32, ratios, multiples, feed: dict, root: Path) -> list[dict]:
    """[{'ratio', 'multiple', 'files', 'flops'}]: FP32 first (ratio 0), then each data-free pruning."""
    from autocompress.prune.channel import prune_model

    shapes = {name: [1, *x.shape[1:]] for name, x in feed.items()}  # FLOPs of one sample
    out = [{"ratio": 0.0, "multiple": "", "files": fp32, "flops": None}]
    for ratio in ratios:
        for multiple in multiples:
            made = prune_model(fp32, {"pruned_ratio": ratio, "channel_multiple": multiple},
                               root / f"r{ratio}-m{multiple}", feed_shapes=shapes)
            out[0]["flops"] = made["flops_before"]
            out.append({"ratio": ratio, "multiple": multiple, "files": made["model_files"],
                        "flops": made["flops_after"]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=sorted(DATA), default=["rec"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.4, 0.5])
    ap.add_argument("--multiples", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    if any(not 0.0 < r < 1.0 for r in args.ratios):
        ap.error("--ratios must be in (0, 1)")

    from autocompress.backend import DeployTarget, compare_latency
    from autocompress.model_io import locate_model

    lines = ["| model | ratio | channel multiple | GFLOPs per sample | "
             + " | ".join(f"{rt} ms (vs FP32)" for rt in args.runtimes) + " |",
             "|---|---|---|---|" + "---|" * len(args.runtimes)]
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            spec = model_spec(name)
            data = DATA[name](spec)
            feed = data["feeds"][spec["deploy_batch"]]
            models = pruned_shapes(locate_model(data["model_dir"]), args.ratios, args.multiples, feed,
                                   Path(scratch) / name)
            times = {rt: compare_latency([(m["files"], False) for m in models], feed, args.threads,
                                         rounds=args.rounds, target=DeployTarget(rt))
                     for rt in args.runtimes}
            for i, m in enumerate(models):
                cells = [f"{times[rt][i]:.1f} ({times[rt][0] / times[rt][i]:.2f}x)" for rt in args.runtimes]
                flops = f"{m['flops'] / 1e9:.3f}" if m["flops"] else "?"
                label = "FP32" if i == 0 else f"{m['ratio']}"
                lines.append(f"| {name} | {label} | {m['multiple']} | {flops} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    batches = ", ".join(f"{n} {model_spec(n)['deploy_batch']}" for n in args.models)
    print(f"\nbatch: {batches}; "
          f"{args.threads} thread(s); data-free pruning (criterion l1_norm): speed only, no accuracy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
