"""Legacy `*.pdmodel` inference model -> Paddle 3 PIR `*.json`, checked in Paddle Inference.

The route that works with Paddle 3.3.1 (docs/pir.md): load the legacy program with the PIR API off,
`paddle.pir.translate_to_pir(program.desc)`, turn its `pd_op.feed` ops into `pd_op.data` (what
Paddle 3's own exports hold), serialize the program as `<stem>.json` and write the parameters from
the loaded scope as `<stem>.pdiparams`. Feed and fetch names stay those of the original, so deploy
code that asks for an output by name keeps working. `paddle.static.save_inference_model` under PIR
would also work, but renames every output to `fetch_name_<i>`.

The input folder is never written to (it is loaded from a private copy, hashes checked); the output
appears atomically, only once both models gave the same outputs on a sample feed.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_json_atomic
from ..errors import ModelError
from ..model_io import (METADATA_FILE, InputGuard, ModelFiles, copy_model, load_model, locate_model,
                        paddle_error_line, sha256_file)
from ..version import __version__

log = logging.getLogger("autocompress.convert")

RTOL = 1e-4  # max |legacy - pir| <= RTOL * max(1, max |legacy|), per output
BATCH = 2  # the sample feed's batch, where the batch dimension is dynamic
DYNAMIC_DIM = 64  # other dynamic dims of the sample feed (a multiple of 32: detection backbones)
_NUMPY_DTYPES = {"fp32": "float32", "fp64": "float64", "fp16": "float16", "int64": "int64", "int32": "int32",
                 "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}


def convert_to_pir(model_dir, out_dir, model_filename: str | None = None, params_filename: str | None = None,
                   feed: dict | None = None, feed_shapes: dict[str, list[int]] | None = None) -> ModelFiles:
    """Convert the legacy inference model in `model_dir` to PIR in `out_dir` (`X.pdmodel` -> `X.json`,
    `X.pdiparams` keeps its name) and check both give the same outputs in Paddle Inference.

    `feed` (name -> array) is the sample input for that check; without it one is made from the
    model's input shapes, dynamic dims set from `feed_shapes` (name -> shape), else batch 2 and 64.
    The measured difference is written to `out_dir/autocompress.json` under "conversion".
    """
    import paddle

    from ..paddle_env import legacy_ir

    src = locate_model(model_dir, model_filename, params_filename)
    if src.format != "pdmodel":
        raise ModelError(f"{src.model_path} is already a Paddle 3 PIR model; nothing to convert")
    out_dir = check_out_dir(src, out_dir)
    guard = InputGuard(src)
    start = time.perf_counter()
    stem = Path(src.model_filename).stem
    with tempfile.TemporaryDirectory(prefix="autocompress-convert-") as work:
        original = copy_model(src, Path(work) / "input")
        with legacy_ir():
            try:
                model = load_model(original)
            except ModelError as err:  # name the user's file, not our private copy
                raise ModelError(str(err).replace(str(original.model_path), str(src.model_path))) from None
            specs = _feed_specs(model)
            op_types = sorted({op.type for block in model.program.blocks for op in block.ops})
            try:
                program = paddle.pir.translate_to_pir(model.program.desc)
            except Exception as err:  # SystemError / RuntimeError from the C++ translator
                raise ModelError(_paddle_failure("PIR translator cannot convert", src.model_path, err,
                                                 op_types)) from None
        sample = _sample_feed(specs, feed, feed_shapes)
        with atomic_dir(out_dir) as tmp:
            out = ModelFiles(Path(tmp), f"{stem}.json", src.params_filename, "pir-json")
            with paddle.pir_utils.IrGuard():
                _feeds_as_data(program)
                paddle.core.serialize_pir_program(program, str(out.model_path), True, False, True)
                if out.params_filename and _has_parameters(program):
                    from paddle.static.pir_io import save_vars_pir

                    with paddle.static.scope_guard(model.scope):
                        save_vars_pir(str(tmp), main_program=program, filename=out.params_filename)
            check = _compare(original, out, sample, src.model_path, op_types)
            seconds = time.perf_counter() - start
            write_json_atomic(Path(tmp) / METADATA_FILE, {
                "format": out.format, "model_filename": out.model_filename, "params_filename": out.params_filename,
                "sha256": {p.name: sha256_file(p) for p in out.files()},
                "size_bytes": int(sum(p.stat().st_size for p in out.files())),
                "conversion": {"from": src.model_filename, "source_sha256": {Path(p).name: h for p, h in
                                                                             guard.hashes.items()},
                               "paddle_version": paddle.__version__, "seconds": round(seconds, 3), **check},
                "autocompress_version": __version__})
            guard.verify()  # before the output appears
    log.info("converted %s to PIR %s in %.1f s; max |legacy - pir| = %.3g (tolerance %.3g)", src.model_path,
             out_dir / out.model_filename, seconds, check["max_abs_diff"], check["tolerance"])
    return dataclasses.replace(out, model_dir=out_dir)


def check_out_dir(src: ModelFiles, out_dir) -> Path:
    """An output folder that would replace (or contain) the input model's folder is refused."""
    out_dir = Path(out_dir)
    if src.model_dir.resolve() == out_dir.resolve() or src.model_dir.resolve().is_relative_to(out_dir.resolve()):
        raise ModelError(f"out_dir {out_dir} would replace the input model's folder {src.model_dir}; "
                         "pick a new folder")
    return out_dir


def _feed_specs(model) -> list[dict]:
    block = model.program.global_block()
    specs = []
    for name in model.feed_names:
        var = block.var(name)
        dtype = str(var.dtype).replace("paddle.", "").replace("VarType.", "").lower()
        specs.append({"name": name, "shape": [int(d) for d in var.shape], "dtype": _NUMPY_DTYPES.get(dtype, dtype)})
    return specs


def _sample_feed(specs: list[dict], feed: dict | None, feed_shapes: dict | None) -> dict[str, np.ndarray]:
    if feed is not None:
        missing = [s["name"] for s in specs if s["name"] not in feed]
        if missing:
            raise ModelError(f"the sample feed lacks the model's inputs {missing}; it has {sorted(feed)}")
        return {s["name"]: np.ascontiguousarray(feed[s["name"]], dtype=s["dtype"]) for s in specs}
    rng = np.random.default_rng(0)
    sample = {}
    for s in specs:
        shape = list((feed_shapes or {}).get(s["name"]) or s["shape"])
        shape = [(BATCH if i == 0 else DYNAMIC_DIM) if d < 0 else int(d) for i, d in enumerate(shape)]
        if np.dtype(s["dtype"]).kind == "f":
            sample[s["name"]] = rng.random(shape).astype(s["dtype"])
        else:  # ids, masks: zeros are valid for every embedding table
            sample[s["name"]] = np.zeros(shape, s["dtype"])
    return sample


def _feeds_as_data(program) -> None:
    """`pd_op.feed` (what the translator makes of the legacy feed ops) -> `pd_op.data` (what Paddle 3's
    own exports hold and what the PIR loaders look for), same names and shapes."""
    import paddle

    block = program.global_block()
    with paddle.static.program_guard(program):
        for op in list(block.ops):
            if op.name() != "pd_op.feed":
                continue
            old = op.result(0)
            new = paddle._pir_ops.data(op.attrs()["name"], old.shape, old.dtype, paddle.base.core.Place())
            new.get_defining_op().move_before(op)
            old.replace_all_uses_with(new)
            block.remove_op(op)


def _has_parameters(program) -> bool:
    return any(op.name() in ("builtin.parameter", "pd_op.parameter") for op in program.global_block().ops)


def inference_outputs(files: ModelFiles, feed: dict, onednn: bool = True) -> tuple[list[str], list[np.ndarray]]:
    """A stock Paddle Inference CPU predictor, as deploy code makes it (oneDNN is on by default in the
    CPU build); Paddle 3.3.1 picks the new IR for a `.json` model by itself, no `enable_new_ir`."""
    from paddle import inference

    if files.params_path is not None:
        config = inference.Config(str(files.model_path), str(files.params_path))
    else:
        config = inference.Config(str(files.model_path))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(1)
    if not onednn:
        config.disable_mkldnn()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    for name in predictor.get_input_names():
        value = np.ascontiguousarray(feed[name])
        handle = predictor.get_input_handle(name)
        handle.reshape(value.shape)
        handle.copy_from_cpu(value)
    predictor.run()
    names = predictor.get_output_names()
    return names, [predictor.get_output_handle(n).copy_to_cpu() for n in names]


def _compare(original: ModelFiles, converted: ModelFiles, feed: dict, source, op_types: list[str]) -> dict:
    """Both models through Paddle Inference on `feed`. Where the PIR model fails only with oneDNN
    (Paddle 3.3.1: `nearest_interp`, also in Paddle's own exports), compare without it and say so."""
    import paddle

    shapes = {k: list(v.shape) for k, v in feed.items()}
    warnings: list[str] = []
    runtime = "Paddle Inference CPU, stock Config (oneDNN on)"
    try:
        ref_names, ref = inference_outputs(original, feed)
    except Exception as err:
        raise ModelError(f"the original model {source} fails on the sample feed {shapes} in Paddle Inference "
                         f"{paddle.__version__}: {paddle_error_line(err)}. Pass feed= (a real input) or feed_shapes= "
                         "(name -> shape) to convert_to_pir") from None
    try:
        names, got = inference_outputs(converted, feed)
    except Exception as err:
        onednn_error = onednn_failure(converted, err)
        try:
            names, got = inference_outputs(converted, feed, onednn=False)
        except Exception as err2:
            raise ModelError(_paddle_failure("Paddle Inference (new IR) cannot run the PIR model converted from",
                                             source, err2, op_types)) from None
        ref_names, ref = inference_outputs(original, feed, onednn=False)
        runtime = "Paddle Inference CPU, oneDNN off (config.disable_mkldnn())"
        warnings.append(onednn_error)
        log.warning("%s", onednn_error)
    if names != ref_names or [g.shape for g in got] != [r.shape for r in ref]:
        raise ModelError(f"the PIR model's outputs {names} {[g.shape for g in got]} differ from the original's "
                         f"{ref_names} {[r.shape for r in ref]} (Paddle {paddle.__version__}); please report this")
    diffs, tolerance = [], 0.0
    for name, r, g in zip(names, ref, got):
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        diff = float(np.abs(r64 - g64).max()) if r.size else 0.0
        tol = RTOL * max(1.0, float(np.abs(r64).max()) if r.size else 0.0)
        if not diff <= tol:  # also catches NaN
            raise ModelError(f"the PIR model's output {name!r} differs from the original's by {diff:.3g} "
                             f"(tolerance {tol:.3g}) on the sample feed {shapes} (Paddle {paddle.__version__}); "
                             "the translation changed the model, nothing was written")
        diffs.append(diff)
        tolerance = max(tolerance, tol)
    return {"inputs": shapes, "outputs": names, "max_abs_diff": max(diffs, default=0.0),
            "max_abs_diff_per_output": dict(zip(names, diffs)), "tolerance": tolerance, "runtime": runtime,
            "warnings": warnings}


def onednn_failure(files: ModelFiles, err: Exception) -> str:
    """What Paddle's oneDNN runtime could not run. Its message names no operation; the one it cannot
    take in 3.3.1 (`ArrayAttribute<DoubleAttribute>`) is found from the program's attributes."""
    import paddle

    ops = _ops_with_double_lists(files.model_path) if "DoubleAttribute" in str(err) else []
    what = (f"operation {', '.join(repr(o) for o in ops)} (attribute of type list of float64)" if ops
            else "this model")
    return (f"Paddle {paddle.__version__}'s Paddle Inference cannot run {what} of the PIR model with oneDNN, "
            f"which the CPU Config turns on by default: {paddle_error_line(err)}. It runs correctly with "
            "config.disable_mkldnn(); Paddle 3's own exports of this operation fail the same way")


def _ops_with_double_lists(json_path) -> list[str]:
    import json

    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            name, attrs = node.get("#"), node.get("A")
            if isinstance(name, str) and isinstance(attrs, list):
                for attr in attrs:
                    at = attr.get("AT", {}) if isinstance(attr, dict) else {}
                    if at.get("#") == "0.a_array" and any(isinstance(i, dict) and i.get("#") == "0.a_f64"
                                                          for i in at.get("D", [])):
                        found.add(name.split(".", 1)[-1])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(Path(json_path).read_text()))
    return sorted(found)


def _paddle_failure(what: str, model_path, err: Exception, op_types: list[str]) -> str:
    """An error naming the operation Paddle failed on (when its message says) and the Paddle version."""
    import paddle

    text = str(err)
    named = [t for t in op_types if re.search(rf"(?<![\w.]){re.escape(t)}(?![\w])", text)]
    named = [t for t in named if t not in ("feed", "fetch")] or named
    op = f" operation {max(named, key=len)!r} of" if named else ""
    return (f"Paddle {paddle.__version__}'s {what}{op} {model_path}: {paddle_error_line(err)}. Paddle itself cannot do "
            "this; the legacy model still works with autocompress as it is")
