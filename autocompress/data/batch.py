"""`Batch`: one batch of numpy feeds (plus an optional label), and the helpers that make and regroup batches.

- `to_numpy`: an array-like (numpy, paddle Tensor, lists) -> numeric numpy array, naming what is wrong;
- `BatchConverter`: one raw batch (dict / list / tuple / array) -> `Batch`;
- `rebatched`: regroup a stream of batches into batches of a fixed number of samples;
- `sample_shapes` / `shape_matches`: per-sample shapes, and shape checks where -1 (or None) is any size.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from ..errors import DataError


@dataclasses.dataclass(frozen=True)
class Batch:
    feed: dict[str, np.ndarray]
    label: np.ndarray | None = None

    @property
    def size(self) -> int:
        first = next(iter(self.feed.values()))
        return int(first.shape[0]) if first.ndim else 1


def to_numpy(value, what: str) -> np.ndarray:
    """A numpy view/copy of an array-like (numpy, paddle Tensor, paddle DenseTensor, lists)."""
    if isinstance(value, np.ndarray):
        arr = value
    elif hasattr(value, "numpy") and callable(value.numpy):  # paddle.Tensor in dynamic mode
        arr = np.asarray(value.numpy())
    else:  # DenseTensor from a static-mode DataLoader, python numbers and lists
        try:
            arr = np.array(value)
        except Exception as err:
            raise DataError(f"{what}: cannot convert {type(value).__name__} to a numpy array ({err})") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {arr.dtype}; feeds and labels must be numeric arrays "
                        "(bool, int, float). Decode strings/images before batching, or use an image-list Dataset.")
    return arr


class BatchConverter:
    """Turns one raw batch (dict / list / tuple / array) into a `Batch`, naming what is wrong."""

    def __init__(self, feed_names: list[str] | None, label_field: str | None, where: str):
        self.feed_names = list(feed_names) if feed_names is not None else None
        self.label_field = label_field
        self.where = where

    def __call__(self, raw, index: int) -> Batch:
        what = f"{self.where}, batch {index}"
        if isinstance(raw, Batch):
            return self._from_mapping(dict(raw.feed), raw.label, what)
        if isinstance(raw, Mapping):
            return self._from_mapping(dict(raw), None, what)
        if isinstance(raw, (list, tuple)):
            return self._from_sequence(list(raw), what)
        if self.feed_names is not None and len(self.feed_names) == 1 and not isinstance(raw, (str, bytes)):
            return Batch({self.feed_names[0]: to_numpy(raw, f"{what} feed {self.feed_names[0]!r}")})
        raise DataError(f"{what} is a {type(raw).__name__}; a batch must be a dict of feed name -> array, or a "
                        f"list/tuple of arrays in feed order {self.feed_names} (plus an optional trailing label)")

    def _from_mapping(self, raw: dict, label, what: str) -> Batch:
        if self.label_field is not None and self.label_field in raw:
            label = raw.pop(self.label_field)
        names = self.feed_names
        if names is None:
            names = list(raw)
        missing = [n for n in names if n not in raw]
        extra = [k for k in raw if k not in names]
        if len(extra) == 1 and self.label_field is None and label is None and not missing:
            label = raw.pop(extra[0])  # the one key that is not a feed is the label
            extra = []
        if missing or extra:
            hint = (f"; if {extra} is the label, pass label_field=" + repr(extra[0])) if extra and not missing else ""
            raise DataError(f"{what} has keys {sorted(raw)} but the model expects the feeds {names}"
                            f"{' (label: ' + repr(self.label_field) + ')' if self.label_field else ''}: "
                            f"missing {missing}, unexpected {extra}{hint}. Rename the keys to the model's feed names.")
        feed = {n: to_numpy(raw[n], f"{what} feed {n!r}") for n in names}
        return Batch(feed, None if label is None else to_numpy(label, f"{what} label"))

    def _from_sequence(self, raw: list, what: str) -> Batch:
        if self.feed_names is None:
            raise DataError(f"{what} is a list; lists need the model's feed names to know what each element "
                            "is. Pass feed_names, or yield dicts of feed name -> array")
        n = len(self.feed_names)
        if len(raw) not in (n, n + 1):
            raise DataError(f"{what} has {len(raw)} elements but the model has {n} feeds {self.feed_names}; "
                            f"yield {n} arrays in feed order, or {n + 1} with the label last")
        feed = {name: to_numpy(v, f"{what} feed {name!r}") for name, v in zip(self.feed_names, raw)}
        label = to_numpy(raw[n], f"{what} label") if len(raw) == n + 1 else None
        return Batch(feed, label)


def shape_matches(shape, want) -> bool:
    """Same rank and every dimension equal, where a wanted -1 (or None) accepts any size."""
    return len(shape) == len(want) and all(w is None or w < 0 or s == w for s, w in zip(shape, want))


def sample_shapes(batch: Batch) -> tuple:
    """The per-sample shapes (all but the first dimension) of every feed and of the label."""
    shapes = tuple(v.shape[1:] for v in batch.feed.values())
    return shapes + ((batch.label.shape[1:],) if batch.label is not None else ())


def rebatched(batches: Iterable[Batch], batch_size: int) -> Iterator[Batch]:
    """Regroup samples into `batch_size` batches; a change of per-sample shape (variable-size data
    such as OCR lines) ends the current batch early instead of failing to concatenate."""
    pending: list[Batch] = []
    held = 0
    for batch in batches:
        if pending and sample_shapes(pending[0]) != sample_shapes(batch):
            yield _concat(pending)
            pending, held = [], 0
        pending.append(batch)
        held += batch.size
        while held >= batch_size:
            merged = _concat(pending)
            yield _slice(merged, 0, batch_size)
            rest = _slice(merged, batch_size, held)
            held -= batch_size
            pending = [rest] if held else []
    if held:
        yield _concat(pending)


def _concat(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    labels = [b.label for b in batches]
    if any(lab is None for lab in labels) and not all(lab is None for lab in labels):
        raise DataError("some batches have labels and some do not; every batch must carry a label, or none")
    feed = {k: np.concatenate([b.feed[k] for b in batches]) for k in batches[0].feed}
    return Batch(feed, None if labels[0] is None else np.concatenate(labels))


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch({k: v[start:stop] for k, v in batch.feed.items()},
                 None if batch.label is None else batch.label[start:stop])
