"""Channel dependency analysis over a legacy static program (NCHW vision models).

(Over 400 lines on purpose: one rule per op type that carries channels; they are read side by side.)

Removing output channel `i` of a convolution is only safe if every tensor that carries that
channel shrinks with it: the batch norm after it, the activations, a depthwise conv (whose filter
and `groups` follow the channels), the other members of a residual `elementwise_add`, a `concat`
(at an offset), the rows of a fully-connected layer behind a flatten (channel x spatial size) and
the input channels of the next convolution.

Model: every channel axis belongs to a *space* (a union-find set of channel axes that must shrink
together). A tensor's channel axis is a list of *segments* `(space, channels, repeat)`: a plain
tensor is one segment with repeat 1; `concat` joins segment lists; a flatten multiplies `repeat` by
H*W (channel c owns rows c*HW .. c*HW+HW-1). Parameters refer to tensors' segments with a role:
  producer - creates the channels (conv filter axis 0, fc weight axis 1); its norms rank channels;
  member   - follows the channels (batch-norm params, biases, depthwise filter axis 0);
  consumer - reads the channels (next conv filter axis 1, fc weight rows).
A space is *frozen* (never pruned) when anything we cannot map touches it: an unknown op, a model
output, a model input, a group conv, NHWC layout, a reshape we cannot follow. Frozen is the
conservative default: an unknown op never leads to a wrong program, only to less pruning.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

# Ops that keep every channel independent and pass the channel axis through unchanged.
PASS_THROUGH = frozenset({
    "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "swish", "silu", "hard_swish", "hard_sigmoid",
    "gelu", "elu", "selu", "mish", "softplus", "softsign", "logsigmoid", "thresholded_relu", "brelu",
    "hardswish", "hardsigmoid", "pool2d", "dropout", "scale", "clip", "assign", "abs", "exp", "sqrt",
    "square", "cast", "nearest_interp", "nearest_interp_v2", "bilinear_interp", "bilinear_interp_v2",
    "stanh", "pow",
})
ELEMENTWISE = frozenset({"elementwise_add", "elementwise_sub", "elementwise_mul", "elementwise_div",
                         "elementwise_max", "elementwise_min"})
NORMS = frozenset({"batch_norm", "sync_batch_norm", "instance_norm"})
CONVS = frozenset({"conv2d", "depthwise_conv2d"})
MATMULS = frozenset({"matmul_v2", "matmul", "mul"})


@dataclasses.dataclass(frozen=True)
class Segment:
    space: int
    channels: int
    repeat: int = 1  # entries per channel on this axis (H*W after a flatten)


@dataclasses.dataclass
class ParamRef:
    """`param`'s `axis` carries the channels of `segments` (laid out one after another)."""
    param: str
    axis: int
    segments: tuple
    role: str  # 'producer' | 'member' | 'consumer'
    op_index: int


@dataclasses.dataclass
class SpaceInfo:
    id: int
    channels: int
    producers: list  # ParamRef, single segment
    frozen: list  # reasons (strings); empty means prunable if it has producers

    @property
    def prunable(self) -> bool:
        return bool(self.producers) and not self.frozen


class ChannelGraph:
    """The result of `analyze(program)`. See the module docstring for the model."""

    def __init__(self, program):
        self.program = program
        self.block = program.global_block()
        self._parent: list[int] = []
        self._channels: list[int] = []
        self._frozen: dict[int, list[str]] = defaultdict(list)
        self.tensor_segments: dict[str, tuple] = {}
        self.refs: list[ParamRef] = []
        self.depthwise_ops: list[tuple[int, str]] = []  # (op index, input tensor): groups follow channels
        self.reshape_ops: list[int] = []  # reshape2 ops with an explicit shape: rewritten after pruning
        self.following_bn: dict[str, str] = {}  # producer conv weight -> batch-norm Scale that follows it
        self.conv_kind: dict[str, str] = {}  # weight name -> op type, for messages and filters
        # reshape of a 1-D parameter into [1, C, 1, 1] (how Paddle 3 exports a conv bias):
        # view tensor -> (param, channel axis of the view, op index); its shape attr is rewritten
        self.param_views: dict[str, tuple[str, int, int]] = {}
        self.view_reshapes: list[tuple[int, int]] = []  # (op index, axis) to rewrite after pruning

    # -- union-find over spaces -------------------------------------------------------------
    def new_space(self, channels: int, frozen: str | None = None) -> int:
        sid = len(self._parent)
        self._parent.append(sid)
        self._channels.append(int(channels))
        if frozen:
            self._frozen[sid].append(frozen)
        return sid

    def find(self, sid: int) -> int:
        while self._parent[sid] != sid:
            self._parent[sid] = self._parent[self._parent[sid]]
            sid = self._parent[sid]
        return sid

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra
            self._frozen[ra].extend(self._frozen.pop(rb, []))
        return ra

    def freeze(self, segments, reason: str) -> None:
        for seg in segments:
            root = self.find(seg.space)
            if reason not in self._frozen[root]:
                self._frozen[root].append(reason)

    def resolve(self, segments) -> tuple:
        return tuple(Segment(self.find(s.space), s.channels, s.repeat) for s in segments)

    # -- results ------------------------------------------------------------------------------
    def spaces(self) -> dict[int, SpaceInfo]:
        out: dict[int, SpaceInfo] = {}
        for sid in range(len(self._parent)):
            root = self.find(sid)
            if root not in out:
                out[root] = SpaceInfo(root, self._channels[root], [], list(self._frozen.get(root, [])))
        for ref in self.refs:
            if ref.role == "producer":
                out[self.find(ref.segments[0].space)].producers.append(ref)
        return out

    def refs_of_space(self, root: int) -> list[ParamRef]:
        return [r for r in self.refs if any(self.find(s.space) == root for s in r.segments)]

    def producer_space(self, param: str) -> int | None:
        """The space whose channels `param` creates (or, for a depthwise filter, follows)."""
        for ref in self.refs:
            if ref.param == param and ref.role == "producer":
                return self.find(ref.segments[0].space)
        for ref in self.refs:
            if ref.param == param and ref.role == "member" and self.conv_kind.get(param) == "depthwise" \
                    and len(ref.segments) == 1:
                return self.find(ref.segments[0].space)
        return None

    def prunable_params(self, kinds=("conv",)) -> dict[str, int]:
        """Weight name -> space for every weight whose output channels can be pruned safely.

        `kinds`: 'conv' (regular convs; the spec's default), 'depthwise', 'fc'.
        """
        spaces = self.spaces()
        result = {}
        for name, kind in self.conv_kind.items():
            if kind not in kinds:
                continue
            sid = self.producer_space(name)
            if sid is not None and spaces[sid].prunable:
                result[name] = sid
        return result

    def why_not_prunable(self, param: str) -> str:
        sid = self.producer_space(param)
        if sid is None:
            return "it is not a conv / fc weight whose output channels this analysis can follow"
        info = self.spaces()[sid]
        if info.frozen:
            return "its output channels " + "; ".join(sorted(set(info.frozen)))
        return "it has no producer"


def _shape(block, name):
    try:
        return [int(d) for d in block.var(name).shape]
    except Exception:  # a name the block does not declare: treat as unknown
        return None


def _is_param(block, name) -> bool:
    try:
        return bool(block.var(name).persistable)
    except Exception:
        return False


def _attr(op, name, default=None):
    return op.attr(name) if op.has_attr(name) else default


def analyze(program, feed_names=(), fetch_names=()) -> ChannelGraph:
    """Walk the ops once, in program order, and build the channel spaces."""
    g = ChannelGraph(program)
    block = g.block
    fetch_names = set(fetch_names)

    def segs(name, op_type):
        """Segments of a non-parameter tensor; a tensor from something we do not follow gets a
        fresh frozen space (we cannot shrink what we did not see being produced)."""
        if name in g.tensor_segments:
            return g.tensor_segments[name]
        shape = _shape(block, name) or []
        channels = shape[1] if len(shape) >= 2 else 0
        seg = (Segment(g.new_space(channels, f"come from an op this analysis does not follow (read by {op_type})"),
                       channels),)
        g.tensor_segments[name] = seg
        return seg

    def freeze_inputs(op, reason):
        for name in op.input_arg_names:
            if name in g.tensor_segments:
                g.freeze(g.tensor_segments[name], reason)

    for idx, op in enumerate(block.ops):
        t = op.type
        if t == "feed":
            for name in op.output("Out"):
                shape = _shape(block, name) or [0, 0]
                g.tensor_segments[name] = (Segment(g.new_space(shape[1] if len(shape) > 1 else 0,
                                                               "are a model input"), shape[1] if len(shape) > 1 else 0),)
            continue
        if t == "fetch":
            freeze_inputs(op, "reach a model output")
            continue
        if _param_view(g, op, idx):
            continue
        rank_ok = all(len(_shape(block, n) or []) in (2, 4) for n in op.input_arg_names if not _is_param(block, n))
        if t in CONVS or t == "conv2d_transpose":
            _conv(g, op, idx, segs)
        elif t in NORMS:
            _norm(g, op, idx, segs)
        elif t in PASS_THROUGH and rank_ok and _pass_ok(op):
            x = op.input("X")[0]
            for out in op.output("Out"):
                g.tensor_segments[out] = segs(x, t)
        elif t in ELEMENTWISE:
            _elementwise(g, op, idx, segs)
        elif t == "concat":
            _concat(g, op, segs)
        elif t in ("flatten_contiguous_range", "flatten2", "flatten", "reshape2", "reshape", "squeeze2",
                   "squeeze"):
            _flatten(g, op, idx, segs)
        elif t in MATMULS or t == "fc":
            _matmul(g, op, idx, segs)
        else:
            freeze_inputs(op, f"are read by op '{t}', which this analysis does not follow")
    for name in fetch_names:
        if name in g.tensor_segments:
            g.freeze(g.tensor_segments[name], "reach a model output")
    for name in feed_names:
        if name in g.tensor_segments:
            g.freeze(g.tensor_segments[name], "are a model input")
    # A weight shared by several ops (same axis, different channel layouts) cannot be cut two ways.
    by_axis = defaultdict(set)
    for ref in g.refs:
        by_axis[(ref.param, ref.axis)].add(g.resolve(ref.segments))
    for (param, _), layouts in by_axis.items():
        if len(layouts) > 1:
            for layout in layouts:
                g.freeze(layout, f"use weight {param}, which is shared by several ops")
    # resolve segments to roots so later lookups are stable
    for ref in g.refs:
        ref.segments = g.resolve(ref.segments)
    return g


def _param_view(g: ChannelGraph, op, idx) -> bool:
    """Record `reshape2(bias[C]) -> [1, C, 1, 1]`; True if `op` is such a reshape."""
    if op.type not in ("reshape2", "reshape", "unsqueeze2", "unsqueeze"):
        return False
    block = g.block
    x = op.input("X")[0]
    xshape = _shape(block, x) or []
    if not (_is_param(block, x) and len(xshape) == 1):
        return False
    if any(op.input(s) for s in ("Shape", "ShapeTensor", "AxesTensor", "AxesTensorList") if s in op.input_names):
        return False
    out = op.output("Out")[0]
    oshape = _shape(block, out) or []
    big = [i for i, d in enumerate(oshape) if d != 1]
    if len(big) != 1 or oshape[big[0]] != xshape[0]:
        return False
    g.param_views[out] = (x, big[0], idx)
    return True


def _pass_ok(op) -> bool:
    if op.type == "pool2d":
        return _attr(op, "data_format", "NCHW") in ("NCHW", "AnyLayout")
    if op.type.endswith("interp") or op.type.endswith("interp_v2"):
        return _attr(op, "data_layout", "NCHW") in ("NCHW", "AnyLayout")
    return True


def _conv(g: ChannelGraph, op, idx, segs):
    block = g.block
    x = op.input("Input")[0]
    w = op.input("Filter")[0]
    out = op.output("Output")[0]
    wshape = _shape(block, w)
    xin = segs(x, op.type)
    groups = int(_attr(op, "groups", 1) or 1)
    in_c = sum(s.channels * s.repeat for s in xin)
    layout_ok = _attr(op, "data_format", "NCHW") in ("NCHW", "AnyLayout")
    if op.type == "conv2d_transpose":
        out_c = wshape[1] * groups
        if groups != 1 or not layout_ok or any(s.repeat != 1 for s in xin):
            g.freeze(xin, f"feed conv2d_transpose {w} (groups {groups} or layout not supported)")
            g.tensor_segments[out] = (Segment(g.new_space(out_c, f"come from conv2d_transpose {w} with groups"), out_c),)
            return
        g.refs.append(ParamRef(w, 0, xin, "consumer", idx))
        sid = g.new_space(out_c)
        g.refs.append(ParamRef(w, 1, (Segment(sid, out_c),), "producer", idx))
        g.conv_kind[w] = "conv"
        g.tensor_segments[out] = (Segment(sid, out_c),)
        return
    out_c = wshape[0]
    if not layout_ok or any(s.repeat != 1 for s in xin):
        g.freeze(xin, f"feed {op.type} {w} in a layout this analysis does not follow")
        g.tensor_segments[out] = (Segment(g.new_space(out_c, f"come from {op.type} {w} (NHWC)"), out_c),)
        return
    if groups == 1:
        g.refs.append(ParamRef(w, 1, xin, "consumer", idx))
        sid = g.new_space(out_c)
        g.refs.append(ParamRef(w, 0, (Segment(sid, out_c),), "producer", idx))
        g.conv_kind[w] = "conv"
        g.tensor_segments[out] = (Segment(sid, out_c),)
    elif groups == in_c == out_c and wshape[1] == 1:
        # depthwise: channel i in -> channel i out, filter row i; `groups` must follow the count
        g.refs.append(ParamRef(w, 0, xin, "member", idx))
        g.depthwise_ops.append((idx, x))
        g.conv_kind[w] = "depthwise"
        g.tensor_segments[out] = xin
    else:
        reason = f"feed or come from group conv {w} (groups={groups}), whose groups cannot shrink safely"
        g.freeze(xin, reason)
        g.conv_kind[w] = "group"
        g.tensor_segments[out] = (Segment(g.new_space(out_c, reason), out_c),)


def _norm(g: ChannelGraph, op, idx, segs):
    block = g.block
    x = op.input("X")[0]
    xin = segs(x, op.type)
    layout = _attr(op, "data_layout", "NCHW")
    y = op.output("Y")[0]
    g.tensor_segments[y] = xin
    if layout not in ("NCHW", "AnyLayout") or len(_shape(block, x) or []) not in (2, 4):
        g.freeze(xin, f"pass through {op.type} with layout {layout}")
        return
    for slot in ("Scale", "Bias", "Mean", "Variance"):
        if slot in op.input_names:
            for p in op.input(slot):
                if _is_param(block, p):
                    g.refs.append(ParamRef(p, 0, xin, "member", idx))
    # remember which producer this batch norm directly follows (for the bn_scale criterion)
    if op.type in ("batch_norm", "sync_batch_norm") and len(xin) == 1 and "Scale" in op.input_names:
        for ref in g.refs:
            if ref.role == "producer" and g.find(ref.segments[0].space) == g.find(xin[0].space) \
                    and ref.param not in g.following_bn and _feeds_directly(g, ref, x):
                g.following_bn[ref.param] = op.input("Scale")[0]


def _feeds_directly(g: ChannelGraph, ref: ParamRef, x: str) -> bool:
    """True if tensor `x` is the output of `ref`'s op, possibly through a bias add."""
    block = g.block
    op = block.ops[ref.op_index]
    outs = set(op.output_arg_names)
    if x in outs:
        return True
    for later in block.ops[ref.op_index + 1:]:
        if later.type == "elementwise_add" and later.input("X")[0] in outs and x in later.output("Out") \
                and (_is_param(block, later.input("Y")[0]) or later.input("Y")[0] in g.param_views):
            return True
    return False


def _elementwise(g: ChannelGraph, op, idx, segs):
    block = g.block
    x, y = op.input("X")[0], op.input("Y")[0]
    out = op.output("Out")[0]
    xshape, yshape = _shape(block, x) or [], _shape(block, y) or []
    if _is_param(block, x):  # keep the tensor on the X side
        x, y, xshape, yshape = y, x, yshape, xshape
    xin = segs(x, op.type)
    g.tensor_segments[out] = xin
    axis = int(_attr(op, "axis", -1))
    if len(xshape) not in (2, 4):
        g.freeze(xin, f"pass through {op.type} on a rank-{len(xshape)} tensor")
        return
    if y in g.param_views:
        param, vaxis, vidx = g.param_views[y]
        total = sum(s.channels * s.repeat for s in xin)
        if len(yshape) == len(xshape) and vaxis == 1 and yshape[1] == total:
            g.refs.append(ParamRef(param, 0, xin, "member", idx))  # the conv bias follows
            if g.block.ops[vidx].type.startswith("reshape"):
                g.view_reshapes.append((vidx, vaxis))
            return
        g.freeze(xin, f"are combined with parameter {param} reshaped to {yshape} by {op.type}")
        return
    if _is_param(block, y):
        total = sum(s.channels * s.repeat for s in xin)
        if int(np.prod(yshape)) == 1:
            return  # a scalar: does not care about channels
        if len(yshape) == 1 and yshape[0] == total and (axis == 1 or (axis == -1 and len(xshape) == 2)):
            g.refs.append(ParamRef(y, 0, xin, "member", idx))  # conv / fc bias
            return
        if len(yshape) == len(xshape) and yshape[1] == total and int(np.prod(yshape)) == total:
            g.refs.append(ParamRef(y, 1, xin, "member", idx))  # e.g. a [1, C, 1, 1] layer scale
            return
        g.freeze(xin, f"are combined with parameter {y} of shape {yshape} by {op.type}")
        return
    yin = segs(y, op.type)
    if len(yshape) != len(xshape) or axis not in (-1, 0) and not (axis == 1 and len(yshape) == len(xshape)):
        g.freeze(xin + yin, f"are broadcast by {op.type} in a way this analysis does not follow")
        return
    if len(xshape) > 1 and len(yshape) > 1 and xshape[1] == yshape[1]:
        if len(xin) == 1 and len(yin) == 1 and xin[0].repeat == yin[0].repeat == 1:
            g.union(xin[0].space, yin[0].space)  # residual: all members share one channel set
            return
        if g.resolve(xin) == g.resolve(yin):
            return
    if len(yshape) > 1 and yshape[1] == 1 and xshape[1] != 1:
        g.freeze(yin, f"are broadcast over channels by {op.type}")
        return
    reason = f"are combined by {op.type} with a tensor of different channel layout"
    g.freeze(xin + yin, reason)
    channels = (_shape(block, out) or [0, 0])[1]
    g.tensor_segments[out] = (Segment(g.new_space(channels, reason), channels),)


def _concat(g: ChannelGraph, op, segs):
    block = g.block
    out = op.output("Out")[0]
    names = op.input("X")
    rank = len(_shape(block, out) or [])
    axis = int(_attr(op, "axis", 0))
    if axis < 0:
        axis += rank
    parts = [segs(n, "concat") for n in names]
    if any(s.channels <= 0 for p in parts for s in p):
        axis = None  # an unknown channel count makes every later offset unknown
    if axis != 1 or "AxisTensor" in op.input_names and op.input("AxisTensor"):
        for p in parts:
            g.freeze(p, "are concatenated along a non-channel axis")
        shape = _shape(block, out) or [0, 0]
        g.tensor_segments[out] = (Segment(g.new_space(shape[1], "come from a concat along a non-channel axis"),
                                          shape[1]),)
        return
    g.tensor_segments[out] = tuple(s for p in parts for s in p)  # channel offsets follow input order


def _flatten(g: ChannelGraph, op, idx, segs):
    """Flatten / reshape [N, C, H, W] -> [N, C*H*W] (or squeeze [N, C, 1, 1] -> [N, C])."""
    block = g.block
    x = op.input("X")[0]
    out = op.output("Out")[0]
    xin = segs(x, op.type)
    xshape, oshape = _shape(block, x) or [], _shape(block, out) or []
    ok = len(xshape) == 4 and len(oshape) == 2 and all(d > 0 for d in xshape[1:]) \
        and oshape[1] in (-1, int(np.prod(xshape[1:])))
    if op.type in ("reshape2", "reshape"):
        shape_attr = list(_attr(op, "shape", []) or [])
        dynamic = any(op.input(s) for s in ("Shape", "ShapeTensor") if s in op.input_names)
        ok = ok and not dynamic and len(shape_attr) == 2 and shape_attr[0] in (0, -1, xshape[0]) \
            and shape_attr[1] in (-1, int(np.prod(xshape[1:])))
        if ok and shape_attr[1] != -1:
            g.reshape_ops.append(idx)  # holds the flattened size: rewritten after pruning
    elif op.type == "flatten_contiguous_range":
        stop = int(_attr(op, "stop_axis", -1))
        ok = ok and int(_attr(op, "start_axis", 1)) == 1 and stop in (-1, 3)
    elif op.type in ("flatten2", "flatten"):
        ok = ok and int(_attr(op, "axis", 1)) == 1
    elif op.type in ("squeeze2", "squeeze"):
        axes = sorted(a % 4 for a in (_attr(op, "axes", []) or []))
        ok = ok and axes == [2, 3]
    if not ok:
        g.freeze(xin, f"pass through {op.type} {xshape} -> {oshape}, which this analysis cannot map to channels")
        channels = oshape[1] if len(oshape) > 1 else 0
        g.tensor_segments[out] = (Segment(g.new_space(channels, f"come from {op.type} that could not be mapped"),
                                          channels),)
        return
    hw = xshape[2] * xshape[3]
    g.tensor_segments[out] = tuple(Segment(s.space, s.channels, s.repeat * hw) for s in xin)


def _matmul(g: ChannelGraph, op, idx, segs):
    block = g.block
    if op.type == "fc":
        x, w, out = op.input("Input")[0], op.input("W")[0], op.output("Out")[0]
        trans_y = False
        ok = int(_attr(op, "in_num_col_dims", 1)) == 1
    else:
        x, w, out = op.input("X")[0], op.input("Y")[0], op.output("Out")[0]
        trans_y = bool(_attr(op, "trans_y", False) or _attr(op, "transpose_Y", False))
        ok = not (_attr(op, "trans_x", False) or _attr(op, "transpose_X", False)) \
            and float(_attr(op, "alpha", 1.0)) == 1.0 and int(_attr(op, "x_num_col_dims", 1)) == 1
    xshape, wshape = _shape(block, x) or [], _shape(block, w) or []
    xin = segs(x, op.type)
    if not (_is_param(block, w) and len(wshape) == 2 and len(xshape) == 2 and ok):
        g.freeze(xin, f"feed {op.type} with a non-parameter or non-2D weight")
        channels = (_shape(block, out) or [0, 0])[-1]
        g.tensor_segments[out] = (Segment(g.new_space(channels, f"come from {op.type} that could not be mapped"),
                                          channels),)
        return
    in_axis, out_axis = (1, 0) if trans_y else (0, 1)
    g.refs.append(ParamRef(w, in_axis, xin, "consumer", idx))
    sid = g.new_space(wshape[out_axis])
    g.refs.append(ParamRef(w, out_axis, (Segment(sid, wshape[out_axis]),), "producer", idx))
    g.conv_kind[w] = "fc"
    if op.type == "fc" and op.input("Bias"):
        g.refs.append(ParamRef(op.input("Bias")[0], len(_shape(block, op.input("Bias")[0])) - 1,
                               (Segment(sid, wshape[out_axis]),), "member", idx))
    g.tensor_segments[out] = (Segment(sid, wshape[out_axis]),)


def removed_positions(segments, removed: dict[int, np.ndarray]) -> np.ndarray:
    """Positions on an axis laid out as `segments` that go when `removed[space]` channels go."""
    out, offset = [], 0
    for seg in segments:
        idx = removed.get(seg.space)
        if idx is not None and len(idx):
            base = offset + np.asarray(idx, dtype=np.int64) * seg.repeat
            out.append((base[:, None] + np.arange(seg.repeat)[None, :]).ravel())
        offset += seg.channels * seg.repeat
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)
