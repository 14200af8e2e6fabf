"""The program layer per backend (issue 9), on a tiny net built here: conv -> batch norm -> relu ->
depthwise conv -> hardswish -> transposed conv -> flatten -> linear -> softmax, saved by `paddle.jit.save`
twice, in Paddle 3's default PIR format (`inference.json`) and in the legacy one (`inference.pdmodel`)."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from autocompress.model_io import load_model, locate_model, save_model, summarize
from autocompress.paddle_env import legacy_ir
from autocompress.program import backend_for
from autocompress.program.convert import inference_outputs
from autocompress.program.legacy import channels, quantize, teachers, trainable
from autocompress.program.legacy import info as legacy_info

# MACs of one 8x8 sample, by hand: conv 3->8 3x3; depthwise 8 3x3; transposed conv 8->4 2x2 stride 2
# (every input element scatters into 4 * 2 * 2 outputs); linear 1024 -> 10
FLOPS = 2 * (8 * 8 * 8 * 27 + 8 * 8 * 8 * 9 + 8 * 8 * 8 * 4 * 2 * 2 + 1024 * 10)
PARAMS = (8 * 27 + 8) + 4 * 8 + (8 * 9 + 8) + (8 * 4 * 4 + 4) + (1024 * 10 + 10)


class TinyNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        nn = paddle.nn
        self.c1, self.bn = nn.Conv2D(3, 8, 3, padding=1), nn.BatchNorm2D(8)
        self.dw = nn.Conv2D(8, 8, 3, padding=1, groups=8)
        self.ct = nn.Conv2DTranspose(8, 4, 2, stride=2)
        self.fc = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x):
        F = paddle.nn.functional
        y = F.hardswish(self.dw(F.relu(self.bn(self.c1(x)))))
        return F.softmax(self.fc(paddle.flatten(self.ct(y), 1)))


def _save(folder, legacy: bool, spatial=(8, 8)):
    paddle.disable_static()
    try:
        paddle.seed(0)
        net = TinyNet()
        net.bn._mean.set_value(paddle.rand([8]) * 0.1)  # statistics that are not the identity
        net.bn._variance.set_value(1 + paddle.rand([8]))
        net.eval()
        spec = [paddle.static.InputSpec([None, 3, *spatial], "float32", "x")]
        if legacy:
            with paddle.pir_utils.OldIrGuard():
                paddle.jit.save(net, str(folder / "inference"), input_spec=spec)
        else:
            paddle.jit.save(net, str(folder / "inference"), input_spec=spec)
    finally:
        paddle.enable_static()
    return locate_model(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "legacy").mkdir()
    (root / "pir").mkdir()
    return {"pdmodel": _save(root / "legacy", legacy=True), "pir-json": _save(root / "pir", legacy=False)}


def _feed(n=2):
    return {"x": np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype("float32")}


@pytest.mark.parametrize("fmt", ["pdmodel", "pir-json"])
def test_each_backend_reads_inputs_params_and_flops(tiny, fmt):
    files = tiny[fmt]
    assert files.format == fmt and backend_for(files).format == fmt
    s = summarize(files)
    assert s["inputs"] == [{"name": "x", "shape": [-1, 3, 8, 8], "dtype": "float32"}]
    assert s["params"] == PARAMS and s["param_bytes"] == 4 * PARAMS
    assert s["flops"] == FLOPS  # the transposed conv counted by its input (it was counted by its 4x larger output)
    assert s["outputs"][0]["shape"] == [-1, 10]
    assert s["outputs"][0]["name"] == ("softmax_0.tmp_0" if fmt == "pdmodel" else "fetch_name_0")


def test_pir_flops_of_dynamic_shapes_need_feed_shapes(tmp_path):
    files = _save(tmp_path, legacy=False, spatial=(None, None))
    assert summarize(files)["flops"] is None  # no guess
    assert summarize(files, {"x": [1, 3, 8, 8]})["flops"] == FLOPS  # counted on the legacy translation
    assert summarize(files)["params"] == PARAMS


def test_legacy_backend_edits_nothing_at_the_edges(tiny, tmp_path):
    files = tiny["pdmodel"]
    backend = backend_for(files)
    assert backend.editable(files, tmp_path / "e") == files and backend.restore(files, tmp_path / "r") == files
    assert not (tmp_path / "e").exists() and not (tmp_path / "r").exists()


def test_pir_backend_edits_on_a_translation_and_restores_pir(tiny, tmp_path, hashes):
    """An edit through the PIR backend: translate, remove channels with the legacy backend, back to PIR.
    The result is an `inference.json` that a stock predictor loads, fewer parameters by the PIR backend's
    own count, and it computes what the original computes with the removed channels' consumers zeroed."""
    files = tiny["pir-json"]
    before = hashes(files.model_dir)
    backend = backend_for(files)
    editable = backend.editable(files, tmp_path / "legacy")
    assert editable.format == "pdmodel"
    feed = _feed()
    assert np.allclose(inference_outputs(editable, feed)[1][0], inference_outputs(files, feed)[1][0], atol=1e-5)

    drop = np.array([1, 6])
    with legacy_ir():
        model = load_model(editable)
        names = legacy_info.persistable_names(model.program)
        conv_w = [n for n in names if n.startswith("conv2d_") and n.endswith(".w_0") and "transpose" not in n]
        ct_w = next(n for n in names if n.startswith("conv2d_transpose") and n.endswith(".w_0"))
        per_channel = [n for n in names if np.array(model.scope.find_var(n).get_tensor()).shape[:1] == (8,)
                       and n != ct_w]
        removals = {n: {0: drop} for n in per_channel}  # c1 and dw weights and biases, bn's four vectors
        removals[ct_w] = {0: drop}  # the transposed conv's input channels
        dw_index = next(i for i, op in enumerate(model.program.global_block().ops) if op.type == "depthwise_conv2d")
        channels.remove_channels(model.program, model.scope, removals, depthwise_ops=[dw_index])
        assert model.program.global_block().ops[dw_index].attr("groups") == 6
        assert len(conv_w) == 2 and all(model.program.global_block().var(n).shape[0] == 6 for n in conv_w)
        pruned = save_model(model, tmp_path / "pruned", {"strategy": "test"})

        reference = load_model(editable)
        w = np.array(reference.scope.find_var(ct_w).get_tensor())
        w[drop] = 0
        reference.scope.find_var(ct_w).get_tensor().set(w, paddle.CPUPlace())
        zeroed = save_model(reference, tmp_path / "zeroed", {"strategy": "test"})

    restored = backend.restore(pruned, tmp_path / "restored")
    assert restored.format == "pir-json" and restored.model_filename == "inference.json"
    assert summarize(restored)["params"] == PARAMS - 2 * (27 + 1 + 4 + 9 + 1 + 16)
    out = inference_outputs(restored, feed)[1][0]
    assert np.allclose(out, inference_outputs(zeroed, feed)[1][0], atol=1e-5)
    assert not np.allclose(out, inference_outputs(files, feed)[1][0], atol=1e-4)  # the edit is there
    assert hashes(files.model_dir) == before


def test_legacy_trainable_program_trains_what_inference_ran(tiny):
    with legacy_ir():
        model = load_model(tiny["pdmodel"])
        t = trainable.make_trainable(model)
        block = t.program.global_block()
        assert {op.type for op in block.ops}.isdisjoint({"feed", "fetch"})
        bn = next(op for op in block.ops if op.type == "batch_norm")
        assert bn.attr("is_test") is False and bn.attr("use_global_stats") is False
        from paddle.base.framework import Parameter

        # weights become Parameters; batch-norm statistics (written by their op) do not
        assert len(t.param_names) == 10 and all(isinstance(block.var(n), Parameter) for n in t.param_names)
        assert next(op for op in t.eval_program().global_block().ops if op.type == "batch_norm").attr("is_test")
        assert model.program.global_block().ops[0].type == "feed"  # the loaded model is untouched


def test_legacy_teacher_merge_shares_the_input_and_prefixes_the_rest(tiny):
    with legacy_ir():
        student, teacher = load_model(tiny["pdmodel"]), load_model(tiny["pdmodel"])
        t = trainable.make_trainable(student)
        scope = paddle.static.Scope()
        merged = teachers.merge_teacher(t.program, t.feed_names, teacher, "teacher_", True, scope, paddle.CPUPlace())
        block = t.program.global_block()
        assert merged.output_names == ["teacher_softmax_0.tmp_0"] and block.has_var("teacher_softmax_0.tmp_0")
        assert merged.resolve("softmax_0.tmp_0") == "teacher_softmax_0.tmp_0"
        teacher_convs = [op for op in block.ops if op.type == "conv2d" and op.input("Filter")[0].startswith("teacher_")]
        assert len(teacher_convs) == 1 and teacher_convs[0].input("Input") == ["x"]  # the one shared input
        assert scope.find_var("teacher_" + teacher_convs[0].input("Filter")[0][len("teacher_"):]) is not None


def test_legacy_quantize_inserts_pairs_with_one_writer_and_keeps_marked_layers_fp32(tiny):
    with legacy_ir():
        model = load_model(tiny["pdmodel"])
        program = model.program.clone(for_test=True)
        block = program.global_block()
        conv = next(op for op in block.ops if op.type == "conv2d")
        keep = quantize.layer_key(conv)
        fp32_tensors = quantize.mark_fp32(program, [keep])
        assert quantize.fp32_marked_layers(program) == [keep] and conv.input("Input")[0] in fp32_tensors
        build = paddle.static.Scope()
        for name in legacy_info.persistable_names(model.program):
            build.var(name).get_tensor().set(np.array(model.scope.find_var(name).get_tensor()), paddle.CPUPlace())
        activations = [n for op in block.ops if op.type in ("depthwise_conv2d", "matmul_v2")
                       for n in op.input_arg_names if not block.var(n).persistable]
        qprog, axes = quantize.insert_qdq(
            program, build, paddle.CPUPlace(), weight_op_types=["conv2d", "depthwise_conv2d", "matmul_v2"],
            act_op_types=[], observer_op_types=[], skip_patterns=[quantize.FP32_MARK],
            observed={n: 1.0 for n in activations}, weight_bits=8, activation_bits=4,
            weight_quantize_type="channel_wise_abs_max")
        qblock = qprog.global_block()
        assert set(axes) == {op.input("Filter" if op.type != "matmul_v2" else "Y")[0] for op in block.ops
                             if op.type in ("depthwise_conv2d", "matmul_v2")}  # not the FP32 conv's weight
        assert conv.input("Filter")[0] not in axes
        writers = [n for op in qblock.ops for n in op.output_arg_names]
        assert len(writers) == len(set(writers))
        qdq = [op for op in qblock.ops if op.type in quantize.QDQ_OPS]
        assert qdq and all(op.attr("qmax") == 2 ** (op.attr("bit_length") - 1) - 1 for op in qdq)
        assert {op.attr("bit_length") for op in qdq} == {4, 8}  # activations 4 bits, weights 8
        kept = next(op for op in qblock.ops if op.type == "conv2d")
        assert kept.attr("skip_quant") == 1 and isinstance(kept.attr("skip_quant"), int)

        # weights are stored quantized behind a dequantize_linear; every quantize_linear is an activation's pair
        acts = [op for op in qblock.ops if op.type == "quantize_linear"]
        assert acts and not any(qblock.var(op.input("X")[0]).persistable for op in acts)
        dequantized = {n for op in qblock.ops if op.type == "dequantize_linear" for n in op.output_arg_names}
        quantize.remove_pairs(qprog, acts)
        ops = qprog.global_block().ops
        assert not any(op.type == "quantize_linear" for op in ops)
        weights_dq = [op for op in ops if op.type == "dequantize_linear"]
        assert len(weights_dq) == len(axes) and all(qprog.global_block().var(op.input("X")[0]).persistable
                                                    for op in weights_dq)
        read = {n for op in ops for n in op.input_arg_names}
        assert read & dequantized == {n for op in weights_dq for n in op.output_arg_names}
