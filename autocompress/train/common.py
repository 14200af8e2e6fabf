"""Small pieces the engine, the loop and other engines (pruning) share."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ..evaluation import finite_metric
from ..errors import AutoCompressError, EvalError, TrainingError  # noqa: F401 (TrainingError re-exported)


@dataclasses.dataclass
class StepContext:
    """What `after_step` gets: enough to re-apply masks (pruning) or inspect weights."""

    step: int
    scope: object
    place: object
    program: object                   # the training program
    param_names: list[str]


def scope_predictor(exe, program, scope, output_names: list[str]) -> Callable:
    """The evaluation contract's `predict`: feed dict of numpy arrays -> list of numpy outputs."""
    import paddle

    def predict(feed: dict) -> list[np.ndarray]:
        with paddle.static.scope_guard(scope):
            return [np.asarray(o) for o in exe.run(program, feed=dict(feed), fetch_list=list(output_names))]
    return predict


def evaluate_checked(evaluator, predict, what: str) -> float:
    try:
        value = evaluator(predict)
    except AutoCompressError:
        raise
    except Exception as err:
        raise EvalError(f"the eval callback raised while evaluating {what}: {type(err).__name__}: {err}. "
                        "Fix the callback (it gets predict(feed_dict) -> list of numpy outputs).") from err
    return finite_metric(value, f"the evaluation of {what}")
