"""The int8 ONNX export placed for OpenVINO (program/qdq_openvino.py) and PTQ selected on OpenVINO.

A small detector-shaped net (a conv + batch norm + relu, a depthwise conv with an SE-style multiply, a
transposed conv + sigmoid head, as PP-OCRv4 det ends) is quantized by our PTQ with conv2d_transpose in
quantize_op_types. paddle2onnx's own placement (ONNX Runtime's) leaves the transposed conv float and
puts pairs on the depthwise conv and the multiply; the OpenVINO placement must put them on the dense
and transposed convs only, with the Paddle program's scales, and OpenVINO must then run the transposed
conv in int8."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from autocompress.errors import ConfigError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
if importlib.util.find_spec("paddle2onnx") is None:
    pytest.skip("the onnx extra (paddle2onnx 1.3.1) is not installed", allow_module_level=True)


def _sigmoid(x):
    from autocompress.program.legacy.ops import raw

    return raw("sigmoid", {"X": x})  # paddle 3's F.sigmoid rejects the legacy Variables jit.save traces


def _net():
    import paddle

    class Head(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 16, 3, padding=1)
            self.bn = paddle.nn.BatchNorm2D(16)
            self.dw = paddle.nn.Conv2D(16, 16, 3, padding=1, groups=16)
            self.se = paddle.nn.Conv2D(16, 16, 1)
            self.up = paddle.nn.Conv2DTranspose(16, 1, 2, stride=2)
            self.relu = paddle.nn.ReLU()

        def forward(self, x):
            h = self.relu(self.bn(self.conv(x)))
            d = self.dw(h)
            d = d * _sigmoid(self.se(paddle.nn.functional.adaptive_avg_pool2d(d, 1)))
            return _sigmoid(self.up(d))

    return Head()


@pytest.fixture(scope="module")
def head_models(tmp_path_factory):
    """(FP32 files, int8 files, sample inputs): the net with random weights, and its PTQ (avg
    thresholds, conv2d_transpose quantized, selected by nothing: deploy_backend none)."""
    import paddle

    from autocompress.atomic import atomic_dir
    from autocompress.model_io import locate_model

    root = tmp_path_factory.mktemp("ov-head")
    was_static = not paddle.in_dynamic_mode()
    paddle.disable_static()
    try:
        paddle.seed(3)
        net = _net()
        net.eval()
        with atomic_dir(root / "fp32") as tmp, paddle.pir_utils.OldIrGuard():
            paddle.jit.save(net, str(tmp / "inference"),
                            input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32", "x")])
    finally:
        if was_static:
            paddle.enable_static()
    fp32 = locate_model(root / "fp32")
    x = np.random.default_rng(0).random((12, 3, 32, 32), dtype=np.float32)
    return fp32, _ptq(fp32, x[:8], ["conv2d", "depthwise_conv2d", "conv2d_transpose"], root / "int8"), x[8:]


def _ptq(fp32, calib, op_types, out):
    """Our PTQ of `fp32` (avg thresholds on `calib`) quantizing `op_types`, saved to `out`."""
    from autocompress.config import QuantizationConfig
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir
    from autocompress.quant.apply import QuantTemplate, save_quantized
    from autocompress.quant.calibration import collect_stats
    from autocompress.quant.targets import find_targets
    from autocompress.quant.thresholds import compute_thresholds

    with legacy_ir():
        model = load_model(fp32)
        targets = find_targets(model.program, QuantizationConfig(quantize_op_types=op_types, deploy_backend="none"))
        stats = collect_stats(model, [{"x": calib[i:i + 4]} for i in range(0, len(calib), 4)], targets, chunk_size=4)
        q = QuantTemplate(model, targets).instantiate(compute_thresholds(stats, "avg"))
        return save_quantized(q, model, out)


def _graph(path):
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    return graph, producers


def _value(graph, producers, name) -> np.ndarray:
    """An initializer's or a Constant node's value."""
    from onnx import numpy_helper

    if name in producers:
        return numpy_helper.to_array(producers[name].attribute[0].t)
    return next(numpy_helper.to_array(i) for i in graph.initializer if i.name == name)


def _reads(node, producers, i) -> str:
    source = producers.get(node.input[i])
    return source.op_type if source is not None else "input"


def _conv_transpose_input_threshold(int8) -> float:
    from autocompress.model_io import load_model
    from autocompress.paddle_env import legacy_ir
    from autocompress.program.legacy.quantize import int8_layer_inputs

    with legacy_ir():
        model = load_model(int8)
        thresholds, _ = int8_layer_inputs(model.program, model.scope)
        op = next(o for o in model.program.global_block().ops if o.type == "conv2d_transpose")
        name = op.input("Input")[0].split(".quantized")[0]
    return thresholds[name]


def test_openvino_placement_quantizes_the_chains_openvino_fuses(head_models, tmp_path):
    from autocompress.model_io import read_metadata
    from autocompress.program.to_onnx import export_onnx

    fp32, int8, x = head_models
    ort = export_onnx(int8.model_dir, tmp_path / "ort", feed={"x": x})
    ov = export_onnx(int8.model_dir, tmp_path / "ov", feed={"x": x}, placement="openvino")
    g_ort, p_ort = _graph(ort)
    g_ov, p_ov = _graph(ov)
    # paddle2onnx's placement (before): the transposed conv float, pairs on the depthwise conv and Mul
    [up_ort] = [n for n in g_ort.node if n.op_type == "ConvTranspose"]
    assert _reads(up_ort, p_ort, 1) != "DequantizeLinear"
    assert any(_reads(n, p_ort, i) == "DequantizeLinear" for n in g_ort.node if n.op_type in ("Mul", "Sigmoid")
               for i in range(len(n.input)))
    # ours: both inputs of the transposed conv and of the dense convs dequantized, nothing else
    convs = {n.output[0]: n for n in g_ov.node if n.op_type in ("Conv", "ConvTranspose")}
    groups = {k: next((a.i for a in n.attribute if a.name == "group"), 1) for k, n in convs.items()}
    for key, node in convs.items():
        want = "DequantizeLinear" if groups[key] == 1 else None
        for i in (0, 1):
            assert (_reads(node, p_ov, i) == "DequantizeLinear") == (want is not None), (node.op_type, groups[key], i)
    readers = [n for n in g_ov.node if n.op_type not in ("Conv", "ConvTranspose", "QuantizeLinear", "DequantizeLinear")]
    assert not any(_reads(n, p_ov, i) == "DequantizeLinear" for n in readers for i in range(len(n.input)))
    # the transposed conv's input pair carries the Paddle program's threshold / 127
    [up] = [n for n in g_ov.node if n.op_type == "ConvTranspose"]
    scale = _value(g_ov, p_ov, p_ov[up.input[0]].input[1])
    assert float(scale) == pytest.approx(_conv_transpose_input_threshold(int8) / 127.0, rel=1e-6)
    meta = read_metadata(ov.parent)["onnx"]
    assert meta["placement"] == "openvino" and meta["check"]["passed"] and meta["check"]["enforced"]
    assert meta["openvino_layers"]["int8_layers"] == 3 and meta["openvino_layers"]["float_layers"] == 1


def test_a_transposed_conv_the_program_keeps_float_stays_float(head_models, tmp_path):
    from autocompress.program.to_onnx import export_onnx

    fp32, _, x = head_models
    int8 = _ptq(fp32, x, ["conv2d", "depthwise_conv2d"], tmp_path / "int8")  # conv2d_transpose not listed
    graph, producers = _graph(export_onnx(int8.model_dir, tmp_path / "ov", feed={"x": x}, placement="openvino"))
    [up] = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert _reads(up, producers, 0) != "DequantizeLinear" and _reads(up, producers, 1) != "DequantizeLinear"
    dense = [n for n in graph.node if n.op_type == "Conv" and all(a.i == 1 for a in n.attribute if a.name == "group")]
    assert dense and all(_reads(n, producers, 1) == "DequantizeLinear" for n in dense)


def test_openvino_runs_the_transposed_conv_in_int8_and_reads_like_paddle(head_models):
    ov = pytest.importorskip("openvino")
    from autocompress.backend import DeployTarget, inference_predictor, openvino_model_path
    from autocompress.program.convert import inference_outputs

    fp32, int8, x = head_models
    path = openvino_model_path(int8, True)
    compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU",
                                       {"INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({0: x[:1]})
    kernels = {p.node_type: p.exec_type for p in request.get_profiling_info()
               if p.node_type in ("ConvolutionBackpropData", "Convolution") and p.exec_type != "undef"}
    assert kernels["ConvolutionBackpropData"].lower().endswith("i8"), kernels
    assert kernels["Convolution"].lower().endswith("i8"), kernels
    got = inference_predictor(int8, True, target=DeployTarget("openvino"))({"x": x})[0]
    ref = inference_outputs(fp32, {"x": x}, onednn=False)[1][0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).mean() <= 0.02 * np.abs(ref).mean()  # int8 of a sigmoid map: within 2 %


def test_conv2d_transpose_int8_is_refused_on_onednn_and_accepted_for_openvino():
    from autocompress.config import QuantizationConfig, build

    with pytest.raises(ConfigError, match="conv2d_transpose.*oneDNN.*deploy_backend: openvino"):
        build(QuantizationConfig, {"quantize_op_types": ["conv2d", "conv2d_transpose"]})
    cfg = build(QuantizationConfig, {"quantize_op_types": ["conv2d", "conv2d_transpose"], "deploy_backend": "openvino"})
    assert cfg.deploy_backend == "openvino"


def test_ptq_search_selects_on_openvino(head_models, tmp_path):
    pytest.importorskip("openvino")
    from autocompress.backend import DeployTarget, inference_predictor
    from autocompress.quant.ptq_search import run_ptq_search

    fp32, _, x = head_models
    reference = inference_predictor(fp32)({"x": x})[0]
    seen = []

    def fidelity(predict):  # 1 - relative L1 against FP32; records which predictors it was given
        seen.append(getattr(predict, "__qualname__", ""))
        out = predict({"x": x})[0]
        return 1.0 - float(np.abs(out - reference).sum() / np.abs(reference).sum())

    calib = [{"x": np.random.default_rng(i).random((4, 3, 32, 32), dtype=np.float32)} for i in range(2)]
    result = run_ptq_search(fp32, calib, fidelity,
                            {"quantize_op_types": ["conv2d", "conv2d_transpose"], "deploy_backend": "openvino"},
                            {"ptq_algo": ["avg"], "batch_num": [2], "batch_size": [4], "max_quant_count": 1,
                             "finalists": 1}, save_dir=tmp_path / "out", progress=False)
    assert result["deployed_metric"] is not None and result["deployed_metric"] > 0.9
    on_openvino = fidelity(inference_predictor(result["model_files"], True, target=DeployTarget("openvino")))
    assert result["deployed_metric"] == pytest.approx(on_openvino, abs=1e-6)  # measured there, not on oneDNN


def test_api_job_for_openvino_delivers_the_file_openvino_ran(head_models, tmp_path):
    pytest.importorskip("openvino")
    from autocompress import AutoCompression
    from autocompress.backend import inference_predictor
    from autocompress.model_io import read_metadata

    fp32, _, x = head_models
    reference = inference_predictor(fp32)({"x": x})[0]

    def fidelity(predict):
        out = predict({"x": x})[0]
        return 1.0 - float(np.abs(out - reference).sum() / np.abs(reference).sum())

    calib = [{"x": np.random.default_rng(i).random((4, 3, 32, 32), dtype=np.float32)} for i in range(2)]
    summary = AutoCompression(
        str(fp32.model_dir), fp32.model_filename, fp32.params_filename, str(tmp_path / "out"),
        {"QuantizationConfig": {"quantize_op_types": ["conv2d", "conv2d_transpose"], "deploy_backend": "openvino"},
         "HyperParameterOptimizationConfig": {"ptq_algo": ["avg"], "batch_num": [2], "batch_size": [4],
                                              "max_quant_count": 1}},
        None, calib, fidelity, devices="cpu", progress=False, deploy={"batch_size": 4, "allow_slower": True},
    ).compression()
    assert summary["metric_backend"].startswith("OpenVINO")
    assert {row["runtime"] for row in summary["latency"]} == {"openvino"}
    delivered = tmp_path / "out" / "onnx-openvino" / "model.onnx"
    assert summary["openvino_onnx_model"] == str(delivered) and delivered.is_file()
    assert read_metadata(delivered.parent)["onnx"]["placement"] == "openvino"
    assert not (tmp_path / "out" / "onnx").exists()  # ONNX Runtime was not measured: no file for it
