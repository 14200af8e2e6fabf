"""`open_dataset`: read a Dataset folder's `dataset.yaml` and hand it to its format's reader.

Formats: `npz` (`npz.py`), `image_list` (`images.py`), and `reader: package.module:function`, a user's
plugin called as `function(folder: Path, options: dict)` on every pass that returns an iterable of
batches (feed dicts, label under `label_field`)::

    version: 1
    reader: my_package.readers:read_lines
    options: {lang: en}        # optional, passed to the function as is
    feeds: [x]                 # optional: the feed names the batches carry
    label_field: label         # optional
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .folder import DATASET_FILE, OpenedDataset, check_keys, load_dataset_yaml
from .images import read_image_list
from .npz import read_npz
from .plugin import load_plugin

_READER_KEYS = {"version", "format", "reader", "feeds", "label_field", "options", "samples", "description"}


def open_dataset(folder, batch_size: int = 32) -> OpenedDataset:
    """Check `dataset.yaml` and open the folder in `batch_size` batches (data is read lazily per pass)."""
    folder = Path(folder)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    meta = load_dataset_yaml(folder)
    path = folder / DATASET_FILE
    if "reader" in meta:
        return read_with_plugin(folder, meta, path)
    fmt = meta.get("format")
    if fmt == "npz":
        return read_npz(folder, meta, path, batch_size)
    if fmt == "image_list":
        return read_image_list(folder, meta, path, batch_size)
    raise DataError(f"{path}: format {fmt!r} is unknown; allowed: 'npz', 'image_list' "
                    "(or a 'reader: package.module:function' plugin)")


def read_with_plugin(folder: Path, meta: dict, path: Path) -> OpenedDataset:
    """A `reader:` Dataset: the plugin's batches, its failures reported as DataError naming it."""
    check_keys(meta, _READER_KEYS, {"reader"}, path)
    if meta.get("format", "reader") != "reader":
        raise DataError(f"{path}: a 'reader' plugin dataset must have format: reader (or no format key)")
    func = load_plugin(meta["reader"], f"{path} reader")
    options = dict(meta.get("options") or {})
    feeds = meta.get("feeds")

    def factory():
        try:
            yield from func(folder, options)
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"the reader plugin {meta['reader']} failed on {folder}: "
                            f"{type(err).__name__}: {err}") from err

    return OpenedDataset(factory, list(feeds) if feeds else None, meta.get("label_field"),
                         description=f"the reader plugin {meta['reader']} on {folder}", yields_batches=False)
