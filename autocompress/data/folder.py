"""What every `Dataset` folder format shares (DESIGN §6): its `dataset.yaml` and the checks on it.

A Dataset folder holds `dataset.yaml` (`version: 1`, plus `format: npz` (`npz.py`), `format: image_list`
(`images.py`) or `reader: package.module:function` (`formats.py`)) and the files that format names.

- `load_dataset_yaml`: parse `dataset.yaml`, checking that it is a mapping of a supported version;
- `check_keys` / `inside`: a format's allowed keys, and paths that must stay inside the folder;
- `OpenedDataset`: what a format's reader returns, for `FeedSource.from_folder` to wrap.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from ..errors import DataError

DATASET_FILE = "dataset.yaml"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class OpenedDataset:
    """A Dataset folder opened by its format's reader; `factory()` starts a fresh pass over the batches."""

    factory: Callable[[], Iterable]
    feed_names: list[str] | None
    label_field: str | None
    description: str
    num_batches: int | None = None
    yields_batches: bool = True  # the factory yields `Batch`es with the feed names (else raw batches)


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


def check_keys(meta: dict, allowed: set, required: set, path: Path) -> None:
    """Refuse keys a format does not know (typos) and name the required ones that are missing."""
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
