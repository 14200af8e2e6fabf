"""The `format: npz` Dataset folder: `.npz` shards, written atomically, read lazily and verified.

Shards are loaded with `allow_pickle=False` (no pickle of untrusted data) and checked against the
sha256, sample count, dtype and shape that `dataset.yaml` declares::

    version: 1
    format: npz
    feeds: {x: {shape: [1, 8, 8], dtype: float32}}   # per-sample shape; -1 = varies between shards
    label_field: label                               # or null
    label: {shape: [1], dtype: int64}                # or null
    samples: 360
    shards: [{file: shard-00000.npz, samples: 256, sha256: ...}, ...]
    preprocessing: <free-form note of how samples were made>   # optional, informational
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import yaml

from ..atomic import atomic_dir
from ..errors import DataError
from .batch import Batch, rebatched, shape_matches
from .folder import DATASET_FILE, FORMAT_VERSION, OpenedDataset, check_keys, inside

_NPZ_KEYS = {"version", "format", "feeds", "label_field", "label", "samples", "shards", "preprocessing",
            "description"}
# shards up to this total size stay in memory after the first pass: evaluation re-reads eval data
# for every trial, and re-hashing/decompressing it each time would dominate a fast PTQ trial
CACHE_BYTES = 256 << 20


# ---- writing ------------------------------------------------------------------------------------
def write_npz(folder, batches: Iterable[Batch], shard_size: int = 1024, preprocessing=None,
              label_field: str | None = "label") -> Path:
    """Stream batches into an npz Dataset folder of `shard_size`-sample shards, atomically.

    A batch whose per-sample shape differs from the previous ones starts a new shard (variable-size
    data such as OCR lines).
    """
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        writer = _ShardWriter(tmp, label_field)
        for shard in rebatched(_labels_checked(batches, label_field), shard_size):
            writer.write(shard)
        meta = writer.meta(preprocessing)
        (tmp / DATASET_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    return folder


def _labels_checked(batches: Iterable[Batch], label_field: str | None) -> Iterator[Batch]:
    has_label = None
    for batch in batches:
        if has_label is None:
            if batch.label is not None and label_field is None:
                raise DataError("the data carries labels but label_field is None; pass label_field='label' "
                                "(or strip the labels) so they are not dropped silently")
            if label_field is not None and label_field in batch.feed:
                raise DataError(f"label_field {label_field!r} is also a feed name; pick another label_field")
            has_label = batch.label is not None
        elif has_label != (batch.label is not None):
            raise DataError("some batches have labels and some do not; every batch must carry a label, or none")
        yield batch


class _ShardWriter:
    def __init__(self, folder: Path, label_field: str | None):
        self.folder, self.label_field = folder, label_field
        self.shards: list[dict] = []
        self.specs: dict[str, dict] | None = None
        self.has_label = False

    def write(self, batch: Batch) -> None:
        arrays = dict(batch.feed)
        if batch.label is not None:
            arrays[self.label_field] = batch.label
            self.has_label = True
        name = f"shard-{len(self.shards):05d}.npz"
        path = self.folder / name
        np.savez(path, **arrays)
        self.shards.append({"file": name, "samples": batch.size, "sha256": _sha256(path.read_bytes())})
        self._merge_specs(arrays)

    def _merge_specs(self, arrays: dict) -> None:
        specs = {k: {"shape": list(a.shape[1:]), "dtype": str(a.dtype)} for k, a in arrays.items()}
        if self.specs is None:
            self.specs = specs
            return
        for k, spec in specs.items():
            old = self.specs[k]
            if old["dtype"] != spec["dtype"] or len(old["shape"]) != len(spec["shape"]):
                raise DataError(f"feed {k!r} changes dtype or rank between batches "
                                f"({old} vs {spec}); every batch must have the same dtype and rank")
            old["shape"] = [a if a == b else -1 for a, b in zip(old["shape"], spec["shape"])]

    def meta(self, preprocessing) -> dict:
        if not self.shards:
            raise DataError("the data yielded no batches; nothing to write")
        specs = dict(self.specs)
        label = specs.pop(self.label_field) if self.has_label else None
        return {"version": FORMAT_VERSION, "format": "npz", "feeds": specs,
                "label_field": self.label_field if self.has_label else None, "label": label,
                "samples": sum(s["samples"] for s in self.shards), "shards": self.shards,
                "preprocessing": preprocessing}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- reading ------------------------------------------------------------------------------------
def read_npz(folder: Path, meta: dict, path: Path, batch_size: int) -> OpenedDataset:
    """Check an npz `dataset.yaml` (`meta`, read from `path`) and its shard files; read them lazily."""
    check_keys(meta, _NPZ_KEYS, {"format", "feeds", "shards"}, path)
    feeds = meta["feeds"]
    if not isinstance(feeds, dict) or not feeds or not all(
            isinstance(k, str) and (v is None or _is_spec(v)) for k, v in feeds.items()):
        raise DataError(f"{path}: 'feeds' must map feed names to {{shape: [int, ...], dtype: str}}, got {feeds!r}")
    label_field = meta.get("label_field")
    if label_field is not None and not isinstance(label_field, str):
        raise DataError(f"{path}: 'label_field' must be the label array's name (a string) or null, got "
                        f"{label_field!r}")
    if label_field is not None and meta.get("label") is not None and not _is_spec(meta["label"]):
        raise DataError(f"{path}: 'label' must be {{shape: [int, ...], dtype: str}}, got {meta['label']!r}")
    shards = meta["shards"]
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: 'shards' must be a non-empty list of {{file, samples, sha256}}")
    declared = meta.get("samples")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)):
        raise DataError(f"{path}: 'samples' must be an integer, got {declared!r}")
    files = []
    for entry in shards:
        if not isinstance(entry, dict) or "file" not in entry:
            raise DataError(f"{path}: every shard needs a 'file' key, got {entry!r}")
        samples, digest = entry.get("samples", 0), entry.get("sha256")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0 or \
                (digest is not None and not isinstance(digest, str)):
            raise DataError(f"{path}: shard {entry.get('file')!r} needs 'samples' (an integer >= 0) and 'sha256' (a "
                            f"string), got {entry!r}")
        target = inside(folder, entry["file"], path)
        if not target.is_file():
            raise DataError(f"{path}: shard {entry['file']} is missing from {folder}; the Dataset is incomplete "
                            "(re-run load_data, or re-copy the folder)")
        files.append((target, entry))
    counted = sum(int(e.get("samples", 0)) for _, e in files)
    if declared is not None and declared != counted:
        raise DataError(f"{path}: samples={declared} but the shards hold {counted}")
    shards_reader = _NpzShards(files, list(feeds), label_field, feeds)
    return OpenedDataset(lambda: rebatched(shards_reader.batches(), batch_size), list(feeds), label_field,
                         description=f"the Dataset folder {folder}", num_batches=-(-counted // batch_size))


def _is_spec(spec) -> bool:
    """{shape: [int, ...], dtype: str}, both optional."""
    if not isinstance(spec, dict) or set(spec) - {"shape", "dtype"}:
        return False
    shape = spec.get("shape", [])
    dtype = spec.get("dtype", "float32")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return False
    if not isinstance(dtype, str):
        return False
    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return True


class _NpzShards:
    def __init__(self, files: list, feed_names: list[str], label_field: str | None, specs: dict):
        self.files, self.feed_names, self.label_field, self.specs = files, feed_names, label_field, specs
        total = sum(p.stat().st_size for p, _ in files)
        self.cache: dict[int, Batch] | None = {} if total <= CACHE_BYTES else None

    def batches(self):
        for i in range(len(self.files)):
            if self.cache is not None and i in self.cache:
                yield self.cache[i]
                continue
            batch = self._load(*self.files[i])
            if self.cache is not None:
                self.cache[i] = batch
            yield batch

    def _load(self, file: Path, entry: dict) -> Batch:
        data = file.read_bytes()
        if entry.get("sha256") and _sha256(data) != entry["sha256"]:
            raise DataError(f"shard {file} is corrupt: its sha256 does not match dataset.yaml (re-copy the folder)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            raise DataError(f"shard {file} is corrupt or not an .npz file ({type(err).__name__}: {err}); "
                            "re-create the Dataset") from None
        expected = self.feed_names + ([self.label_field] if self.label_field else [])
        if sorted(arrays) != sorted(expected):
            raise DataError(f"shard {file} holds arrays {sorted(arrays)} but dataset.yaml declares {expected}")
        lengths = {a.shape[0] for a in arrays.values()}
        if lengths != {int(entry.get("samples", -1))}:
            raise DataError(f"shard {file} holds {sorted(lengths)} samples, dataset.yaml says {entry.get('samples')}")
        for name in self.feed_names:
            spec = self.specs[name] or {}
            arr = arrays[name]
            if "dtype" in spec and str(arr.dtype) != str(spec["dtype"]):
                raise DataError(f"shard {file}: feed {name!r} has dtype {arr.dtype}, dataset.yaml says {spec['dtype']}")
            if "shape" in spec and not shape_matches(arr.shape[1:], spec["shape"]):
                raise DataError(f"shard {file}: feed {name!r} has per-sample shape {list(arr.shape[1:])}, "
                                f"dataset.yaml says {spec['shape']}")
        for arr in arrays.values():
            arr.flags.writeable = False  # cached and shared between passes: nobody may change it
        label = arrays[self.label_field] if self.label_field else None
        return Batch({n: arrays[n] for n in self.feed_names}, label)
