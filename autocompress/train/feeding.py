"""Training batches -> feed dicts for the merged student + teachers program."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import DataError


class Feeder:
    """Batches from the training source -> feed dicts for the merged program."""

    def __init__(self, source, feed_names, teacher_own_feeds: dict[str, str]):
        """teacher_own_feeds: teacher input var -> the student input whose array it is fed (merge_feed=False)."""
        self.source = _as_source(source, feed_names)
        self.feed_names = list(feed_names)
        self.own = teacher_own_feeds

    def batches(self):
        yield from self.source.batches()

    def feed(self, batch) -> dict:
        data = batch.feed if hasattr(batch, "feed") else batch
        missing = [n for n in self.feed_names if n not in data]
        if missing:
            raise DataError(f"a training batch lacks the model inputs {missing} (it has {sorted(data)}); "
                            "the training data must provide every feed of the model")
        feed = {n: np.asarray(data[n]) for n in self.feed_names}
        for var, student_input in self.own.items():  # merge_feed=False: the teacher's own input vars
            feed[var] = feed[student_input]
        return feed


class _ListSource:
    def __init__(self, obj, feed_names):
        self.obj, self.feed_names = obj, feed_names

    def batches(self, limit=None):
        items = self.obj() if callable(self.obj) else self.obj
        for i, item in enumerate(items):
            if limit is not None and i >= limit:
                return
            if isinstance(item, dict):
                yield _Batch(item, None)
            else:
                item = list(item)
                yield _Batch(dict(zip(self.feed_names, item)), item[len(self.feed_names)]
                             if len(item) > len(self.feed_names) else None)


@dataclasses.dataclass
class _Batch:
    feed: dict
    label: object = None


def _as_source(source, feed_names):
    if hasattr(source, "batches"):
        return source
    try:
        from ..data import FeedSource  # the data module's adapter, when present
    except ImportError:
        return _ListSource(source, feed_names)
    return FeedSource.from_any(source, feed_names)
