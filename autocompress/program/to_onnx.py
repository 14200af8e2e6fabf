"""Paddle inference model -> ONNX (`model.onnx`), FP32 or int8 (QDQ), checked in ONNX Runtime.

Converter: `paddle2onnx` 1.3.1 (the `onnx` extra: `pip install 'autocompress[onnx]'`). It converts the
PP-OCR legacy `.pdmodel` programs where 2.1.0 fails (2.1.0 translates them to PIR first and stops on
PP-OCRv4 det: "(Unimplemented) the 0th elementwise MUST be ir::FloatAttribute", pir_parser.cc:814,
checked with Paddle 3.3.1), and maps our int8 programs'
`quantize_linear` / `dequantize_linear` ops to ONNX `QuantizeLinear` / `DequantizeLinear` (QDQ, opset
13: per-channel weight scales), folding batch norms into the convolutions and keeping the observer scales
as the output quantization ONNX Runtime's int8 kernels need. Its wheel declares no dependencies and
its converter, a C++ extension, links neither numpy nor Paddle: it runs with numpy 2 and Paddle 3.3.1
in the same environment (checked: numpy 2.4.6), so nothing is pinned below numpy 2 and no separate
tool venv is needed (a "numpy<2" requirement is not in its metadata; 2.x instead pins `onnx<=1.17` and
`onnxoptimizer`, which 1.3.1 does not need). PIR (`.json`) models go through `program.to_legacy.pir_to_legacy` first, so 2.x is not needed
for them either.

The converter runs in a child process that loads only that C++ extension (not `paddle2onnx/__init__`,
which imports Paddle): 0.1 s to start, and a converter abort on an odd program cannot take the search
process down; its log is captured and quoted when it fails. The child is `sys.executable` unless
`AUTOCOMPRESS_PADDLE2ONNX_PYTHON` names another interpreter that has `paddle2onnx` 1.3.x (a separate
tool venv, e.g. on Python 3.13, for which 1.3.1 has no wheel): it needs nothing else.

Check: the ONNX model and the Paddle model (Paddle Inference, stock CPU Config, oneDNN off: int8
programs run their quantize/dequantize ops as written) on the same sample feed.
- FP32: every output within `FP32_RTOL` (max |onnx - paddle| <= 1e-3 * max(1, max |paddle|)), else
  nothing is written. The bound is the float noise of a deep model run by two runtimes: Paddle's own
  stock and oneDNN CPU runtimes give PP-OCRv4 rec outputs up to 1.7e-4 apart on rendered lines, and ONNX
  Runtime is 1.2e-4 from the stock one there (det on a page: 2.3e-5; cls: < 1e-6).
- int8: two int8 runtimes never agree element-wise: ONNX Runtime runs int8 kernels that requantize at
  the observer scales, Paddle's stock runtime computes in float between quantize ops, and one rounding
  step flips outputs downstream. The check is the relative L1 difference, sum |onnx - paddle| /
  sum |paddle| <= `INT8_REL_L1` (0.5), per output: a misread quantization (a wrong scale or axis)
  moves all of the output's mass (1 to 2), a sound int8 export a little of it (measured on real
  inputs: cls 0.02, rec 0.18, det 0.08; a max or mean bound would say nothing on rec's 6625-class
  softmax, mostly zeros). It is enforced when the feed is real data (`feed=`, CLI `--feed x.npz`); on
  the generated random feed the numbers are recorded only (random inputs sit near every decision
  boundary: the cls model's int8 softmax differs by 0.14 on average between Paddle's own stock and
  oneDNN int8 runtimes there). The argmax agreement over the last axis is recorded too. Trust the
  metric on real data: `benchmarks/onnx_export.py` measures it on PP-OCRv4 det/rec/cls.
The result goes into `OUT_DIR/autocompress.json` under "onnx".
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_json_atomic
from ..errors import ModelError
from ..model_io import (METADATA_FILE, InputGuard, ModelFiles, copy_model, load_model, locate_model, read_metadata,
                        sha256_file)
from ..version import __version__
from .qdq_openvino import place_for_openvino
from .convert import _feed_specs, _sample_feed, check_out_dir, inference_outputs

log = logging.getLogger("autocompress.onnx")

ONNX_FILE = "model.onnx"
PLACEMENTS = ("onnxruntime", "openvino")  # whose int8 kernels the QDQ of an int8 export is placed for
OPSET = 13  # QuantizeLinear / DequantizeLinear with a per-channel axis
PADDLE2ONNX = "1.3"  # the converter series that reads the PP-OCR programs
PYTHON_ENV = "AUTOCOMPRESS_PADDLE2ONNX_PYTHON"
FP32_RTOL = 1e-3
INT8_REL_L1 = 0.5
CONVERT_TIMEOUT_S = 1800
INSTALL_HINT = "pip install 'autocompress[onnx]' (paddle2onnx==1.3.1 and onnxruntime)"

# The child: load paddle2onnx's C++ extension without its package __init__ (that imports Paddle), convert.
_CHILD = r"""
import glob, importlib.machinery, importlib.metadata, importlib.util, json, os, sys
args = json.loads(sys.argv[1])
try:
    version = importlib.metadata.version("paddle2onnx")
    spec = importlib.util.find_spec("paddle2onnx")
except Exception:
    version, spec = None, None
if spec is None or not spec.submodule_search_locations:
    print("AC-MISSING"); sys.exit(3)
if not version.startswith(args["series"] + "."):
    print("AC-VERSION " + version); sys.exit(3)
name = "paddle2onnx.paddle2onnx_cpp2py_export"
path = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "paddle2onnx_cpp2py_export*")))[0]
loader = importlib.machinery.ExtensionFileLoader(name, path)
module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path, loader=loader))
loader.exec_module(module)
sys.stdout.flush()
data = module.export(args["model"], args["params"], args["opset"], True, True, True, True, True, {},
                     "onnxruntime", "", "", False)
if not data:
    sys.exit(4)
with open(args["out"], "wb") as f:
    f.write(data)
print("AC-VERSION " + version)
"""


def export_onnx(model_dir, out_dir, model_filename: str | None = None, params_filename: str | None = None,
                feed: dict | None = None, feed_shapes: dict[str, list[int]] | None = None,
                opset: int = OPSET, placement: str = "onnxruntime") -> Path:
    """Export the Paddle inference model in `model_dir` (legacy `.pdmodel` or PIR `.json`, FP32 or our
    int8 quantize/dequantize format) to `out_dir/model.onnx` and check it in ONNX Runtime against
    Paddle Inference on `feed` (name -> array; default: random, batch 2, other dynamic dims from
    `feed_shapes` or 64). Returns the ONNX file's path; `out_dir/autocompress.json` holds the check.
    placement (int8 only): 'onnxruntime' (paddle2onnx's QDQ, for ONNX Runtime's fusions) or 'openvino'
    (QDQ on the inputs of dense and transposed convolutions and matmuls only, program/qdq_openvino.py).
    The input folder is never written to; `out_dir` appears only once the check passed."""
    if placement not in PLACEMENTS:
        raise ModelError(f"unknown QDQ placement {placement!r}; use one of {list(PLACEMENTS)}")
    _require_onnxruntime()
    src = locate_model(model_dir, model_filename, params_filename)
    out_dir = check_out_dir(src, out_dir)
    guard = InputGuard(src)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autocompress-onnx-") as work:
        legacy = _legacy_copy(src, Path(work), feed, feed_shapes)
        specs, op_types, layer_inputs = _program_facts(legacy, src, layer_inputs=placement == "openvino")
        int8 = "quantize_linear" in op_types or "dequantize_linear" in op_types
        sample = _sample_feed(specs, feed, feed_shapes)
        with atomic_dir(out_dir) as tmp:
            onnx_path = Path(tmp) / ONNX_FILE
            version, used_opset = convert(legacy, onnx_path, opset, shown_as=src.model_path)
            placed = place_for_openvino(onnx_path, *layer_inputs) if int8 and placement == "openvino" else None
            check = check_onnx(legacy, onnx_path, sample, int8, real_feed=feed is not None, source=src.model_path)
            meta = dict(read_metadata(src.model_dir) or {})
            meta["onnx"] = {"file": ONNX_FILE, "sha256": sha256_file(onnx_path), "size_bytes": onnx_path.stat().st_size,
                            "opset": used_opset, "paddle2onnx": version, "precision": "int8" if int8 else "fp32",
                            "quantization": "QDQ (QuantizeLinear/DequantizeLinear)" if int8 else None,
                            "placement": placement if int8 else None, **({"openvino_layers": placed} if placed else {}),
                            "from": src.model_filename, "format": src.format,
                            "source_sha256": {Path(p).name: h for p, h in guard.hashes.items()},
                            "seconds": round(time.perf_counter() - start, 3), "check": check,
                            "autocompress_version": __version__}
            write_json_atomic(Path(tmp) / METADATA_FILE, meta)
            guard.verify()
    log.info("exported %s to %s; %s", src.model_path, out_dir / ONNX_FILE, describe_check(check))
    return out_dir / ONNX_FILE


def _legacy_copy(src: ModelFiles, work: Path, feed, feed_shapes) -> ModelFiles:
    if src.format == "pdmodel":
        return copy_model(src, work / "input")
    from .to_legacy import pir_to_legacy

    return pir_to_legacy(src, work / "legacy", feed=feed, feed_shapes=feed_shapes)


def _program_facts(files: ModelFiles, src: ModelFiles, layer_inputs: bool) -> tuple[list[dict], set[str], tuple]:
    """(feed specs, op types, `int8_layer_inputs` of the program when `layer_inputs`, else None) of the
    legacy model `files`."""
    from ..paddle_env import legacy_ir
    from .legacy.quantize import int8_layer_inputs

    with legacy_ir():
        try:
            model = load_model(files)
        except ModelError as err:  # name the user's file, not our private copy
            raise ModelError(str(err).replace(str(files.model_path), str(src.model_path))) from None
        return (_feed_specs(model), {op.type for block in model.program.blocks for op in block.ops},
                int8_layer_inputs(model.program, model.scope) if layer_inputs else None)


def convert(files: ModelFiles, onnx_path: Path, opset: int = OPSET, shown_as=None) -> tuple[str, int]:
    """paddle2onnx on the legacy model `files`, in a child process; returns the converter's version and
    the opset it used (it raises `opset` where an operation needs a newer one, e.g. hard_swish: 14)."""
    python = os.environ.get(PYTHON_ENV) or sys.executable
    args = {"model": str(files.model_path), "params": str(files.params_path or ""), "out": str(onnx_path),
            "opset": opset, "series": PADDLE2ONNX}
    try:
        proc = subprocess.run([python, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True,
                              errors="replace", timeout=CONVERT_TIMEOUT_S)
    except OSError as err:
        raise ModelError(f"cannot start {python} for the ONNX converter ({err}); fix ${PYTHON_ENV} or unset it") from None
    except subprocess.TimeoutExpired:
        raise ModelError(f"paddle2onnx did not finish converting {shown_as or files.model_path} within "
                         f"{CONVERT_TIMEOUT_S} s; please report this with the model") from None
    out = (proc.stdout + proc.stderr).replace(str(files.model_dir), str(Path(shown_as or files.model_path).parent))
    where = f" (the interpreter from ${PYTHON_ENV}: {python})" if os.environ.get(PYTHON_ENV) else ""
    if "AC-MISSING" in out:
        raise ModelError(f"ONNX export needs paddle2onnx 1.3.1, which is not installed{where}: {INSTALL_HINT}. It has "
                         f"wheels for Python 3.8-3.12 only: on a newer Python make a 3.12 venv with paddle2onnx==1.3.1 "
                         f"(nothing else) and set ${PYTHON_ENV} to its python")
    if proc.returncode == 3 and "AC-VERSION" in out:
        found = out.split("AC-VERSION", 1)[1].split()[0]
        raise ModelError(f"ONNX export needs paddle2onnx {PADDLE2ONNX}.x, found {found}{where} (2.x fails on the "
                         "PP-OCR legacy programs): pip install 'paddle2onnx==1.3.1'")
    if proc.returncode != 0 or not onnx_path.is_file():
        lines = [ln for ln in out.splitlines() if ln.strip() and "AC-VERSION" not in ln]
        raise ModelError(f"paddle2onnx could not convert {shown_as or files.model_path} (exit {proc.returncode}): "
                         + " | ".join(lines[-8:])[-1500:]
                         + ". An operation it lacks is named above: deploy the Paddle model itself (Paddle "
                         "Inference, or OpenVINO, which reads it), or replace that layer in the source model")
    used = re.search(r"Use opset_version = (\d+)", out)
    return out.split("AC-VERSION", 1)[1].split()[0], int(used.group(1)) if used else opset


def check_onnx(files: ModelFiles, onnx_path: Path, feed: dict, int8: bool, real_feed: bool, source=None) -> dict:
    """Paddle Inference (stock CPU, oneDNN off) vs ONNX Runtime on `feed`; raises ModelError past the
    tolerance (module docstring). Returns the measured differences."""
    import onnxruntime

    names, ref = inference_outputs(files, feed, onednn=False)
    try:
        got = onnx_predictor(onnx_path)(feed)
    except Exception as err:  # onnxruntime's own exception types (Fail, InvalidGraph, NotImplemented, ...)
        raise ModelError(f"ONNX Runtime {onnxruntime.__version__} cannot run the ONNX export of "
                         f"{source or files.model_path}: {type(err).__name__}: {str(err)[:800]}; nothing was "
                         "written. Deploy the Paddle model itself, or report this with the model") from None
    shapes = {k: list(v.shape) for k, v in feed.items()}
    if [g.shape for g in got] != [r.shape for r in ref]:
        raise ModelError(f"the ONNX model's outputs {[g.shape for g in got]} differ in shape from the Paddle "
                         f"model's {[r.shape for r in ref]} on {shapes}; please report this")
    per_output, passed = {}, True
    for name, r, g in zip(names, ref, got):
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        scale = max(1.0, float(np.abs(r64).max()) if r.size else 0.0)
        diff = np.abs(r64 - g64) if r.size else np.zeros(1)
        row = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "scale": scale,
               "rel_l1": float(diff.sum() / max(float(np.abs(r64).sum()), 1e-30))}
        if r.ndim >= 2 and r.shape[-1] > 1:
            row["argmax_agreement"] = float((r.argmax(-1) == g.argmax(-1)).mean())
        ok = (row["max_abs_diff"] <= FP32_RTOL * scale) if not int8 else (row["rel_l1"] <= INT8_REL_L1)
        passed = passed and bool(ok)  # NaN fails both
        per_output[name] = row
    enforced = not int8 or real_feed
    tolerance = (f"max |onnx - paddle| <= {FP32_RTOL} * max(1, max |paddle|)" if not int8 else
                 f"sum |onnx - paddle| / sum |paddle| <= {INT8_REL_L1}"
                 + ("" if real_feed else " (not enforced: generated random feed; pass a real one)"))
    check = {"inputs": shapes, "outputs": per_output, "tolerance": tolerance, "passed": passed, "enforced": enforced,
             "max_abs_diff": max(r["max_abs_diff"] for r in per_output.values()),
             "mean_abs_diff": max(r["mean_abs_diff"] for r in per_output.values()),
             "rel_l1": max(r["rel_l1"] for r in per_output.values()),
             "reference": "Paddle Inference CPU, stock Config, oneDNN off",
             "runtime": f"ONNX Runtime {onnxruntime.__version__} CPUExecutionProvider"}
    if enforced and not passed:
        raise ModelError(f"the ONNX export of {source or files.model_path} does not match the Paddle model on "
                         f"{shapes}: {describe_check(check)}; nothing was written. Please report this with the model")
    return check


def describe_check(check: dict) -> str:
    return (f"max |onnx - paddle| = {check['max_abs_diff']:.3g}, mean {check['mean_abs_diff']:.3g}, relative L1 "
            f"{check['rel_l1']:.3g} on {check['inputs']}"
            f" ({'within' if check['passed'] else 'NOT within'} {check['tolerance']})")


def _require_onnxruntime():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelError(f"ONNX export and the 'onnxruntime' runtime need ONNX Runtime: {INSTALL_HINT}") from None


def onnx_predictor(onnx_path, threads: int = 1):
    """An ONNX Runtime CPU session as a Predictor (feed dict in, outputs in the model's order out)."""
    _require_onnxruntime()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]

    def predict(feed: dict) -> list:
        return session.run(None, {name: np.ascontiguousarray(feed[name]) for name in input_names})

    return predict


def cached_onnx(files: ModelFiles, placement: str = "onnxruntime") -> Path:
    """The ONNX export of `files` for the runtime whose QDQ `placement` it has (`export_onnx`), made on
    first use and cached by the model files' sha256 in a private folder of the temp dir
    (`autocompress-onnx-cache-<uid>/`, mode 0700), so the latency rounds and the metric on that runtime
    reuse one export. A cached file whose sha256 no longer matches its metadata is exported again."""
    digest = hashlib.sha256("".join(sha256_file(p) for p in files.files()).encode()
                            + placement.encode()).hexdigest()[:24]
    root = Path(tempfile.gettempdir()) / f"autocompress-onnx-cache-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid() or root.stat().st_mode & 0o077:
        raise ModelError(f"the ONNX cache folder {root} is not private to this user; remove it (it is rebuilt)")
    folder = root / digest
    onnx_path = folder / ONNX_FILE
    recorded = ((read_metadata(folder) or {}).get("onnx") or {}).get("sha256") if onnx_path.is_file() else None
    if recorded is None or recorded != sha256_file(onnx_path):
        export_onnx(files.model_dir, folder, files.model_filename, files.params_filename, placement=placement)
    return onnx_path
