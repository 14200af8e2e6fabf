"""Thresholds from stored statistics agree with paddle's own PTQ functions on the same histograms."""
import numpy as np
import pytest

from autocompress.quant.calibration import CalibrationStats, abs_histogram
from autocompress.quant.thresholds import compute_thresholds, hist_threshold, kl_threshold, mse_threshold


def _histograms():
    rng = np.random.default_rng(0)
    samples = [np.abs(rng.standard_normal(20000)), rng.exponential(1.0, 20000),
               np.maximum(rng.standard_normal(20000) * 3, 0), np.abs(rng.standard_t(3, 20000))]
    out = []
    for i, x in enumerate(samples):
        bins = 2048 if i < 3 else 300
        h, e = np.histogram(x, bins=bins, range=(0, x.max()))
        out.append((h, e))
    return out


@pytest.mark.parametrize("case", range(4))
def test_kl_matches_paddle_exactly(case):
    from paddle.static.quantization.cal_kl_threshold import cal_kl_threshold

    h, e = _histograms()[case]
    width = e[1] - e[0]
    assert kl_threshold(h, width, 8) == pytest.approx(cal_kl_threshold(h, width, 8), rel=1e-12)


def test_kl_of_sparse_histogram_falls_back_like_paddle():
    from paddle.static.quantization.cal_kl_threshold import cal_kl_threshold

    h = np.zeros(2048, np.int64)
    h[:10] = 5  # nothing in the candidate range (bins 1023..2047)
    assert kl_threshold(h, 0.01, 8) == pytest.approx(cal_kl_threshold(h, 0.01, 8))


@pytest.mark.parametrize("percent", [0.9, 0.99, 0.999, 0.99999])
def test_hist_matches_paddle(percent):
    from paddle.static.quantization import PostTrainingQuantization

    ptq = PostTrainingQuantization.__new__(PostTrainingQuantization)
    ptq._hist_percent = percent
    for h, e in _histograms():
        expected = ptq._get_hist_scaling_factor(h, e)
        assert hist_threshold(h[None], np.array([e[1] - e[0]]), percent)[0] == pytest.approx(expected)


def test_mse_threshold_minimises_the_actual_quantization_error():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal(200000)).astype(np.float32)
    x[:20] *= 20  # rare outliers: the MSE-optimal threshold clips them
    h = abs_histogram(x, float(x.max()), 2048)
    t = mse_threshold(h[None].astype(np.int64), np.array([x.max() / 2048]))[0]

    def err(threshold):
        q = np.clip(np.round(x / threshold * 127), -128, 127) * threshold / 127
        return float(((x - q) ** 2).mean())

    assert t < 0.8 * x.max()
    assert err(t) < 0.8 * err(float(x.max()))
    grid = np.linspace(0.3, 1.0, 36) * x.max()  # paddle's candidate grid, scored on the raw data
    assert err(t) <= min(err(g) for g in grid) * 1.05


def _stats():
    rng = np.random.default_rng(2)
    per_chunk = [np.abs(rng.standard_normal((4, 100))) * (1 + c) for c in range(5)]  # growing ranges
    upper = max(a.max() for a in per_chunk)
    hist = np.stack([abs_histogram(a, upper, 2048) for a in per_chunk])[None]
    absmax = np.array([[a.max() for a in per_chunk]], np.float32)
    avg = np.array([[a.max(axis=1).mean() for a in per_chunk]], np.float32)
    return CalibrationStats(["t"], np.full(5, 4), absmax, avg, hist, np.array([upper], np.float32), {}), per_chunk


def test_trial_uses_only_its_leading_chunks():
    stats, chunks = _stats()
    assert stats.chunks_for(8) == 2 and stats.chunks_for(9) == 3 and stats.chunks_for(10**6) == 5
    first2 = np.concatenate(chunks[:2])
    assert compute_thresholds(stats, "abs_max", 8)["t"] == pytest.approx(first2.max(), rel=1e-6)
    assert compute_thresholds(stats, "avg", 8)["t"] == pytest.approx(first2.max(axis=1).mean(), rel=1e-6)
    assert compute_thresholds(stats, "abs_max")["t"] == pytest.approx(max(c.max() for c in chunks), rel=1e-6)


def test_kl_on_a_subset_matches_paddle_on_that_subset():
    """Paddle's histogram for a subset spans [0, subset max] in 2048 bins; ours is the global-range
    histogram trimmed to the same range (fewer, wider bins), so KL agrees approximately (measured
    here: within 7%; exactly for the full data)."""
    from paddle.static.quantization.cal_kl_threshold import cal_kl_threshold

    stats, chunks = _stats()
    data = np.concatenate(chunks[:2]).ravel()
    h, e = np.histogram(data, bins=2048, range=(0, data.max()))
    expected = cal_kl_threshold(h, e[1] - e[0], 8)
    ours = compute_thresholds(stats, "KL", 8)["t"]
    assert ours == pytest.approx(expected, rel=0.1)
    full = np.concatenate(chunks).ravel()
    h, e = np.histogram(full, bins=2048, range=(0, full.max()))
    assert compute_thresholds(stats, "KL")["t"] == pytest.approx(cal_kl_threshold(h, e[1] - e[0], 8), rel=1e-6)


def test_every_algorithm_gives_positive_finite_thresholds():
    stats, _ = _stats()
    for algo in ("KL", "hist", "mse", "avg", "abs_max"):
        value = compute_thresholds(stats, algo, 12, hist_percent=0.999)["t"]
        assert np.isfinite(value) and 0 < value <= stats.hist_max[0] * 1.001


def test_unknown_algo_names_the_allowed_ones():
    from autocompress.errors import ConfigError

    stats, _ = _stats()
    with pytest.raises(ConfigError, match="allowed"):
        compute_thresholds(stats, "percentile")
