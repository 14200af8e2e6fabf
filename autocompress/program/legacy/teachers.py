"""Merge teacher programs into the student's training program (PaddleSlim's `merge` idea).

Every teacher var and op is copied into the student's global block under a name prefix
(`teacher_` for one teacher, `teacher0_`, `teacher1_`, ... for several), so names never collide and
one executor run computes student and teachers together. Teacher ops run in inference mode and
their vars stop gradients: the teacher is a fixed target, never trained.

merge_feed=True (the spec's default) feeds the teacher from the student's inputs, matched by
position: one shared input var. With merge_feed=False (PaddleSlim merges no feeds then) the teacher
keeps its own input vars (prefixed, e.g. `teacher_img`), and each is fed the same batch array as the
student's input at its position, whatever the teacher calls it. Either way, feeds that differ in
count, dtype or a known dimension are a ConfigError: the one batch could not feed both.
"""
from __future__ import annotations

import dataclasses

from ...errors import ConfigError, ModelError
from .trainable import copy_persistables, persistable_value_names


@dataclasses.dataclass
class MergedTeacher:
    prefix: str
    feed_map: dict[str, str]       # teacher feed name -> var that holds it in the merged program
    own_feeds: dict[str, str]      # merge_feed=False: prefixed teacher input -> student input fed to it
    output_names: list[str]        # teacher outputs, prefixed
    var_names: set[str]            # the teacher's original (unprefixed) var names

    def resolve(self, name: str) -> str | None:
        """A node name as the user wrote it -> the var in the merged program, or None.

        Accepts the prefixed name (PaddleSlim's convention, e.g. `teacher_softmax_0.tmp_0`) or the
        teacher's own name."""
        if name.startswith(self.prefix) and name[len(self.prefix):] in self.var_names:
            return self._mapped(name[len(self.prefix):])
        if name in self.var_names:
            return self._mapped(name)
        return None

    def _mapped(self, name: str) -> str:
        return self.feed_map.get(name, self.prefix + name)


def teacher_prefixes(n: int) -> list[str]:
    return ["teacher_"] if n == 1 else [f"teacher{i}_" for i in range(n)]


def merge_teacher(program, student_feeds: list[str], teacher, prefix: str, merge_feed: bool,
                  train_scope, place) -> MergedTeacher:
    """Append `teacher` (a LoadedModel) to `program` under `prefix`; copy its weights into
    `train_scope` under the same prefix. Call inside `paddle_env.legacy_ir()`."""
    tprog = teacher.program.clone(for_test=True)
    tblock, block = tprog.global_block(), program.global_block()
    if tprog.num_blocks > 1:
        raise ModelError(f"teacher {teacher.files.model_path} has control-flow sub-blocks; such teachers "
                         "are not supported. Use a teacher without while/conditional_block ops.")
    matched = _match_feeds(program, student_feeds, teacher, tblock, merge_feed)
    feed_map = matched if merge_feed else {}
    clash = [prefix + n for n in tblock.vars if block.has_var(prefix + n)]
    if clash:
        raise ModelError(f"the student already has vars named {clash[:5]}, which the teacher prefix "
                         f"{prefix!r} would produce; rename the student's vars or the teacher's.")

    def mapped(name):
        return feed_map.get(name, prefix + name)

    for name, var in tblock.vars.items():
        if name in ("feed", "fetch") or name in feed_map:
            continue
        new = block.create_var(name=prefix + name, shape=var.shape, dtype=var.dtype, type=var.type,
                               lod_level=var.lod_level if _has_lod(var) else None,
                               persistable=var.persistable, stop_gradient=True)
        if name in teacher.feed_names:
            new.desc.set_need_check_feed(True)
            new.is_data = True
    for op in tblock.ops:
        if op.type in ("feed", "fetch"):
            continue
        desc = block.desc.append_op()
        desc.copy_from(op.desc)
        for name in set(op.input_arg_names):
            desc._rename_input(name, mapped(name))
        for name in set(op.output_arg_names):
            desc._rename_output(name, mapped(name))
    program._sync_with_cpp()
    for name in tblock.vars:
        if block.has_var(mapped(name)) and name not in feed_map:
            block.var(mapped(name)).stop_gradient = True
    copy_persistables(tprog, teacher.scope, train_scope, place, prefix=prefix,
                      names=persistable_value_names(tprog))
    own = {} if merge_feed else {prefix + t: s for t, s in matched.items()}
    return MergedTeacher(prefix, feed_map, own, [mapped(n) for n in teacher.fetch_names],
                         set(tblock.vars) - {"feed", "fetch"})


def _has_lod(var) -> bool:
    try:
        return var.lod_level is not None
    except Exception:
        return False


def _match_feeds(program, student_feeds, teacher, tblock, merge_feed: bool = True) -> dict[str, str]:
    """Teacher input i takes student input i's data (one var if merge_feed, else the teacher's own);
    check they can share data."""
    sblock = program.global_block()
    tfeeds = list(teacher.feed_names)
    what = ("merge_feed=True needs the teacher and student to take the same inputs" if merge_feed else
            "merge_feed: false feeds the teacher the student's batch (input i to input i, under the teacher's "
            "own input names)")
    fix = ("Use a teacher with the same inputs." if merge_feed else
           "Use a teacher whose inputs take the same arrays as the student's.")
    if len(tfeeds) != len(student_feeds):
        raise ConfigError(f"{what}, but the teacher {teacher.files.model_path} takes {tfeeds} and the student "
                          f"takes {student_feeds}. {fix}")
    problems = []
    for t, s in zip(tfeeds, student_feeds):
        tv, sv = tblock.var(t), sblock.var(s)
        same_dims = len(tv.shape) == len(sv.shape) and all(
            a == b or a < 0 or b < 0 for a, b in zip(tv.shape, sv.shape))
        if tv.dtype != sv.dtype or not same_dims:
            problems.append(f"teacher {t} {list(tv.shape)} {tv.dtype} vs student {s} {list(sv.shape)} {sv.dtype}")
    if problems:
        raise ConfigError(f"{what}, but the teacher's inputs do not match the student's: " + "; ".join(problems)
                          + f". {fix}")
    return dict(zip(tfeeds, student_feeds))
