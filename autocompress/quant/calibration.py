"""Collect activation statistics ONCE; every PTQ trial computes its thresholds from them.

Paddle's `PostTrainingQuantization` runs the model over the calibration data for every
configuration (twice for KL/hist). Here the model runs twice in total (pass 1: abs max, pass 2:
histograms over the now-known range) and per-chunk statistics are kept, so a trial that uses the
first `batch_size * batch_num` samples just sums the first chunks (DESIGN §8).

Per tensor and chunk (a chunk = one model run on `chunk_size` consecutive samples):
- `chunk_absmax`: max |x|                               -> abs_max
- `chunk_avg`: mean over rows of the per-row max |x|    -> avg (what paddle's avg samples per batch)
- `hist`: histogram of |x| over [0, global max], 2048 bins -> KL, hist, mse
Stored as an `.npz` (no pickle) so the `calibrate` stage can hand it to the trial stages.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ..atomic import as_if_created, disk_full, sweep_stale, temp_prefix
from ..errors import DataError
from .targets import QuantTargets

HIST_BINS = 2048  # paddle's PTQ histogram size
MAX_CHUNKS = 64   # bounds the histogram memory: T tensors x 64 chunks x 2048 bins x 4 bytes


@dataclasses.dataclass
class CalibrationStats:
    names: list[str]
    chunk_samples: np.ndarray  # [C] samples per chunk
    chunk_absmax: np.ndarray   # [T, C]
    chunk_avg: np.ndarray      # [T, C]
    hist: np.ndarray           # [T, C, bins] counts of |x|
    hist_max: np.ndarray       # [T] upper edge of each tensor's histogram range
    meta: dict

    @property
    def bins(self) -> int:
        return int(self.hist.shape[-1])

    @property
    def total_samples(self) -> int:
        return int(self.chunk_samples.sum())

    def chunks_for(self, n_samples: int) -> int:
        """Number of leading chunks covering `n_samples` samples (all of them when there are fewer)."""
        ends = np.cumsum(self.chunk_samples)
        return int(min(np.searchsorted(ends, max(int(n_samples), 1)) + 1, len(ends)))

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def save(self, path) -> Path:
        """Write an `.npz` (atomic: temp file + rename)."""
        import os
        import tempfile

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".npz", dir=path.parent)
        as_if_created(tmp)
        os.close(fd)
        try:
            np.savez_compressed(
                tmp, names=np.array(self.names, dtype=str), chunk_samples=self.chunk_samples,
                chunk_absmax=self.chunk_absmax, chunk_avg=self.chunk_avg, hist=self.hist,
                hist_max=self.hist_max, meta=np.array(json.dumps(self.meta)))
            os.replace(tmp, path)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            full = disk_full(err, path)
            if full is not None:
                raise full from err
            raise
        return path

    @classmethod
    def load(cls, path) -> "CalibrationStats":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(names=[str(n) for n in z["names"]], chunk_samples=z["chunk_samples"],
                           chunk_absmax=z["chunk_absmax"], chunk_avg=z["chunk_avg"], hist=z["hist"],
                           hist_max=z["hist_max"], meta=json.loads(str(z["meta"])))
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"{path} is not a calibration statistics file ({err}); rerun the calibrate "
                            "stage to produce it") from None


def as_batches(source):
    """Iterate feed dicts from a FeedSource (.batches()), a zero-arg callable or an iterable."""
    if hasattr(source, "batches"):
        for batch in source.batches():
            yield getattr(batch, "feed", batch)
    elif callable(source):
        yield from source()
    else:
        yield from source


def rechunk(batches, feed_names: list[str], chunk_size: int, max_samples: int | None):
    """Regroup feed batches into chunks of `chunk_size` samples (the last one may be smaller).

    A batch whose per-sample shapes differ from the pending ones (variable-size inputs) starts a new
    chunk instead of being concatenated. Stops after `max_samples` samples.
    """
    pending: list[dict] = []
    count, taken = 0, 0

    def flush():
        nonlocal pending, count
        chunk = {n: np.concatenate([p[n] for p in pending]) for n in feed_names}
        pending, count = [], 0
        return chunk

    for batch in batches:
        feed = _as_feed(batch, feed_names)
        n = next(iter(feed.values())).shape[0]
        if max_samples is not None:
            n = min(n, max_samples - taken)
            feed = {k: v[:n] for k, v in feed.items()}
        if pending and any(feed[k].shape[1:] != pending[0][k].shape[1:] for k in feed_names):
            yield flush()
        start = 0
        while start < n:
            take = min(chunk_size - count, n - start)
            pending.append({k: v[start:start + take] for k, v in feed.items()})
            count += take
            start += take
            if count == chunk_size:
                yield flush()
        taken += n
        if max_samples is not None and taken >= max_samples:
            break
    if pending:
        yield flush()


def _as_feed(batch, feed_names) -> dict:
    if isinstance(batch, dict):
        missing = [n for n in feed_names if n not in batch]
        if missing:
            raise DataError(f"calibration batch lacks the model inputs {missing}; it has {sorted(batch)}. "
                            "Give one array per model input, keyed by the input name")
        return {n: np.asarray(batch[n]) for n in feed_names}
    if isinstance(batch, (list, tuple)):
        if len(batch) < len(feed_names):
            raise DataError(f"calibration batch has {len(batch)} fields but the model has inputs {feed_names}")
        return {n: np.asarray(v) for n, v in zip(feed_names, batch)}
    raise DataError(f"calibration batches must be dicts or lists of arrays, got {type(batch).__name__}")


def collect_stats(model, source, targets: QuantTargets, chunk_size: int = 8, max_samples: int | None = None,
                  bins: int = HIST_BINS, progress: bool = False) -> CalibrationStats:
    """Run the FP32 model twice over the calibration data and return per-chunk statistics.

    `model` is a `model_io.LoadedModel` (unchanged); `source` any calibration source (`as_batches`).
    The chunks are held in memory between the passes, so a one-shot generator is fine.
    """
    chunks = list(rechunk(as_batches(source), model.feed_names, max(int(chunk_size), 1), max_samples))
    if not chunks:
        raise DataError("the calibration data is empty; give at least one batch of calibration samples")
    total = sum(next(iter(c.values())).shape[0] for c in chunks)
    if len(chunks) > MAX_CHUNKS:  # merge neighbours to bound memory, keeping sample order
        per = math.ceil(len(chunks) / MAX_CHUNKS)
        chunks = [{k: np.concatenate([c[k] for c in chunks[i:i + per]]) for k in model.feed_names}
                  for i in range(0, len(chunks), per)]
    names = list(targets.activations)
    runner = _ActivationRunner(model, names)
    n_t, n_c = len(names), len(chunks)
    absmax = np.zeros((n_t, n_c), np.float32)
    avg = np.zeros((n_t, n_c), np.float32)
    bar = _bar(progress, 2 * n_c, "calibrating")
    for c, feed in enumerate(chunks):  # pass 1: ranges
        for t, arr in enumerate(runner(feed)):
            if arr.size:
                a = np.abs(arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1))
                row_max = a.max(axis=1)
                absmax[t, c] = row_max.max()
                avg[t, c] = row_max.mean()
        bar.update()
    hist_max = absmax.max(axis=1)
    hist = np.zeros((n_t, n_c, bins), np.uint32)
    for c, feed in enumerate(chunks):  # pass 2: histograms over [0, global max]
        for t, arr in enumerate(runner(feed)):
            if arr.size:
                hist[t, c] = abs_histogram(arr, hist_max[t], bins)
        bar.update()
    bar.close()
    del runner  # frees the private scope and executor (the activations of a whole chunk)
    meta = {"bins": bins, "samples": int(total), "chunk_size": int(chunk_size),
            "model_sha256": _model_hash(model)}
    return CalibrationStats(names, np.array([next(iter(c.values())).shape[0] for c in chunks], np.int64),
                            absmax, avg, hist, hist_max.astype(np.float32), meta)


def abs_histogram(arr: np.ndarray, upper: float, bins: int) -> np.ndarray:
    """Histogram of |arr| over [0, upper] with `bins` equal bins (np.histogram's binning, via bincount)."""
    a = np.abs(arr.ravel()).astype(np.float32, copy=False)
    if upper <= 0:
        idx = np.zeros(a.shape, np.int64)
    else:
        idx = np.minimum((a * np.float32(bins / upper)).astype(np.int64), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    if counts.max(initial=0) > np.iinfo(np.uint32).max:
        raise DataError("a calibration chunk is too large for the histogram counters; use a smaller chunk_size")
    return counts.astype(np.uint32)


class _ActivationRunner:
    """Runs the FP32 program on one chunk and yields the target activations one at a time.

    Like paddle's PTQ, the targets are marked persistable (on a clone) so the executor keeps them;
    reading them from the scope one by one keeps a single host copy alive at a time (fetching all
    301 PP-OCRv4 tensors at once held ~5 GB). The run uses a private scope with copies of the
    parameters and a private executor, both dropped with the runner, so the loaded model's program,
    scope and executor cache stay untouched.
    """

    def __init__(self, model, names):
        import paddle

        from ..program.legacy.info import persistable_names

        self.names = names
        self.program = model.program.clone(for_test=True)
        wanted = set(names)
        for var in self.program.list_vars():
            if var.name in wanted:
                var.persistable = True
        place = model.executor.place
        self.scope = paddle.static.Scope()
        for name in persistable_names(model.program):
            src = model.scope.find_var(name)
            if src is not None and src.get_tensor()._is_initialized():
                self.scope.var(name).get_tensor().set(np.array(src.get_tensor()), place)
        self.executor = paddle.static.Executor(place)
        self.fetch = list(model.fetch_names)

    def __call__(self, feed: dict):
        self.executor.run(self.program, feed=feed, fetch_list=self.fetch, scope=self.scope)
        for name in self.names:
            var = self.scope.find_var(name)
            tensor = var.get_tensor() if var is not None else None
            yield (np.array(tensor) if tensor is not None and tensor._is_initialized()
                   else np.zeros((0,), np.float32))


def _model_hash(model) -> str | None:
    try:
        from ..model_io import sha256_file

        return sha256_file(model.files.model_path)
    except Exception:  # stats built from an in-memory test program have no file
        return None


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", leave=False)
