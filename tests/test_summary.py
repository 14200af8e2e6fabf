import json

import pytest

from autocompress.summary import REQUIRED_FIELDS, metric_drop, render_report, write_summary


def _summary(**extra):
    base = {k: 1 for k in REQUIRED_FIELDS}
    base.update(strategy="ptq_hpo", baseline_metric=0.99, metric=0.985, metric_drop=0.005, target_met=True,
                size_bytes_before=4096, size_bytes_after=1024, latency_ms_before=2.0, latency_ms_after=1.0,
                params_before=100, params_after=100, flops_before=1000, flops_after=1000, seconds=3.5,
                peak_rss_bytes=1 << 30)
    base.update(extra)
    return base


def test_metric_drop_absolute_and_relative():
    assert metric_drop(0.8, 0.78) == pytest.approx(0.02)
    assert metric_drop(0.8, 0.78, "relative") == pytest.approx(0.025)


def test_report_shows_numbers_stages_and_trials(tmp_path):
    s = _summary(stages=[{"stage": "calibrate", "seconds": 1.25, "peak_rss_bytes": 300 << 20}],
                 trials=[{"config": {"ptq_algo": "KL"}, "metric": 0.985, "deployed_metric": 0.98, "seconds": 0.5}])
    write_summary(tmp_path, s)
    report = (tmp_path / "report.md").read_text()
    assert "| size on disk | 4.0 KiB | 1.0 KiB | 0.25x |" in report
    assert "| latency (Paddle Inference) | 2.000 ms | 1.000 ms | 0.50x |" in report
    assert "| calibrate | 1.25 | 300.00 MiB |" in report
    assert "| 0 | ptq_algo=KL | 0.9850 | 0.9800 | 0.50 |" in report
    assert json.loads((tmp_path / "summary.json").read_text())["metric"] == 0.985


def test_missing_field_is_refused(tmp_path):
    s = _summary()
    del s["latency_ms_after"]
    with pytest.raises(ValueError, match="latency_ms_after"):
        write_summary(tmp_path, s)
    assert not (tmp_path / "summary.json").exists()


def test_outputs_get_the_umask_permissions_not_private_temp_ones(tmp_path):
    """mkstemp / mkdtemp create 0600 / 0700: a second container or user reading a shared volume could
    not read summary.json, report.md or the model folder."""
    import os
    import stat

    from autocompress.atomic import atomic_dir, write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "inference.pdmodel").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755


def test_peak_rss_is_this_process_own(tmp_path):
    """Regression: ru_maxrss carries the parent's high-water mark over fork + exec on Linux, so a
    pipeline stage started by a large process reported the parent's peak as its own."""
    import json
    import subprocess
    import sys

    ballast = bytearray(1200 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    code = "from autocompress.summary import peak_rss_bytes; print(peak_rss_bytes())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    del ballast
    assert int(json.loads(out.stdout)) < 1024 * 2**20
