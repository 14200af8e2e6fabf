"""Auto mode's report: `report.md`, a self-contained `report.html` (plots embedded as PNG data URIs, no
network, no scripts) and a terminal table, all rendered from the auto summary (summary.json).

Every renderer tolerates missing optional keys and None values: a candidate that failed, was skipped or
never ran has no numbers, and a search interrupted early may have measured nothing at all.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from ..atomic import write_text_atomic
from ..summary import _fmt

SLOWER_INT8 = "⚠ slower than FP32"
SLOWER_FP32 = "⚠ slower than the original"
CHOSEN_MARK = "★"
PARETO_MARK = "◆"


# --- numbers ---------------------------------------------------------------------------------------

def _num(value) -> float | None:
    """A finite float, or None for missing / NaN / non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def latency_at(entry: dict | None, batch) -> float | None:
    """Milliseconds at `batch` from a `latency_ms` dict keyed by batch (str keys from JSON, or ints)."""
    lat = (entry or {}).get("latency_ms") or {}
    if batch is None or not isinstance(lat, dict):
        return None
    for key in (str(batch), batch):
        if key in lat:
            return _num(lat[key])
    return None


def _objective(c: dict, deploy_batch) -> tuple[float, float] | None:
    """(metric, cost at the deployment batch), lower cost is better; None when not plottable."""
    metric = _num(c.get("metric"))
    if metric is None:
        return None
    if deploy_batch is not None:
        cost = latency_at(c, deploy_batch)
    else:  # `speedup` is original ms / candidate ms at the deployment batch: monotone in latency
        speedup = _num(c.get("speedup"))
        cost = 1.0 / speedup if speedup else None
    return None if cost is None else (metric, cost)


def pareto_front(candidates, deploy_batch=None) -> set[str]:
    """Ids of the done candidates that no other done candidate dominates in (higher metric, lower latency
    at the deployment batch). Ties (equal metric and latency) are all kept. With `deploy_batch` None the
    latency comparison uses each candidate's `speedup` (defined at the deployment batch)."""
    points = {}
    for c in candidates or []:
        if c.get("status") != "done" or c.get("id") is None:
            continue
        obj = _objective(c, deploy_batch)
        if obj is not None:
            points[c["id"]] = obj
    front = set()
    for cid, (m, t) in points.items():
        dominated = any(m2 >= m and t2 <= t and (m2 > m or t2 < t) for m2, t2 in points.values())
        if not dominated:
            front.add(cid)
    return front


def is_slower(c: dict) -> bool:
    """Slower than the original at the deployment batch (the search's `slower` flag, else speedup < 1)."""
    if c.get("slower") is not None:
        return bool(c["slower"])
    speedup = _num(c.get("speedup"))
    return speedup is not None and speedup < 1.0


def slower_flag(c: dict) -> str:
    """The warning a candidate's speed-up cell carries: int8 slower than FP32 is the case users miss."""
    if c.get("status") != "done" or not is_slower(c):
        return ""
    return SLOWER_INT8 if c.get("precision") == "int8" else SLOWER_FP32


def budget_threshold(summary: dict) -> float | None:
    """The lowest metric within the budget (higher is better: drop = baseline - metric)."""
    base = _num(summary.get("baseline_metric"))
    max_drop = _num((summary.get("budget") or {}).get("max_drop"))
    if base is None or max_drop is None:
        return None
    if (summary.get("budget") or {}).get("drop_type") == "relative":
        return base - max_drop * abs(base)
    return base - max_drop


def headline_metrics(summary: dict) -> dict[str, float]:
    """The headline numbers as plain floats (a Kubeflow `Metrics` artifact): what the chosen model scores,
    how much faster it is, and whether the target was met. Missing numbers are left out."""
    chosen = _chosen(summary) or {}
    batch = summary.get("deploy_batch_size")
    values = {
        "target_met": 1.0 if summary.get("target_met") else 0.0,
        "baseline_metric": _num(summary.get("baseline_metric")),
        "metric": _num(chosen.get("metric")),
        "metric_drop": _num(chosen.get("metric_drop")),
        "test_metric": _num(chosen.get("test_metric")),
        "speedup": _num(chosen.get("speedup")),
        "latency_ms_original": latency_at(summary.get("original"), batch),
        "latency_ms": latency_at(chosen, batch),
        "size_bytes_original": _num((summary.get("original") or {}).get("size_bytes")),
        "size_bytes": _num(chosen.get("size_bytes")),
        "candidates_done": float(sum(c.get("status") == "done" for c in summary.get("candidates") or [])),
        "seconds": _num(summary.get("seconds")),
    }
    return {k: v for k, v in values.items() if v is not None}


# --- formatting ------------------------------------------------------------------------------------

def _chosen(summary: dict) -> dict | None:
    cid = summary.get("chosen")
    return next((c for c in summary.get("candidates") or [] if c.get("id") == cid), None) if cid else None


def _f(value, digits: int = 4) -> str:
    value = _num(value)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ms(value) -> str:
    value = _num(value)
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _si(value) -> str:
    """Compact counts: 26.0k, 1.20M, 3.4G."""
    value = _num(value)
    if value is None:
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def _x(value) -> str:
    value = _num(value)
    return "n/a" if value is None else f"{value:.2f}x"


def _bytes(value) -> str:
    return _fmt(_num(value), "bytes")


def _status(c: dict) -> str:
    status = str(c.get("status") or "unknown").replace("_", " ")
    if status == "done":
        within = c.get("within_budget")
        status = "done" if within is None else ("done, within budget" if within else "done, over budget")
    return f"{status}: {c['reason']}" if c.get("reason") else status


def _name(c: dict) -> str:
    chain = c.get("chain") or []
    label = c.get("label") or c.get("strategy") or ""
    text = str(c.get("id"))
    if label and label != text:
        text += f" ({label})"
    if len(chain) > 1:
        text += " [" + " → ".join(map(str, chain)) + "]"
    return text


def _batch_label(summary: dict) -> str:
    return str(summary.get("deploy_batch_size") or "?")


def table_header(summary: dict) -> list[str]:
    m, b = summary.get("metric_name") or "metric", _batch_label(summary)
    return ["", "candidate", "precision", m, "drop", f"test {m}", "ms @1", f"ms @{b}", f"speedup @{b}",
            "size", "params", "FLOPs", "seconds", "peak RSS", "status"]


def table_rows(summary: dict) -> list[list[str]]:
    """The candidates table as text cells: the original first (the reference), then every candidate in
    search order; ★ marks the chosen one, ◆ the Pareto front."""
    batch = summary.get("deploy_batch_size")
    candidates = summary.get("candidates") or []
    front = pareto_front(candidates, batch)
    orig = summary.get("original") or {}
    rows = [["", "original", "fp32", _f(summary.get("baseline_metric")), _f(0.0), _f(summary.get("baseline_test_metric")),
             _ms(latency_at(orig, 1)), _ms(latency_at(orig, batch)), _x(1.0), _bytes(orig.get("size_bytes")),
             _si(orig.get("params")), _si(orig.get("flops")), "", "", "reference"]]
    for c in candidates:
        marks = (CHOSEN_MARK if c.get("id") == summary.get("chosen") else "") + (PARETO_MARK if c.get("id") in front else "")
        speed = _x(c.get("speedup"))
        if slower_flag(c):
            speed += " " + slower_flag(c)
        rows.append([marks, _name(c), str(c.get("precision") or "n/a"), _f(c.get("metric")), _f(c.get("metric_drop")),
                     _f(c.get("test_metric")), _ms(latency_at(c, 1)), _ms(latency_at(c, batch)), speed,
                     _bytes(c.get("size_bytes")), _si(c.get("params")), _si(c.get("flops")), _f(c.get("seconds"), 1),
                     _bytes(c.get("peak_rss_bytes")), _status(c)])
    return rows


def headline(summary: dict) -> list[str]:
    """The facts a reader needs first, one sentence each (plain text; the renderers add markup)."""
    target = summary.get("target_description") or summary.get("target") or "unknown target"
    m = summary.get("metric_name") or "metric"
    budget = (summary.get("budget") or {}).get("text") or "no budget given"
    split = f" on the {summary['metric_split']} split" if summary.get("metric_split") else ""
    test = _num(summary.get("baseline_test_metric"))
    lines = [f"Target: {target}, deployment batch {_batch_label(summary)}.",
             f"Budget: {budget} in {m}{split}; original {m} {_f(summary.get('baseline_metric'))}"
             + (f" (test {_f(test)})." if test is not None else ".")]
    chosen = _chosen(summary)
    cid = summary.get("chosen")
    reason = summary.get("chosen_reason")
    if cid is None:
        lines.append("No model was chosen: no candidate finished with a measured metric and latency.")
    else:
        c = chosen or {}
        lines.append(f"Chosen: {cid} ({c.get('label') or c.get('strategy') or 'candidate'}): {m} {_f(c.get('metric'))}"
                     f" (drop {_f(c.get('metric_drop'))}), speed-up {_x(c.get('speedup'))} at batch "
                     f"{_batch_label(summary)}." + (f" Why: {str(reason).rstrip('.')}." if reason else ""))
    if summary.get("target_met"):
        lines.append("Target met: the chosen model is within the budget and faster than the original.")
    elif cid is not None and (chosen or {}).get("within_budget"):
        lines.append(f"Target NOT met: {cid} is within the budget ({budget}) but not faster than the original on "
                     "the target; it is kept, but deploying the original is as fast.")
    elif cid is not None:
        lines.append(f"Target NOT met: no candidate met the budget ({budget}); {cid} is the best found and is kept, "
                     "but it is outside the budget.")
    else:
        lines.append(f"Target NOT met: no candidate met the budget ({budget}).")
    done = sum(c.get("status") == "done" for c in summary.get("candidates") or [])
    total = len(summary.get("candidates") or [])
    spent = f"{_f(summary.get('seconds'), 1)} s"
    if _num(summary.get("time_budget_s")) is not None:
        spent += f" of a {_f(summary['time_budget_s'], 0)} s time budget"
    lines.append(f"Searched: {done} of {total} candidates measured in {spent}."
                 + (" The search was interrupted; the best model so far was saved." if summary.get("interrupted") else ""))
    if summary.get("model_dir"):
        lines.append(f"Model: {summary['model_dir']}")
    return lines


# --- markdown --------------------------------------------------------------------------------------

def _md_cell(text) -> str:
    """Table-safe and inert: pipes escaped, no line breaks, no raw HTML for renderers that allow it."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: dict) -> str:
    header = table_header(summary)
    lines = [f"# autocompress optimize: {summary.get('target') or 'auto'}", ""]
    for line in headline(summary):
        lines.append(f"**{line}**" if line.startswith("Target NOT met") else line)
        lines.append("")
    lines += ["## Candidates", "",
              f"{CHOSEN_MARK} chosen, {PARETO_MARK} Pareto front (higher metric, lower latency at batch "
              f"{_batch_label(summary)}). Latency in ms, warm, interleaved with the original.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in table_rows(summary)]
    for warning in summary.get("warnings") or []:
        lines += ["", f"**Warning:** {_md_cell(warning)}"]
    return "\n".join(lines) + "\n"


# --- terminal --------------------------------------------------------------------------------------

def terminal_table(summary: dict) -> str:
    """A compact fixed-width table for the terminal, then the headline's verdict lines."""
    b = _batch_label(summary)
    m = summary.get("metric_name") or "metric"
    batch = summary.get("deploy_batch_size")
    front = pareto_front(summary.get("candidates") or [], batch)
    orig = summary.get("original") or {}
    header = ["", "candidate", m, "drop", f"ms@{b}", "speedup", "size", "status"]
    rows = [["", "original", _f(summary.get("baseline_metric")), "", _ms(latency_at(orig, batch)), _x(1.0),
             _bytes(orig.get("size_bytes")), "reference"]]
    for c in summary.get("candidates") or []:
        marks = (CHOSEN_MARK if c.get("id") == summary.get("chosen") else "") + (PARETO_MARK if c.get("id") in front else "")
        speed = _x(c.get("speedup")) + (" " + slower_flag(c) if slower_flag(c) else "")
        rows.append([marks, str(c.get("id")), _f(c.get("metric")), _f(c.get("metric_drop")),
                     _ms(latency_at(c, batch)), speed, _bytes(c.get("size_bytes")), _status(c)])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out + [""] + [line for line in headline(summary)
                                   if line.startswith(("Chosen", "Target met", "Target NOT", "No model"))])


# --- HTML ------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em} .headline p{margin:.3em 0} .notmet{color:#b00020;font-weight:bold}
.met{color:#1b7f3b;font-weight:bold} table{border-collapse:collapse;font-size:.8em;margin:1em 0}
th,td{border:1px solid #ccc;padding:.2em .4em;text-align:right;white-space:nowrap}
th{background:#f0f0f0} td.l{text-align:left;white-space:normal;min-width:9em} .scroll{overflow-x:auto} tr.chosen{background:#fff6d5}
tr.original{background:#eef4ff} tr.inactive{color:#888} .warn{color:#b35900;font-weight:bold;display:block}
img{max-width:100%;height:auto;display:block;margin:1em 0} .warning{color:#b35900}
"""


def _png_data_uri(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def scatter_png(summary: dict) -> str | None:
    """Metric vs latency at the deployment batch: candidates, the Pareto front (line and highlighted
    points), the original as a reference marker, the budget line and the chosen model annotated.
    A PNG data URI, or None when nothing has both a metric and a latency."""
    from matplotlib.figure import Figure

    batch = summary.get("deploy_batch_size")
    m = summary.get("metric_name") or "metric"
    done = [c for c in summary.get("candidates") or [] if c.get("status") == "done"]
    points = [(c, latency_at(c, batch), _num(c.get("metric"))) for c in done]
    points = [(c, t, v) for c, t, v in points if t is not None and v is not None]
    orig_t, orig_m = latency_at(summary.get("original"), batch), _num(summary.get("baseline_metric"))
    if not points and (orig_t is None or orig_m is None):
        return None
    front = pareto_front(done, batch)
    fig = Figure(figsize=(9, 5.5))
    ax = fig.add_subplot()
    inside = [(t, v) for c, t, v in points if c.get("within_budget")]
    outside = [(t, v) for c, t, v in points if not c.get("within_budget")]
    if inside:
        ax.scatter(*zip(*inside), s=40, color="#2a9d55", label="within budget", zorder=3)
    if outside:
        ax.scatter(*zip(*outside), s=40, color="#999999", label="over budget", zorder=3)
    pf = sorted((t, v) for c, t, v in points if c["id"] in front)
    if pf:
        ax.plot(*zip(*pf), color="#d1495b", lw=1.5, zorder=2, drawstyle="steps-post")
        ax.scatter(*zip(*pf), s=140, facecolors="none", edgecolors="#d1495b", lw=2, label="Pareto front", zorder=4)
    if orig_t is not None and orig_m is not None:
        ax.scatter([orig_t], [orig_m], marker="*", s=260, color="#1d4e89", label="original (FP32)", zorder=5)
    threshold = budget_threshold(summary)
    if threshold is not None:
        ax.axhline(threshold, color="#e08e0b", ls="--", lw=1.2,
                   label=f"budget: {m} >= {threshold:.4f}", zorder=1)
    xs = [t for _, t, _ in points] + ([orig_t] if orig_t is not None else [])
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    for c, t, v in points:
        if c["id"] == summary.get("chosen"):
            fx, fy = _axes_fraction(ax, t, v)  # put the note on the side with room, away from the axes
            ax.annotate(f"chosen: {c['id']}\n{_x(c.get('speedup'))} at batch {_batch_label(summary)}",
                        xy=(t, v), xytext=(-150 if fx > 0.6 else 25, 40 if fy < 0.5 else -45),
                        textcoords="offset points", fontsize=9, arrowprops={"arrowstyle": "->", "color": "#333"},
                        bbox={"boxstyle": "round", "fc": "#fff6d5", "ec": "#999"}, zorder=6)
        else:
            ax.annotate(str(c["id"]), xy=(t, v), xytext=(7, 7), textcoords="offset points", fontsize=7, color="#555")
    ax.set_xlabel(f"latency at batch {_batch_label(summary)} (ms, lower is better)")
    ax.set_ylabel(f"{m} (higher is better)")
    ax.set_title(f"{m} vs latency on {summary.get('target') or 'the target'}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png_data_uri(fig)


def _axes_fraction(ax, x: float, y: float) -> tuple[float, float]:
    """Where a data point sits inside the axes, 0..1 each way (log x honoured)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if ax.get_xscale() == "log":
        x, x0, x1 = (math.log(max(v, 1e-300)) for v in (x, x0, x1))
    return ((x - x0) / (x1 - x0) if x1 != x0 else 0.5), ((y - y0) / (y1 - y0) if y1 != y0 else 0.5)


def size_png(summary: dict) -> str | None:
    """Horizontal bars of the model size on disk: the original and every measured candidate."""
    from matplotlib.figure import Figure

    bars = []
    if _num((summary.get("original") or {}).get("size_bytes")) is not None:
        bars.append(("original", summary["original"]["size_bytes"], "#1d4e89"))
    for c in summary.get("candidates") or []:
        size = _num(c.get("size_bytes"))
        if c.get("status") == "done" and size is not None:
            bars.append((str(c["id"]), size, "#e0a800" if c["id"] == summary.get("chosen") else "#7a9cc6"))
    if not bars:
        return None
    fig = Figure(figsize=(9, 0.9 + 0.4 * len(bars)))
    ax = fig.add_subplot()
    names, sizes, colors = zip(*bars)
    ys = range(len(bars))
    ax.barh(ys, sizes, color=colors)
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    for y, size in zip(ys, sizes):
        ax.text(size, y, " " + _bytes(size), va="center", fontsize=8)
    ax.set_xlim(0, max(sizes) * 1.25)
    ax.set_xlabel("size on disk (bytes)")
    ax.set_title("model size")
    return _png_data_uri(fig)


def render_html(summary: dict) -> str:
    """A static page: headline, candidates table, the scatter plot and the size bars, all inline."""
    e = html.escape
    chosen = summary.get("chosen")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>autocompress optimize: {e(str(summary.get('target') or 'auto'))}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>autocompress optimize: {e(str(summary.get('target') or 'auto'))}</h1>", '<div class="headline">']
    for line in headline(summary):
        cls = ' class="notmet"' if line.startswith("Target NOT met") else ' class="met"' if line.startswith("Target met") else ""
        parts.append(f"<p{cls}>{e(line)}</p>")
    parts.append("</div>")
    for warning in summary.get("warnings") or []:
        parts.append(f'<p class="warning">Warning: {e(str(warning))}</p>')
    parts += ["<h2>Candidates</h2>",
              f"<p>{CHOSEN_MARK} chosen, {PARETO_MARK} Pareto front (higher metric, lower latency at batch "
              f"{e(_batch_label(summary))}). Latency in ms, warm, interleaved with the original.</p>",
              '<div class="scroll"><table id="candidates"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in table_header(summary))
              + "</tr></thead><tbody>"]
    candidates = summary.get("candidates") or []
    for i, row in enumerate(table_rows(summary)):
        c = candidates[i - 1] if i else {}
        cls = ("original" if i == 0 else "chosen" if c.get("id") == chosen
               else "inactive" if c.get("status") != "done" else "")
        cells = []
        for j, cell in enumerate(row):
            text = e(cell)
            if j == 8 and slower_flag(c):
                text = text.replace(e(slower_flag(c)), f'<span class="warn">{e(slower_flag(c))}</span>')
            cells.append(f'<td class="l">{text}</td>' if j in (1, 14) else f"<td>{text}</td>")
        rid = e(str(c.get("id")) if i else "original", quote=True)
        parts.append(f'<tr class="{cls}" data-id="{rid}">' + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    scatter, sizes = scatter_png(summary), size_png(summary)
    parts.append("<h2>Metric vs latency</h2>")
    parts.append(f'<img id="pareto" alt="metric vs latency with the Pareto front" src="{scatter}">' if scatter
                 else "<p>Nothing was measured: no plot.</p>")
    parts.append("<h2>Size</h2>")
    parts.append(f'<img id="sizes" alt="model size bars" src="{sizes}">' if sizes else "<p>No sizes measured.</p>")
    if summary.get("save_dir"):
        parts.append(f"<p>Save dir: <code>{e(str(summary['save_dir']))}</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_reports(summary: dict, save_dir) -> dict[str, str]:
    """Write `report.md` and `report.html` into `save_dir` atomically; return {"markdown": path, "html": path}."""
    save_dir = Path(save_dir)
    paths = {"markdown": save_dir / "report.md", "html": save_dir / "report.html"}
    write_text_atomic(paths["markdown"], render_markdown(summary))
    write_text_atomic(paths["html"], render_html(summary))
    return {k: str(v) for k, v in paths.items()}
