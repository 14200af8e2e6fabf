"""Training checkpoints: every persistable of the training program (weights, BN statistics,
fake-quant scales, optimizer moments, learning-rate var) plus the loop state, written atomically.

Layout: `<save_dir>/checkpoints/last/` (the newest evaluation) and `.../best/` (the best metric so
far), each `state.json` + `arrays.npz`. Arrays are stored under index keys and read with
`allow_pickle=False` (no pickle, DESIGN §9). A checkpoint records a fingerprint of the inputs and
configuration: resuming a different run from it is an error, not a silent mix.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_json_atomic
from ..errors import ConfigError

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_DEPTH = 8


def fingerprint(parts: dict) -> str:
    text = json.dumps(stable_identity(parts), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stable_identity(value, _depth: int = 0):
    """A JSON-able identity of `value` that every process computes alike: functions by qualified name,
    objects (grad_clip, regularizers) by type and attributes, arrays by content; never a repr holding
    a memory address, which would make each new process refuse to resume."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if _depth >= _MAX_DEPTH:
        return {"type": _qualified(type(value))}
    d = _depth + 1
    if isinstance(value, dict):
        return {str(k): stable_identity(v, d) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stable_identity(v, d) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((stable_identity(v, d) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {"array": str(value.dtype), "shape": list(value.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]}
    if isinstance(value, functools.partial):
        return {"partial": stable_identity(value.func, d), "args": stable_identity(value.args, d),
                "keywords": stable_identity(value.keywords, d)}
    if inspect.ismethod(value):
        return {"method": _qualified(value.__func__), "self": stable_identity(value.__self__, d)}
    if inspect.isroutine(value) or inspect.isclass(value):
        return {"callable": _qualified(value)}
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        return {"type": _qualified(type(value)), "attrs": stable_identity(attrs, d)}
    return {"type": _qualified(type(value)), "repr": _ADDRESS.sub("", repr(value))}


def _qualified(obj) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def save(folder: Path, scope, names: list[str], state: dict) -> None:
    arrays, saved = {}, []
    for name in names:
        var = scope.find_var(name)
        if var is None or not var.get_tensor()._is_initialized():
            continue
        arrays[f"a{len(saved)}"] = np.array(var.get_tensor())
        saved.append(name)
    with atomic_dir(folder) as tmp:
        np.savez(tmp / ARRAYS_FILE, **arrays)
        write_json_atomic(tmp / STATE_FILE, dict(state, array_names=saved))


def exists(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / ARRAYS_FILE).is_file()


def read_state(folder: Path) -> dict:
    return json.loads((folder / STATE_FILE).read_text())


def load(folder: Path, scope, place, only: set[str] | None = None) -> dict:
    """Put the checkpoint's arrays into `scope` (optionally only the names in `only`); return its state."""
    state = read_state(folder)
    with np.load(folder / ARRAYS_FILE, allow_pickle=False) as data:
        for i, name in enumerate(state["array_names"]):
            if only is not None and name not in only:
                continue
            scope.var(name).get_tensor().set(data[f"a{i}"], place)
    return state


def check_resumable(folder: Path, expected: str) -> dict:
    state = read_state(folder)
    if state.get("fingerprint") != expected:
        raise ConfigError(
            f"{folder.parent} holds checkpoints of a different run (other model, teachers, data feeds or "
            "config), so this run cannot resume from them. Use a new save_dir, or delete "
            f"{folder.parent} to start over.")
    return state
