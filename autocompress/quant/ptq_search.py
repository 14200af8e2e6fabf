"""PTQ hyper-parameter search, end to end: calibrate once, N cheap trials, finalists on the deployment
backend, best model + trial table always saved (DESIGN §3 calibrate -> ptq_trial xN -> select, §8)."""
from __future__ import annotations

import inspect
import logging
import math
import shutil
import time
from pathlib import Path

from ..atomic import write_json_atomic
from ..backend import DeployTarget, inference_predictor
from ..config import HyperParameterOptimizationConfig, QuantizationConfig, build
from ..errors import AutoCompressError, ConfigError
from ..evaluation import ModelContext, executor_predictor
from .calibration import CalibrationStats, collect_stats
from .search import Trial, TrialRunner, call_evaluator, effective_key
from .space import SearchSpace, make_sampler
from .targets import find_targets

MODEL_SUBDIR = "model"          # the selected int8 model inside save_dir
TRIALS_FILE = "trials.json"
# successive halving: a trial whose subset metric is more than this fraction below the best subset metric
# so far gets no full evaluation. The subset is the same batches for every trial (a paired comparison), so
# a 1% gap is a real one, not noise; the margin keeps near-ties for the full metric to decide.
SUBSET_MARGIN = 0.01
DEPLOYED = ("onednn", "openvino")  # deploy_backends whose int8 model the finalists are measured on
log = logging.getLogger("autocompress.quant")


def run_ptq_search(model_files, calib_source, evaluator, quant_config=None, hpo_config=None, save_dir="output",
                   place=None, target_metric=None, progress=True, stats: CalibrationStats | None = None,
                   deploy_eval: bool | None = None, threads: int = 1, resume: bool = True) -> dict:
    """Search PTQ configurations and save the best int8 model to `save_dir/model`.

    model_files: `model_io.ModelFiles` (legacy .pdmodel). calib_source: FeedSource, iterable or zero-arg
    callable of feed dicts. evaluator: `evaluate(predict, limit=None) -> float`, higher is better.
    stats: statistics from an earlier `calibrate` stage (skips calibration). deploy_eval: re-evaluate
    the finalists on the deployment backend, Paddle Inference + oneDNN int8 or OpenVINO on the ONNX QDQ
    export (default: when deploy_backend is 'onednn' or 'openvino').
    After the finalists, the FP32 fallback (quant/fallback.py, `hpo_config.fp32_fallback`) may keep the
    most sensitive layers in FP32 until the deployed metric meets `target_metric`.
    Returns {model_files, metric, simulated_metric, deployed_metric (of the saved model),
    int8_deployed_metric (before the fallback), fp32_layers, fallback_steps, fallback_seconds, warnings,
    baseline_metric, baseline_deployed_metric, best_config, trials, target_met, interrupted, seconds,
    calibration_seconds, reused_trials}.

    resume: trials already evaluated in `save_dir/trials.json` by an interrupted (or killed) run with
    the same fingerprint (model files, calibration statistics, both configs, evaluator and baseline,
    Paddle version, device) are taken from the log instead of being evaluated again; the samplers are
    seeded and told the same values, so the resumed search asks what the uninterrupted one would.
    """
    from ..model_io import InputGuard, load_model, require_legacy
    from ..paddle_env import legacy_ir

    qcfg = build(QuantizationConfig, quant_config)
    hcfg = build(HyperParameterOptimizationConfig, hpo_config)
    require_legacy(model_files, "post-training quantization")
    if deploy_eval is None:
        # a PaddleSlim-style callback needs a static program, which the deployed predictor lacks
        deploy_eval = qcfg.deploy_backend in DEPLOYED and getattr(evaluator, "mode", None) != "paddleslim"
    save_dir = Path(save_dir)
    guard = InputGuard(model_files)
    started = time.perf_counter()
    with legacy_ir():
        model = load_model(model_files, place)
        targets = find_targets(model.program, qcfg)
        fp32_predict = executor_predictor(model)
        counter = None
        if hcfg.subset_eval is not None and _supports_limit(evaluator) and _known_batches(evaluator) is None:
            counter = _CountingPredict(fp32_predict)  # a limit-taking function: its batch count = predict calls
        baseline = call_evaluator(evaluator, counter or fp32_predict, context=ModelContext.from_model(model))
        halving, halving_note = _halving(hcfg.subset_eval, evaluator, counter)
        space = SearchSpace.from_config(hcfg)
        t0 = time.perf_counter()
        if stats is None:
            stats = collect_stats(model, calib_source, targets, chunk_size=space.min_batch_size,
                                  max_samples=space.max_samples, progress=progress)
        calib_seconds = time.perf_counter() - t0
        _check_stats(stats, targets)
        runner = TrialRunner(model, stats, targets, qcfg.activation_bits, place, weight_bits=qcfg.weight_bits)
        state = _SearchState(save_dir, model, baseline, hcfg)
        state.target = DeployTarget(qcfg.deploy_backend if qcfg.deploy_backend in DEPLOYED else "onednn")
        state.halving = halving
        state.fingerprint = _fingerprint(model_files, stats, qcfg, hcfg, evaluator, baseline, halving, place)
        if resume:
            state.prior = _prior_trials(save_dir / TRIALS_FILE, state.fingerprint, stats)
        if halving_note:
            state.warnings.append(halving_note)
        try:
            _search(runner, space, hcfg, evaluator, state, progress)
            if deploy_eval and state.best is not None:
                _finalists(runner, state, evaluator, hcfg.finalists, threads)
                _fallback(runner, state, evaluator, hcfg, target_metric, threads, progress)
            elif hcfg.fp32_fallback:
                state.warnings.append("fp32_fallback needs the deployed metric, but deploy_eval is off (or the "
                                      "eval_callback has the PaddleSlim signature); the model stays fully int8")
        except KeyboardInterrupt:
            state.interrupted = True
        finally:
            state.write_trials()
            shutil.rmtree(save_dir / ".finalists", ignore_errors=True)
        guard.verify()
    result = state.result(target_metric)
    result.update(seconds=time.perf_counter() - started, calibration_seconds=calib_seconds,
                  calibration_samples=stats.total_samples, deployed_eval=bool(deploy_eval),
                  reused_trials=sum(t.reused for t in state.trials))
    return result


def _supports_limit(evaluator) -> bool:
    flag = getattr(evaluator, "supports_limit", None)  # Evaluator: only data mode honours limit
    if flag is not None:
        return bool(flag)
    try:
        return "limit" in inspect.signature(evaluator).parameters
    except (TypeError, ValueError):
        return False


def _known_batches(evaluator) -> int | None:
    n = getattr(evaluator, "num_batches", None)
    n = n() if callable(n) else n
    return int(n) if isinstance(n, (int, float)) and n > 0 else None


class _CountingPredict:
    """The FP32 predictor, counting its calls: how many batches a full evaluation has."""

    def __init__(self, predict):
        self.predict, self.calls = predict, 0
        self.feed_names = getattr(predict, "feed_names", None)

    def __call__(self, feed):
        self.calls += 1
        return self.predict(feed)


class _Halving:
    """Successive halving on an eval subset: each trial is scored on the first `limit` of `total` batches;
    only those within SUBSET_MARGIN of the best subset metric so far get the full evaluation."""

    def __init__(self, limit: int, total: int):
        self.limit, self.total = limit, total
        self.best: float | None = None

    def promote(self, subset_metric: float) -> bool:
        if self.best is None or subset_metric > self.best:
            self.best = subset_metric
            return True  # a new best subset metric is always worth the full evaluation
        return subset_metric >= self.best - SUBSET_MARGIN * abs(self.best)


def _halving(fraction, evaluator, counter) -> tuple[_Halving | None, str | None]:
    """The subset plan, or (None, why not) when subset_eval cannot apply (full evaluation of every trial)."""
    if fraction is None:
        return None, None
    if not _supports_limit(evaluator):
        note = ("subset_eval ignored: the evaluator does not take `limit` (eval data, or a function "
                "`evaluate(predict, limit=None)`, does); every trial gets the full evaluation")
    else:
        total = _known_batches(evaluator) or (counter.calls if counter else 0)
        limit = max(1, math.ceil(fraction * total))
        if total > 1 and limit < total:
            log.info("subset_eval %.2f: trials scored on %d of %d eval batches first", fraction, limit, total)
            return _Halving(limit, total), None
        note = (f"subset_eval ignored: {fraction} of {total} eval batches is not a smaller subset; every trial "
                "gets the full evaluation")
    log.warning(note)
    return None, note


AFTER_TRIALS = {"finalists", "fp32_fallback", "fallback_ranking"}  # HPO fields that never change a trial's metric


def _fingerprint(model_files, stats, qcfg, hcfg, evaluator, baseline, halving, place) -> str:
    """What decides every trial's metric: a trial log with another fingerprint is never reused. An
    eval function is known by its evaluator mode, batch count and the baseline it gave. The finalists,
    the FP32 fallback and its ranking come after the trials and are measured again on every run, so
    changing them keeps the trials."""
    import hashlib
    import json

    import numpy as np
    import paddle

    from ..model_io import sha256_file
    from ..version import __version__

    facts = {"model": {p.name: sha256_file(p) for p in model_files.files()}, "quant": qcfg.model_dump(mode="json"),
             "hpo": hcfg.model_dump(mode="json", exclude=AFTER_TRIALS), "baseline": baseline, "place": str(place),
             "evaluator": [type(evaluator).__name__, getattr(evaluator, "mode", None), _known_batches(evaluator)],
             "halving": [halving.limit, halving.total] if halving else None, "names": list(stats.names),
             "paddle": paddle.__version__, "autocompress": __version__}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
    for arr in (stats.chunk_samples, stats.chunk_absmax, stats.chunk_avg, stats.hist, stats.hist_max):
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _prior_trials(path: Path, fingerprint: str, stats) -> dict:
    """Effective key -> logged trial (evaluated: ok or pruned) of an earlier run with this fingerprint."""
    import json

    from .space import TrialConfig

    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no log, or not one of ours: nothing to reuse
    if not isinstance(table, dict) or table.get("fingerprint") != fingerprint:
        return {}
    prior = {}
    for entry in table.get("trials") or []:
        try:
            if entry["status"] in ("ok", "pruned"):
                prior.setdefault(effective_key(TrialConfig(**entry["config"]), stats), entry)
        except (KeyError, TypeError):
            continue
    if prior:
        log.info("resuming the PTQ search: %d evaluated trials in %s", len(prior), path)
    return prior


def _check_stats(stats, targets):
    missing = [n for n in targets.activations if n not in stats.index()]
    if missing:
        raise ConfigError(f"the calibration statistics lack {len(missing)} tensors of this model/config "
                          f"(e.g. {missing[:3]}); they came from another model or QuantizationConfig. "
                          "Recalibrate with the same model and QuantizationConfig")


class _SearchState:
    """Trial table + best-so-far model, written after every improvement (so an interrupt loses nothing)."""

    def __init__(self, save_dir: Path, model, baseline: float, hcfg):
        self.save_dir, self.model, self.baseline, self.hcfg = save_dir, model, baseline, hcfg
        self.trials: list[Trial] = []
        self.best: Trial | None = None
        self.selected: Trial | None = None   # after the finalists: chosen by deployed metric
        self.baseline_deployed = None
        self.interrupted = False
        self.model_files = None
        self.fallback_seconds = 0.0
        self.warnings: list[str] = []
        self.halving: _Halving | None = None
        self.fingerprint: str | None = None
        self.prior: dict = {}       # effective key -> trial of an earlier run's log (resume)
        self.target = DeployTarget("onednn")  # where the finalists and the fallback measure the int8 model

    def record(self, trial: Trial, qmodel, build=None) -> None:
        """qmodel None (a trial from the log): `build(config)` makes it when it is the new best."""
        self.trials.append(trial)
        if trial.status == "ok" and (self.best is None or trial.metric > self.best.metric):
            self.best = trial
            self.selected = trial
            if qmodel is None:
                qmodel = build(trial.config)
            self.model_files = self.save(trial, qmodel, self.save_dir / MODEL_SUBDIR)
        self.write_trials()

    def save(self, trial: Trial, qmodel, out_dir, fp32_layers=None, metric=None):
        from .apply import save_quantized

        if metric is None:
            metric = trial.deployed_metric if trial.deployed_metric is not None else trial.metric
        return save_quantized(qmodel, self.model, out_dir, {
            "strategy": "ptq_hpo", "metric": metric, "ptq_config": trial.config.to_dict(),
            "fp32_layers": list(fp32_layers if fp32_layers is not None else trial.fp32_layers)})

    def write_trials(self) -> None:
        write_json_atomic(self.save_dir / TRIALS_FILE, {
            "baseline_metric": self.baseline, "baseline_deployed_metric": self.baseline_deployed,
            "best_index": self.selected.index if self.selected else None, "interrupted": self.interrupted,
            "search_algo": self.hcfg.search_algo, "seed": self.hcfg.seed, "fingerprint": self.fingerprint,
            "subset_batches": self.halving.limit if self.halving else None,
            "eval_batches": self.halving.total if self.halving else None,
            "trials": [t.to_dict() for t in self.trials]})

    def result(self, target_metric) -> dict:
        sel = self.selected
        deployed = sel.final_deployed_metric if sel else None
        metric = None if sel is None else (deployed if deployed is not None else sel.metric)
        return {"model_files": self.model_files, "metric": metric,
                "simulated_metric": sel.metric if sel else None,
                "deployed_metric": deployed,
                "int8_deployed_metric": sel.deployed_metric if sel else None,
                "fp32_layers": list(sel.fp32_layers) if sel else [],
                "fallback_steps": list(sel.fallback_steps) if sel else [],
                "fallback_seconds": self.fallback_seconds, "warnings": list(self.warnings),
                "baseline_metric": self.baseline, "baseline_deployed_metric": self.baseline_deployed,
                "best_config": sel.config.to_dict() if sel else None,
                "trials": [t.to_dict() for t in self.trials],
                "target_met": None if target_metric is None or metric is None else bool(metric >= target_metric),
                "interrupted": self.interrupted}


def _search(runner: TrialRunner, space, hcfg, evaluator, state: _SearchState, progress: bool) -> None:
    budget = hcfg.max_quant_count
    sampler = make_sampler(space, hcfg.search_algo, hcfg.seed, budget)
    seen: dict[tuple, float | None] = {}
    bar = _bar(progress, budget)
    asks = 0
    while len(state.trials) < budget and asks < 10 * budget:
        asks += 1
        config = sampler.ask()
        if config is None:
            break
        key = effective_key(config, runner.stats)
        if key in seen:  # the same model again: teach the sampler, spend no trial
            sampler.tell(config, seen[key])
            continue
        logged = state.prior.get(key)
        try:
            if logged is not None:
                trial, qmodel = _replay(len(state.trials), config, logged, state.halving), None
            else:
                trial, qmodel = _run_trial(runner, len(state.trials), config, evaluator, state.halving)
        except AutoCompressError:
            raise  # the user's evaluation failed: stop with its message (best-so-far is saved)
        except Exception as err:  # a paddle failure for this configuration: record it, go on
            trial, qmodel = Trial(len(state.trials), config, runner.samples(config), status="failed",
                                  error=f"{type(err).__name__}: {err}"), None
        # a pruned trial teaches the sampler its subset metric: the best estimate there is, and a low one
        value = trial.subset_metric if trial.pruned else trial.metric
        seen[key] = value
        sampler.tell(config, value)
        state.record(trial, qmodel, runner.build)
        bar.update()
        if state.best is not None:
            bar.set_postfix(best=f"{state.best.metric:.4f}", baseline=f"{state.baseline:.4f}")
    bar.close()
    if state.best is None and state.trials:
        raise AutoCompressError(f"all {len(state.trials)} PTQ trials failed; first error: {state.trials[0].error}")


def _replay(index: int, config, logged: dict, halving: _Halving | None) -> Trial:
    """A logged trial in place of its evaluation; successive halving sees its subset metric as before."""
    trial = Trial.from_log(index, config, logged)
    if halving is not None and trial.subset_metric is not None:
        halving.promote(trial.subset_metric)
    return trial


def _run_trial(runner: TrialRunner, index: int, config, evaluator, halving: _Halving | None):
    if halving is None:
        return runner.run(index, config, evaluator)
    trial, qmodel = runner.run(index, config, evaluator, limit=halving.limit)
    trial.subset_metric, trial.metric = trial.metric, None
    if halving.promote(trial.subset_metric):
        start = time.perf_counter()
        trial.metric = runner.evaluate(qmodel, evaluator)
        trial.seconds += time.perf_counter() - start
    else:
        trial.status, trial.pruned = "pruned", True  # never selected: it has no full metric
    return trial, qmodel


def _finalists(runner: TrialRunner, state: _SearchState, evaluator, count: int, threads: int) -> None:
    """Re-evaluate the best `count` trials with the deployment backend; select by the deployed metric."""
    state.baseline_deployed = call_evaluator(evaluator, inference_predictor(state.model.files, int8=False,
                                                                            threads=threads, target=state.target))
    ranked = sorted((t for t in state.trials if t.status == "ok"), key=lambda t: -t.metric)[:count]
    best = None
    for trial in ranked:
        out = state.save_dir / ".finalists" / f"trial_{trial.index}"
        files = state.save(trial, runner.build(trial.config), out)
        trial.deployed_metric = call_evaluator(evaluator, inference_predictor(files, int8=True, threads=threads,
                                                                              target=state.target))
        if best is None or trial.deployed_metric > best.deployed_metric:
            best = trial
        state.write_trials()
    state.selected = best
    # the selected finalist becomes the saved model, with its deployed metric in the metadata
    state.model_files = state.save(best, runner.build(best.config), state.save_dir / MODEL_SUBDIR)


def _fallback(runner: TrialRunner, state: _SearchState, evaluator, hcfg, target_metric, threads: int,
              progress: bool) -> None:
    """Keep sensitive layers of the selected finalist in FP32 when its deployed metric misses the target."""
    from .fallback import WORK_SUBDIR, fallback_plan, run_fallback, summary_line
    from .targets import int8_layers

    trial = state.selected
    plan = fallback_plan(hcfg.fp32_fallback, len(int8_layers(runner.model.program, runner.targets)), trial.deployed_metric,
                         target_metric, state.baseline_deployed)
    if plan is None:
        return

    def measure(files):
        return call_evaluator(evaluator, inference_predictor(files, int8=True, threads=threads, target=state.target))

    def save(qmodel, out_dir):
        return state.save(trial, qmodel, out_dir, fp32_layers=[])

    info = run_fallback(runner, trial, measure, save, plan, state.save_dir / WORK_SUBDIR, progress,
                        by_cost=hcfg.fallback_ranking == "cost")
    state.fallback_seconds = info["seconds"]
    trial.fallback_steps = info["steps"]
    state.warnings.append(summary_line(info, trial.deployed_metric))
    if info["fp32_layers"]:
        trial.fp32_layers, trial.fallback_metric = info["fp32_layers"], info["metric"]
        state.model_files = state.save(trial, info["qmodel"], state.save_dir / MODEL_SUBDIR,
                                       metric=info["metric"])
    state.write_trials()


def _bar(progress: bool, total: int):
    from .calibration import _NoBar

    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="PTQ trials", unit="trial")
