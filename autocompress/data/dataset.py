"""The `Dataset` folder (DESIGN §6): how data travels between pipeline stages and containers.

A folder with `dataset.yaml` (`folder.py`) plus one of
- `format: npz`: `.npz` shards, no pickles (`npz.py`); written by `write_dataset` / `write_source`;
- `format: image_list`: a list file of `relative/path.png label` lines and a declared preprocessing
  (`images.py`; written by `write_image_list`);
- `reader: package.module:function`: a plugin builds the batches itself (`formats.py`).

`read_dataset` opens any of them as a `FeedSource`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .folder import DATASET_FILE, load_dataset_yaml
from .npz import write_npz
from .source import FeedSource


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
    return write_npz(folder, source.batches(), shard_size=shard_size, preprocessing=preprocessing,
                     label_field=label_field)


def read_dataset(folder, batch_size: int = 32) -> FeedSource:
    """Open a Dataset folder as a FeedSource of `batch_size` batches (data is read lazily per pass).

    A `reader: package.module:function` plugin is called as `function(folder: Path, options: dict)`
    on every pass and returns an iterable of batches (feed dicts, label under `label_field`).
    """
    return FeedSource.from_folder(folder, batch_size)


__all__ = ["write_dataset", "write_source", "read_dataset", "load_dataset_yaml", "DATASET_FILE"]
