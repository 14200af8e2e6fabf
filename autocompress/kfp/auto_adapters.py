"""Folder adapters of the auto pipeline: what its components call. Each turns artifact folders and
parameters into one call of auto mode's engine (`autocompress.auto.search`) and writes the result as
an artifact folder; no algorithm here. No kfp import: tests call these directly.

The pipeline's `config` parameter is `{"Auto": {...}, "TrainConfig": {...}}` (TrainConfig optional);
model, data, metric, budget and device are separate parameters, as in every pipeline.

Layout of a branch's artifact: `records.json` (the family's auto records, each `model_dir` relative
to the artifact) and `candidates/<id>/` (each candidate's run, training checkpoints left out). The
select stage's `summary` artifact: `summary.json`, `report.md`, `report.html`; its `chosen` artifact
the chosen model (empty when no candidate finished).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from ..atomic import atomic_dir, write_json_atomic
from ..errors import ConfigError
from .adapters import ABSENT_FILE, _dataset, _user_errors_exit

RECORDS_FILE = "records.json"
PLAN_FILE = "plan.json"
CANDIDATES_SUBDIR = "candidates"
REPORTS = ("summary.json", "report.md", "report.html")
DEFAULT_CONFIG = {"Auto": {"target": "onednn-int8", "time_budget": "30m"}}
CONFIG_KEYS = ("Auto", "TrainConfig")


def is_auto(config) -> bool:
    """The pipeline config describes auto mode (it has an Auto section)."""
    from ..job import _parse_mapping

    return "Auto" in _parse_mapping(config)


def parse_config(config):
    """(AutoConfig, TrainConfig as a dict or None) from the auto pipeline's `config` parameter."""
    from .. import config as cfg
    from ..auto.config import build_auto, check_auto_train
    from ..job import _parse_mapping

    data = _parse_mapping(config)
    unknown = [k for k in data if k not in CONFIG_KEYS]
    if "Auto" not in data or unknown:
        raise ConfigError(f"the auto pipeline's config takes {list(CONFIG_KEYS)} (Auto required), got {sorted(data)}: "
                          "auto mode chooses the strategies itself; to run one strategy, run its pipeline")
    train = data.get("TrainConfig")
    train = None if train is None else cfg.build(cfg.TrainConfig, train, "TrainConfig")
    auto = build_auto(data["Auto"])
    check_auto_train(auto, train)
    return auto, None if train is None else train.model_dump(exclude_unset=True)


def pipeline_config(auto, train=None) -> str:
    """The auto pipeline's `config` parameter for a validated Auto section (and TrainConfig)."""
    out = {"Auto": auto.model_dump(mode="json", exclude_unset=True)}
    if train is not None:
        out["TrainConfig"] = train.model_dump(mode="json", exclude_unset=True)
    return json.dumps(out, sort_keys=True)


def _settings(metric: str, max_drop: float, drop_type: str):
    from .. import config as cfg

    return cfg.build(cfg.EvalSection, {"metric": metric, "max_drop": max_drop, "drop_type": drop_type}, "Eval")


def _optional(folder, batch_size: int):
    if not folder or (Path(folder) / ABSENT_FILE).exists():
        return None
    return _dataset(folder, batch_size)


def _search(model_dir, train_dir, eval_dir, test_dir, calib_dir, config, save_dir, *, metric, max_drop, drop_type,
            device, batch_size, started_at):
    from ..auto.search import Inputs, Search
    from ..stages.artifact import ModelArtifact

    auto, train = parse_config(config)
    inputs = Inputs(ModelArtifact.load(model_dir).files, _dataset(train_dir, batch_size), _dataset(eval_dir, batch_size),
                    calib_data=_optional(calib_dir, batch_size), test_data=_optional(test_dir, batch_size),
                    train_config=train, device=device)
    spent = time.time() - started_at if started_at else 0.0
    return Search(auto, inputs, _settings(metric, max_drop, drop_type), save_dir, progress=False, spent=spent)


# ---- the stages ---------------------------------------------------------------------------------
def plan(config, dest) -> dict:
    """The parallel branches: the planned candidates grouped so that a chain follows its parent (each
    family a JSON list of candidate ids), the candidates left out and why, and the search's start
    (wall clock: the stages run in other processes, on a cluster in other pods), as `dest/plan.json`."""
    from ..auto.candidates import plan as plan_candidates
    from ..auto.search import families

    auto, _ = parse_config(config)
    groups = families(auto)
    if not groups:
        raise ConfigError(f"Auto plans no candidate for target {auto.target}; name the kinds in Auto.candidates")
    info = {"families": [json.dumps(ids) for ids in groups], "started_at": time.time(),
            "skipped": [{"id": s.id, "reason": s.reason} for s in plan_candidates(auto)[1]]}
    with atomic_dir(dest) as tmp:
        write_json_atomic(Path(tmp) / PLAN_FILE, info)
    return info


def _started_at(plan_dir) -> float:
    return float(json.loads((Path(plan_dir) / PLAN_FILE).read_text())["started_at"])


def branch(family, plan_dir, model_dir, train_dir, eval_dir, test_dir, calib_dir, config, dest, *,
           metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute", device: str = "cpu",
           batch_size: int = 32, work_dir: str = "") -> list[dict]:
    """Run one family of candidates (a chain after its parent) into `dest`; returns their records.

    `work_dir`: a local folder that outlives a failed attempt of the task (the component passes one
    next to its output artifact, which KFP keeps across retries): the search runs there, so a retried
    branch reuses the candidates it finished (auto mode's resume) and resumes training from its
    checkpoints; removed once the branch's artifact is written. Empty or an object-store URI (a
    cluster pod's artifact): a temporary folder."""
    from .. import storage

    ids = json.loads(family) if isinstance(family, str) else list(family)
    with contextlib.ExitStack() as stack:
        if work_dir and not storage.is_remote(work_dir):
            save = Path(work_dir)
        else:
            save = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ac-auto-"))) / "search"
        search = _search(model_dir, train_dir, eval_dir, test_dir, calib_dir, config, save, metric=metric,
                         max_drop=max_drop, drop_type=drop_type, device=device, batch_size=batch_size,
                         started_at=_started_at(plan_dir))
        records = search.run_candidates(ids)
        search.guard.verify()
        out = []
        with atomic_dir(dest) as tmp:
            for record in records:
                src = save / CANDIDATES_SUBDIR / record["id"]
                if src.is_dir():
                    shutil.copytree(src, Path(tmp) / CANDIDATES_SUBDIR / record["id"],
                                    ignore=shutil.ignore_patterns("checkpoints", ".*"))
                if record.get("model_dir"):  # relative: the select stage finds it wherever the artifact is
                    record = {**record, "model_dir": Path(record["model_dir"]).relative_to(save).as_posix()}
                out.append(record)
            write_json_atomic(Path(tmp) / RECORDS_FILE, out)
        if work_dir and save == Path(work_dir):
            shutil.rmtree(save, ignore_errors=True)
    return out


def branch_records(branch_dirs) -> list[dict]:
    """Every branch's records, each `model_dir` pointing into that branch's artifact."""
    out = []
    for folder in branch_dirs:
        for record in json.loads((Path(folder) / RECORDS_FILE).read_text()):
            if record.get("model_dir"):
                record = {**record, "model_dir": str(Path(folder) / record["model_dir"])}
            out.append(record)
    return out


def select(branch_dirs, plan_dir, model_dir, train_dir, eval_dir, test_dir, calib_dir, config, chosen_dest,
           summary_dest, *, metric: str = "top1", max_drop: float = 0.01, drop_type: str = "absolute",
           device: str = "cpu", batch_size: int = 32) -> dict:
    """The final interleaved ranking of every branch's candidates within the budget against the
    original, the choice and the report: the chosen model in `chosen_dest`, summary.json / report.md /
    report.html in `summary_dest`. Returns the auto summary."""
    with tempfile.TemporaryDirectory(prefix="ac-auto-") as work:
        save = Path(work) / "search"
        search = _search(model_dir, train_dir, eval_dir, test_dir, calib_dir, config, save, metric=metric,
                         max_drop=max_drop, drop_type=drop_type, device=device, batch_size=batch_size,
                         started_at=_started_at(plan_dir))
        search.add_records(branch_records(branch_dirs))
        if search.auto.refine:  # with the time the branches left: more pruning ratios, here in turn
            search.refine()
        summary = search.finish(rank_all=True)  # the branches' own latencies saw each other's load
        search.guard.verify()
        with atomic_dir(chosen_dest) as tmp:
            if (save / "model").is_dir():
                shutil.copytree(save / "model", tmp, dirs_exist_ok=True)
    # the summary and the report name where the model is now, not the search's temporary folder
    summary = {**summary, "model_dir": str(chosen_dest) if summary.get("model_dir") else None,
               "save_dir": str(summary_dest)}
    _write_results(summary, summary_dest)
    return summary


def _write_results(summary: dict, dest, model_dir=None) -> None:
    """summary.json, report.md and report.html (and `model/`, a copy of `model_dir`) as `dest`."""
    from ..auto.report import write_reports

    with atomic_dir(dest) as tmp:
        if model_dir is not None:
            shutil.copytree(model_dir, Path(tmp) / "model")
        write_json_atomic(Path(tmp) / "summary.json", summary)
        write_reports(summary, tmp)


def export(chosen_dir, summary_dir, dest, publish_uri: str | None = None) -> dict:
    """The deliverable in `dest` — `model/`, summary.json, report.md, report.html — optionally
    published to an object-store prefix or a folder. Returns {summary, published}."""
    from .. import storage
    from ..stages.export import _join

    summary = json.loads((Path(summary_dir) / "summary.json").read_text())
    has_model = any(Path(chosen_dir).iterdir())
    base = publish_uri or str(dest)
    summary.update(save_dir=base, model_dir=_join(base, "model") if has_model else None)
    _write_results(summary, dest, chosen_dir if has_model else None)
    published = []
    if publish_uri:
        for name in (["model"] if has_model else []) + list(REPORTS):
            published += storage.publish(Path(dest) / name, _join(publish_uri, name))
    return {"summary": summary, "published": published}


def copy_reports(summary_dir, html_path, markdown_path) -> None:
    """The report as the UI's HTML and Markdown artifacts."""
    for name, path in (("report.html", html_path), ("report.md", markdown_path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(summary_dir) / name, path)


def headline(summary: dict) -> dict[str, float]:
    """The numbers of the UI's Metrics artifact."""
    from ..auto.report import headline_metrics

    return headline_metrics(summary)


STAGES = ("plan", "branch", "select", "export")
for _name in STAGES:
    globals()[_name] = _user_errors_exit(globals()[_name])
del _name
