"""`FeedSource`: every kind of input data the engine accepts, seen as re-iterable numpy batches.

Accepted (DESIGN §6): a paddle `DataLoader` (batches are lists of tensors or dicts), any re-iterable
or zero-argument callable (generator function) yielding dicts / lists / tuples of numpy arrays or
paddle tensors, in-memory arrays (`from_arrays`) and Dataset folders (`from_folder`, see `data.dataset`).
`Batch` and the conversion of raw batches live in `batch.py`.

A one-shot iterator (e.g. a generator *object*) is refused rather than cached: calibration,
every PTQ trial and every epoch iterate the data again, and silently holding a whole data set in
memory would hide a memory cost the user did not ask for. The error says what to pass instead.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from ..errors import DataError
from .batch import Batch, BatchConverter, rebatched, shape_matches, to_numpy
from .formats import open_dataset


class FeedSource:
    """Re-iterable numpy batches. Build it with `from_any`, `from_arrays` or `from_folder`."""

    def __init__(self, factory: Callable[[], Iterable], feed_names: list[str] | None, *,
                 label_field: str | None = None, description: str = "the data",
                 num_batches: int | None = None, converted: bool = False,
                 feed_shapes: Mapping[str, list] | None = None, feed_dtypes: Mapping[str, str] | None = None):
        self._factory = factory
        self.feed_names = list(feed_names) if feed_names is not None else None
        self.label_field = label_field
        self.description = description
        self._num_batches = num_batches
        self._converted = converted  # factory already yields `Batch`es with the right names
        self._convert = BatchConverter(self.feed_names, label_field, description)
        self.feed_shapes = dict(feed_shapes or {})
        self.feed_dtypes = {k: np.dtype(v) for k, v in (feed_dtypes or {}).items()}
        # NaN / inf refused in Dataset folders and in data bound to a model (FeedSource.for_model); a
        # bare iterable given straight to an engine is passed through as it comes
        self.check_finite = bool(self.feed_shapes or self.feed_dtypes)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_any(cls, obj, feed_names: list[str] | None, label_field: str | None = None, *,
                 feed_shapes: Mapping[str, list] | None = None,
                 feed_dtypes: Mapping[str, str] | None = None, batch_size: int = 32) -> FeedSource:
        """Wrap a DataLoader, a re-iterable, a generator function, a Dataset folder or a FeedSource.

        `feed_shapes` (model shapes, -1 = any) and `feed_dtypes` are optional checks/casts per feed;
        `batch_size` applies to Dataset folders only (other sources keep their own batching).
        """
        if obj is None:
            raise DataError("no data given: pass a paddle DataLoader, a generator function or a Dataset folder")
        checks = {"feed_shapes": feed_shapes, "feed_dtypes": feed_dtypes}
        if isinstance(obj, FeedSource):
            return obj._checked_against(feed_names, label_field, **checks)
        if isinstance(obj, (str, os.PathLike)):
            return cls.from_folder(obj, batch_size)._checked_against(feed_names, label_field, **checks)
        if isinstance(obj, (np.ndarray, Mapping)):
            raise DataError(f"got a {type(obj).__name__}, not a sequence of batches; for in-memory arrays use "
                            "FeedSource.from_arrays({feed_name: array, ...}, labels, batch_size)")
        if isinstance(obj, Iterable):
            if iter(obj) is obj:
                raise DataError(
                    f"the data is a one-shot iterator ({type(obj).__name__}) that can be read only once, but "
                    "calibration, search trials and training epochs read the data many times. Pass a paddle "
                    "DataLoader, a list of batches, or the generator *function* itself (without calling it)")
            return cls(lambda: obj, feed_names, label_field=label_field, description=_describe(obj),
                       num_batches=_safe_len(obj), **checks)
        if callable(obj):
            return cls(_call_factory(obj), feed_names, label_field=label_field, description=_describe(obj), **checks)
        raise DataError(f"cannot read data from a {type(obj).__name__}; pass a paddle DataLoader, a generator "
                        "function, a list of batches or a Dataset folder path")

    @classmethod
    def from_folder(cls, folder, batch_size: int = 32) -> FeedSource:
        """A Dataset folder (`data.dataset`) in `batch_size` batches, read lazily on every pass."""
        opened = open_dataset(folder, batch_size)
        source = cls(opened.factory, opened.feed_names, label_field=opened.label_field,
                     description=opened.description, num_batches=opened.num_batches,
                     converted=opened.yields_batches)
        source.check_finite = True
        return source

    @classmethod
    def for_model(cls, obj, model, label_field: str | None = None) -> FeedSource:
        """`from_any` bound to a `model_io.LoadedModel`: its feed names, shapes checked, dtypes cast."""
        from paddle.base.data_feeder import convert_dtype

        block = model.program.global_block()
        shapes = {n: list(block.var(n).shape) for n in model.feed_names}
        dtypes = {n: convert_dtype(block.var(n).dtype) for n in model.feed_names}
        return cls.from_any(obj, model.feed_names, label_field, feed_shapes=shapes, feed_dtypes=dtypes)

    @classmethod
    def from_arrays(cls, feeds: Mapping[str, np.ndarray], labels=None, batch_size: int = 32) -> FeedSource:
        """In-memory arrays, first dimension = samples. Batches are read-only views (no copies)."""
        if not feeds:
            raise DataError("from_arrays got no feeds; pass {feed_name: array}")
        arrays = {name: to_numpy(a, f"array for feed {name!r}") for name, a in feeds.items()}
        label_arr = None if labels is None else to_numpy(labels, "labels")
        n = _common_length(arrays, label_arr)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")

        def factory():
            for start in range(0, n, batch_size):
                feed = {k: _readonly(a[start:start + batch_size]) for k, a in arrays.items()}
                lab = None if label_arr is None else _readonly(label_arr[start:start + batch_size])
                yield Batch(feed, lab)

        return cls(factory, list(arrays), description=f"the in-memory arrays ({n} samples)",
                   num_batches=-(-n // batch_size), converted=True)

    # ---- reading ------------------------------------------------------------------------------
    def batches(self, limit: int | None = None) -> Iterator[Batch]:
        """Yield at most `limit` batches; a fresh pass on every call."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be None or >= 1, got {limit}")
        return self._iterate(limit)

    def _iterate(self, limit):
        count = 0
        raw_batches = iter(self._factory())
        try:
            for index, raw in enumerate(raw_batches):
                batch = raw if self._converted else self._convert(raw, index)
                yield self._checked_batch(batch, index)
                count += 1
                if limit is not None and count >= limit:
                    return
        finally:
            close = getattr(raw_batches, "close", None)  # stop a user's generator early, releasing its files
            if close is not None:
                close()
        if count == 0:
            raise DataError(f"{self.description} yielded no batches; check that the data set is not empty "
                            "(and that a DataLoader's drop_last did not drop the only, partial batch)")

    __iter__ = batches

    def first(self) -> Batch:
        """The first batch (e.g. for shape inference or latency measurement)."""
        batches = self.batches(limit=1)
        try:
            return next(batches)
        finally:
            batches.close()

    def num_batches(self) -> int | None:
        """Number of batches per pass when known without reading the data, else None."""
        return self._num_batches

    def rebatch(self, batch_size: int) -> FeedSource:
        """The same samples in batches of `batch_size` (the last one may be smaller)."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        parent = self
        return FeedSource(lambda: rebatched(parent.batches(), batch_size), self.feed_names,
                          label_field=self.label_field, description=self.description, converted=True)

    # ---- checks -------------------------------------------------------------------------------
    def _checked_against(self, feed_names, label_field, feed_shapes=None, feed_dtypes=None) -> FeedSource:
        """A copy of this source bound to the model's feed names (and optional shape/dtype checks)."""
        if feed_names is not None and self.feed_names is not None and set(feed_names) != set(self.feed_names):
            raise DataError(f"{self.description} provides the feeds {self.feed_names} but the model expects "
                            f"{list(feed_names)}; rename the data's feeds to the model's input names")
        if label_field is not None and self._converted and self.label_field not in (None, label_field):
            raise DataError(f"{self.description} declares the label field {self.label_field!r}, not {label_field!r}")
        src = self._copy()
        if feed_names is not None:
            src.feed_names = list(feed_names)
        if label_field is not None:
            src.label_field = label_field
        src._convert = BatchConverter(src.feed_names, src.label_field, src.description)
        src.feed_shapes.update(feed_shapes or {})
        src.feed_dtypes.update({k: np.dtype(v) for k, v in (feed_dtypes or {}).items()})
        src.check_finite = src.check_finite or bool(src.feed_shapes or src.feed_dtypes)
        return src

    def _copy(self) -> FeedSource:
        new = object.__new__(FeedSource)
        new.__dict__.update(self.__dict__)
        new.feed_shapes = dict(self.feed_shapes)
        new.feed_dtypes = dict(self.feed_dtypes)
        return new

    def _checked_batch(self, batch: Batch, index: int) -> Batch:
        if not (self.feed_shapes or self.feed_dtypes or self.check_finite):
            return batch
        feed = dict(batch.feed)
        for name, arr in feed.items():
            want = self.feed_shapes.get(name) if self.feed_shapes else None
            if want is not None and not shape_matches(arr.shape, want):
                raise DataError(f"{self.description}, batch {index}: feed {name!r} has shape {list(arr.shape)} "
                                f"but the model expects {list(want)} (-1 = any size); reshape the data")
            dtype = self.feed_dtypes.get(name) if self.feed_dtypes else None
            if dtype is not None and arr.dtype != dtype:
                try:
                    feed[name] = arr.astype(dtype)  # a copy: the user's arrays stay untouched
                except (ValueError, TypeError) as err:
                    raise DataError(f"{self.description}, batch {index}: feed {name!r} holds {arr.dtype} values "
                                    f"that cannot be cast to the model's {dtype} ({err}); store numbers") from None
            value = feed[name]
            if self.check_finite and getattr(value, "dtype", None) is not None and value.dtype.kind in "fc" \
                    and not np.isfinite(value).all():
                raise DataError(f"{self.description}, batch {index}: feed {name!r} holds NaN or inf values; "
                                "clean or impute the data (a model computes nothing meaningful on them)")
        return Batch(feed, batch.label)


def _readonly(view: np.ndarray) -> np.ndarray:
    view = view.view()
    view.flags.writeable = False  # a consumer writing into a batch must not change the user's arrays
    return view


def _common_length(arrays: dict, labels) -> int:
    lengths = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
    if labels is not None:
        lengths["labels"] = labels.shape[0] if labels.ndim else 0
    if len(set(lengths.values())) != 1:
        raise DataError(f"arrays have different numbers of samples (first dimension): {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DataError("the arrays hold no samples (first dimension is 0); the data yielded no batches")
    return n


def _safe_len(obj) -> int | None:
    try:
        return len(obj)
    except Exception:  # IterableDataset loaders and plain iterables have no length
        return None


def _call_factory(func):
    def factory():
        try:
            result = func()
        except TypeError as err:
            raise DataError(f"calling {_describe(func)} with no arguments failed ({err}); pass a generator "
                            "function that takes no arguments, or a DataLoader") from None
        if not isinstance(result, Iterable):
            raise DataError(f"{_describe(func)} returned a {type(result).__name__}, not an iterable of batches")
        return result

    return factory


def _describe(obj) -> str:
    if type(obj).__name__ == "DataLoader":
        return "the DataLoader"
    if callable(obj) and hasattr(obj, "__name__"):
        return f"the generator function {obj.__name__}()"
    return f"the {type(obj).__name__} data"
