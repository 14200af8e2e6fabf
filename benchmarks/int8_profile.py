"""Where the time goes in the compressed PP-OCRv4 models: per op type, FP32 against our int8 (or our pruned)
model, on Paddle Inference (oneDNN with the int8 switch, and a stock Config) and on OpenVINO (with NNCF's
int8 beside ours).

    python benchmarks/int8_profile.py [--models det rec cls] [--work DIR] [--calls 10] [--rounds 3] [--top 12]
                                      [--pruned {1,2} [--ratios FIRST SECOND] [--steps N] [--channel-multiple M]]
                                      [--openvino-chain [--ratios FIRST SECOND] [--steps N]]

The int8 model is our PTQ search's output from benchmarks/deployed.py (the same --work folder: made
there, or here when absent); with --pruned K the compared model is deployed.py's pruned model at its
K-th ratio instead (`--ratios`, `--steps`, `--channel-multiple` as there), FP32 on every runtime. Paddle Inference's own profiler (`Config.enable_profile`) gives the time
per op type; OpenVINO's (`PERF_COUNT`) gives it per node type and kernel precision (the last part of
its exec type: I8, BF16, FP32). Times are ms per warm inference at the deployment batch, 1 thread (Paddle's
profiler counts from the predictor's creation, so a profile of the first 2 calls, 2.7x slower on the cls model with
oneDNN's primitive creation, is subtracted; earlier versions averaged them in). The
quantize / dequantize / reorder rows are what int8 adds; the conv rows what it saves.

The models of one runtime are profiled in turn, --rounds times (FP32, compressed, FP32, ...), and each
op's time is the median over the rounds: one profile of --calls calls moves by 10-40 % per op type when
anything else runs on the machine, and a single pair of profiles once showed the pruned recognizer's
depthwise convs 10 % faster where the median of three shows the 24 % their FLOPs predict.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_minloglevel", "2")

from deployed import DATA, MODELS, Variants, model_spec, nncf_quantize  # noqa: E402

EVENT = re.compile(r"^thread\d+::(\S+)\s+(\d+)\s+([\d.]+)")


def paddle_profile(files, int8: bool, runtime: str, feed: dict, calls: int) -> dict[str, float]:
    """ms per warm inference by op type, from Paddle Inference's profiler. Its totals start at the
    predictor's creation and include the first calls (oneDNN primitive creation, allocation), so a
    profile of 2 calls is subtracted from one of calls + 2: what is left is `calls` warm calls."""
    warm, cold = (_paddle_op_totals(files, int8, runtime, feed, n) for n in (calls + 2, 2))
    return {op: max(ms - cold.get(op, 0.0), 0.0) / calls for op, ms in warm.items()}


def _paddle_op_totals(files, int8: bool, runtime: str, feed: dict, runs: int) -> dict[str, float]:
    """Total ms by op type over a new predictor's first `runs` calls (the profiler prints when the
    predictor is destroyed, to fd 1: captured here)."""
    from paddle import inference

    from autocompress.backend import DeployTarget, _config, _quiet_native_output

    config = _config(files, int8, 1, DeployTarget(runtime))
    config.enable_profile()
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch), _quiet_native_output() as printed:
        predictor = inference.create_predictor(config)  # the profiler also writes profile.log to the cwd
        names = predictor.get_input_names()
        for _ in range(runs):
            for name in names:
                predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(feed[name]))
            predictor.run()
        del predictor
        text = printed()
    out: dict[str, float] = collections.Counter()
    for line in text.splitlines():
        m = EVENT.match(line.strip())
        if m and m.group(1) not in ("Executor::Run", "load_combine", "fill_constant"):
            out[m.group(1)] += float(m.group(3))
    return dict(out)


def openvino_profile(model, feed: dict, calls: int) -> dict[str, float]:
    """ms per inference by (node type, kernel precision), from OpenVINO's PERF_COUNT."""
    import openvino as ov

    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(str(model))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in model.inputs]
    out: dict[str, float] = collections.Counter()
    for i in range(calls + 2):
        request.infer({n: np.ascontiguousarray(feed[n]) for n in names})
        if i < 2:
            continue  # warm-up
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                precision = info.exec_type.rsplit("_", 1)[-1] if "_" in info.exec_type else info.exec_type
                out[f"{info.node_type} {precision}"] += info.real_time.total_seconds() * 1000 / calls
    return dict(out)


def interleaved(profiles: dict, rounds: int) -> dict[str, dict[str, float]]:
    """`profiles`: column label -> a function returning {op: ms}. Each runs once per round, round by
    round; the result is each op's median over the rounds (0 in a round where it did not appear)."""
    runs = {label: [] for label in profiles}
    for _ in range(rounds):
        for label, profile in profiles.items():
            runs[label].append(profile())
    return {label: {op: float(np.median([r.get(op, 0.0) for r in rs])) for op in set().union(*rs)}
            for label, rs in runs.items()}


def _table(title: str, columns: dict[str, dict[str, float]], top: int) -> str:
    names = list(columns)
    totals = {n: sum(c.values()) for n, c in columns.items()}
    ops = sorted({op for c in columns.values() for op in c}, key=lambda op: -max(c.get(op, 0) for c in columns.values()))
    lines = [f"**{title}**", "", "| op | " + " | ".join(f"{n} ms" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for op in ops[:top]:
        lines.append(f"| {op} | " + " | ".join(f"{columns[n].get(op, 0):.2f}" for n in names) + " |")
    rest = {n: totals[n] - sum(columns[n].get(op, 0) for op in ops[:top]) for n in names}
    lines.append("| (other) | " + " | ".join(f"{rest[n]:.2f}" for n in names) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals[n]:.2f}**" for n in names) + " |")
    return "\n".join(lines)


def openvino_chain(variants, data: dict, spec: dict, calls: int, rounds: int) -> dict:
    """Columns for --openvino-chain: where the int8 time goes on OpenVINO per QDQ placement."""
    from autocompress.backend import openvino_model_path
    from autocompress.program.to_onnx import cached_onnx

    chain = variants.all({"prune-ptq-ov"})[-1]["files"]
    pruned = variants.first_pruned["files"]
    feed = data["feeds"][spec["deploy_batch"]]
    files = {"pruned FP32": openvino_model_path(pruned, False),
             "+ our int8, paddle2onnx's QDQ": cached_onnx(chain, "onnxruntime"),
             "+ our int8, QDQ for OpenVINO": openvino_model_path(chain, True)}
    profiles = {label: (lambda path=path: openvino_profile(path, feed, calls)) for label, path in files.items()}
    nncf = nncf_quantize(pruned, data["train"][:8])
    if nncf is not None:
        profiles["+ NNCF int8"] = lambda: openvino_profile(nncf[0], feed, calls)
    return interleaved(profiles, rounds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["det", "rec", "cls"])
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "results" / "deployed"))
    ap.add_argument("--calls", type=int, default=10, help="profiled calls per profile")
    ap.add_argument("--rounds", type=int, default=3, help="profiles per model, interleaved; the median is shown")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--pruned", type=int, choices=(1, 2), help="profile the pruned model at this ratio instead of int8")
    ap.add_argument("--openvino-chain", action="store_true",
                    help="OpenVINO only: deployed.py's pruned model (first ratio), its PTQ selected on OpenVINO "
                         "(prune-ptq-ov) with paddle2onnx's QDQ placement and with ours, and NNCF of the pruned model")
    ap.add_argument("--ratios", nargs=2, type=float, metavar=("FIRST", "SECOND"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--channel-multiple", type=int)
    args = ap.parse_args(argv)
    if (args.ratios or args.steps or args.channel_multiple) and not (args.pruned or args.openvino_chain):
        ap.error("--ratios, --steps and --channel-multiple choose the pruned model: add --pruned 1 or --pruned 2 "
                 "(or --openvino-chain)")
    work = Path(args.work) / "full"
    for name in args.models:
        spec = model_spec(name, ratios=args.ratios, steps=args.steps, channel_multiple=args.channel_multiple)
        data = DATA[name](spec)
        variants = Variants(name, spec, data, work, fresh=False)
        if args.openvino_chain:
            print(_table(f"PP-OCRv4 {name}, OpenVINO, batch {spec['deploy_batch']}",
                         openvino_chain(variants, data, spec, args.calls, args.rounds), args.top), "\n", flush=True)
            continue
        if args.pruned:
            made = variants.all({f"prune{args.pruned}"})[-1]
            model, int8, label = made["files"], False, f"pruned {spec['ratios'][args.pruned - 1]}"
        else:
            model, int8, label = variants.make("ptq", "PTQ search", variants.fp32, variants._ptq(), None, True)["files"], \
                True, "int8"
        batch = spec["deploy_batch"]
        feed = data["feeds"][batch]
        calls, rounds = args.calls, args.rounds
        paddle = interleaved({"FP32 oneDNN": lambda: paddle_profile(variants.fp32, False, "onednn", feed, calls),
                              f"{label} oneDNN": lambda: paddle_profile(model, int8, "onednn", feed, calls)}, rounds)
        print(_table(f"PP-OCRv4 {name}, Paddle Inference oneDNN, batch {batch}", paddle, args.top), "\n")
        stock = interleaved({"FP32 stock": lambda: paddle_profile(variants.fp32, False, "paddle-cpu", feed, calls),
                             f"{label} stock": lambda: paddle_profile(model, False, "paddle-cpu", feed, calls)}, rounds)
        print(_table(f"PP-OCRv4 {name}, Paddle Inference stock Config, batch {batch}", stock, args.top), "\n")
        from autocompress.backend import openvino_model_path

        fp32_ov, ours = openvino_model_path(variants.fp32, False), openvino_model_path(model, int8)
        ov_profiles = {"FP32": lambda: openvino_profile(fp32_ov, feed, calls),
                       f"ours {label}" + (" (ONNX QDQ)" if int8 else ""): lambda: openvino_profile(ours, feed, calls)}
        if not args.pruned:
            nncf = nncf_quantize(variants.fp32, data["train"][:8])
            if nncf is not None:
                ov_profiles["NNCF int8"] = lambda: openvino_profile(nncf[0], feed, calls)
        ov_cols = interleaved(ov_profiles, rounds)
        print(_table(f"PP-OCRv4 {name}, OpenVINO, batch {batch}", ov_cols, args.top), "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
