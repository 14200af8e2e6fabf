"""Auto mode's search: run the planned candidates until the time budget is spent, measure each on the
deployment target (metric on the selection data, latency warm and interleaved with the original at
batch 1 and the deployment batch), keep the best model so far in `save_dir/model` after every
candidate, and pick the fastest one within the budget.

Layout of `save_dir`: `candidates/<id>/` is each candidate's own run (the same deliverable as a
single-strategy run, plus `auto_record.json`, which a rerun with the same save dir reuses), and
`model/`, `summary.json`, `report.md`, `report.html` are the chosen model and the search's report,
rewritten after every candidate so that a crash or Ctrl-C leaves a usable result.

Selection uses the eval data; the test data (when given) is scored for the report only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
import traceback
from pathlib import Path

from ..atomic import atomic_dir, write_json_atomic
from ..errors import AutoCompressError, ConfigError
from ..measure import is_slower
from ..summary import metric_drop, peak_rss_bytes
from .candidates import Candidate, Skipped, plan, refinements
from .config import AutoConfig

log = logging.getLogger("autocompress")
RUNTIME = {"paddle-cpu": "paddle-cpu", "onednn-int8": "onednn", "openvino": "openvino", "gpu": "tensorrt"}
RECORD_FILE = "auto_record.json"


@dataclasses.dataclass
class Inputs:
    """What every candidate runs on (the same objects the API takes)."""

    model_files: object                 # model_io.ModelFiles of the user's model (never modified)
    train_data: object                  # training data; also the calibration data without calib_data
    eval_callback: object               # selection data or function
    calib_data: object = None
    test_data: object = None            # held-out data: reported, never used to select
    train_config: dict | None = None    # TrainConfig of the training candidates (default: Auto.epochs)
    device: str = "cpu"
    latency_threads: int = 1


def optimize(auto: AutoConfig, inputs: Inputs, eval_settings, save_dir, progress: bool = True) -> dict:
    """Run the whole search in this process; returns the auto summary (also in save_dir/summary.json)."""
    search = Search(auto, inputs, eval_settings, save_dir, progress)
    try:
        search.run_candidates()
        if auto.refine:
            search.refine()
        summary = search.finish()
    except KeyboardInterrupt:
        search.interrupted = True
        search.publish()
        raise
    search.guard.verify()
    return summary


def families(auto: AutoConfig) -> list[list[str]]:
    """The planned candidates grouped so that a chain runs after its parent: the parallel branches of
    the auto pipeline (each branch runs its family in order)."""
    planned, _ = plan(auto)
    groups: dict[str, list[str]] = {}
    for cand in planned:
        groups.setdefault(cand.parent or cand.id, []).append(cand.id)
    return list(groups.values())


def target_of(auto: AutoConfig, device):
    """The DeployTarget for `auto.target`; a target this machine cannot measure is an error that says so."""
    from ..backend import DeployTarget
    from ..paddle_env import device_string, resolve_device

    place = resolve_device(device)
    if auto.target == "gpu":
        import paddle

        if not paddle.is_compiled_with_cuda():
            raise ConfigError("target 'gpu' cannot be measured on this machine: this Paddle is a CPU build (no "
                              "CUDA). Run auto mode on a GPU node (the auto pipeline's GPU variant) or choose "
                              "target paddle-cpu, onednn-int8 or openvino")
        if not device_string(place).startswith("gpu"):
            raise ConfigError(f"target 'gpu' needs devices='gpu', got {device!r}")
        return DeployTarget("tensorrt"), place
    return DeployTarget(RUNTIME[auto.target]), place


class Search:
    """One search over a save dir: `run_candidates` (all planned, or a pipeline branch's family) then
    `finish` (the final interleaved ranking, the choice, the deliverable). Setup loads the model and
    measures the original's baseline on the target once. `spent`: seconds of the time budget already
    used elsewhere (the auto pipeline's earlier stages), so that the budget bounds the whole search."""

    def __init__(self, auto: AutoConfig, inputs: Inputs, eval_settings, save_dir, progress: bool = True,
                 spent: float = 0.0):
        from ..model_io import InputGuard
        from ..stages.run import check_save_dir

        self.auto, self.inputs, self.eval_settings = auto, inputs, eval_settings
        self.save_dir, self.progress = check_save_dir(save_dir, inputs.model_files.model_dir), progress
        self.guard = guard = InputGuard(inputs.model_files)
        self.start = time.perf_counter() - max(0.0, spent)
        self.fingerprint_base = {"model": guard.hashes_by_name(), "target": auto.target,
                                 "batch": auto.batch_size, "train": inputs.train_config,
                                 "eval": eval_settings.model_dump(mode="json"), "epochs": auto.epochs,
                                 "train_iter": auto.train_iter}
        self.records: dict[str, dict] = {}
        self.chosen: str | None = None
        self.interrupted = False
        self.warnings: list[str] = []
        self._prepare()
        self.planned, self.skipped = plan(auto)
        for skip in self.skipped:
            self.records[skip.id] = _skipped_record(skip)

    # ---- setup --------------------------------------------------------------------------------
    def _prepare(self) -> None:
        from ..data import FeedSource
        from ..evaluation import build_evaluation
        from ..model_io import load_model, summarize
        from ..paddle_env import legacy_ir
        from ..stages.formats import working_copy

        inputs = self.inputs
        self.target, _ = target_of(self.auto, inputs.device)
        files = working_copy(inputs.model_files, self.save_dir / ".work" / "input")
        with legacy_ir():
            loaded = load_model(files)
            sample = FeedSource.for_model(inputs.calib_data if inputs.calib_data is not None else inputs.train_data,
                                          loaded)
        feeds = loaded.feed_names
        self.recipe = training_recipe(loaded)
        self.original = inputs.model_files
        self.evaluation = build_evaluation(self.original, inputs.eval_callback, self.eval_settings.metric, feeds,
                                           self.target, sample_source=sample)
        self.test_evaluation = None if inputs.test_data is None else build_evaluation(
            self.original, inputs.test_data, self.eval_settings.metric, feeds, self.target, sample_source=sample)
        self.batch = self.auto.batch_size or self.evaluation.data_batch
        self.shapes = {k: list(v.shape) for k, v in self.evaluation.sample_feed.items()}
        facts = summarize(self.original, self.shapes)
        self.original_facts = {"metric": self.evaluation.baseline,
                               "test_metric": self.test_evaluation.baseline if self.test_evaluation else None,
                               "size_bytes": facts["size_bytes"], "params": facts.get("params"),
                               "flops": facts.get("flops"), "latency_ms": {}}
        log.info("auto: baseline %s %.4f on %s, deployment batch %d", self.evaluation.metric_name,
                 self.evaluation.baseline, self.target.describe(False, inputs.latency_threads, self.batch), self.batch)

    # ---- the loop -----------------------------------------------------------------------------
    def run_candidates(self, ids: list[str] | None = None) -> list[dict]:
        """Run the planned candidates (or only `ids`, in plan order), keeping the best so far in the
        save dir after each; returns their records."""
        todo = [c for c in self.planned if ids is None or c.id in ids]
        unknown = sorted(set(ids or []) - {c.id for c in self.planned})
        if unknown:
            raise ConfigError(f"unknown candidates {unknown}; planned: {[c.id for c in self.planned]}")
        bar = _progress_bar(len(todo), self.progress)
        for i, cand in enumerate(todo):
            bar.set_description(f"auto [{i + 1}/{len(todo)}] {cand.id}")
            self.records[cand.id] = self._run_candidate(cand)
            self._choose()
            self.publish()
            bar.update(1)
        bar.close()
        return [self.records[c.id] for c in todo]

    def refine(self) -> list[dict]:
        """While time is left: run the pruning ratio that `candidates.refinements` proposes from the
        results so far (and its int8 chain), until it proposes none; returns their records."""
        done = []
        while self._elapsed() < self.auto.seconds:
            extra = [c for c in refinements(self.auto, self.records, self.planned) if c.id not in self.records]
            if not extra:
                break
            log.info("auto: time left (%.0f s): refining with %s", self.auto.seconds - self._elapsed(),
                     ", ".join(c.id for c in extra))
            self.planned += extra
            done += self.run_candidates([c.id for c in extra])
        return done

    def add_records(self, records: list[dict]) -> None:
        """Records of candidates run elsewhere (the auto pipeline's branches), their `model_dir`
        pointing at where their models are now."""
        for record in records:
            self.records[record["id"]] = record

    def finish(self, rank_all: bool = False) -> dict:
        """The final ranking (all candidates within the budget measured together, interleaved with
        the original), the choice, and the deliverable; returns the summary. `rank_all`: measure every
        finished candidate, at batch 1 too (the auto pipeline: its branches measured side by side, under
        each other's load, so their own numbers would not compare with the original's)."""
        self._final_latency(rank_all)
        self._choose()
        shutil.rmtree(self.save_dir / ".work", ignore_errors=True)
        return self.publish()

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _run_candidate(self, cand: Candidate) -> dict:
        folder = self.save_dir / "candidates" / cand.id
        fingerprint = self._fingerprint(cand)
        previous = _read_record(folder)
        if self.auto.resume and previous and previous.get("fingerprint") == fingerprint \
                and previous.get("status") == "done" and Path(previous["model_dir"]).is_dir():
            log.info("auto: %s already done in %s (resumed)", cand.id, folder)
            return {**previous, "resumed": True}
        base = _base_record(cand, fingerprint)
        reason = self._why_not_now(cand)
        if reason:
            return {**base, "status": "not_run", "reason": reason}
        started = time.perf_counter()
        try:
            summary = self._execute(cand, folder)
            record = {**base, **self._measure(summary), "status": "done", "reason": None,
                      "run_metric": summary.get("metric"), "run_warnings": summary.get("warnings", []),
                      "peak_rss_bytes": summary.get("peak_rss_bytes", peak_rss_bytes())}
        except AutoCompressError as err:
            log.warning("auto: candidate %s failed: %s", cand.id, err)
            record = {**base, "status": "failed", "reason": str(err)}
        except Exception as err:  # a bug in one candidate must not lose the others: reported in full
            log.warning("auto: candidate %s failed with a bug:\n%s", cand.id, traceback.format_exc())
            record = {**base, "status": "failed", "reason": f"{type(err).__name__}: {err} (a bug; the traceback "
                                                             "is in the log)"}
        record["seconds"] = time.perf_counter() - started
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / RECORD_FILE, record)
        return record

    def _why_not_now(self, cand: Candidate) -> str | None:
        left = self.auto.seconds - self._elapsed()
        if left <= 0:
            return f"time budget spent ({self._elapsed():.0f} s of {self.auto.seconds:.0f} s)"
        same = [r["seconds"] for r in self.records.values()
                if r.get("status") == "done" and r.get("kind") == cand.kind and not r.get("resumed")]
        if same and same[-1] > left:
            return f"a {cand.kind} candidate took {same[-1]:.0f} s; {left:.0f} s of the time budget are left"
        if cand.parent:
            parent = self.records.get(cand.parent, {})
            if parent.get("status") != "done" or not parent.get("within_budget"):
                return f"runs on {cand.parent}, which did not finish within the budget"
            if self._remaining_drop(parent) <= 0:
                return f"{cand.parent} used the whole accuracy budget"
        return None

    def _remaining_drop(self, parent: dict) -> float:
        return self.eval_settings.max_drop - parent["metric_drop"]

    def _fingerprint(self, cand: Candidate) -> str:
        text = json.dumps({**self.fingerprint_base, "candidate": dataclasses.asdict(cand),
                           "ptq_trials": self.auto.ptq_trials}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _execute(self, cand: Candidate, folder: Path) -> dict:
        """The candidate as a single-strategy run (stages.run.run_job) into its own folder."""
        from ..job import Job
        from ..model_io import locate_model
        from ..stages.run import run_job

        inputs, settings = self.inputs, self.eval_settings
        model_files = inputs.model_files
        max_drop = settings.max_drop
        if cand.parent:  # a chain: on the parent's output, with what is left of the accuracy budget
            parent = self.records[cand.parent]
            model_files = locate_model(parent["model_dir"])
            max_drop = self._remaining_drop(parent)
        train, configs = None, cand.strategy_config
        if cand.trains:
            length = {"train_iter": self.auto.train_iter} if self.auto.train_iter else {"epochs": self.auto.epochs}
            # a TrainConfig's own keys win; what it leaves unset comes from the recipe
            train = {**self.recipe["TrainConfig"], **inputs.train_config} if inputs.train_config \
                else {**length, **self.recipe["TrainConfig"]}
            configs = {name: {**self.recipe.get(name, {}), **value}
                       if name != "PruneConfig" or value.get("prune_algo") == "prune" else value
                       for name, value in configs.items()}
        job = Job.create(configs, train, metric=settings.metric, max_drop=max_drop,
                         drop_type=settings.drop_type, device=inputs.device, latency_threads=inputs.latency_threads,
                         deploy={"batch_size": self.batch, "allow_slower": True})
        data = inputs.train_data
        if not cand.trains and inputs.calib_data is not None:
            data = inputs.calib_data
        log.info("auto: running %s (%s)", cand.id, cand.label)
        return run_job(job, model_files, data, inputs.eval_callback, folder, calib_data=inputs.calib_data,
                       test_data=None, progress=self.progress)

    # ---- measurement --------------------------------------------------------------------------
    def _measure(self, summary: dict) -> dict:
        """The candidate on the auto target, against the original: metric (eval; test for the report),
        latency at batch 1 and the deployment batch (warm, interleaved), size, params, FLOPs."""
        from ..model_io import locate_model, summarize

        files = locate_model(summary["model_dir"])
        int8 = summary.get("precision") == "int8"
        metric, backend = self.evaluation.score(files, int8, self.target)
        test = self.test_evaluation.score(files, int8, self.target)[0] if self.test_evaluation else None
        latency, speedups, slower = {}, {}, False
        for batch in sorted({1, self.batch}):
            before, after, lost = self._compare([files], [int8], batch)
            latency[str(batch)] = after[0]
            self.original_facts["latency_ms"][str(batch)] = before
            speedups[batch] = before / after[0] if after[0] else None
            if batch == self.batch:
                slower = is_slower(before, after[0], lost[0])
        facts = summarize(files, self.shapes)
        drop = metric_drop(self.evaluation.baseline, metric, self.eval_settings.drop_type)
        return {"metric": metric, "metric_drop": drop, "test_metric": test, "metric_backend": backend,
                "within_budget": bool(drop <= self.eval_settings.max_drop + 1e-12),
                "latency_ms": latency, "speedup": speedups[self.batch], "speedup_batch1": speedups[1],
                "slower": slower, "precision": summary.get("precision", "fp32"),
                "size_bytes": facts["size_bytes"], "params": facts.get("params"), "flops": facts.get("flops"),
                "model_dir": str(files.model_dir)}

    def _compare(self, models: list, int8s: list, batch: int):
        """Milliseconds per call of the original and `models` (interleaved rounds) and, per model, the
        share of rounds it lost to the original."""
        from ..backend import compare_latency
        from ..measure import rounds_lost

        per_round: list = []
        times = compare_latency([(self.original, False)] + list(zip(models, int8s)), self.evaluation.feed_of(batch),
                                threads=self.inputs.latency_threads, target=self.target, per_round=per_round)
        base = per_round[0]
        lost = [rounds_lost(base, rounds) for rounds in per_round[1:]]
        return times[0], times[1:], lost

    def _final_latency(self, rank_all: bool = False) -> None:
        """The ranking that decides: every candidate within the budget and the original measured together
        at the deployment batch, rounds interleaved, so that all face the same machine load."""
        from ..model_io import locate_model

        fresh = [r for r in self.records.values()
                 if r.get("status") == "done" and (rank_all or r.get("within_budget"))]
        if not fresh:
            return
        files = [locate_model(r["model_dir"]) for r in fresh]
        int8s = [r["precision"] == "int8" for r in fresh]
        if rank_all and self.batch != 1:  # batch 1 too: no number from the branches' shared machine
            before, after, _ = self._compare(files, int8s, 1)
            self.original_facts["latency_ms"]["1"] = before
            for record, ms in zip(fresh, after):
                record["latency_ms"]["1"], record["speedup_batch1"] = ms, before / ms if ms else None
        before, after, lost = self._compare(files, int8s, self.batch)
        self.original_facts["latency_ms"][str(self.batch)] = before
        for record, ms, share in zip(fresh, after, lost):
            record["latency_ms"][str(self.batch)] = ms
            record["speedup"] = before / ms if ms else None
            record["slower"] = is_slower(before, ms, share)
            record["final_ranking"] = True

    # ---- the choice and the deliverable -------------------------------------------------------
    def _choose(self) -> None:
        done = [r for r in self.records.values() if r.get("status") == "done"]
        within = [r for r in done if r["within_budget"]]
        faster = [r for r in within if not r["slower"] and (r["speedup"] or 0) > 1.0]
        where = f"on {self.auto.target} at batch {self.batch}"
        if faster:
            best = max(faster, key=lambda r: r["speedup"])
            self.reason = (f"fastest of {len(faster)} candidate(s) within the budget: {best['speedup']:.2f}x the "
                           f"original's speed {where}")
            self.target_met = True
        elif within:
            best = max(within, key=lambda r: r["speedup"] or 0)
            self.reason = (f"no candidate within the budget is faster than the original {where}; {best['id']} is "
                           f"the fastest of them ({(best['speedup'] or 0):.2f}x)")
            self.target_met = False
        elif done:
            best = min(done, key=lambda r: r["metric_drop"])
            self.reason = (f"no candidate met the accuracy budget ({self._budget_text()}); {best['id']} is the "
                           f"closest (drop {best['metric_drop']:.4f})")
            self.target_met = False
        else:
            best, self.target_met = None, False
            self.reason = "no candidate finished"
        new = best["id"] if best else None
        if new and new != self.chosen:
            self._deliver(best)
        self.chosen = new

    def _deliver(self, record: dict) -> None:
        """The chosen candidate's model (with its metadata and model card) as save_dir/model."""
        with atomic_dir(self.save_dir / "model") as tmp:
            for item in Path(record["model_dir"]).iterdir():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        log.info("auto: best so far is %s -> %s", record["id"], self.save_dir / "model")

    def _budget_text(self) -> str:
        return f"max {self.eval_settings.drop_type} drop {self.eval_settings.max_drop}"

    def summary(self) -> dict:
        order = [c.id for c in getattr(self, "planned", [])] + [s.id for s in getattr(self, "skipped", [])]
        candidates = [self.records[i] for i in order if i in self.records]
        chosen = self.records.get(self.chosen) if self.chosen else None
        warnings = list(self.warnings)
        for r in candidates:
            if r.get("status") == "done" and r.get("precision") == "int8" and r.get("slower"):
                warnings.append(f"{r['id']}: the int8 model is slower than the FP32 original on {self.auto.target} "
                                f"at batch {self.batch} ({r['speedup']:.2f}x)")
        if not self.target_met:
            warnings.append(f"target not met: {getattr(self, 'reason', 'the search did not finish')}")
        return {
            "mode": "auto", "strategy": "auto", "target": self.auto.target,
            "target_description": self.target.describe(False, self.inputs.latency_threads, self.batch),
            "deploy_batch_size": self.batch, "metric_name": self.evaluation.metric_name,
            "metric_split": "eval", "test_split": self.test_evaluation is not None,
            "baseline_metric": self.evaluation.baseline,
            "baseline_test_metric": self.original_facts["test_metric"],
            "budget": {"max_drop": self.eval_settings.max_drop, "drop_type": self.eval_settings.drop_type,
                       "text": self._budget_text()},
            "time_budget_s": self.auto.seconds, "seconds": self._elapsed(), "interrupted": self.interrupted,
            "original": self.original_facts, "candidates": candidates,
            "chosen": self.chosen, "chosen_reason": getattr(self, "reason", None),
            "target_met": bool(self.target_met and not self.interrupted) if hasattr(self, "target_met") else False,
            "metric": chosen["metric"] if chosen else None,
            "test_metric": chosen["test_metric"] if chosen else None,
            "speedup": chosen["speedup"] if chosen else None,
            **self._before_after(chosen),
            "warnings": warnings, "peak_rss_bytes": peak_rss_bytes(),
            "model_dir": str(self.save_dir / "model") if chosen else None, "save_dir": str(self.save_dir),
        }

    def _before_after(self, chosen: dict | None) -> dict:
        """The fields every run's summary has (summary.REQUIRED_FIELDS): the chosen model next to the
        original, latency at the deployment batch; None where nothing was chosen."""
        original, batch = self.original_facts, str(self.batch)
        pick = (lambda key: chosen.get(key)) if chosen else (lambda key: None)
        return {"metric_drop": pick("metric_drop"),
                "size_bytes_before": original["size_bytes"], "size_bytes_after": pick("size_bytes"),
                "params_before": original["params"], "params_after": pick("params"),
                "flops_before": original["flops"], "flops_after": pick("flops"),
                "latency_ms_before": original["latency_ms"].get(batch),
                "latency_ms_after": (chosen or {}).get("latency_ms", {}).get(batch)}

    def publish(self) -> dict:
        """summary.json, report.md and report.html for the search so far (after every candidate)."""
        from .report import write_reports

        if not hasattr(self, "evaluation"):  # interrupted before the baseline: nothing to report
            return {}
        summary = self.summary()
        write_json_atomic(self.save_dir / "summary.json", summary)  # report.md is auto mode's own
        write_reports(summary, self.save_dir)
        return summary


def training_recipe(loaded) -> dict:
    """How the training candidates train, for a model auto mode knows nothing else about: distillation
    from the original, channels ranked by their activations on the training data (digits CNN pruned at
    0.5, 4 epochs: top-1 0.996 vs 0.988 with l1_norm). When every output comes out of a softmax, the
    student learns the teacher's logits (the softmax input) with KL and Adam at 3e-4: an l2 loss on the
    probabilities of a 6625-class PP-OCRv4 recognizer is ~1e-4 and does not move it (rec pruned at
    0.25, 20 steps of KL on the logits: char accuracy 0.63 -> 0.94, benchmarks/prune_ocr.py). When
    every output is a sigmoid probability map (a detector), l2 on the maps with Adam at 1e-4: SGD at
    0.02 took PP-OCRv4 det pruned at 0.5 to box hmean 0.86 in 150 steps, Adam at 1e-4 to 0.99
    (benchmarks/auto.py, benchmarks/deployed.py). Otherwise the spec's defaults: l2 on the outputs, SGD
    at 0.02 (digits: 0.996, where Adam at 3e-4 gave 0.984)."""
    block = loaded.program.global_block()
    producers = {out: op for op in block.ops for out in op.output_arg_names}
    kinds = [producers[n].type if n in producers else None for n in loaded.fetch_names]
    recipe = {"DistillationConfig": {}, "PruneConfig": {"criterion": "activation"}, "TrainConfig": {}}
    if kinds and all(k == "softmax" for k in kinds):
        logits = [producers[n].input("X")[0] for n in loaded.fetch_names]
        recipe["DistillationConfig"] = {"distill_node_pair": [n for name in logits for n in (name, name)],
                                        "distill_loss": "kl_loss"}
        recipe["TrainConfig"] = {"optimizer": "Adam", "learning_rate": 3e-4}
    elif kinds and all(k == "sigmoid" and len(block.var(n).shape) == 4 for k, n in zip(kinds, loaded.fetch_names)):
        recipe["TrainConfig"] = {"optimizer": "Adam", "learning_rate": 1e-4}
    return recipe


def _base_record(cand: Candidate, fingerprint: str) -> dict:
    return {"id": cand.id, "label": cand.label, "kind": cand.kind, "strategy": _strategy_name(cand),
            "chain": cand.chain, "strategy_config": cand.strategy_config, "fingerprint": fingerprint}


def _skipped_record(skip: Skipped) -> dict:
    return {"id": skip.id, "label": skip.label, "kind": skip.kind, "status": "skipped", "reason": skip.reason}


def _strategy_name(cand: Candidate) -> str:
    from .. import strategies

    return strategies.resolve(cand.strategy_config)[0].name


def _read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="candidate", leave=False)
