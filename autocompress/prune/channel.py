"""Structured channel pruning: rank channels, pick the ones to drop, remove them physically.

`analyze` (graph.py) says which parameter axes must shrink together; here we choose *which*
channels go (criterion), then rewrite every affected parameter in the scope, the var shapes in the
program, depthwise `groups` and explicit reshape sizes, so the saved model is really smaller.

Equivalence we guarantee (and test): the pruned model computes exactly what the original model
computes when every *consumer* of a pruned channel (next conv's input channel, fc rows) ignores it,
i.e. `zero_pruned_inputs` applied to the original. Zeroing the conv filter alone would not be the
same: the batch norm's beta (and mean shift) would still put a constant into the channel.

With data (`calib`), a pruned channel's *mean* is kept: `compensate_means` folds it into the
consumer's bias (or the batch-norm mean after it), so the pruned model computes what the original
computes when each removed channel is replaced by its average. Criterion 'activation' then removes
the channels whose variation matters least to their consumers. On PP-OCRv4 rec (PP-LCNetV3 adds a
learned constant to every activation) this is the difference between char accuracy 0.0 and 0.72 at
ratio 0.25 before any training.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..config import PruneConfig, build
from ..errors import ConfigError, ModelError
from ..program.legacy.params import read_param, write_param
from .graph import ChannelGraph, _is_param, analyze, removed_positions

log = logging.getLogger("autocompress.prune")

CRITERIA = ("l1_norm", "bn_scale", "geometry_median", "activation")  # activation: an extension, needs data


@dataclasses.dataclass
class ChannelPlan:
    """Which channels of which space go; `targets` maps each requested weight to its space."""
    removed: dict  # space id -> sorted np.ndarray of channel indices to drop
    channels: dict  # space id -> channel count before pruning
    targets: dict  # weight name -> space id

    def param_removals(self, graph: ChannelGraph) -> dict[str, dict[int, np.ndarray]]:
        """param -> {axis: positions to delete}, over every producer, member and consumer."""
        out: dict[str, dict[int, np.ndarray]] = {}
        for ref in graph.refs:
            pos = removed_positions(ref.segments, self.removed)
            if len(pos):
                axes = out.setdefault(ref.param, {})
                axes[ref.axis] = np.union1d(axes.get(ref.axis, np.zeros(0, np.int64)), pos)
        return out

    def summary(self) -> dict:
        return {name: {"channels": self.channels[sid], "removed": int(len(self.removed.get(sid, ())))}
                for name, sid in self.targets.items()}




def _norm_rows(w: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).astype(np.float64)


def channel_scores(graph: ChannelGraph, scope, space: int, criterion: str, stats=None) -> np.ndarray:
    """Importance of each channel of `space` (higher = keep). Several producers (a residual group)
    each contribute their scores normalised to sum 1, so one large layer does not decide alone.
    'activation' (needs `stats`, see `consumer_input_stats`) scores by what removing the channel does
    to each consumer's output once its mean is compensated: sqrt(sum var(x_c) * |W[:, c]|^2)."""
    info = graph.spaces()[space]
    total = np.zeros(info.channels)
    if criterion == "activation":
        for ref in graph.refs_of_space(space):
            if ref.role != "consumer" or ref.op_index not in stats.std:
                continue
            pos = _channel_positions(ref.segments, space)  # [C, entries per channel]
            rows = _norm_rows(read_param(scope, ref.param), ref.axis)
            score = np.sqrt((stats.std[ref.op_index][pos] ** 2 * (rows[pos] ** 2).sum(axis=-1)).sum(axis=1))
            total += score / (score.sum() + 1e-12)
        return total
    for ref in info.producers:
        if criterion == "bn_scale":
            bn = graph.following_bn.get(ref.param)
            if bn is None:
                continue  # checked by the caller, which names the layer
            score = np.abs(read_param(scope, bn).astype(np.float64))
        else:
            rows = _norm_rows(read_param(scope, ref.param), ref.axis)
            if criterion == "l1_norm":
                score = np.abs(rows).sum(axis=1)
            else:  # geometry_median: filters close to all others are replaceable (FPGM)
                sq = (rows ** 2).sum(axis=1)
                d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0)
                score = np.sqrt(d2).sum(axis=1)
        total += score / (score.sum() + 1e-12)
    return total


def resolve_targets(graph: ChannelGraph, names) -> dict[str, int]:
    """Weight names -> spaces; unknown or unsafe names are a ConfigError listing the valid ones."""
    valid = graph.prunable_params(kinds=("conv", "depthwise", "fc"))
    if names is None:
        default = graph.prunable_params(kinds=("conv",))
        if not default:
            raise ConfigError("PruneConfig: this model has no convolution whose output channels can be pruned "
                              "safely (all are model outputs or feed ops this analysis does not follow); "
                              "use UnstructurePruneConfig or prune_algo 'asp' instead")
        return default
    if not names:
        raise ConfigError(f"PruneConfig.prune_params_name is empty; give weight names from {sorted(valid)} "
                          "or leave it out to prune every safely prunable convolution")
    params = {v.name for v in graph.block.vars.values() if v.persistable}
    out = {}
    for name in names:
        if name in valid:
            out[name] = valid[name]
        elif name in params:
            raise ConfigError(f"PruneConfig.prune_params_name: {name!r} cannot be pruned safely: "
                              f"{graph.why_not_prunable(name)}. Prunable weights: {sorted(valid)}")
        else:
            raise ConfigError(f"PruneConfig.prune_params_name: {name!r} is not a parameter of this model. "
                              f"Prunable weights: {sorted(valid)}")
    return out


def channels_to_remove(c: int, ratio: float, multiple: int = 1) -> int:
    """How many of `c` channels to drop at `ratio`: floor(c * ratio), at least one kept; with `multiple`
    > 1 and c above it, the kept count is rounded to the nearest multiple of it (at least one, at most
    c), because CPU kernels work on blocks of 8 or 16 channels and a layer left with a ragged
    count runs padded or on a slower path."""
    n = min(int(np.floor(c * ratio + 1e-9)), c - 1)
    if multiple > 1 and c > multiple:
        kept = max(multiple, int(np.floor((c - n) / multiple + 0.5)) * multiple)
        n = max(c - kept, 0)
    return n


def plan_pruning(graph: ChannelGraph, scope, targets: dict[str, int], ratio: float,
                 criterion: str = "l1_norm", stats=None, channel_multiple: int = 1) -> ChannelPlan:
    """Drop the lowest-scoring channels of each target space (`channels_to_remove`)."""
    if criterion not in CRITERIA:
        raise ConfigError(f"PruneConfig.criterion {criterion!r} is unknown; allowed: {list(CRITERIA)}")
    if criterion == "activation" and stats is None:
        raise ConfigError("PruneConfig.criterion 'activation' ranks channels by their activations on data, but "
                          "this pruning got none; prune through the API or prune_distill (they pass the training "
                          "data), give prune_model calib=..., or use criterion 'l1_norm'")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"PruneConfig.pruned_ratio must be in [0, 1), got {ratio}")
    spaces = graph.spaces()
    if criterion == "bn_scale":
        def has_bn(name, sid):
            if graph.conv_kind.get(name) == "depthwise":  # ranked by the producers of its input
                return any(p.param in graph.following_bn for p in spaces[sid].producers)
            return name in graph.following_bn

        missing = [n for n, sid in targets.items() if not has_bn(n, sid)]
        if missing:
            raise ConfigError(
                f"PruneConfig.criterion 'bn_scale' ranks channels by the batch-norm scale after each layer, "
                f"but {missing} {'has' if len(missing) == 1 else 'have'} no batch_norm directly after it. "
                "Use criterion 'l1_norm' or 'geometry_median', or leave these layers out of prune_params_name.")
    removed, channels = {}, {}
    for sid in sorted(set(targets.values())):
        c = spaces[sid].channels
        channels[sid] = c
        n = channels_to_remove(c, ratio, channel_multiple)
        if n <= 0:
            continue
        scores = channel_scores(graph, scope, sid, criterion, stats)
        removed[sid] = np.sort(np.argsort(scores, kind="stable")[:n]).astype(np.int64)
    return ChannelPlan(removed, channels, dict(targets))


def apply_plan(program, scope, graph: ChannelGraph, plan: ChannelPlan, place=None) -> None:
    """Physically remove the planned channels from `scope`'s tensors and `program`'s shapes."""
    from ..program.legacy.channels import remove_channels

    remove_channels(program, scope, plan.param_removals(graph), depthwise_ops=[idx for idx, _ in graph.depthwise_ops],
                    flatten_reshapes=graph.reshape_ops, view_reshapes=dict(graph.view_reshapes), place=place)


def _consumer_input(op) -> str:
    for slot in ("Input", "X"):
        if slot in op.input_names and op.input(slot):
            return op.input(slot)[0]
    raise ModelError(f"op {op.type} has no Input / X slot")


@dataclasses.dataclass
class InputStats:
    """Per consumer op index: mean and standard deviation of its input at every position of the
    channel axis (over the batch and, for 4-D inputs, the spatial axes)."""
    mean: dict
    std: dict


def _channel_positions(segments, space: int) -> np.ndarray:
    """[channels, entries per channel]: where each channel of `space` sits on an axis laid out as
    `segments` (a flatten gives each channel H*W entries; the same space twice, twice as many)."""
    parts, offset = [], 0
    for seg in segments:
        if seg.space == space:
            parts.append(offset + np.arange(seg.channels)[:, None] * seg.repeat + np.arange(seg.repeat)[None, :])
        offset += seg.channels * seg.repeat
    return np.concatenate(parts, axis=1)


def consumer_input_stats(model, graph: ChannelGraph, feeds, limit: int = 4) -> InputStats:
    """Run the *original* model on at most `limit` batches (feed dicts, `data.Batch`es or a
    FeedSource) and collect `InputStats` of every consumer's input."""
    import paddle

    block = graph.block
    wanted = {r.op_index: _consumer_input(block.ops[r.op_index]) for r in graph.refs if r.role == "consumer"}
    names = sorted(set(wanted.values()))
    sums, squares, count = {}, {}, 0
    exe = paddle.static.Executor(paddle.CPUPlace())
    batches = feeds.batches(limit=limit) if hasattr(feeds, "batches") else feeds
    for i, feed in enumerate(batches):
        if i >= limit or not names:
            break
        feed = getattr(feed, "feed", feed)  # a data.Batch
        feed = {k: v for k, v in feed.items() if k in model.feed_names}
        with paddle.static.scope_guard(model.scope):
            outs = exe.run(model.program, feed=feed, fetch_list=names)
        for name, arr in zip(names, outs):
            arr = np.asarray(arr, np.float64)
            axes = (0,) + tuple(range(2, arr.ndim))
            sums[name] = sums.get(name, 0.0) + arr.mean(axis=axes)
            squares[name] = squares.get(name, 0.0) + (arr ** 2).mean(axis=axes)
        count += 1
    if not count:
        raise ModelError("pruning statistics: the calibration data yielded no batch")
    mean = {idx: sums[name] / count for idx, name in wanted.items()}
    std = {idx: np.sqrt(np.maximum(squares[name] / count - mean[idx] ** 2, 0.0)) for idx, name in wanted.items()}
    return InputStats(mean, std)


def _bias_after(graph: ChannelGraph, op_index: int):
    """What absorbs a constant added to the output channels of op `op_index`: ('bias', param) for a
    bias add right after it, ('mean', param) for a batch norm right after it, else None."""
    block = graph.block
    out = block.ops[op_index].output_arg_names[0]
    for op in block.ops[op_index + 1:]:
        if out not in op.input_arg_names:
            continue
        if op.type == "elementwise_add" and op.input("X")[0] == out:
            y = op.input("Y")[0]
            if y in graph.param_views:
                return "bias", graph.param_views[y][0]
            if _is_param(block, y):
                return "bias", y
        if op.type in ("batch_norm", "sync_batch_norm") and op.input("X")[0] == out:
            return "mean", op.input("Mean")[0]
        return None
    return None


def compensate_means(scope, graph: ChannelGraph, plan: ChannelPlan, means: dict, place=None) -> list[str]:
    """Before `apply_plan`: fold what each removed input channel contributes on average (its mean
    times the consumer's weights) into the consumer's bias or the batch-norm mean after it, so that
    pruning removes a channel's *variation*, not its offset. Compact models such as PP-LCNetV3 add a
    learned constant to every activation; without this, dropping 1 channel in 32 can zero the
    accuracy. `means`: `InputStats.mean`. Returns the consumer weights with nothing to absorb it."""
    import paddle

    place = place or paddle.CPUPlace()
    skipped = []
    for ref in graph.refs:
        if ref.role != "consumer" or ref.op_index not in means:
            continue
        pos = removed_positions(ref.segments, plan.removed)
        if not len(pos):
            continue
        op = graph.block.ops[ref.op_index]
        target = _bias_after(graph, ref.op_index)
        if target is None:
            skipped.append(ref.param)
            continue
        w = read_param(scope, ref.param).astype(np.float64)
        mean = np.asarray(means[ref.op_index])[pos]
        if op.type == "conv2d":  # [out, in, kh, kw]
            delta = np.einsum("oi,i->o", w[:, pos].sum(axis=(2, 3)), mean)
        elif op.type == "conv2d_transpose":  # [in, out, kh, kw]; taps per output pixel: k*k / stride^2
            strides = list(op.attr("strides")) if op.has_attr("strides") else [1, 1]
            taps = w.shape[2] * w.shape[3] / float(np.prod(strides))
            delta = np.einsum("io,i->o", w[pos].mean(axis=(2, 3)), mean) * taps
        else:  # matmul / fc: rows are the channel axis
            rows = w[pos] if ref.axis == 0 else w[:, pos].T
            delta = mean @ rows
        kind, param = target
        arr = read_param(scope, param)
        arr = (arr.reshape(-1) + (delta if kind == "bias" else -delta)).astype(arr.dtype).reshape(arr.shape)
        write_param(scope, param, arr, place)
    return skipped


def zero_pruned_inputs(scope, graph: ChannelGraph, plan: ChannelPlan, place=None) -> None:
    """On the *original* model: zero every consumer weight that reads a pruned channel. The result
    computes what the pruned model computes (the reference for the equivalence test)."""
    import paddle

    place = place or paddle.CPUPlace()
    for ref in graph.refs:
        if ref.role != "consumer":
            continue
        pos = removed_positions(ref.segments, plan.removed)
        if len(pos):
            arr = read_param(scope, ref.param)
            index = [slice(None)] * arr.ndim
            index[ref.axis] = pos
            arr[tuple(index)] = 0
            write_param(scope, ref.param, arr, place)


def prune_loaded(model, config, place=None, calib=None):
    """Prune a `LoadedModel` in place (its program and scope are private copies from load_model).
    `calib`: feed dicts or a FeedSource (4 batches are read): the statistics for criterion 'activation'
    and for `compensate_means`; None prunes data-free (no compensation).
    Returns (graph, plan)."""
    config = build(PruneConfig, config)
    if config.prune_algo != "prune":
        raise ConfigError("prune_loaded handles prune_algo 'prune'; use prune.asp for 'asp'")
    graph = analyze(model.program, model.feed_names, model.fetch_names)
    targets = resolve_targets(graph, config.prune_params_name)
    stats = consumer_input_stats(model, graph, calib) if calib is not None else None
    plan = plan_pruning(graph, model.scope, targets, config.pruned_ratio, config.criterion, stats,
                        config.channel_multiple)
    if stats is not None:
        skipped = compensate_means(model.scope, graph, plan, stats.mean,
                                   place or getattr(model.executor, "place", None))
        if skipped:
            log.info("mean compensation: no bias or batch norm after %s; their removed inputs are dropped as is",
                     skipped)
    apply_plan(model.program, model.scope, graph, plan, place or getattr(model.executor, "place", None))
    return graph, plan


def prune_model(files, config, out_dir, feed_shapes=None, place=None, calib=None) -> dict:
    """Load `files` (never modified), prune channels, save atomically into `out_dir`.
    `calib` (feed dicts or a FeedSource; a few batches are read): mean compensation, see prune_loaded.

    Returns {model_files, params/flops/size before and after, pruned: {weight: {channels, removed}}}.
    prune_algo 'asp' is delegated to `asp.asp_model` (2:4 masks, same shape).
    """
    from .. import model_io
    from ..program.legacy import info as program_info
    from ..paddle_env import legacy_ir

    config = build(PruneConfig, config)
    if config.prune_algo == "asp":  # the pipeline's prune stage serves both algorithms
        from .asp import asp_model

        return asp_model(files, out_dir, place=place, names=config.prune_params_name)
    guard = model_io.InputGuard(files)
    with legacy_ir():
        model = model_io.load_model(files, place)
        before = _stats(model, feed_shapes)
        _, plan = prune_loaded(model, config, place, calib=calib)
        after_flops = program_info.count_flops(model.program, model.feed_names, feed_shapes)
        saved = model_io.save_model(model, out_dir, {
            "strategy": "prune", "parent": model_io.sha256_file(files.model_path),
            "pruned_ratio": config.pruned_ratio, "criterion": config.criterion,
            "channel_multiple": config.channel_multiple})
        after = {"params": program_info.count_params(model.program), "flops": after_flops,
                 "size_bytes": model_io.dir_size(saved)}
    guard.verify()
    return {"model_files": saved,
            "params_before": before["params"], "params_after": after["params"],
            "flops_before": before["flops"], "flops_after": after["flops"],
            "size_bytes_before": before["size_bytes"], "size_bytes_after": after["size_bytes"],
            "pruned": plan.summary()}


def _stats(model, feed_shapes) -> dict:
    from .. import model_io
    from ..program.legacy import info as program_info

    return {"params": program_info.count_params(model.program),
            "flops": program_info.count_flops(model.program, model.feed_names, feed_shapes),
            "size_bytes": model_io.dir_size(model.files)}


def reduction(before, after) -> float | None:
    return None if not before or after is None else 1.0 - after / before


__all__ = ["CRITERIA", "ChannelPlan", "InputStats", "channel_scores", "resolve_targets", "plan_pruning", "apply_plan",
           "zero_pruned_inputs", "consumer_input_stats", "compensate_means", "prune_loaded", "prune_model",
           "reduction"]
