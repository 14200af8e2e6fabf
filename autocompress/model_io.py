"""Model I/O: find the model files, load them without touching them, summarise, save with metadata.

Formats (DESIGN §4): legacy `*.pdmodel` (protobuf program, loads with the PIR API off) and Paddle 3
`*.json` (PIR). Both share `*.pdiparams`. The input folder is never written to: loaders read
from a private copy and `InputGuard` checks the input's hashes before and after a run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

from .atomic import atomic_dir, write_json_atomic
from .errors import ModelError
from .version import __version__

METADATA_FILE = "autocompress.json"
MODEL_SUFFIXES = {".pdmodel": "pdmodel", ".json": "pir-json"}


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    model_dir: Path
    model_filename: str
    params_filename: str | None
    format: str  # 'pdmodel' | 'pir-json'

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.model_filename

    @property
    def params_path(self) -> Path | None:
        return self.model_dir / self.params_filename if self.params_filename else None

    @property
    def path_prefix(self) -> str:
        """What `paddle.static.load_inference_model` wants: the path without the suffix."""
        return str(self.model_dir / Path(self.model_filename).stem)

    def files(self) -> list[Path]:
        return [p for p in (self.model_path, self.params_path) if p is not None]

    def to_dict(self) -> dict:
        return {"model_dir": str(self.model_dir), "model_filename": self.model_filename,
                "params_filename": self.params_filename, "format": self.format}


def locate_model(model_dir, model_filename: str | None = None, params_filename: str | None = None) -> ModelFiles:
    """Resolve the model files in `model_dir`; file names may be omitted when unambiguous."""
    if model_dir is None:
        raise ModelError("model_dir is required: the folder holding the inference model")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model_dir {model_dir} does not exist or is not a folder")
    present = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    if model_filename is None:
        candidates = [n for n in present if Path(n).suffix in MODEL_SUFFIXES and n != METADATA_FILE
                      and (Path(n).suffix != ".json" or (model_dir / (Path(n).stem + ".pdiparams")).exists())]
        if not candidates:
            raise ModelError(f"no model file (*.pdmodel or *.json with a matching *.pdiparams) in {model_dir}; "
                             f"found: {present or 'nothing'}")
        if len(candidates) > 1:
            raise ModelError(f"{model_dir} holds several model files {candidates}; pass model_filename")
        model_filename = candidates[0]
    model_path = model_dir / model_filename
    if not model_path.is_file():
        raise ModelError(f"model file {model_path} does not exist; files in {model_dir}: {present}")
    suffix = Path(model_filename).suffix
    if suffix not in MODEL_SUFFIXES:
        raise ModelError(f"{model_filename}: unknown model format; expected *.pdmodel (Paddle 2) or *.json (Paddle 3 PIR)")
    if params_filename is None:
        guess = Path(model_filename).stem + ".pdiparams"
        if (model_dir / guess).is_file():
            params_filename = guess
        else:
            params = [n for n in present if n.endswith(".pdiparams")]
            if len(params) == 1:
                params_filename = params[0]
            elif len(params) > 1:
                raise ModelError(f"{model_dir} holds several params files {params}; pass params_filename")
            # no params file: a model without weights is legal (e.g. a pure reshape graph)
    elif not (model_dir / params_filename).is_file():
        raise ModelError(f"params file {model_dir / params_filename} does not exist; files in {model_dir}: {present}")
    if params_filename and Path(params_filename).stem != Path(model_filename).stem:
        raise ModelError(f"Paddle loads params from <prefix>.pdiparams; {params_filename} does not match "
                         f"{model_filename}. Rename it to {Path(model_filename).stem}.pdiparams")
    return ModelFiles(model_dir, model_filename, params_filename, MODEL_SUFFIXES[suffix])


def require_legacy(files: ModelFiles, what: str) -> None:
    if files.format != "pdmodel":
        raise ModelError(
            f"{what} needs a legacy *.pdmodel program for now; {files.model_filename} is a Paddle 3 PIR "
            "model. Re-export it in the legacy format: in Python, inside `with paddle.pir_utils.OldIrGuard():` "
            "call `paddle.jit.save(layer, path, input_spec=...)` (or run the export with FLAGS_enable_pir_api=0).")


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class InputGuard:
    """Records the input files' hashes; `verify()` raises if anything changed them."""

    def __init__(self, files: ModelFiles):
        self.hashes = {str(p): sha256_file(p) for p in files.files()}

    def hashes_by_name(self) -> dict[str, str]:
        """The hashes keyed by file name (the same model in another folder has the same ones)."""
        return {Path(p).name: h for p, h in self.hashes.items()}

    def verify(self) -> None:
        changed = [p for p, h in self.hashes.items() if not Path(p).exists() or sha256_file(p) != h]
        if changed:
            raise ModelError(f"input model files changed during the run: {changed}. This is a bug; please report it.")


def copy_model(files: ModelFiles, dest) -> ModelFiles:
    """Copy the model files into `dest` (a working copy); returns the copy's ModelFiles."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for p in files.files():
        shutil.copy2(p, dest / p.name)
    return dataclasses.replace(files, model_dir=dest)


@dataclasses.dataclass
class LoadedModel:
    files: ModelFiles
    program: object
    feed_names: list[str]
    fetch_targets: list
    scope: object
    executor: object

    @property
    def fetch_names(self) -> list[str]:
        return [v.name for v in self.fetch_targets]


def load_model(files: ModelFiles, place=None, scope=None) -> LoadedModel:
    """Load a legacy program into its own scope. Call inside `paddle_env.legacy_ir()`."""
    import paddle

    from .paddle_env import paddle as static_paddle

    require_legacy(files, "loading a program for compression")
    static_paddle()
    scope = scope if scope is not None else paddle.static.Scope()
    exe = paddle.static.Executor(place or paddle.CPUPlace())
    try:
        with paddle.static.scope_guard(scope):
            # locate_model guarantees <prefix>.pdmodel + <prefix>.pdiparams, so the prefix says it all
            program, feeds, fetches = paddle.static.load_inference_model(files.path_prefix, exe)
    except Exception as err:  # paddle raises bare RuntimeError/ValueError for corrupt files
        pair = f"{files.model_path}" + (f" with the params {files.params_path.name}" if files.params_path else "")
        raise ModelError(f"could not load the model {pair}: {type(err).__name__}: "
                         f"{paddle_error_line(err)}. Is it a complete Paddle inference model whose params file "
                         "belongs to its program (re-export it, or check the download)?") from None
    return LoadedModel(files, program, list(feeds), list(fetches), scope, exe)


def paddle_error_line(err: Exception) -> str:
    """The line of a Paddle error that says what went wrong: its C++ errors open with the user's call
    stack ("In user code:") and put the message on a line like "UnavailableError: ..." or "(Fatal) ..."."""
    import re

    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    for ln in lines:
        if re.match(r"^(\(\w+\)|\w+Error:)", ln):
            return ln[:500]
    return (lines[0] if lines else type(err).__name__)[:500]


def dir_size(files: ModelFiles) -> int:
    return int(sum(p.stat().st_size for p in files.files()))


def summarize(files: ModelFiles, feed_shapes: dict[str, list[int]] | None = None) -> dict:
    """Inputs/outputs, parameter count and bytes, FLOPs and size on disk, read by the format's backend."""
    from .program import backend_for

    summary = {"format": files.format, "model_filename": files.model_filename,
               "params_filename": files.params_filename, "size_bytes": dir_size(files),
               "sha256": {p.name: sha256_file(p) for p in files.files()}}
    summary.update(backend_for(files).summarize(files, feed_shapes))
    return summary


def save_model(model: LoadedModel, out_dir, metadata: dict, program=None, fetch_targets=None) -> ModelFiles:
    """Save `program` (default: the loaded one) atomically into `out_dir` with the input's file names
    and the metadata file. Call inside `paddle_env.legacy_ir()`."""
    import paddle

    program = program if program is not None else model.program
    fetch_targets = fetch_targets if fetch_targets is not None else model.fetch_targets
    stem = Path(model.files.model_filename).stem
    with atomic_dir(out_dir) as tmp:
        block = program.global_block()
        feed_vars = [block.var(n) for n in model.feed_names]
        fetch_vars = [block.var(v.name if hasattr(v, "name") else v) for v in fetch_targets]
        with paddle.static.scope_guard(model.scope):
            paddle.static.save_inference_model(str(tmp / stem), feed_vars, fetch_vars, model.executor,
                                               program=program, clip_extra=True)
        files = ModelFiles(Path(tmp), f"{stem}.pdmodel", f"{stem}.pdiparams", "pdmodel")
        _strip_callstacks(files.model_path)
        meta = build_metadata(files, program, model.feed_names, fetch_vars, model.scope, metadata)
        write_json_atomic(Path(tmp) / METADATA_FILE, meta)
    return dataclasses.replace(files, model_dir=Path(out_dir))


def _strip_callstacks(model_path: Path) -> None:
    """Clear the Python call stack Paddle records in the feed / fetch ops it adds on save (clip_extra
    keeps it): it made the same model differ byte for byte from one caller or process to the next,
    and it wrote this machine's file paths into a model meant to be shipped."""
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(model_path.read_bytes())
    changed = False
    for block in desc.blocks:
        for op in block.ops:
            for attr in op.attrs:
                if attr.name == "op_callstack" and len(attr.strings):
                    del attr.strings[:]
                    changed = True
    if changed:
        model_path.write_bytes(desc.SerializeToString())


def build_metadata(files: ModelFiles, program, feed_names, fetch_vars, scope, extra: dict) -> dict:
    from .program.legacy.info import facts

    meta = {
        "format": files.format,
        "model_filename": files.model_filename,
        "params_filename": files.params_filename,
        "sha256": {p.name: sha256_file(p) for p in files.files()},
        **facts(program, feed_names, [v.name for v in fetch_vars], scope),
        "size_bytes": dir_size(files),
        "precision": "fp32",
        "strategy": None,
        "parent": None,
        "metric": None,
        "autocompress_version": __version__,
    }
    meta.update(extra)
    return meta


def read_metadata(model_dir) -> dict | None:
    import json

    path = Path(model_dir) / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else None
