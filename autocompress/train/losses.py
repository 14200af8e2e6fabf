"""Distillation losses on (teacher, student) node pairs, built as static-graph ops.

The spec's `l2_loss`, `soft_label_loss`, `fsp_loss`, plus `kl_loss` (logits of classifiers and
detectors), `cosine_loss` (features of NLP / retrieval models) and `l1_loss`. Each loss in
`distill_loss` is applied to every node pair and weighted by its `distill_lambda`; `fsp_loss`
takes the pairs two at a time (an FSP matrix relates two layers of the same network).

Node names are checked against the merged program before any op is built; a wrong name is a
ConfigError that lists names that do exist.
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..program.legacy.ops import raw as _raw
from ..program.legacy.ops import sum_last as _sum_last
from ..program.legacy.trainable import node_names

LOSSES = ("l2_loss", "soft_label_loss", "fsp_loss", "kl_loss", "cosine_loss", "l1_loss")
_EPS = 1e-8


def l2_loss(t, s):
    import paddle

    return paddle.mean(paddle.square(s - t))


def l1_loss(t, s):
    import paddle

    return paddle.mean(_raw("abs", {"X": s - t}))


def soft_label_loss(t, s, temperature: float = 1.0):
    """PaddleSlim's soft-label loss: cross-entropy of softmax(student/T) against softmax(teacher/T)."""
    import paddle
    import paddle.nn.functional as F

    pt = F.softmax(_last_axis_2d(t) / temperature)
    log_ps = F.log_softmax(_last_axis_2d(s) / temperature)
    return paddle.mean(_sum_last(pt * log_ps)) * -1.0


def kl_loss(t, s, temperature: float = 1.0):
    """KL(teacher || student) on softmax(logits / T), times T^2 (Hinton's scaling)."""
    import paddle
    import paddle.nn.functional as F

    t2, s2 = _last_axis_2d(t) / temperature, _last_axis_2d(s) / temperature
    pt = F.softmax(t2)
    kl = _sum_last(pt * (F.log_softmax(t2) - F.log_softmax(s2)))
    return paddle.mean(kl) * float(temperature ** 2)


def cosine_loss(t, s):
    """1 - cosine similarity of the flattened per-sample features."""
    import paddle

    sf, tf = paddle.flatten(s, 1), paddle.flatten(t, 1)
    dot = _sum_last(sf * tf)
    norms = _raw("sqrt", {"X": _sum_last(sf * sf) * _sum_last(tf * tf) + _EPS})
    return paddle.mean((dot / norms) * -1.0 + 1.0)


def fsp_loss(t1, t2, s1, s2):
    """Flow-of-solution-procedure loss (Yim et al. 2017): L2 between the teacher's and student's
    FSP matrices of two feature maps [N, C1, H, W], [N, C2, H, W] with equal H, W."""
    import paddle

    return paddle.mean(paddle.square(_fsp_matrix(s1, s2) - _fsp_matrix(t1, t2)))


def _fsp_matrix(a, b):
    import paddle

    hw = int(a.shape[2] * a.shape[3])
    a2 = paddle.flatten(a, 2)                               # [N, C1, HW]
    b2 = paddle.flatten(b, 2)                               # [N, C2, HW]
    m = _raw("matmul_v2", {"X": a2, "Y": b2}, {"trans_x": False, "trans_y": True})  # [N, C1, C2]
    return m / float(hw)


def _last_axis_2d(x):
    """Class scores may come as [N, C], [N, T, C] (sequence models) or [N, C, 1, 1]; treat the last
    axis as classes and every other position as a sample."""
    import paddle

    if len(x.shape) == 4 and x.shape[2] == 1 and x.shape[3] == 1:
        x = paddle.flatten(x, 1)
    return paddle.reshape(x, [-1, x.shape[-1]])


@dataclasses.dataclass
class LossTerm:
    name: str          # e.g. "l2_loss" (several pairs of one loss are summed into one term)
    weight: float
    var: object        # the scalar loss var (unweighted)


def resolve_pairs(pairs: list[str] | None, teacher, student_program, student_outputs: list[str],
                  program, key: str = "distill_node_pair") -> list[tuple[str, str]]:
    """(teacher var, student var) in the merged program, checked. Default: the outputs, in order."""
    if pairs is None:
        if len(teacher.output_names) != len(student_outputs):
            raise ConfigError(f"the teacher has {len(teacher.output_names)} outputs and the student "
                              f"{len(student_outputs)}; set {key} to say which nodes to match")
        return list(zip(teacher.output_names, student_outputs))
    if len(pairs) % 2:
        raise ConfigError(f"{key} needs (teacher, student) pairs: got {len(pairs)} names, an odd number")
    block = program.global_block()
    student_nodes = set(node_names(student_program)) | set(student_outputs)
    resolved = []
    for i in range(0, len(pairs), 2):
        t_name, s_name = pairs[i], pairs[i + 1]
        t_var = teacher.resolve(t_name)
        if t_var is None or not block.has_var(t_var):
            raise ConfigError(f"{key}[{i}] = {t_name!r} is not a var of the teacher. "
                              f"{_listing(teacher_nodes(teacher, program))}")
        if s_name not in student_nodes:
            raise ConfigError(f"{key}[{i + 1}] = {s_name!r} is not a var of the student. "
                              f"{_listing(node_names(student_program))}")
        resolved.append((t_var, s_name))
    return resolved


def teacher_nodes(teacher, program) -> list[str]:
    return [n for n in node_names(program) if n.startswith(teacher.prefix)]


def _listing(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    more = f" ... ({len(names)} in all; list them with autocompress.train.list_nodes(model_files))" \
        if len(names) > limit else ""
    return f"Valid names (op outputs): {shown}{more}"


def build_losses(program, pairs: list[tuple[str, str]], losses: list[str], lambdas: list[float],
                 key: str = "distill_loss", term_prefix: str = "") -> list[LossTerm]:
    """Append the loss ops for every (loss, lambda) over all pairs to `program`; return the terms."""
    import paddle

    if len(losses) != len(lambdas):
        raise ConfigError(f"distill_lambda has {len(lambdas)} values but {key} has {len(losses)}; "
                          "give one weight per loss")
    block = program.global_block()
    terms = []
    with paddle.static.program_guard(program):
        for loss_name, lam in zip(losses, lambdas):
            if loss_name not in LOSSES:
                raise ConfigError(f"unknown {key} {loss_name!r}; allowed: {list(LOSSES)}")
            fn = globals()[loss_name]
            if loss_name == "fsp_loss":
                if len(pairs) % 2:
                    raise ConfigError(f"fsp_loss relates two layers, so it takes node pairs two at a time; got "
                                      f"{len(pairs)} pairs. Give an even number of (teacher, student) pairs.")
                parts = []
                for (t1, s1), (t2, s2) in zip(pairs[0::2], pairs[1::2]):
                    vs = [block.var(n) for n in (t1, t2, s1, s2)]
                    _check_fsp_shapes(vs)
                    parts.append(fn(vs[0], vs[1], vs[2], vs[3]))
            else:
                parts = []
                for t, s in pairs:
                    tv, sv = block.var(t), block.var(s)
                    _check_same_shape(loss_name, tv, sv)
                    parts.append(fn(tv, sv))
            total = parts[0] if len(parts) == 1 else paddle.add_n(parts)
            terms.append(LossTerm(term_prefix + loss_name, float(lam), total))
    return terms


def _check_same_shape(loss_name, tv, sv):
    ts, ss = list(tv.shape), list(sv.shape)
    if len(ts) != len(ss) or any(a != b and a > 0 and b > 0 for a, b in zip(ts, ss)):
        raise ConfigError(f"{loss_name}: teacher node {tv.name} has shape {ts} but student node {sv.name} "
                          f"has {ss}; pair nodes of the same shape")


def _check_fsp_shapes(vs):
    if any(len(v.shape) != 4 or v.shape[2] <= 0 or v.shape[3] <= 0 for v in vs):
        raise ConfigError("fsp_loss needs 4-D feature maps [N, C, H, W] with known H, W; got "
                          + ", ".join(f"{v.name} {list(v.shape)}" for v in vs))
    t1, t2, s1, s2 = vs
    if list(t1.shape[2:]) != list(t2.shape[2:]) or list(s1.shape[2:]) != list(s2.shape[2:]):
        raise ConfigError("fsp_loss: the two layers of one network must have the same H, W; got "
                          + ", ".join(f"{v.name} {list(v.shape)}" for v in vs))
