"""Auto mode's report on synthetic summaries: the Pareto set, the flags and wording, the self-contained
HTML, and report.html rendered in headless Chromium."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess

import pytest

from autocompress.auto.report import (SLOWER_INT8, budget_threshold, headline_metrics, pareto_front,
                                      render_html, render_markdown, terminal_table, write_reports)


def _cand(cid, metric, ms, status="done", **extra):
    c = {"id": cid, "label": f"label of {cid}", "strategy": cid.split("-")[0], "chain": [cid.split("-")[0]],
         "status": status, "reason": None, "metric": metric,
         "metric_drop": None if metric is None else round(0.992 - metric, 6), "test_metric": None,
         "within_budget": None if metric is None else 0.992 - metric <= 0.01,
         "latency_ms": {} if ms is None else {"1": ms / 5, "64": ms}, "speedup": None if ms is None else 5.1 / ms,
         "speedup_batch1": None, "slower": None if ms is None else ms > 5.1, "precision": "fp32",
         "size_bytes": None if ms is None else int(ms * 10000), "params": 7000, "flops": 300000, "seconds": 3.0,
         "peak_rss_bytes": 600_000_000, "model_dir": f"/abs/candidates/{cid}/model"}
    c.update(extra)
    return c


def _summary(**extra):
    s = {"mode": "auto", "target": "paddle-cpu",
         "target_description": "Paddle Inference CPU (stock Config, no oneDNN), 1 thread(s)",
         "deploy_batch_size": 64, "metric_name": "top1", "metric_split": "eval",
         "baseline_metric": 0.992, "baseline_test_metric": 0.99,
         "budget": {"max_drop": 0.01, "drop_type": "absolute", "text": "max absolute drop 0.01"},
         "time_budget_s": 120.0, "seconds": 83.2, "interrupted": False,
         "original": {"latency_ms": {"1": 0.6, "64": 5.1}, "size_bytes": 120000, "params": 26000, "flops": 1200000},
         "candidates": [
             _cand("prune_distill-0.5", 0.990, 2.0, test_metric=0.988),
             _cand("ptq_hpo", 0.991, 6.8, precision="int8"),
             _cand("prune_distill-0.75", 0.970, 1.2),
             _cand("prune_distill-0.5+ptq_hpo", None, None, status="failed",
                   reason="int8 has no kernels on paddle-cpu", chain=["prune_distill", "ptq_hpo"]),
             _cand("qat_distill", None, None, status="not_run", reason="time budget spent"),
         ],
         "chosen": "prune_distill-0.5",
         "chosen_reason": "fastest of 2 candidates within the budget: 2.55x at batch 64",
         "target_met": True, "warnings": ["int8 runs slower than FP32 on paddle-cpu"],
         "model_dir": "/abs/model", "save_dir": "/abs"}
    s.update(extra)
    return s


def _not_met():
    s = _summary(target_met=False, chosen="prune_distill-0.75",
                 chosen_reason="no candidate within the budget: the smallest drop", budget={
                     "max_drop": 0.001, "drop_type": "absolute", "text": "max absolute drop 0.001"})
    for c in s["candidates"]:
        c["within_budget"] = False if c["status"] == "done" else None
    return s


# --- Pareto ----------------------------------------------------------------------------------------

def test_pareto_front_dominated_ties_and_failed():
    cands = [
        _cand("a", 0.99, 2.0),                       # front
        _cand("tie", 0.99, 2.0),                     # identical to a: both kept
        _cand("b", 0.98, 1.0),                       # front
        _cand("c", 0.97, 1.5),                       # dominated by b (lower metric, slower)
        _cand("e", 0.99, 2.5),                       # dominated by a (same metric, slower)
        _cand("f", 0.985, 1.0),                      # same latency as b, higher metric: dominates b
        _cand("i", 0.95, 0.5),                       # fastest: front
        _cand("failed", 0.999, 0.1, status="failed", reason="crashed"),   # numbers but not done: ignored
        _cand("skipped", None, None, status="skipped", reason="int8 has no kernels on paddle-cpu"),
        _cand("nometric", None, 0.05),               # done but unmeasured metric: not a point
    ]
    assert pareto_front(cands, 64) == {"a", "tie", "f", "i"}
    assert pareto_front(cands) == {"a", "tie", "f", "i"}  # speedup-based: the same order
    assert pareto_front([]) == set()
    # latency keyed by int batch (a summary built in memory, not read back from JSON)
    assert pareto_front([_cand("x", 0.9, None, latency_ms={64: 1.0}), _cand("y", 0.8, None, latency_ms={64: 2.0})],
                        64) == {"x"}


def test_budget_threshold_absolute_and_relative():
    assert budget_threshold(_summary()) == pytest.approx(0.982)
    rel = _summary(budget={"max_drop": 0.01, "drop_type": "relative", "text": "max relative drop 1%"})
    assert budget_threshold(rel) == pytest.approx(0.992 * 0.99)
    assert budget_threshold(_summary(budget=None)) is None


# --- markdown / terminal ---------------------------------------------------------------------------

def test_markdown_headline_and_table_numbers():
    md = render_markdown(_summary())
    assert "Target: Paddle Inference CPU (stock Config, no oneDNN), 1 thread(s), deployment batch 64." in md
    assert "max absolute drop 0.01" in md
    assert "Chosen: prune_distill-0.5" in md and "Why: fastest of 2 candidates within the budget" in md
    assert "Target met" in md and "NOT met" not in md
    rows = {line.split(" | ")[1].split(" (")[0]: line for line in md.splitlines() if line.startswith("| ")}
    chosen = rows["prune_distill-0.5"].split(" | ")
    assert chosen[0] == "| ★◆"
    assert chosen[3:9] == ["0.9900", "0.0020", "0.9880", "0.400", "2.000", "2.55x"]
    assert chosen[9] == "19.5 KiB" and chosen[10] == "7k" and chosen[11] == "300k" and chosen[13] == "572.20 MiB"
    assert rows["original"].split(" | ")[3:9] == ["0.9920", "0.0000", "0.9900", "0.600", "5.100", "1.00x"]
    assert "0.75x " + SLOWER_INT8 in rows["ptq_hpo"]
    assert SLOWER_INT8 not in rows["prune_distill-0.5"]
    assert "failed: int8 has no kernels on paddle-cpu" in rows["prune_distill-0.5+ptq_hpo"]
    assert "prune_distill → ptq_hpo" in rows["prune_distill-0.5+ptq_hpo"]
    assert "not run: time budget spent" in rows["qat_distill"]
    assert "done, over budget" in rows["prune_distill-0.75"] and "◆" in rows["prune_distill-0.75"]
    assert "**Warning:** int8 runs slower than FP32 on paddle-cpu" in md


def test_within_budget_but_not_faster_is_not_called_over_budget():
    s = _summary(target_met=False, chosen="prune_distill-0.5",
                 chosen_reason="no candidate within the budget is faster than the original")
    md = render_markdown(s)
    assert "prune_distill-0.5 is within the budget (max absolute drop 0.01) but not faster than the original" in md
    assert "outside the budget" not in md


def test_not_met_wording_everywhere():
    s = _not_met()
    md = render_markdown(s)
    assert "**Target NOT met: no candidate met the budget (max absolute drop 0.001); prune_distill-0.75 is the " \
           "best found and is kept, but it is outside the budget.**" in md
    assert "Target met" not in md
    assert "Target NOT met" in terminal_table(s)
    page = render_html(s)
    assert '<p class="notmet">Target NOT met: no candidate met the budget' in page
    assert headline_metrics(s)["target_met"] == 0.0
    nothing = _summary(target_met=False, chosen=None, chosen_reason=None,
                       candidates=[_cand("p", None, None, status="failed", reason="out of memory")])
    md = render_markdown(nothing)
    assert "No model was chosen" in md and "**Target NOT met: no candidate met the budget" in md
    assert "failed: out of memory" in md


def test_terminal_table_is_aligned_and_flags_int8():
    text = terminal_table(_summary())
    lines = text.splitlines()
    assert lines[0].split() == ["candidate", "top1", "drop", "ms@64", "speedup", "size", "status"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    row = next(line for line in lines if "ptq_hpo" in line and "+" not in line)
    assert SLOWER_INT8 in row and "6.800" in row and "0.9910" in row
    assert lines[3].startswith("★◆") and "prune_distill-0.5" in lines[3]
    col = lines[0].find("ms@64")  # fixed-width: every row's latency starts under its header
    assert [line[col:col + 5] for line in lines[2:5]] == ["5.100", "2.000", "6.800"]
    assert "Target met" in text


def test_missing_optional_keys_are_tolerated():
    bare = {"mode": "auto", "candidates": [{"id": "x", "status": "done"}, {"id": "y"}], "target_met": False}
    for render in (render_markdown, render_html, terminal_table):
        assert "x" in render(bare)
    assert "NOT met" in render_markdown({})
    assert headline_metrics({}) == {"target_met": 0.0, "candidates_done": 0.0}


def test_headline_metrics_numbers():
    m = headline_metrics(_summary())
    assert m["metric"] == pytest.approx(0.99) and m["speedup"] == pytest.approx(2.55)
    assert m["latency_ms"] == 2.0 and m["latency_ms_original"] == 5.1 and m["candidates_done"] == 3.0
    assert m["target_met"] == 1.0 and all(isinstance(v, float) for v in m.values())


# --- HTML ------------------------------------------------------------------------------------------

def test_html_is_self_contained_escaped_and_embeds_pngs():
    s = _summary()
    s["candidates"][3]["reason"] = 'kernel <script>alert("x")</script> missing'
    s["warnings"] = ["<b>bold</b> & more"]
    page = render_html(s)
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link)\b", page) and "src=\"http" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page
    pngs = re.findall(r'<img id="(\w+)"[^>]* src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [name for name, _ in pngs] == ["pareto", "sizes"]
    import base64

    for _, data in pngs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.count('<tr class="') == 1 + len(s["candidates"])
    assert '<tr class="chosen" data-id="prune_distill-0.5">' in page
    assert '<span class="warn">' + SLOWER_INT8 + "</span>" in page


def test_html_without_any_measurement_still_renders():
    s = _summary(original={}, chosen=None, target_met=False,
                 candidates=[_cand("q", None, None, status="not_run", reason="time budget spent")])
    page = render_html(s)
    assert "Nothing was measured: no plot." in page and "data:image/png" not in page


def test_write_reports_atomic_files(tmp_path):
    paths = write_reports(_summary(), tmp_path / "save")
    assert set(paths) == {"markdown", "html"}
    assert paths["markdown"].endswith("report.md") and paths["html"].endswith("report.html")
    assert "| ★◆ | prune_distill-0.5" in (tmp_path / "save" / "report.md").read_text()
    assert (tmp_path / "save" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in (tmp_path / "save").iterdir()) == ["report.html", "report.md"]  # no temp left


def test_inputs_are_not_modified():
    s = _summary()
    before = copy.deepcopy(s)
    render_html(s), render_markdown(s), terminal_table(s)
    assert s == before


# --- headless Chromium -----------------------------------------------------------------------------

def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_html_renders_in_headless_chromium(tmp_path):
    from PIL import Image, ImageStat

    s = _summary()
    report = write_reports(s, tmp_path / "save")["html"]
    # a copy with a probe that records whether the embedded PNGs decoded (the report itself has no scripts)
    probe = tmp_path / "probe.html"
    probe.write_text(open(report, encoding="utf-8").read().replace(
        "</body>", "<script>document.body.setAttribute('data-imgs', Array.from(document.images)"
                   ".map(i => i.id + ':' + i.naturalWidth + 'x' + i.naturalHeight).join(','));</script></body>"),
        encoding="utf-8")

    def chromium(*args, page):
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", *args, f"file://{page}"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)

    dom = chromium("--virtual-time-budget=5000", "--dump-dom", page=probe).stdout
    assert '<table id="candidates">' in dom
    for c in s["candidates"]:
        assert f'data-id="{c["id"]}"' in dom
    sizes = dict(item.split(":") for item in re.search(r'data-imgs="([^"]*)"', dom).group(1).split(","))
    assert set(sizes) == {"pareto", "sizes"}
    for size in sizes.values():
        w, h = map(int, size.split("x"))
        assert w > 300 and h > 100, sizes

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2000", page=report)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    assert max(ImageStat.Stat(img.convert("L")).var) > 100  # not a blank page
    # the plot and the bars put saturated colour on the page (text and table are grey on white)
    hsv = img.convert("HSV")
    coloured = sum(1 for _, sat, val in hsv.getdata() if sat > 100 and val > 60)
    assert coloured > 0.005 * img.size[0] * img.size[1], coloured
