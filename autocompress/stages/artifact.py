"""A model produced by a stage: its files plus the metadata every stage keeps and extends
(DESIGN §3), the trial table or training curve, and the engine's facts for the summary.

In one process the artifact is passed along in memory; between Kubeflow tasks it is a folder:
the model files, `autocompress.json`, `trials.json`, `curve.json` (`save` / `load`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..atomic import atomic_dir, write_json_atomic
from ..errors import ModelError
from ..model_io import METADATA_FILE, ModelFiles, copy_model, dir_size, locate_model, read_metadata, sha256_file
from ..summary import peak_rss_bytes
from ..version import __version__

TRIALS_FILE = "trials.json"
CURVE_FILE = "curve.json"
# engine result keys that are not summary facts (they travel as fields of the artifact instead)
_NOT_FACTS = ("model_files", "trials", "curve", "warnings")


@dataclasses.dataclass
class ModelArtifact:
    files: ModelFiles
    meta: dict = dataclasses.field(default_factory=dict)   # DESIGN §3 metadata, `stages`, `warnings`, `facts`
    trials: list = dataclasses.field(default_factory=list)
    curve: list = dataclasses.field(default_factory=list)

    @classmethod
    def original(cls, files: ModelFiles, source: str | None = None) -> ModelArtifact:
        return cls(files, {"precision": "fp32", "strategy": None, "parent": source or str(files.model_dir),
                           "metric": None})

    @classmethod
    def from_result(cls, result: dict, parent: ModelArtifact, strategy: str, **meta) -> ModelArtifact:
        """An engine result dict as an artifact: its saved model, trials/curve, warnings, and every
        JSON-able fact (params, sparsity, fp32_layers, ...) kept for the summary."""
        files = result["model_files"]
        saved = read_metadata(files.model_dir) or {}
        facts = {k: v for k, v in result.items() if k not in _NOT_FACTS and _jsonable(v)}
        merged = {**saved, **meta, "strategy": strategy, "parent": parent.meta.get("parent"),
                  "metric": result.get("metric"), "baseline_metric": result.get("baseline_metric"),
                  "precision": result.get("precision") or saved.get("precision", "fp32"),
                  "stages": list(parent.meta.get("stages", [])),
                  "warnings": list(parent.meta.get("warnings", [])) + list(result.get("warnings", [])),
                  "facts": {**parent.meta.get("facts", {}), **facts}}
        return cls(files, merged, list(result.get("trials", [])), list(result.get("curve", [])))

    @classmethod
    def load(cls, folder) -> ModelArtifact:
        """The artifact in `folder`; its model files must match the sha256 recorded when it was saved
        (artifacts travel through object stores and shared volumes between stages)."""
        folder = Path(folder)
        meta = read_metadata(folder) or {}
        files = locate_model(folder, meta.get("model_filename"), meta.get("params_filename"))
        recorded = meta.get("sha256") or {}
        bad = [p.name for p in files.files() if p.name in recorded and sha256_file(p) != recorded[p.name]]
        if bad:
            raise ModelError(f"model artifact {folder}: {', '.join(bad)} no longer match the sha256 recorded when it "
                             "was written (a corrupted or modified copy); re-run the stage that produced it")
        return cls(files, meta, _read_list(folder / TRIALS_FILE), _read_list(folder / CURVE_FILE))

    def save(self, dest, tables: bool = True) -> ModelArtifact:
        """Copy the model files and write the metadata into `dest`, atomically; `tables`: also the
        trials and curve (a stage output; the deliverable keeps trials.json beside the model)."""
        with atomic_dir(dest) as tmp:
            copied = copy_model(self.files, tmp)
            meta = {**self.meta, "model_filename": copied.model_filename, "params_filename": copied.params_filename,
                    "format": copied.format, "sha256": {p.name: sha256_file(p) for p in copied.files()},
                    "size_bytes": dir_size(copied), "autocompress_version": __version__}
            write_json_atomic(Path(tmp) / METADATA_FILE, meta)
            if tables:
                write_json_atomic(Path(tmp) / TRIALS_FILE, self.trials)
                write_json_atomic(Path(tmp) / CURVE_FILE, self.curve)
        return ModelArtifact(locate_model(dest, meta["model_filename"], meta["params_filename"]), meta,
                             self.trials, self.curve)

    def with_stage(self, record: dict) -> ModelArtifact:
        return dataclasses.replace(self, meta={**self.meta, "stages": list(self.meta.get("stages", [])) + [record]})

    @property
    def stages(self) -> list[dict]:
        return list(self.meta.get("stages", []))


class StageTimer:
    """`with StageTimer("calibrate") as t: ...` then `t.record`: the stage's wall time and the peak RSS
    of its process so far (each Kubeflow stage is its own process; in one process the peak is
    cumulative)."""

    def __init__(self, name: str):
        self.name = name
        self.record: dict | None = None

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.record = {"stage": self.name, "seconds": round(time.perf_counter() - self._start, 3),
                       "peak_rss_bytes": peak_rss_bytes()}
        return False


def _read_list(path: Path) -> list:
    return json.loads(path.read_text()) if path.exists() else []


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
