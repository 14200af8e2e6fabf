"""The `Dataset` folder (DESIGN §6): how data travels between pipeline stages and containers.

A folder with `dataset.yaml` plus one of
- `format: npz`: `.npz` shards (loaded with `allow_pickle=False`: no pickle of untrusted data);
- `format: image_list`: a list file of `relative/path.png label` lines and a declared preprocessing
  (see `images.py`);
- `reader: package.module:function`: a plugin builds the batches itself (see `read_dataset`).

npz `dataset.yaml`::

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
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml

from ..atomic import atomic_dir
from ..errors import DataError
from .source import Batch, FeedSource, _rebatched, sample_shapes

DATASET_FILE = "dataset.yaml"
FORMAT_VERSION = 1
_NPZ_KEYS = {"version", "format", "feeds", "label_field", "label", "samples", "shards", "preprocessing",
             "description"}
_READER_KEYS = {"version", "format", "reader", "feeds", "label_field", "options", "samples", "description"}
# shards up to this total size stay in memory after the first pass: evaluation re-reads eval data
# for every trial, and re-hashing/decompressing it each time would dominate a fast PTQ trial
CACHE_BYTES = 256 << 20


# ---- writing ------------------------------------------------------------------------------------
def write_dataset(folder, feeds: Mapping[str, np.ndarray], labels=None, shard_size: int = 1024,
                  preprocessing=None, label_field: str = "label") -> Path:
    """Write in-memory arrays (first dimension = samples) as an npz Dataset folder, atomically."""
    source = FeedSource.from_arrays(feeds, labels, batch_size=shard_size)
    return write_source(folder, source, shard_size=shard_size, preprocessing=preprocessing,
                        label_field=label_field if labels is not None else None)


def write_source(folder, source: FeedSource, shard_size: int = 1024, preprocessing=None,
                 label_field: str | None = "label") -> Path:
    """Stream any FeedSource (e.g. a user's DataLoader) into an npz Dataset folder, atomically.

    Batches are regrouped into shards of `shard_size` samples; a batch whose per-sample shape
    differs from the previous ones starts a new shard (variable-size data such as OCR lines).
    """
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        writer = _ShardWriter(tmp, shard_size, label_field)
        for batch in source.batches():
            writer.add(batch)
        meta = writer.finish(preprocessing)
        (tmp / DATASET_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    return folder


class _ShardWriter:
    def __init__(self, folder: Path, shard_size: int, label_field: str | None):
        self.folder, self.shard_size, self.label_field = folder, shard_size, label_field
        self.pending: list[Batch] = []
        self.held = 0
        self.shards: list[dict] = []
        self.specs: dict[str, dict] | None = None
        self.label_spec: dict | None = None
        self.has_label: bool | None = None

    def add(self, batch: Batch) -> None:
        if self.has_label is None:
            if batch.label is not None and self.label_field is None:
                raise DataError("the data carries labels but label_field is None; pass label_field='label' "
                                "(or strip the labels) so they are not dropped silently")
            self.has_label = batch.label is not None
            if self.label_field is not None and self.label_field in batch.feed:
                raise DataError(f"label_field {self.label_field!r} is also a feed name; pick another label_field")
        if self.has_label and batch.label is None:
            raise DataError("some batches have labels and some do not; every batch must carry a label, or none")
        if self.pending and sample_shapes(self.pending[0]) != sample_shapes(batch):
            self._flush(self.held)
        self.pending.append(batch)
        self.held += batch.size
        while self.held >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, count: int) -> None:
        feed = {k: np.concatenate([b.feed[k] for b in self.pending]) for k in self.pending[0].feed}
        label = np.concatenate([b.label for b in self.pending]) if self.has_label else None
        arrays = {k: v[:count] for k, v in feed.items()}
        if label is not None:
            arrays[self.label_field] = label[:count]
        name = f"shard-{len(self.shards):05d}.npz"
        path = self.folder / name
        np.savez(path, **arrays)
        self.shards.append({"file": name, "samples": int(count), "sha256": _sha256(path.read_bytes())})
        self._merge_specs(arrays)
        rest = self.held - count
        self.pending = [Batch({k: v[count:] for k, v in feed.items()},
                              None if label is None else label[count:])] if rest else []
        self.held = rest

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

    def finish(self, preprocessing) -> dict:
        if self.held:
            self._flush(self.held)
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
def load_dataset_yaml(folder) -> dict:
    """Parse and sanity-check `dataset.yaml`; DataError names the file on any problem."""
    folder = Path(folder)
    path = folder / DATASET_FILE
    if not folder.is_dir():
        raise DataError(f"Dataset folder {folder} does not exist or is not a folder")
    if not path.is_file():
        raise DataError(f"{path} is missing: a Dataset folder needs a {DATASET_FILE} (write one with "
                        "autocompress.data.write_dataset)")
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} must hold a mapping of keys (format, feeds, ...), got {type(meta).__name__}")
    version = meta.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: version {version!r} is not supported; this autocompress reads version "
                        f"{FORMAT_VERSION}")
    return meta


def read_dataset(folder, batch_size: int = 32) -> FeedSource:
    """Open a Dataset folder as a FeedSource of `batch_size` batches (data is read lazily per pass).

    A `reader: package.module:function` plugin is called as `function(folder: Path, options: dict)`
    on every pass and returns an iterable of batches (feed dicts, label under `label_field`).
    """
    folder = Path(folder)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    meta = load_dataset_yaml(folder)
    path = folder / DATASET_FILE
    if "reader" in meta:
        return _read_plugin(folder, meta, path)
    fmt = meta.get("format")
    if fmt == "npz":
        return _read_npz(folder, meta, path, batch_size)
    if fmt == "image_list":
        from .images import read_image_list

        return read_image_list(folder, meta, path, batch_size)
    raise DataError(f"{path}: format {fmt!r} is unknown; allowed: 'npz', 'image_list' "
                    "(or a 'reader: package.module:function' plugin)")


def _check_keys(meta: dict, allowed: set, required: set, path: Path) -> None:
    unknown = sorted(set(meta) - allowed)
    if unknown:
        raise DataError(f"{path}: unknown keys {unknown}; allowed keys for format {meta.get('format')!r}: "
                        f"{sorted(allowed)}")
    missing = sorted(required - set(meta))
    if missing:
        raise DataError(f"{path}: missing keys {missing}")


def inside(folder: Path, relative: str, path: Path) -> Path:
    """`folder / relative`, refusing absolute paths and anything (`..`, symlinks) that leaves `folder`."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        raise DataError(f"{path}: {relative!r} must be a path relative to the Dataset folder")
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise DataError(f"{path}: {relative!r} points outside the Dataset folder {folder}; refusing to read it")
    return target


def _read_npz(folder: Path, meta: dict, path: Path, batch_size: int) -> FeedSource:
    _check_keys(meta, _NPZ_KEYS, {"format", "feeds", "shards"}, path)
    feeds = meta["feeds"]
    if not isinstance(feeds, dict) or not feeds:
        raise DataError(f"{path}: 'feeds' must map feed names to {{shape, dtype}}, got {feeds!r}")
    label_field = meta.get("label_field")
    shards = meta["shards"]
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: 'shards' must be a non-empty list of {{file, samples, sha256}}")
    files = []
    for entry in shards:
        if not isinstance(entry, dict) or "file" not in entry:
            raise DataError(f"{path}: every shard needs a 'file' key, got {entry!r}")
        target = inside(folder, entry["file"], path)
        if not target.is_file():
            raise DataError(f"{path}: shard {entry['file']} is missing from {folder}; the Dataset is incomplete "
                            "(re-run load_data, or re-copy the folder)")
        files.append((target, entry))
    declared = meta.get("samples")
    counted = sum(int(e.get("samples", 0)) for _, e in files)
    if declared is not None and declared != counted:
        raise DataError(f"{path}: samples={declared} but the shards hold {counted}")
    shards_reader = _NpzShards(files, list(feeds), label_field, feeds)
    names = list(feeds)
    return FeedSource(lambda: _rebatched(shards_reader.batches(), batch_size), names, label_field=label_field,
                      description=f"the Dataset folder {folder}", num_batches=-(-counted // batch_size),
                      converted=True)


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
            if "shape" in spec and not _sample_shape_ok(arr.shape[1:], spec["shape"]):
                raise DataError(f"shard {file}: feed {name!r} has per-sample shape {list(arr.shape[1:])}, "
                                f"dataset.yaml says {spec['shape']}")
        for arr in arrays.values():
            arr.flags.writeable = False  # cached and shared between passes: nobody may change it
        label = arrays[self.label_field] if self.label_field else None
        return Batch({n: arrays[n] for n in self.feed_names}, label)


def _sample_shape_ok(shape, declared) -> bool:
    return len(shape) == len(declared) and all(d in (-1, None) or s == d for s, d in zip(shape, declared))


def _read_plugin(folder: Path, meta: dict, path: Path) -> FeedSource:
    from .plugin import load_plugin

    _check_keys(meta, _READER_KEYS, {"reader"}, path)
    if meta.get("format", "reader") != "reader":
        raise DataError(f"{path}: a 'reader' plugin dataset must have format: reader (or no format key)")
    func = load_plugin(meta["reader"], f"{path} reader")
    options = dict(meta.get("options") or {})
    feeds = meta.get("feeds")
    names = list(feeds) if feeds else None

    def factory():
        try:
            yield from func(folder, options)
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"the reader plugin {meta['reader']} failed on {folder}: "
                            f"{type(err).__name__}: {err}") from err

    return FeedSource(factory, names, label_field=meta.get("label_field"),
                      description=f"the reader plugin {meta['reader']} on {folder}")


__all__ = ["write_dataset", "write_source", "read_dataset", "load_dataset_yaml", "DATASET_FILE"]
