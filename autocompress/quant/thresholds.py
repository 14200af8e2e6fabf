"""Activation thresholds from calibration statistics, vectorised with numpy.

Each function reproduces one of paddle's PTQ algorithms (`ptq_algo`) on our stored statistics:
- abs_max / avg: exact (same per-batch reductions paddle samples);
- hist: paddle's `_get_hist_scaling_factor`, on the summed histogram;
- KL: paddle's `cal_kl_threshold`, rewritten in closed form over all candidates at once
  (prefix sums: O(candidates x 127) instead of paddle's O(candidates x bins) Python loops);
- mse: the expected quantization MSE read off the histogram for a grid of candidate thresholds in
  one expression (paddle instead re-quantizes every batch for 36 scales and keeps the lowest).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .calibration import CalibrationStats

ALGOS = ("KL", "hist", "mse", "avg", "abs_max")
_EPS = 1e-8


def compute_thresholds(stats: CalibrationStats, algo: str, n_samples: int | None = None,
                       hist_percent: float = 0.99999, bits: int = 8, names=None) -> dict[str, float]:
    """Thresholds of every activation in `stats` for one trial configuration.

    `n_samples` = batch_size * batch_num: the trial uses the leading chunks covering that many samples
    (all when None). Returns {tensor name: threshold > 0}.
    """
    if algo not in ALGOS:
        raise ConfigError(f"unknown ptq_algo {algo!r}; allowed: {list(ALGOS)}")
    k = stats.chunks_for(n_samples) if n_samples else len(stats.chunk_samples)
    rows = np.arange(len(stats.names)) if names is None else np.array([stats.index()[n] for n in names], int)
    if algo == "abs_max":
        values = stats.chunk_absmax[rows, :k].max(axis=1).astype(np.float64)
    elif algo == "avg":
        values = stats.chunk_avg[rows, :k].mean(axis=1).astype(np.float64)
    else:
        hists = stats.hist[rows, :k].sum(axis=1, dtype=np.int64)
        widths = stats.hist_max[rows].astype(np.float64) / stats.bins
        if algo == "hist":
            values = hist_threshold(hists, widths, hist_percent)
        elif algo == "KL":
            values = np.array([kl_threshold(trim(h), w, bits) for h, w in zip(hists, widths)])
        else:
            values = mse_threshold(hists, widths, bits)
    values = np.where(np.isfinite(values) & (values > 0), values, _EPS)
    return {stats.names[r]: float(v) for r, v in zip(rows, values)}


def trim(hist: np.ndarray) -> np.ndarray:
    """Cut a histogram after its last non-empty bin: paddle's histogram for a subset of the data
    spans [0, that subset's max], so KL's candidate range must end there too."""
    nz = np.flatnonzero(hist)
    return hist[: nz[-1] + 1] if nz.size else hist[:1]


def hist_threshold(hists: np.ndarray, widths: np.ndarray, percent: float) -> np.ndarray:
    """Paddle's 'hist': (first bin index where the CDF reaches `percent`, + 1, - 0.5) x bin width."""
    hists = np.atleast_2d(hists).astype(np.float64)
    totals = hists.sum(axis=1, keepdims=True)
    cdf = np.cumsum(hists / np.where(totals > 0, totals, 1), axis=1)
    reached = cdf >= percent
    index = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, 0)
    return (index - 0.5) * np.asarray(widths, np.float64)


def kl_threshold(hist: np.ndarray, bin_width: float, bits: int = 8) -> float:
    """Same result as `paddle.static.quantization.cal_kl_threshold(hist, bin_width, bits)`.

    For a candidate cut at bin i paddle builds P = hist[:i] with the outliers added to bin i-1,
    merges hist[:i] into 127 groups of m = i // 127 bins (the last group runs to i), spreads each
    group's sum evenly over the group's non-empty bins (Q) and computes KL(P || Q). With prefix sums
    of h, [h > 0] and h*log(h) all of that is a few [candidates x 127] array operations.
    """
    h = np.asarray(hist, np.float64).ravel()
    n = h.size
    quant_range = 2 ** (bits - 1) - 1
    start = int((n - 1) * 0.5)
    total = h.sum()
    cand = np.arange(start, n)
    cand = cand[h[cand - 1] > 0] if cand.size else cand  # paddle skips cuts whose last bin is empty
    if cand.size == 0 or total <= 0:
        i = start
        while i > 0 and h[i] == 0:
            i -= 1
        return (i + 0.5) * bin_width
    csum = np.concatenate([[0.0], np.cumsum(h)])                       # sum h[:j]
    cnz = np.concatenate([[0], np.cumsum(h > 0)])                      # count h[:j] > 0
    hlogh = np.concatenate([[0.0], np.cumsum(np.where(h > 0, h * np.log(np.where(h > 0, h, 1)), 0))])
    suffix = total - csum[cand - 1]                                    # h[i-1] + outliers
    m = cand // quant_range
    g = np.arange(quant_range)
    lo = g[None, :] * m[:, None]                                       # [K, 127] group starts
    hi = np.where(g[None, :] == quant_range - 1, cand[:, None], lo + m[:, None])
    qsum = csum[hi] - csum[lo]                                         # group sums of h[:i]
    nz = cnz[hi] - cnz[lo]                                             # non-empty bins per group
    psum = qsum.copy()
    psum[:, -1] += total - csum[cand]                                  # the outliers land in the last group
    q = np.where(nz > 0, qsum / np.where(nz > 0, nz, 1), 1.0)
    p_log_q = np.where(psum > 0, psum * np.log(np.where(q > 0, q, 1.0)), 0.0).sum(axis=1)
    p_log_p = hlogh[cand - 1] + suffix * np.log(suffix)
    q_sum = csum[cand]
    kl = (p_log_p + total * np.log(q_sum) - p_log_q - total * np.log(total)) / total
    return (cand[int(np.argmin(kl))] + 0.5) * bin_width


def mse_threshold(hists: np.ndarray, widths: np.ndarray, bits: int = 8, grid: int = 128,
                  low: float = 0.3) -> np.ndarray:
    """Threshold minimising the expected symmetric int quantization MSE under each histogram.

    Candidates: `grid` thresholds from `low` to 1.0 times the histogram's max (paddle: 0.3..1.0 in
    steps of 0.02). The values of a bin are taken at its centre.
    """
    hists = np.atleast_2d(hists).astype(np.float64)
    widths = np.asarray(widths, np.float64).reshape(-1)
    qmax = 2 ** (bits - 1) - 1
    out = np.empty(len(hists))
    fractions = np.linspace(low, 1.0, grid)
    for t, (h, w) in enumerate(zip(hists, widths)):
        h = trim(h)
        nb = h.size
        upper = nb * w
        if upper <= 0 or h.sum() <= 0:
            out[t] = upper
            continue
        centres = (np.arange(nb) + 0.5) * w                                   # [B]
        thresholds = fractions * upper                                        # [G]
        step = thresholds[:, None] / qmax
        deq = np.minimum(np.round(centres[None, :] / step), qmax) * step     # [G, B]
        mse = ((centres[None, :] - deq) ** 2 * h[None, :]).sum(axis=1)
        out[t] = thresholds[int(np.argmin(mse))]
    return out
