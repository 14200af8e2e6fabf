"""Benchmark: our PTQ search (calibrate once, N trials) vs per-trial recalibration with paddle's
`PostTrainingQuantization` (what older tools do), same trial configurations, same calibration and
eval data, one run. Each side runs in its own subprocess so its peak RSS is its own.

    python benchmarks/ptq_search.py --model digits        # 8 trials: KL/hist/mse/avg x batch_num
    python benchmarks/ptq_search.py --model ppocr-rec     # 20 TPE trials on PP-OCRv4 recognition

Prints a markdown table: wall time, best metric, peak RSS per side. Metric: digits top-1 on the
hold-out; PP-OCRv4 rec: character accuracy on rendered, labelled text lines.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


CASES = {
    "digits": {"hpo": {"ptq_algo": ["KL", "hist", "mse", "avg"], "batch_num": [3, 30], "batch_size": 10,
                       "hist_percent": 0.9999, "bias_correct": False, "search_algo": "grid",
                       "max_quant_count": 8}},
    "ppocr-rec": {"hpo": {"ptq_algo": ["KL", "hist", "mse", "avg"], "batch_num": [2, 8], "batch_size": [4, 8],
                          "hist_percent": [0.99, 0.9999], "bias_correct": [False, True],
                          "search_algo": "tpe", "seed": 0, "max_quant_count": 20},
                  "calib_lines": 64, "eval_lines": 48, "eval_batch": 8},
}


# ---- data ---------------------------------------------------------------------------------------
def load_case(name: str, work: Path):
    """(model_files, calib_x, evaluator) for a case; deterministic."""
    if name == "digits":
        from autocompress.demo.digits import digits_model, digits_splits

        files = digits_model(cache_dir=work / "digits_cache")
        splits = digits_splits()
        calib_x = splits["calib"][0]
        ex, ey = splits["eval"]

        def evaluate(predict, limit=None):
            hits = sum(int((predict({"x": ex[i:i + 64]})[0].argmax(-1) == ey[i:i + 64].ravel()).sum())
                       for i in range(0, len(ex), 64))
            return hits / len(ex)
        return files, calib_x, evaluate
    from autocompress.model_io import locate_model
    from autocompress.ocr import load_dictionary, ocr_evaluator, preprocess, rec_model_dir, render_lines

    case = CASES[name]
    dictionary = load_dictionary()
    calib_imgs, _ = render_lines(case["calib_lines"], dictionary, seed=1)
    eval_imgs, truths = render_lines(case["eval_lines"], dictionary, seed=2)
    b = case["eval_batch"]
    ex = preprocess(eval_imgs)
    evaluate = ocr_evaluator([ex[i:i + b] for i in range(0, len(ex), b)],
                             [truths[i:i + b] for i in range(0, len(truths), b)], dictionary)
    return locate_model(rec_model_dir()), preprocess(calib_imgs), evaluate


# ---- the two sides (each in a subprocess) ---------------------------------------------------------
def side_ours(name: str, work: Path, fp32_fallback: int | None = None, subset_eval: float | None = None) -> dict:
    from autocompress.quant.ptq_search import run_ptq_search

    files, calib_x, evaluate = load_case(name, work)
    bs = 4  # the calibration source's own batch size; our stats are re-chunked anyway
    calib = [{"x": calib_x[i:i + bs]} for i in range(0, len(calib_x), bs)]
    start = time.perf_counter()
    hpo = dict(CASES[name]["hpo"], fp32_fallback=fp32_fallback, subset_eval=subset_eval)
    result = run_ptq_search(files, calib, evaluate, {}, hpo, work / "ours", progress=False)
    seconds = time.perf_counter() - start
    from autocompress.backend import compare_latency

    # deployed speed of what the search selected, next to FP32: same process, 1 thread, one sample
    fp32_ms, int8_ms = compare_latency([(files, False), (result["model_files"], True)], {"x": calib_x[:1]})
    return {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "seconds": seconds, "best_metric": max(t["metric"] for t in result["trials"] if t["metric"] is not None),
            "selected_simulated": result["simulated_metric"], "selected_deployed": result["deployed_metric"],
            "baseline_metric": result["baseline_metric"], "baseline_deployed": result["baseline_deployed_metric"],
            "calibration_seconds": result["calibration_seconds"], "trials": result["trials"],
            "best_config": result["best_config"], "int8_deployed": result.get("int8_deployed_metric"),
            "fp32_layers": result.get("fp32_layers", []), "fallback_seconds": result.get("fallback_seconds", 0.0),
            "subset_eval": subset_eval, "pruned": sum(bool(t.get("pruned")) for t in result["trials"])}


def side_paddle(name: str, work: Path, configs: list[dict]) -> dict:
    """Every configuration recalibrates from scratch with paddle's PostTrainingQuantization."""
    import paddle
    from paddle.static.quantization import PostTrainingQuantization

    from autocompress.config import QuantizationConfig
    from autocompress.paddle_env import legacy_ir
    from autocompress.backend import inference_predictor
    from autocompress.evaluation import executor_predictor
    from autocompress.model_io import load_model, locate_model

    files, calib_x, evaluate = load_case(name, work)
    op_types = QuantizationConfig().quantize_op_types
    start = time.perf_counter()
    trials = []
    with legacy_ir():
        baseline = evaluate(executor_predictor(load_model(files)))
        best = None
        for i, cfg in enumerate(configs):
            t0 = time.perf_counter()
            scope = paddle.static.Scope()
            exe = paddle.static.Executor(paddle.CPUPlace())
            bs, bn = cfg["batch_size"], cfg["batch_num"]

            def loader(bs=bs):
                for j in range(0, len(calib_x), bs):
                    yield {"x": calib_x[j:j + bs]}
            with paddle.static.scope_guard(scope):
                ptq = PostTrainingQuantization(
                    executor=exe, model_dir=str(files.model_dir), scope=scope, model_filename=files.model_filename,
                    params_filename=files.params_filename, data_loader=loader, batch_size=bs, batch_nums=bn,
                    algo=cfg["ptq_algo"], hist_percent=cfg["hist_percent"], quantizable_op_type=op_types,
                    bias_correction=cfg["bias_correct"], weight_quantize_type=cfg["weight_quantize_type"],
                    onnx_format=True)
                program = ptq.quantize()

            class _M:  # what executor_predictor needs
                pass
            m = _M()
            m.program, m.scope, m.executor = program, scope, exe
            m.feed_names, m.fetch_targets = ptq._feed_list, ptq._fetch_list
            m.fetch_names = [v.name for v in ptq._fetch_list]
            metric = evaluate(executor_predictor(m))
            trials.append({"config": cfg, "metric": metric, "seconds": time.perf_counter() - t0})
            print(f"  paddle trial {i}: {cfg['ptq_algo']} bs={bs} bn={bn} -> {metric:.4f} "
                  f"({trials[-1]['seconds']:.1f}s)", file=sys.stderr, flush=True)
            if best is None or metric > best[0]:
                best = (metric, ptq)
                with paddle.static.scope_guard(scope):
                    ptq.save_quantized_model(str(work / "paddle_best"), model_filename="inference.pdmodel",
                                             params_filename="inference.pdiparams")
    seconds = time.perf_counter() - start
    deployed = evaluate(inference_predictor(locate_model(work / "paddle_best"), int8=True))
    return {"seconds": seconds, "best_metric": best[0], "selected_deployed": deployed, "baseline_metric": baseline,
            "trials": trials}


def _child(args):
    work = Path(args.work)
    if args.side == "ours":
        out = side_ours(args.model, work, args.fp32_fallback, args.subset_eval)
    else:
        out = side_paddle(args.model, work, json.loads(Path(args.configs).read_text()))
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.result).write_text(json.dumps(out, indent=1, default=float))


def _run_side(side: str, model: str, work: Path, configs: Path | None = None, fp32_fallback: int | None = None,
              subset_eval: float | None = None) -> dict:
    result = work / f"{side}.json"
    cmd = [sys.executable, __file__, "--child", side, "--model", model, "--work", str(work), "--result", str(result)]
    if configs:
        cmd += ["--configs", str(configs)]
    if fp32_fallback is not None:
        cmd += ["--fp32-fallback", str(fp32_fallback)]
    if subset_eval is not None:
        cmd += ["--subset-eval", str(subset_eval)]
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(CASES), default="digits")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--reuse-paddle", action="store_true",
                        help="rerun only our side; reuse paddle.json in --work when its trial configs are identical")
    parser.add_argument("--fp32-fallback", type=int, default=None,
                        help="our side: keep up to N sensitive layers FP32 when the deployed int8 metric drops "
                             "(default: automatic, which without a target does nothing)")
    parser.add_argument("--subset-eval", type=float, default=None, metavar="F",
                        help="our side: score each trial on this fraction of the eval batches first; only trials "
                             "near the best subset metric get the full evaluation (default: off)")
    parser.add_argument("--child", choices=["ours", "paddle"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--configs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.side = args.child
        return _child(args)
    work = Path(args.work or tempfile.mkdtemp(prefix=f"ptq-bench-{args.model}-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"[{args.model}] our search ...", file=sys.stderr, flush=True)
    ours = _run_side("ours", args.model, work, fp32_fallback=args.fp32_fallback, subset_eval=args.subset_eval)
    configs = [t["config"] for t in ours["trials"]]
    (work / "configs.json").write_text(json.dumps(configs))
    print(f"[{args.model}] {len(configs)} trials done in {ours['seconds']:.1f}s; paddle per-trial recalibration ...",
          file=sys.stderr, flush=True)
    previous = work / "paddle.json"
    if args.reuse_paddle and previous.exists() and \
            [t["config"] for t in json.loads(previous.read_text())["trials"]] == configs:
        print(f"[{args.model}] same trial configs: reusing {previous}", file=sys.stderr)
        paddle_side = json.loads(previous.read_text())
    else:
        paddle_side = _run_side("paddle", args.model, work, work / "configs.json")
    (work / "report.json").write_text(json.dumps({"ours": ours, "paddle": paddle_side}, indent=1, default=float))
    print(table(args.model, ours, paddle_side, len(configs)))


def table(model, ours, pd, n) -> str:
    mb = 1024 * 1024
    speedup = pd["seconds"] / ours["seconds"]
    lines = [f"### PTQ search, {model}, {n} trials ({os.cpu_count()} CPU cores)", "",
             "| | wall time (s) | best metric (simulated int8) | selected model on oneDNN int8 | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|",
             f"| autocompress (calibrate once) | {ours['seconds']:.1f} | {ours['best_metric']:.4f} | "
             f"{ours['selected_deployed']:.4f} | {ours['peak_rss_bytes'] / mb:.0f} |",
             f"| paddle PTQ, recalibrate per trial | {pd['seconds']:.1f} | {pd['best_metric']:.4f} | "
             f"{pd['selected_deployed']:.4f} | {pd['peak_rss_bytes'] / mb:.0f} |", "",
             f"Speed-up {speedup:.1f}x; FP32 baseline metric {ours['baseline_metric']:.4f} "
             f"(oneDNN FP32 {ours['baseline_deployed']:.4f}); our calibration {ours['calibration_seconds']:.1f}s."]
    lines.append(f"Latency of the selected model, Paddle Inference CPU, 1 thread, batch 1: FP32 {ours['fp32_ms']:.2f} ms, "
                 f"oneDNN int8 {ours['int8_ms']:.2f} ms ({ours['fp32_ms'] / ours['int8_ms']:.2f}x).")
    if ours.get("subset_eval"):
        lines.append(f"subset_eval {ours['subset_eval']}: {ours['pruned']} of {n} trials pruned on the eval subset "
                     "(no full evaluation).")
    if ours.get("fp32_layers"):
        lines.append(f"FP32 fallback: {len(ours['fp32_layers'])} layers kept FP32 ({ours['fallback_seconds']:.1f}s); "
                     f"oneDNN int8 {ours['int8_deployed']:.4f} -> {ours['selected_deployed']:.4f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
