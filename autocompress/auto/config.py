"""The `Auto` section: what auto mode searches and where the model will run. No Paddle import here,
so a typo fails in a fraction of a second, before any model loads."""
from __future__ import annotations

import re
from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from ..config import _Config, build
from ..errors import ConfigError

# deployment targets: the runtime every candidate is measured (and selected) on
TARGETS = ("paddle-cpu", "onednn-int8", "openvino", "gpu")
# candidate kinds, in the order they run by default (cheap first)
KINDS = ("ptq", "prune", "prune+ptq", "qat", "asp", "sparse")
INT8_KINDS = ("ptq", "prune+ptq", "qat")


def parse_duration(value) -> float:
    """Seconds from a number or '90s' / '30m' / '2h' / '1h30m'."""
    if isinstance(value, bool):
        raise ValueError(f"a duration is a number of seconds or text like '30m', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None or not any(parts.groups()):
            raise ValueError(f"cannot read the duration {value!r}; write seconds (600) or e.g. '90s', '30m', '2h'")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if not seconds > 0:
        raise ValueError(f"a time budget must be positive, got {value!r}")
    return seconds


class AutoConfig(_Config):
    """Extension of the spec: `strategy_config={"Auto": {...}}`, `Auto:` in a run YAML, or
    `autocompress optimize`.

    target: where the model runs — 'paddle-cpu' (a stock paddle.inference.Config, no oneDNN, as
    rapidocr_paddle runs it), 'onednn-int8' (Paddle Inference with oneDNN and its int8 switch),
    'openvino' (OpenVINO; int8 candidates selected there, through their ONNX QDQ export placed for its kernels, with conv2d_transpose quantized too), 'gpu' (Paddle Inference with TensorRT; needs a
    CUDA build). batch_size: the deployment batch (default: the eval data's batch). time_budget:
    seconds or '30m'; candidates start while time is left. candidates: the kinds to try (default:
    those that can pay on the target). prune_ratios: channel-pruning ratios. epochs / train_iter:
    training length of the candidates that train (unless a TrainConfig is given). ptq_trials: trials
    of the PTQ search. resume: reuse finished candidates found in the save dir. refine: with time
    left after the planned candidates, try pruning ratios between the largest one within the budget
    and the smallest one over it (halving the gap, steps of 0.05; and above the largest when every
    ratio fits), each with its int8 chain where the target runs int8.
    """

    target: Literal[TARGETS] = "onednn-int8"
    batch_size: Optional[int] = Field(None, ge=1)
    time_budget: Union[float, str] = "30m"
    candidates: Optional[list[Literal[KINDS]]] = Field(None, min_length=1)
    prune_ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5], min_length=1)
    epochs: int = Field(3, ge=1)
    train_iter: Optional[int] = Field(None, ge=1)
    ptq_trials: int = Field(8, ge=1)
    resume: bool = True
    refine: bool = True

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, v):
        return parse_duration(v)

    @field_validator("prune_ratios")
    @classmethod
    def _ratios(cls, v):
        for ratio in v:
            if not 0.0 < ratio < 1.0:
                raise ValueError(f"pruning ratios must be in (0, 1), got {ratio}")
        return sorted(set(v))

    @property
    def seconds(self) -> float:
        return float(self.time_budget)


def build_auto(value) -> AutoConfig:
    return build(AutoConfig, value, "Auto")


def check_auto_train(auto, train) -> None:
    """Auto.epochs / Auto.train_iter set the training length only without a TrainConfig (which has its
    own); both given is a conflict, not a silent choice."""
    given = sorted({"epochs", "train_iter"} & auto.model_fields_set)
    if train is not None and given:
        raise ConfigError(f"Auto.{' and Auto.'.join(given)} and a TrainConfig are both given: the TrainConfig's "
                          "epochs / train_iter set how long the candidates train; remove one of them")
