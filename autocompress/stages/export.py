"""The `export` stage: the deliverable in one folder — `model/` (the input's format and file names,
metadata, model card), `summary.json`, `report.md`, `trials.json`, `onnx/model.onnx` when the job
measured ONNX Runtime (Deploy.runtimes) and `onnx-openvino/model.onnx` when it measured an int8 model on
OpenVINO (the QDQ placed for its kernels: the file OpenVINO ran) — optionally published to an
object-store prefix or another folder."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import atomic_dir, write_json_atomic, write_text_atomic
from ..version import __version__
from .artifact import ModelArtifact

MODEL_CARD_FILE = "MODEL_CARD.md"
ONNX_DIR = "onnx"
# runtime -> (folder, summary key) of the ONNX file measured there
ONNX_DELIVERABLES = {"onnxruntime": (ONNX_DIR, "onnx_model"), "openvino": ("onnx-openvino", "openvino_onnx_model")}


def export(model: ModelArtifact, summary: dict, dest, publish_uri: str | None = None) -> dict:
    """Write the deliverable into `dest` (files replaced atomically, other content of `dest` kept).
    Returns {summary, published: [...]}."""
    from .. import storage
    from ..summary import write_summary

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "model_dir": str(dest / "model"), "save_dir": str(dest)}
    if publish_uri:
        summary.update(model_dir=_join(publish_uri, "model"), save_dir=publish_uri)
    meta = {**model.meta, "metric": summary["metric"], "baseline_metric": summary["baseline_metric"]}
    # the copy is read before the rename, so `model` may be the engine's output in dest/model itself
    saved = ModelArtifact(model.files, meta, model.trials, model.curve).save(dest / "model", tables=False)
    write_text_atomic(saved.files.model_dir / MODEL_CARD_FILE, model_card(saved.meta, summary))
    summary["model_sha256"] = saved.meta["sha256"]  # what a consumer checks the delivered files against
    measured = {row.get("runtime") for row in summary.get("latency") or []}
    int8 = saved.meta.get("precision") == "int8"
    delivered = [(runtime, folder, key) for runtime, (folder, key) in ONNX_DELIVERABLES.items()
                 if runtime in measured and (int8 or runtime == "onnxruntime")]  # FP32 OpenVINO reads the model
    for runtime, folder, key in delivered:
        summary[key] = str(_onnx_copy(saved.files, dest / folder, runtime))
        if publish_uri:
            summary[key] = _join(_join(publish_uri, folder), "model.onnx")
    write_json_atomic(dest / "trials.json", model.trials)
    write_summary(dest, summary)
    published = []
    if publish_uri:
        published = storage.publish(dest / "model", _join(publish_uri, "model"))
        for _, folder, _ in delivered:
            published += storage.publish(dest / folder, _join(publish_uri, folder))
        for name in ("summary.json", "report.md", "trials.json"):
            published += storage.publish(dest / name, _join(publish_uri, name))
    return {"summary": summary, "published": published}


def _onnx_copy(files, folder: Path, placement: str) -> Path:
    """The ONNX export that runtime `placement` was measured on (the cache of program/to_onnx.py, made
    from these very files) with its check, as `folder/model.onnx` + `autocompress.json`."""
    from ..program.to_onnx import cached_onnx

    onnx_path = cached_onnx(files, placement)
    with atomic_dir(folder) as tmp:
        for item in onnx_path.parent.iterdir():
            shutil.copy2(item, Path(tmp) / item.name)
    return folder / onnx_path.name


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base) / name)


def model_card(meta: dict, summary: dict) -> str:
    inputs = ", ".join(f"`{i['name']}` {i.get('dtype', '')} {i.get('shape')}" for i in meta.get("inputs") or [])
    lines = [
        f"# Model card: {meta.get('model_filename')}",
        "",
        f"- Produced by autocompress {__version__}, strategy `{summary.get('strategy')}`, from `{meta.get('parent')}`.",
        f"- Format: {meta.get('format')} (same file names as the input model); precision {summary.get('precision')}.",
        f"- Inputs: {inputs or 'n/a'}.",
        f"- {summary.get('metric_name')}: {summary.get('metric'):.4f} (original {summary.get('baseline_metric'):.4f}, "
        f"drop {summary.get('metric_drop'):.4f}; budget {summary.get('budget')}: "
        f"{'met' if summary.get('target_met') else 'NOT met'}), measured on {summary.get('metric_backend')}.",
        f"- Size {summary.get('size_bytes_after')} bytes (original {summary.get('size_bytes_before')}).",
        "",
        "Load it exactly like the original: `paddle.inference.Config(model_file, params_file)`.",
    ]
    if summary.get("deploy_note"):
        lines += ["", summary["deploy_note"]]
    return "\n".join(lines) + "\n"
