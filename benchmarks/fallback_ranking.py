"""The FP32 fallback's two orders side by side on a real model: `fallback_ranking: cost` (quantization
noise per share of the int8 work, the default) against `noise` (noise alone), same search, same data.

    python benchmarks/fallback_ranking.py [--models rec] [--layers 24] [--drop 0.002] [--trials 8] [--work DIR]

Both runs are our PTQ search through the API (`autocompress.AutoCompression`) on deployed.py's
rendered splits; `--drop` is the budget the selection gets, small so that the int8 model misses it
and the fallback runs, keeping at most `--layers` layers in FP32. The table gives, per ranking, the
layers it kept in FP32, the selection's deployed metric after the fallback, the held-out metric on
oneDNN int8 and the latency interleaved with FP32 at batch 1 and the deployment batch (1 thread).
Models are kept in --work (default ./benchmarks/results/fallback_ranking) and reused by a rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_minloglevel", "2")

from deployed import DATA, Variants, measure, model_spec  # noqa: E402

RANKINGS = ("cost", "noise")


def fallback_facts(model_dir: Path) -> dict:
    """FP32 layers and the selection's deployed metrics, from the run's summary.json."""
    summary = json.loads((Path(model_dir).parent / "summary.json").read_text())
    return {"fp32_layers": len(summary.get("fp32_layers") or []),
            "int8_select": summary.get("int8_deployed_metric"), "select": summary.get("deployed_metric")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(DATA), default=["rec"])
    ap.add_argument("--layers", type=int, default=24, help="fp32_fallback: at most this many layers in FP32")
    ap.add_argument("--drop", type=float, default=0.002, help="the selection's budget (max_drop)")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "results" / "fallback_ranking"))
    args = ap.parse_args(argv)
    lines = ["| model | ranking | FP32 layers | selection: int8 -> after fallback | held-out (oneDNN int8) | "
             "batch 1 ms (vs FP32) | deploy batch ms (vs FP32) |", "|---|---|---:|---|---|---|---|"]
    for name in args.models:
        spec = {**model_spec(name), "select_drop": args.drop, "trials": args.trials}
        data = DATA[name](spec)
        variants = Variants(name, spec, data, Path(args.work), fresh=False)
        made = [{"variant": "FP32", "files": variants.fp32, "int8": False, "seconds": 0.0}]
        for ranking in RANKINGS:
            strategy = variants._ptq()
            strategy["HyperParameterOptimizationConfig"].update(fp32_fallback=args.layers, fallback_ranking=ranking)
            made.append(variants.make(f"ptq-{ranking}-{args.layers}-{args.drop}-{args.trials}",
                                      f"fallback_ranking {ranking}", variants.fp32, strategy, None, True))
        rows = measure(name, made, [], data, ["onednn"], 1)
        metric = data["metrics"][0]
        batches = sorted(data["feeds"])
        for row, v in zip(rows, made):
            facts = fallback_facts(v["files"].model_dir) if v["int8"] else {}
            select = (f"{facts['int8_select']:.4f} -> {facts['select']:.4f}"
                      if facts.get("select") is not None and facts.get("int8_select") is not None else "")
            speed = [f"{row[f'ms_b{b}']:.1f} ({row[f'fp32_ms_b{b}'] / row[f'ms_b{b}']:.2f}x"
                     f"{', slower' if row[f'slower_b{b}'] else ''})" for b in batches]
            lines.append(f"| {name} | {row['variant']} | {facts.get('fp32_layers', '')} | {select} | "
                         f"{row[metric]:.4f} | {speed[0]} | {speed[-1]} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
