"""Training checkpoints: every persistable of the training program (weights, BN statistics,
fake-quant scales, optimizer moments, learning-rate var) plus the loop state, written atomically.

Layout: `<save_dir>/checkpoints/last/` (the newest evaluation) and `.../best/` (the best metric so
far), each `state.json` + `arrays.npz`. Arrays are stored under index keys and read with
`allow_pickle=False` (no pickle, DESIGN §9). A checkpoint records a fingerprint of the inputs and
configuration: resuming a different run from it is an error, not a silent mix.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, write_json_atomic
from ..errors import ConfigError

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"


def fingerprint(parts: dict) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
