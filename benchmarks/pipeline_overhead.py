"""Local Kubeflow pipeline vs in-process run, same config (default: the digits PTQ-search example).

    python benchmarks/pipeline_overhead.py [CONFIG.yaml] [--repeats N]

Prints a table: wall time of the in-process run (`autocompress.runner.run_config`, one process) and
of the local pipeline (`kfp.local.SubprocessRunner`, one process per stage), and the overhead,
checked against the budget: overhead < 20% of the in-process time + 10 s. Both runs see the same
model, data and trials; the metric of each is printed next to its time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "examples" / "digits" / "ptq_hpo.yaml"


def in_process(config: Path, save_dir: Path) -> tuple[float, dict]:
    from autocompress.runner import run_config

    start = time.perf_counter()
    summary = run_config(config, save_dir=str(save_dir), progress=False)
    return time.perf_counter() - start, summary


def pipeline(config: Path, save_dir: Path) -> tuple[float, dict]:
    from autocompress.kfp.local_run import run_local

    start = time.perf_counter()
    run = run_local(config, save_dir=save_dir, progress=False)
    return time.perf_counter() - start, run.summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    config = Path(a.config).resolve()
    # warm the builtin model / data cache so neither side pays for training the demo model
    from autocompress.config import load_run_config
    from autocompress.kfp.local_run import _materialize_builtin

    _materialize_builtin(load_run_config(config))
    rows = {"in-process": [], "local pipeline": []}
    metrics = {}
    with tempfile.TemporaryDirectory(prefix="ac-bench-") as tmp:
        for i in range(a.repeats):
            for label, fn in (("in-process", in_process), ("local pipeline", pipeline)):
                seconds, summary = fn(config, Path(tmp) / f"{label.replace(' ', '-')}-{i}")
                rows[label].append(seconds)
                metrics[label] = summary["metric"]
    base = statistics.median(rows["in-process"])
    pipe = statistics.median(rows["local pipeline"])
    overhead = pipe - base
    budget = 0.2 * base + 10.0
    print(f"config: {config} ({a.repeats} run(s) each, median wall time)")
    print("| run | wall time | metric |")
    print("|---|---|---|")
    for label in rows:
        print(f"| {label} | {statistics.median(rows[label]):.1f} s | {metrics[label]:.4f} |")
    print(f"\npipeline overhead: {overhead:.1f} s ({overhead / base:.0%}); budget 20% + 10 s = {budget:.1f} s -> "
          f"{'within' if overhead <= budget else 'OVER'} budget")
    return 0 if overhead <= budget else 1


if __name__ == "__main__":
    sys.exit(main())
