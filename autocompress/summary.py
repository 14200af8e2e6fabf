"""`summary.json` (for tools and CI) and `report.md` (for people): the same facts, two renderings."""
from __future__ import annotations

import math
import resource
import sys
from pathlib import Path

from .atomic import write_json_atomic, write_text_atomic

REQUIRED_FIELDS = (
    "strategy", "baseline_metric", "metric", "metric_drop", "target_met", "size_bytes_before",
    "size_bytes_after", "latency_ms_before", "latency_ms_after", "params_before", "params_after",
    "flops_before", "flops_after", "seconds", "peak_rss_bytes")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process: VmHWM on Linux (its own peak since exec; ru_maxrss there
    carries the parent's high-water mark over fork + exec, so a pipeline stage started by a large
    process reported the parent's peak), else ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration, ValueError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)


def metric_drop(baseline: float, metric: float, drop_type: str = "absolute") -> float:
    drop = baseline - metric
    return drop / abs(baseline) if drop_type == "relative" and baseline else drop


def write_summary(save_dir, summary: dict) -> None:
    missing = [k for k in REQUIRED_FIELDS if k not in summary]
    if missing:
        raise ValueError(f"summary is missing {missing}: a strategy engine did not report them")
    write_json_atomic(Path(save_dir) / "summary.json", summary)
    write_text_atomic(Path(save_dir) / "report.md", render_report(summary))


def _fmt(value, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "bytes":
        return f"{value / 1024:.1f} KiB" if value < 1 << 20 else f"{value / (1 << 20):.2f} MiB"
    if kind == "ms":
        return f"{value:.3f} ms"
    if kind == "metric":
        return f"{value:.4f}"
    if kind == "count":
        return f"{value:,}"
    return str(value)


def _ratio(before, after) -> str:
    if not before or after is None:
        return ""
    return f"{after / before:.2f}x"


def comparison_rows(s: dict) -> list[tuple[str, str, str, str]]:
    return [
        (f"metric ({s.get('metric_name', 'metric')})", _fmt(s["baseline_metric"], "metric"),
         _fmt(s["metric"], "metric"), f"drop {_fmt(s['metric_drop'], 'metric')}"),
        ("size on disk", _fmt(s["size_bytes_before"], "bytes"), _fmt(s["size_bytes_after"], "bytes"),
         _ratio(s["size_bytes_before"], s["size_bytes_after"])),
        ("parameter bytes", _fmt(s.get("param_bytes_before"), "bytes"), _fmt(s.get("param_bytes_after"), "bytes"),
         _ratio(s.get("param_bytes_before"), s.get("param_bytes_after"))),
        ("parameters", _fmt(s["params_before"], "count"), _fmt(s["params_after"], "count"),
         _ratio(s["params_before"], s["params_after"])),
        ("FLOPs / sample", _fmt(s["flops_before"], "count"), _fmt(s["flops_after"], "count"),
         _ratio(s["flops_before"], s["flops_after"])),
        *_sparsity_rows(s),
        (f"latency ({s.get('latency_backend', 'Paddle Inference')})", _fmt(s["latency_ms_before"], "ms"),
         _fmt(s["latency_ms_after"], "ms"), _ratio(s["latency_ms_before"], s["latency_ms_after"])),
    ]


def _sparsity_rows(s: dict) -> list[tuple[str, str, str, str]]:
    """Sparse models keep their shape; what shrinks is the zero fraction and the compressed size."""
    rows = []
    if isinstance(s.get("sparsity_after"), (int, float)):
        rows.append(("weight sparsity", f"{s.get('sparsity_before', 0):.1%}", f"{s['sparsity_after']:.1%}", ""))
    before, after = s.get("compressed_size_before"), s.get("compressed_size_after")
    if isinstance(before, dict) and isinstance(after, dict):
        b, a = before.get("params_compressed_bytes"), after.get("params_compressed_bytes")
        rows.append(("params, compressed (zip)", _fmt(b, "bytes"), _fmt(a, "bytes"), _ratio(b, a)))
    return rows


def render_table(rows, header=("", "before", "after", "change")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_report(s: dict) -> str:
    status = "met" if s["target_met"] else "NOT met"
    parts = [
        f"# autocompress report: {s['strategy']}",
        "",
        f"Budget: {s.get('budget', 'n/a')} — target **{status}**."
        + (" The run was interrupted; the best model found so far was saved." if s.get("interrupted") else ""),
        "",
        render_table(comparison_rows(s)),
        "",
        f"Wall time {s['seconds']:.1f} s, peak RSS {_fmt(s['peak_rss_bytes'], 'bytes')}.",
    ]
    if s.get("deploy_note"):
        parts += ["", "## Deployment", "", s["deploy_note"]]
    for warning in s.get("warnings", []):
        parts += ["", f"**Warning:** {warning}"]
    latency = s.get("latency") or []
    if latency:
        parts += ["", "## Latency where it runs", "",
                  "Milliseconds per call, warm, interleaved with the original, same threads.", "",
                  "| runtime | batch | original | compressed | speedup | metric there |", "|---|---|---|---|---|---|"]
        parts += [f"| {r['backend']} | {r['batch']} | {_fmt(r['ms_before'], 'ms')} | {_fmt(r['ms_after'], 'ms')} | "
                  f"{_fmt(r.get('speedup'), 'metric')}x | {_fmt(r.get('metric'), 'metric')} |" for r in latency]
    stages = s.get("stages") or []
    if stages:
        parts += ["", "## Stages", "", "| stage | seconds | peak RSS |", "|---|---|---|"]
        parts += [f"| {r.get('stage')} | {r.get('seconds', 0):.2f} | {_fmt(r.get('peak_rss_bytes'), 'bytes')} |"
                  for r in stages]
    trials = s.get("trials") or []
    if trials:
        parts += ["", "## Trials", "", "| # | config | simulated metric | deployed metric | seconds |", "|---|---|---|---|---|"]
        for i, t in enumerate(trials):
            cfg = ", ".join(f"{k}={v}" for k, v in t.get("config", {}).items())
            parts.append(f"| {i} | {cfg} | {_fmt(t.get('metric'), 'metric')} | "
                         f"{_fmt(t.get('deployed_metric'), 'metric')} | {t.get('seconds', 0):.2f} |")
    curve = s.get("curve") or []
    if curve:
        parts += ["", "## Training curve", "", "| step | loss | metric |", "|---|---|---|"]
        for point in curve:
            parts.append(f"| {point.get('step')} | {_fmt(point.get('loss'), 'metric')} | "
                         f"{_fmt(point.get('metric'), 'metric')} |")
    return "\n".join(parts) + "\n"
