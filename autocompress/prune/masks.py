"""Weight masks shared by ASP and unstructured sparsity: apply after every optimizer step, measure.

A mask is a boolean array (True = keep) per parameter. The optimizer knows nothing about masks, so
after each step a pruned weight may have moved away from zero (momentum, weight decay, gradient);
`MaskSet.apply` zeroes it again. That is what "masks kept through training" means here.
"""
from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..program.legacy.params import read_param, write_param


@dataclasses.dataclass
class MaskSet:
    masks: dict  # name -> bool ndarray (True = keep), same shape as the parameter

    def apply(self, scope, place=None) -> None:
        """Zero every masked weight in `scope` (cheap enough per step for the models we train on
        CPU; a program-side elementwise_mul would avoid the host copy on large GPU models)."""
        for name, mask in self.masks.items():
            w = read_param(scope, name)
            if w.shape != mask.shape:
                raise ModelError(f"mask for {name} has shape {mask.shape} but the weight is {w.shape}; the masks "
                                 "belong to another model")
            write_param(scope, name, np.where(mask, w, np.zeros_like(w)), place)

    def after_step(self, scope, place=None):
        """A callable for the training loop's `after_step` hook (arguments are ignored)."""
        def hook(*_args, **_kwargs):
            self.apply(scope, place)
        return hook

    def sparsity(self) -> dict:
        return sparsity_of({n: m.astype(np.float32) for n, m in self.masks.items()})


def sparsity_of(weights: dict) -> dict:
    """{'per_tensor': {name: fraction of exact zeros}, 'overall': zeros / total, 'zeros', 'total'}."""
    per, zeros, total = {}, 0, 0
    for name, w in weights.items():
        z = int(np.count_nonzero(np.asarray(w) == 0))
        per[name] = z / max(w.size, 1)
        zeros += z
        total += int(w.size)
    return {"per_tensor": per, "overall": zeros / max(total, 1), "zeros": zeros, "total": total}


def scope_sparsity(scope, names) -> dict:
    return sparsity_of({n: read_param(scope, n) for n in names})


def compressed_size(files) -> dict:
    """Size of the saved params file raw and deflate-compressed (what a zip / gzip download costs):
    zeros only pay off on disk once compressed, so the report gives both."""
    path = Path(files.params_path)
    raw = path.read_bytes()
    return {"params_bytes": len(raw), "params_compressed_bytes": len(zlib.compress(raw, 6))}


# op type -> (weight input slot, input-dim axis of the weight when not transposed)
_WEIGHT_SLOTS = {"conv2d": "Filter", "depthwise_conv2d": "Filter", "conv2d_transpose": "Filter",
                 "matmul_v2": "Y", "matmul": "Y", "mul": "Y", "fc": "W"}


@dataclasses.dataclass(frozen=True)
class WeightUse:
    name: str
    op_type: str
    shape: tuple
    groups: int = 1
    trans_y: bool = False

    @property
    def is_conv(self) -> bool:
        return self.op_type.startswith("conv") or self.op_type == "depthwise_conv2d"


def weight_params(program) -> dict[str, WeightUse]:
    """Every persistable weight (rank >= 2) read as a conv filter or matmul / fc weight. Biases and
    normalisation parameters are never listed: zeroing them is not sparsity, it changes the model."""
    block = program.global_block()
    out: dict[str, WeightUse] = {}
    for op in block.ops:
        slot = _WEIGHT_SLOTS.get(op.type)
        if slot is None or slot not in op.input_names or not op.input(slot):
            continue
        name = op.input(slot)[0]
        var = block.var(name)
        if not var.persistable or len(var.shape) < 2:
            continue
        groups = int(op.attr("groups")) if op.has_attr("groups") else 1
        trans = bool((op.has_attr("trans_y") and op.attr("trans_y"))
                     or (op.has_attr("transpose_Y") and op.attr("transpose_Y")))
        out.setdefault(name, WeightUse(name, op.type, tuple(int(d) for d in var.shape), groups, trans))
    return out
