"""The program layer: everything the strategies read from or edit in a Paddle program, per model format.

One interface, `Backend`, with a backend per format (`backend_for(files)`):

- **legacy** (`*.pdmodel`, `program/legacy/`): every edit the strategies make lives here, on legacy
  programs: inference -> trainable program (`trainable`), teacher merge (`teachers`), ops appended for
  losses (`ops`), quantize/dequantize insertion, conversion and FP32 marks (`quantize`), channel removal
  with shape updates (`channels`), and what a program holds (`info`: inputs, outputs, parameters,
  FLOPs).
- **PIR** (`*.json`, `program/pir/`): reads natively (`pir.info`), and hands edits to the legacy
  backend on a verified translation (`to_legacy.pir_to_legacy`), then brings the result back to PIR
  (`convert.convert_to_pir`), so the output keeps the input's format and file names. Edits go through
  the translation because Paddle 3.3.1 cannot make them on a PIR program (measured, docs/pir.md): its
  quantization passes take legacy programs only, `SGD.minimize` on a program loaded from `inference.json`
  fails in a kernel, and its int8 quantize/dequantize programs do not run as PIR.

Algorithms (`quant/`, `train/`, `prune/`) call the layer; `stages/formats.py` moves a model between
the formats at the edges of a run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

LEGACY = "pdmodel"
PIR = "pir-json"


@dataclasses.dataclass(frozen=True)
class Backend:
    """The operations every format provides. `summarize(files, feed_shapes)` -> inputs, outputs,
    params, param_bytes, flops; `editable(files, folder)` -> the legacy model the edits run on (the
    files themselves for legacy); `restore(files, folder)` -> an edited legacy model in this backend's
    format (raises AutoCompressError naming what Paddle cannot run)."""

    format: str
    summarize: Callable
    editable: Callable
    restore: Callable


def _same(files, folder=None):
    return files


def _legacy_summarize(files, feed_shapes=None):
    from .legacy.info import summarize

    return summarize(files, feed_shapes)


def _pir_summarize(files, feed_shapes=None):
    from .pir.info import summarize

    return summarize(files, feed_shapes)


def _pir_editable(files, folder):
    from .to_legacy import pir_to_legacy

    return pir_to_legacy(files, Path(folder))


def _pir_restore(files, folder):
    from .convert import convert_to_pir

    return convert_to_pir(files.model_dir, Path(folder), files.model_filename, files.params_filename)


BACKENDS = {LEGACY: Backend(LEGACY, _legacy_summarize, _same, _same),
            PIR: Backend(PIR, _pir_summarize, _pir_editable, _pir_restore)}


def backend_for(files) -> Backend:
    """The backend of a model's format (`ModelFiles.format`)."""
    return BACKENDS[files.format]
