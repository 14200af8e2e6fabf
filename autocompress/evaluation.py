"""Scoring a model: predictors and the `eval_callback` forms of the spec (DESIGN §6).

`eval_callback` is either eval data (a DataLoader / iterable / Dataset folder whose last field is the
label) scored with a metric, or a function. A function gets `predict` (one feed batch in, the model's
outputs as a list of numpy arrays out) and returns a float, higher is better; it iterates its own
data. PaddleSlim's older `(exe, program, feed_names, fetch_targets)` signature works too when the
model runs as a static program (`ModelContext`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import os
from collections.abc import Callable, Iterable

import numpy as np

from .data import FeedSource
from .data.batch import rebatched
from .data.source import BatchConverter
from .errors import AutoCompressError, ConfigError, EvalError, ModelError
from .metrics import Metric, load_metric
from .paddle_env import legacy_ir

Predictor = Callable[[dict], list]


# ---- predictors ---------------------------------------------------------------------------------
def executor_predictor(model, program=None, fetch_list=None) -> Predictor:
    """Run `program` (default: the loaded one, e.g. a quantized clone otherwise) with the model's
    executor in the model's scope; returns the outputs in fetch order as numpy arrays."""
    program = program if program is not None else model.program
    fetch_names = [getattr(v, "name", v) for v in (fetch_list if fetch_list is not None else model.fetch_targets)]
    feed_names = list(model.feed_names)

    def predict(feed: dict) -> list[np.ndarray]:
        missing = [n for n in feed_names if n not in feed]
        if missing:
            raise EvalError(f"predict got feeds {sorted(feed)} but the model needs {feed_names} (missing {missing})")
        with legacy_ir() as paddle, paddle.static.scope_guard(model.scope):
            outs = model.executor.run(program, feed={n: feed[n] for n in feed_names},
                                      fetch_list=fetch_names, return_numpy=True)
        return [np.asarray(o) for o in outs]

    predict.feed_names = feed_names
    return predict


@dataclasses.dataclass
class ModelContext:
    """What a PaddleSlim-style callback `(exe, program, feed_names, fetch_targets)` needs."""

    executor: object
    program: object
    feed_names: list[str]
    fetch_targets: list
    scope: object

    @classmethod
    def from_model(cls, model, program=None) -> ModelContext:
        program = program if program is not None else model.program
        block = program.global_block()
        fetch = [block.var(v.name) for v in model.fetch_targets]  # the variables of *this* program
        return cls(model.executor, program, list(model.feed_names), fetch, model.scope)


# ---- evaluators ---------------------------------------------------------------------------------
class Evaluator:
    """`evaluator(predict, limit=None, context=None) -> float` (higher is better).

    mode 'data': scores `data` with `metric`; `limit` = number of batches (successive halving).
    mode 'predict': calls `callback(predict)`; mode 'paddleslim': calls
    `callback(exe, program, feed_names, fetch_targets)` from `context` (or `model_context`).
    Callbacks iterate their own data, so `limit` does not apply to them (`supports_limit` False).
    """

    def __init__(self, mode: str, *, data: FeedSource | None = None, metric: Metric | None = None,
                 callback: Callable | None = None, feed_names: list[str] | None = None,
                 reference_predict: Predictor | None = None, model_context: ModelContext | None = None):
        self.mode, self.data, self.metric, self.callback = mode, data, metric, callback
        self.feed_names = list(feed_names) if feed_names is not None else None
        self.reference_predict = reference_predict
        self.model_context = model_context
        self._reference_cache: dict[str, list] = {}

    @property
    def supports_limit(self) -> bool:
        return self.mode == "data"

    @property
    def metric_name(self) -> str:
        return self.metric.name if self.metric is not None else "eval_callback"

    def num_batches(self) -> int | None:
        return self.data.num_batches() if self.data is not None else None

    def __call__(self, predict: Predictor, limit: int | None = None, context: ModelContext | None = None) -> float:
        if self.mode == "data":
            return self._score_data(predict, limit)
        if self.mode == "predict":
            return self._run_callback(lambda: self.callback(_FeedAdapter(predict, self.feed_names)))
        ctx = context or self.model_context
        if ctx is None:
            raise EvalError(f"eval_callback {_name(self.callback)} has the PaddleSlim signature (exe, program, "
                            "feed_names, fetch_targets), which needs a static program, but this evaluation runs "
                            "without one (e.g. on the deployment backend). Write the callback as "
                            "`def eval(predict): ...` (predict takes a feed batch, returns the outputs)")

        def call():
            with legacy_ir() as paddle, paddle.static.scope_guard(ctx.scope):
                return self.callback(ctx.executor, ctx.program, list(ctx.feed_names), list(ctx.fetch_targets))

        return self._run_callback(call)

    def _score_data(self, predict: Predictor, limit: int | None) -> float:
        acc = self.metric.accumulator()
        for batch in self.data.batches(limit):
            outputs = predict(batch.feed)
            if self.metric.needs_reference:
                target = self._reference(batch.feed, outputs if predict is self.reference_predict else None)
            else:
                target = batch.label
            acc.update(outputs, target)
        return finite_metric(acc.result(), f"metric {self.metric.name}")

    def _reference(self, feed: dict, outputs) -> list:
        """The original model's outputs for this batch, computed once and cached by feed content
        (so a shuffling loader still hits), compacted to argmax indices where fidelity only needs those."""
        key = _feed_key(feed)
        cached = self._reference_cache.get(key)
        if cached is None:
            if outputs is None:
                if self.reference_predict is None:
                    raise ConfigError("metric 'fidelity' needs the original model's predictor "
                                      "(build_evaluator(..., reference_predict=...))")
                outputs = self.reference_predict(feed)
            cached = compact_reference(outputs)
            self._reference_cache[key] = cached
        return cached

    def _run_callback(self, call) -> float:
        try:
            value = call()
        except AutoCompressError:
            raise  # already names the problem (e.g. a feed mismatch inside predict)
        except Exception as err:
            raise EvalError(f"eval_callback {_name(self.callback)} failed: {type(err).__name__}: {err}. "
                            "Fix the callback (run it once on the original model to check it)") from err
        return finite_metric(value, f"eval_callback {_name(self.callback)}")


def compact_reference(outputs) -> list:
    """Reference outputs as fidelity needs them: argmax indices for class scores (a PP-OCR output
    [N, T, 6625] shrinks 6625x), the raw array otherwise."""
    from .metrics import ArgmaxRef, uses_argmax

    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [ArgmaxRef.of(np.asarray(o)) if uses_argmax(np.asarray(o)) else np.asarray(o) for o in outs]


class _FeedAdapter:
    """The `predict` handed to callbacks: takes a batch as a DataLoader yields it (dict, list in feed
    order with an optional trailing label, or one array), numpy or paddle tensors; returns the
    outputs as numpy arrays (`Output`, which also has `.numpy()`)."""

    def __init__(self, predict: Predictor, feed_names: list[str] | None):
        self._predict = predict
        self.feed_names = feed_names or getattr(predict, "feed_names", None)
        self._convert = BatchConverter(self.feed_names, None, "the batch passed to predict")
        self._calls = 0

    def __call__(self, batch) -> list[np.ndarray]:
        self._calls += 1
        outputs = self._predict(self._convert(batch, self._calls - 1).feed)
        return [np.asarray(o).view(Output) for o in outputs]


class Output(np.ndarray):
    """A numpy output that also answers `.numpy()`, so callbacks written for paddle tensors (as the
    spec describes the predictions) work unchanged."""

    def numpy(self) -> np.ndarray:
        return self.view(np.ndarray)


def build_evaluator(eval_callback=None, eval_data=None, metric="top1", feed_names=None,
                    reference_predict: Predictor | None = None, label_field: str | None = None,
                    model_context: ModelContext | None = None) -> Evaluator:
    """Turn the spec's `eval_callback` (data or function) or `eval_data` into an Evaluator."""
    if eval_callback is not None and eval_data is not None:
        raise ConfigError("pass either eval_callback or eval data, not both (the spec takes one of the two)")
    if eval_callback is None and eval_data is None:
        raise ConfigError("no way to evaluate the model: pass eval_callback (a function or an eval DataLoader "
                          "whose last field is the label) or eval data")
    if eval_callback is not None and _is_function(eval_callback):
        mode = "paddleslim" if _is_paddleslim_signature(eval_callback) else "predict"
        return Evaluator(mode, callback=eval_callback, feed_names=feed_names, model_context=model_context)
    data = FeedSource.from_any(eval_callback if eval_callback is not None else eval_data, feed_names, label_field)
    m = load_metric(metric)
    if m.needs_reference and reference_predict is None:
        raise ConfigError("metric 'fidelity' compares with the original model: pass reference_predict "
                          "(the FP32 model's predictor)")
    return Evaluator("data", data=data, metric=m, feed_names=feed_names, reference_predict=reference_predict,
                     model_context=model_context)


def _is_function(obj) -> bool:
    """A callable that takes arguments is a callback; a zero-argument callable or generator function
    produces data, as do DataLoaders, iterables and paths."""
    if isinstance(obj, (FeedSource, str, os.PathLike, Iterable)) or not callable(obj):
        return False
    if inspect.isgeneratorfunction(obj):
        return False
    params = _positional_params(obj)
    return params is None or len(params) > 0


def _positional_params(func) -> list[inspect.Parameter] | None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have no signature: assume predict form
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()):
        params.append(inspect.Parameter("args", inspect.Parameter.POSITIONAL_ONLY))
    return params


def _is_paddleslim_signature(func) -> bool:
    params = _positional_params(func)
    if params is None:
        return False
    names = {p.name for p in params}
    required = [p for p in params if p.default is inspect.Parameter.empty]
    return len(required) >= 4 or bool(names & {"exe", "executor"}) and "program" in names


def _feed_key(feed: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(feed):
        arr = np.ascontiguousarray(feed[name])
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.data)
    return h.hexdigest()


def finite_metric(value, what: str) -> float:
    if isinstance(value, (list, tuple, dict, str, bytes)) or value is None:
        raise EvalError(f"{what} returned {type(value).__name__} {value!r:.80}; it must return one float "
                        "(higher is better)")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EvalError(f"{what} returned {type(value).__name__}, not a number; it must return one float "
                        "(higher is better)") from None
    if not math.isfinite(number):
        raise EvalError(f"{what} returned {number}; it must return a finite float (higher is better). "
                        "A NaN usually means the model's outputs overflowed or the data has NaNs")
    return number


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__


# ---- the one evaluator and baseline builder -----------------------------------------------------
@dataclasses.dataclass
class Evaluation:
    """How every entry point scores a model: the evaluator, the original model's metric on it (the
    baseline, measured where the model will run) and a batch-1 feed for latency."""

    evaluator: Evaluator
    baseline: float
    sample_feed: dict
    target: object  # backend.DeployTarget
    source: FeedSource | None = None  # where deployment-batch feeds come from

    def feed_of(self, batch: int) -> dict:
        """A feed of `batch` samples from the data (repeated when it has fewer), for latency. Samples
        of another shape than the first (variable-size data) end the batch, as data.rebatched does."""
        if batch == 1 or self.source is None:
            return {k: np.repeat(v, batch, axis=0) for k, v in self.sample_feed.items()}
        first = next(rebatched(self.source.batches(), batch))
        reps = -(-batch // first.size)
        return {k: np.concatenate([v] * reps)[:batch] for k, v in first.feed.items()}

    @property
    def data_batch(self) -> int:
        """The batch size the data arrives in (the default deployment batch)."""
        return _first_batch_size(self.source) if self.source is not None else 1

    @property
    def metric_name(self) -> str:
        return self.evaluator.metric_name

    def score(self, files, int8: bool, target=None) -> tuple[float, str]:
        """The model's metric and the backend it was measured on. A PaddleSlim-style callback
        `(exe, program, feed_names, fetch_targets)` needs a static program, so it runs the saved
        program with the executor (for int8 models: simulated int8), and the summary says so."""
        if self.evaluator.mode == "paddleslim":
            from .model_io import load_model

            with legacy_ir():
                model = load_model(files)
                value = self.evaluator(None, context=ModelContext.from_model(model))
            return value, ("Paddle static executor (the PaddleSlim-style eval_callback needs a program"
                           + ("; int8 simulated" if int8 else "") + ")")
        from .backend import inference_predictor

        target = target or self.target
        value = self.evaluator(inference_predictor(files, int8=int8, target=target))
        return value, target.describe(int8, 1, _batch_of(self.evaluator))


def _batch_of(evaluator: Evaluator) -> int | str:
    return _first_batch_size(evaluator.data) if evaluator.data is not None else "as the eval_callback feeds it"


def _first_batch_size(source: FeedSource) -> int:
    return int(source.first().size)


def build_evaluation(original, eval_callback, metric: str, feed_names: list[str], target,
                     sample_source: FeedSource | None = None) -> Evaluation:
    """The Evaluation of a job: `eval_callback` as the spec allows it (eval data whose last field is
    the label, or a function), scored with `metric` when it is data; the baseline is the original
    model's metric on `target`. The latency sample is the first eval batch, or, for a callback, the
    first batch of `sample_source` (the calibration / training data)."""
    from .backend import inference_predictor

    reference = inference_predictor(original, int8=False, target=target)
    evaluator = build_evaluator(eval_callback=eval_callback, metric=metric, feed_names=feed_names,
                                reference_predict=reference)
    source = evaluator.data if evaluator.data is not None else sample_source
    if source is None:
        raise ConfigError("an eval_callback function gives no sample batch for the latency comparison: pass "
                          "calibration or training data too")
    sample = {k: v[:1] for k, v in source.first().feed.items()}
    _check_runs(reference, sample, original, target)
    partial = Evaluation(evaluator, math.nan, sample, target, source)
    baseline, _ = partial.score(original, int8=False)
    return dataclasses.replace(partial, baseline=baseline)


def _check_runs(predict, sample: dict, files, target) -> None:
    """The original model must run on the target before its metric means anything: a failure there is
    the model's or the runtime's, not the eval_callback's, and the error says which and what to do."""
    try:
        predict(sample)
    except Exception as err:
        from .model_io import paddle_error_line

        if files.format == "pir-json" and target.runtime == "onednn":
            from .program.convert import onednn_failure

            raise ModelError(f"{onednn_failure(files, err)}. Select on the stock runtime instead: Deploy.runtimes "
                             "['paddle-cpu'] first (API: deploy={'runtimes': ['paddle-cpu']}), or "
                             "QuantizationConfig.deploy_backend 'none'; or give the legacy .pdmodel") from None
        raise ModelError(f"the original model {files.model_path} does not run on {target.describe(False, 1, 1)}: "
                         f"{paddle_error_line(err)}; check that it runs there outside autocompress") from None
