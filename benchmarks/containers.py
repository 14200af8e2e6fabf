"""The images and every strategy pipeline in containers: image sizes, and each pipeline's wall time under
kfp's SubprocessRunner (a process per stage) vs DockerRunner (a container per stage, as the pods run).

    python benchmarks/containers.py [--only ptq_hpo,distill] [--repeats N]

First builds (or reuses) the images with images/build.py, which prints each step and its time; then
runs the six strategy pipelines on the real digits CNN with the configs tests/test_containers.py uses
(tests/test_kfp_local.py's STRATEGIES), once per runner, and prints two Markdown tables: the image
sizes, and per pipeline the median wall time of each runner, the container overhead and the metric of
each run. Needs a Docker daemon (started if none runs and this is root) and the kfp + docker packages.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "images"), str(REPO / "tests")]
import build as image_build  # noqa: E402
from test_kfp_local import STRATEGIES, _config  # noqa: E402  (the container tests' configs)

sys.path[:2] = []


def digits_inputs(root: Path):
    """The digits model and its calibration (128) / eval (200) Dataset folders, readable by the
    containers' user."""
    from autocompress.data.dataset import write_dataset
    from autocompress.demo.digits import digits_model, digits_splits

    os.chmod(root, 0o755)
    model = digits_model(cache_dir=root / "model-cache")
    splits = digits_splits()
    for folder, split, count in (("train", "calib", 128), ("eval", "eval", 200)):
        x, y = splits[split]
        write_dataset(root / "data" / folder, {"x": x[:count]}, labels=y[:count])
    return model, root / "data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated strategies (default: all six)")
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    chosen = a.only.split(",") if a.only else list(STRATEGIES)
    start = time.perf_counter()
    tags = image_build.build_all(gpu="package")
    build_seconds = time.perf_counter() - start
    from autocompress.kfp.local_run import run_local

    rows = []
    with tempfile.TemporaryDirectory(prefix="ac-containers-") as tmp:
        model, data = digits_inputs(Path(tmp))
        for combination in chosen:
            times, metrics = {"subprocess": [], "docker": []}, {}
            for i in range(a.repeats):
                for runner in times:
                    work = Path(tmp) / f"{combination}-{runner}-{i}"
                    work.mkdir()
                    os.chmod(work, 0o755)
                    run = run_local(_config(work, combination, model.model_dir, data), progress=False, runner=runner)
                    times[runner].append(run.wall_seconds)
                    metrics[runner] = (run.summary["metric"], run.summary["metric_drop"])
            rows.append((combination, {k: statistics.median(v) for k, v in times.items()}, metrics))
    print(f"\nimages ({'reused or built' if build_seconds > 5 else 'reused'} in {build_seconds:.0f} s; "
          "images/build.py prints each step's time):")
    print("| image | tag | size |\n|---|---|---|")
    for kind, tag in tags.items():
        if tag:
            print(f"| {kind} | `{tag}` | {image_build.image_size(tag) / 1e9:.2f} GB |")
    print(f"\npipelines on the digits CNN (median of {a.repeats}; wall time of the whole pipeline):")
    print("| pipeline | subprocess | docker | overhead | metric (drop) subprocess / docker |\n|---|---|---|---|---|")
    for combination, med, metrics in rows:
        sub, dock = med["subprocess"], med["docker"]
        m = " / ".join(f"{metrics[r][0]:.3f} ({metrics[r][1]:+.3f})" for r in ("subprocess", "docker"))
        print(f"| {combination}_cpu | {sub:.1f} s | {dock:.1f} s | {dock - sub:+.1f} s ({dock / sub - 1:+.0%}) | {m} |")
    total = {r: sum(med[r] for _, med, _ in rows) for r in ("subprocess", "docker")}
    print(f"| all {len(rows)} | {total['subprocess']:.1f} s | {total['docker']:.1f} s | "
          f"{total['docker'] - total['subprocess']:+.1f} s | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
