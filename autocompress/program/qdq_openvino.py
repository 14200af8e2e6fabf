"""Re-place the QDQ of an int8 ONNX export for OpenVINO's int8 kernels.

paddle2onnx places QuantizeLinear / DequantizeLinear by ONNX Runtime's fusion patterns: around Conv
(depthwise too), Add, Mul, Sigmoid and Relu, never on ConvTranspose (it folds that weight back to float).
OpenVINO's CPU plugin fuses other chains. Profiled with OpenVINO's PERF_COUNT on PP-OCRv4 det pruned at
0.25, one 640x640 page, 1 thread, on an AVX-512 VNNI CPU: with paddle2onnx's placement the depthwise
convs ran slower in int8 than in bf16 (3.8 vs 2.9 ms), reorders and FakeQuantize between the SE blocks'
Mul / Add took 3 ms, and the head's transposed convs stayed float with an unfused 6.5 ms sigmoid: the
model was 3 % faster than its FP32 (37.0 vs 38.0 ms). NNCF's int8 of the same model runs the transposed
convs in int8 with the sigmoid fused and the depthwise convs in bf16 (25.9 ms).

`place_for_openvino` re-places the pairs of paddle2onnx's export of our int8 program: a pair stays only
where a dense Conv (group 1), a ConvTranspose or a MatMul reads it (activation or weight); every other
reader, the depthwise convs' inputs and weights included, reads the float tensor instead. paddle2onnx
derives those pairs from the program's own scales and skips the layers the program keeps FP32
(fallback, tiny weights). The transposed convolutions it leaves float get a pair on their input with
the program's threshold (scale = threshold / 127, zero point 0: the program's rounding) where paddle2onnx
made none, and a per-output-channel symmetric pair on the weight (max |w| / 127 per channel: the
channel_wise_abs_max grid the program quantized it on) — when the program quantized that layer, which
the folded weight itself shows: its values are integer multiples of that step (tensor names do not
tell: paddle2onnx renames the outputs it builds, `Mul.1` for Paddle's `tmp_0`). Same model and page:
29-31 ms.

OpenVINO does not compute every QDQ graph as ONNX Runtime does. On an unpruned det PTQ model (map IoU
against FP32 on 4 pages) this placement reads 0.98 in ONNX Runtime but 0.91 in OpenVINO (paddle2onnx's
placement: 0.94 in both); also keeping the pairs of the Add nodes gives 0.0 in OpenVINO. So the
OpenVINO metric is always measured on OpenVINO, and `deploy_backend: openvino` selects the PTQ trials
by it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

def place_for_openvino(onnx_path: Path, thresholds: dict[str, float], fp32_inputs: set[str]) -> dict:
    """Rewrite `onnx_path` in place (module docstring). thresholds: tensor -> Paddle activation threshold
    for the tensors the program's int8 layers read; fp32_inputs: tensors its FP32-kept layers read.
    Returns counts: {'int8_layers', 'float_layers', 'removed_pairs'}."""
    import onnx

    model = onnx.load(str(onnx_path))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    sources = _pair_sources(graph, producers)
    removed = set()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in sources and not (_int8_kernel(node) and i < 2):
                node.input[i] = sources[name]
                removed.add(name)
    new_nodes: dict[int, list] = {}  # node index -> Q/DQ nodes to insert before it
    act_pairs: dict[str, str] = {}   # tensor -> its dequantized name, one pair per tensor
    for index, node in enumerate(graph.node):
        if node.op_type != "ConvTranspose" or not _int8_kernel(node) or node.input[1] in sources:
            continue
        x = sources.get(node.input[0], node.input[0])  # the float tensor it reads
        weight = _constant(graph, producers, node.input[1])
        step = None if weight is None else _int8_grid_step(weight, axis=1)
        known = node.input[0] in sources or (x in thresholds and x not in fp32_inputs)
        if step is None or not known:
            node.input[0] = x  # the program keeps this layer float (a pair on its input is another reader's)
            continue
        inserted = new_nodes.setdefault(index, [])
        if node.input[0] not in sources:
            if x not in act_pairs:
                scale = np.array(thresholds[x] / 127.0, np.float32)
                act_pairs[x] = _qdq(graph, inserted, x, f"{x}.ov_int8", scale)
            node.input[0] = act_pairs[x]
        node.input[1] = _qdq(graph, inserted, node.input[1], f"{node.input[1]}.ov_int8.{index}", step, axis=1)
    for index in sorted(new_nodes, reverse=True):  # right before their reader, after what it reads
        for offset, extra in enumerate(new_nodes[index]):
            graph.node.insert(index + offset, extra)
    _drop_dead(graph)
    onnx.save(model, str(onnx_path))
    kinds = {out: n.op_type for n in graph.node for out in n.output}
    layers = [n for n in graph.node if n.op_type in INT8_KERNELS]
    int8 = sum(1 for n in layers if kinds.get(n.input[0]) == "DequantizeLinear")
    counts = {"int8_layers": int8, "float_layers": len(layers) - int8, "removed_pairs": len(removed)}
    log.debug("OpenVINO QDQ placement of %s: %s", onnx_path, counts)
    return counts


INT8_KERNELS = ("Conv", "ConvTranspose", "MatMul")


def _int8_kernel(node) -> bool:
    """The readers that keep their Q/DQ: dense and transposed convolutions (group 1) and matmuls."""
    return node.op_type in INT8_KERNELS and _attr(node, "group", 1) == 1


def _int8_grid_step(weight: np.ndarray, axis: int) -> np.ndarray | None:
    """The per-channel step (max |w| / 127 along the channels of `axis`) when every value of `weight`
    is an integer multiple of it: a weight the program quantized channel_wise_abs_max and paddle2onnx
    folded back to float. None for a float weight (the program kept the layer FP32): trained weights
    are never on that grid by chance."""
    others = tuple(a for a in range(weight.ndim) if a != axis)
    step = (np.abs(weight).max(axis=others, keepdims=True) / 127.0).astype(np.float32)
    step[~(step > 0)] = 1.0  # an all-zero channel: any scale gives zeros
    q = weight / step
    if np.abs(q - np.round(q)).max() > 1e-3:
        return None
    return step.reshape(-1)


def _pair_sources(graph, producers) -> dict[str, str]:
    """DequantizeLinear(QuantizeLinear(t)) output -> t, for every such pair."""
    out = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            q = producers.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                out[node.output[0]] = q.input[0]
    return out


def _drop_dead(graph) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _constant(graph, producers, name):
    """The float value of `name` when it is an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    node = producers.get(name)
    if node is not None:
        if node.op_type != "Constant" or not node.attribute or not node.attribute[0].HasField("t"):
            return None
        value = numpy_helper.to_array(node.attribute[0].t)
    else:
        init = next((i for i in graph.initializer if i.name == name), None)
        if init is None:
            return None
        value = numpy_helper.to_array(init)
    return value if value.dtype.kind == "f" else None


def _attr(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _qdq(graph, inserted: list, name: str, stem: str, scale: np.ndarray, axis: int | None = None) -> str:
    """Append a QuantizeLinear / DequantizeLinear pair on `name` (int8, zero point 0, tensors named after
    `stem`) to `inserted`; returns the dequantized tensor's name."""
    from onnx import helper, numpy_helper

    graph.initializer.extend([numpy_helper.from_array(scale, f"{stem}.scale"),
                              numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{stem}.zero")])
    extra = {} if axis is None else {"axis": axis}
    args = [f"{stem}.scale", f"{stem}.zero"]
    inserted.append(helper.make_node("QuantizeLinear", [name, *args], [f"{stem}.q"], **extra))
    inserted.append(helper.make_node("DequantizeLinear", [f"{stem}.q", *args], [f"{stem}.dq"], **extra))
    return f"{stem}.dq"
