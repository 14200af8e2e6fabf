"""`pir_to_legacy`: a Paddle 3 PIR inference model -> an equivalent legacy `.pdmodel` program (the format every
compression engine works on), checked in Paddle Inference; round trips with `convert_to_pir`."""
import numpy as np
import paddle
import pytest

from autocompress.errors import ModelError
from autocompress.model_io import load_model, locate_model, read_metadata
from autocompress.paddle_env import legacy_ir
from autocompress.program.convert import convert_to_pir
from autocompress.program.convert import inference_outputs as infer  # a stock Paddle Inference CPU predictor
from autocompress.program.to_legacy import pir_to_legacy, supported_ops


def assert_close(ref, got, rtol=1e-4):
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape
        assert np.abs(r - g).max() <= rtol * max(1.0, np.abs(r).max())


def test_native_pir_digits_translates_to_an_equivalent_legacy_model(digits_pir_files, digits_files, digits_data,
                                                                     tmp_path, hashes):
    before = hashes(digits_pir_files.model_dir)
    out = pir_to_legacy(digits_pir_files, tmp_path / "legacy")
    assert hashes(digits_pir_files.model_dir) == before  # input untouched
    assert (out.model_filename, out.params_filename, out.format) == ("inference.pdmodel", "inference.pdiparams",
                                                                     "pdmodel")
    assert locate_model(out.model_dir).format == "pdmodel"
    feed = {"x": digits_data["eval"][0][:64]}
    ref_names, ref = infer(digits_pir_files, feed)
    names, got = infer(out, feed)
    assert names == ref_names == ["fetch_name_0"]  # the PIR model's output name is kept
    assert_close(ref, got)
    assert np.array_equal(ref[0].argmax(1), got[0].argmax(1))
    assert_close(infer(digits_files, feed)[1], got)  # and it is the digits CNN it was exported from
    check = read_metadata(out.model_dir)["translation"]
    assert check["paddle_version"] == paddle.__version__ and 0 <= check["max_abs_diff"] <= check["tolerance"]
    with legacy_ir():  # what the compression engines do with it
        model = load_model(out)
        assert model.feed_names == ["x"] and model.fetch_names == ["fetch_name_0"]
        types = {op.type for op in model.program.global_block().ops}
        assert {"conv2d", "batch_norm", "pool2d", "flatten_contiguous_range", "matmul_v2"} <= types
        result = model.executor.run(model.program, feed=feed, fetch_list=model.fetch_targets, scope=model.scope)
        # the quantization engine finds the same layers as in the legacy twin (weights keep their names)
        from autocompress.config import QuantizationConfig
        from autocompress.quant.targets import find_targets

        targets = find_targets(model.program, QuantizationConfig())
        twin = find_targets(load_model(digits_files).program, QuantizationConfig())
        assert sorted(targets.weights) == sorted(twin.weights) and targets.weights
        assert len(targets.activations) == len(twin.activations)
    assert_close(ref, result)


@pytest.mark.parametrize("name", ["cls", "rec", "det"])
def test_pp_ocr_round_trip_legacy_pir_legacy(name, tmp_path, hashes):
    """PP-OCR legacy -> convert_to_pir -> pir_to_legacy: the same outputs as the shipped legacy model."""
    from autocompress.ocr import rec_model_dir

    folder, shape = {"rec": ("ch_PP-OCRv4_rec_infer", (2, 3, 48, 160)),
                     "cls": ("ch_ppocr_mobile_v2_cls_infer", (2, 3, 48, 192)),  # shipped next to the rec model
                     "det": ("ch_PP-OCRv4_det_infer", (1, 3, 64, 64))}[name]
    src = locate_model(rec_model_dir().parent / folder)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    pir = convert_to_pir(src.model_dir, tmp_path / "pir")
    before = hashes(pir.model_dir)
    back = pir_to_legacy(pir, tmp_path / "legacy", feed={"x": x})
    assert hashes(pir.model_dir) == before
    ref_names, ref = infer(src, {"x": x})
    names, got = infer(back, {"x": x})
    assert names == ref_names  # the original fetch names survive both ways
    if name == "det":  # nearest_interp: the PIR model runs without oneDNN only (docs/pir.md), the legacy one with it
        assert read_metadata(back.model_dir)["translation"]["runtime"].endswith("(config.disable_mkldnn())")
    assert_close(ref, got)
    with legacy_ir():
        model = load_model(back)
        assert model.fetch_names == ref_names


def test_an_unsupported_operation_is_named(tmp_path):
    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.pir_utils.IrGuard():
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1, 4], "float32")
            y = paddle.cumsum(paddle.nn.Linear(4, 3)(x), axis=1)
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            paddle.static.save_inference_model(str(tmp_path / "model" / "inference"), [x], [y], exe, program=main)
    files = locate_model(tmp_path / "model")
    assert files.format == "pir-json"
    assert "pd_op.cumsum" not in supported_ops()
    with pytest.raises(ModelError) as err:
        pir_to_legacy(files, tmp_path / "out")
    text = str(err.value)
    assert "'pd_op.cumsum'" in text and paddle.__version__ in text and "legacy format" in text
    assert "OldIrGuard" in text
    assert not (tmp_path / "out").exists()


def test_a_legacy_model_is_refused(digits_files, tmp_path):
    with pytest.raises(ModelError, match="not a Paddle 3 PIR model"):
        pir_to_legacy(digits_files, tmp_path / "out")


def _export_pir(layer_class, folder, input_spec):
    """A `layer_class()` saved the way Paddle 3 saves by default (PIR: inference.json + inference.pdiparams)."""
    paddle.disable_static()
    try:
        paddle.seed(0)
        layer = layer_class()
        layer.eval()
        paddle.jit.save(layer, str(folder / "inference"), input_spec=input_spec)
    finally:
        paddle.enable_static()
    return locate_model(folder, "inference.json")


class _VisionOps(paddle.nn.Layer):
    """conv / norm / activation / pooling / interpolation / shape ops, as Paddle 3 exports them."""

    def __init__(self):
        super().__init__()
        nn = paddle.nn
        self.c1, self.bn = nn.Conv2D(3, 8, 3, padding=1), nn.BatchNorm2D(8)
        self.dw = nn.Conv2D(8, 8, 3, padding=1, groups=8)
        self.ct, self.ln, self.fc, self.drop = nn.Conv2DTranspose(8, 8, 2, stride=2), nn.LayerNorm(16), \
            nn.Linear(16, 16), nn.Dropout(0.1)

    def forward(self, x):
        F = paddle.nn.functional
        y = F.relu(self.bn(self.c1(x)))
        y = F.hardswish(self.dw(y)) * F.hardsigmoid(y)
        y = F.avg_pool2d(F.interpolate(y, scale_factor=2, mode="bilinear"), 2)
        y = F.max_pool2d(self.ct(y), 2)
        y = F.leaky_relu(y, 0.1) + F.silu(y) - F.sigmoid(y)
        y = paddle.clip(F.gelu(y) / (paddle.tanh(y) + 2.0), -3, 3)
        y = F.adaptive_avg_pool2d(paddle.maximum(y, paddle.minimum(y, paddle.full([1], 0.5))), 4)
        b = self.drop(self.fc(self.ln(y.reshape([-1, 8, 16]))))
        b = paddle.transpose(b, [0, 2, 1]).unsqueeze(1).squeeze(1)
        b = F.softmax(paddle.concat([b, b * 0.5], axis=1).mean(axis=-1), axis=-1)
        return paddle.scale(b, 2.0, 1.0), paddle.flatten(y, 1)


class _MoreOps(paddle.nn.Layer):
    """split / pad / reductions / casts / embedding / nearest resize / literal tensors, as Paddle 3 exports them."""

    def __init__(self):
        super().__init__()
        self.ct, self.emb = paddle.nn.Conv2DTranspose(4, 4, 2, stride=2, groups=4), paddle.nn.Embedding(10, 4)

    def forward(self, x, ids):
        F = paddle.nn.functional
        y = self.ct(F.relu6(x) + paddle.sqrt(paddle.abs(x)) + paddle.exp(-x.abs()))
        y = paddle.cast(y, "float64").cast("float32")
        a, b = paddle.split(y, 2, axis=1)
        c, d, e = paddle.split(y, [1, 1, 2], axis=1)
        y = F.pad(paddle.concat([a * b, c + d, e], axis=1), [1, 1, 1, 1])
        y = paddle.pow(y, 2.0) + paddle.rsqrt(y.abs() + 1.0)
        s = paddle.stack([y.sum(axis=[2, 3]), y.max(axis=[2, 3])], axis=1)
        literal = paddle.to_tensor([0.5, 2.0, 1.0, 3.0, -1.0])
        g = paddle.gather(s, paddle.to_tensor([1, 0], dtype="int64"), axis=1) * literal
        resized = F.interpolate(y, size=[8, 8], mode="nearest")
        return s, paddle.argmax(s, axis=-1), resized, self.emb(ids).sum(axis=1), g


class _RunTimeShapes(paddle.nn.Layer):
    """Sizes and slice bounds computed from the input's shape at run time (shape64 / slice / stack / combine)."""

    def __init__(self):
        super().__init__()
        self.c = paddle.nn.Conv2D(3, 4, 3, stride=2, padding=1)

    def forward(self, x):
        F = paddle.nn.functional
        y = self.c(x)
        up = F.interpolate(y, size=x.shape[2:], mode="bilinear")
        return up[:, :, :x.shape[2] // 2, 1:], F.interpolate(y, size=[x.shape[2], 8], mode="nearest")


def test_run_time_sizes_and_slice_bounds_translate(tmp_path):
    files = _export_pir(_RunTimeShapes, tmp_path / "dyn", [paddle.static.InputSpec([-1, 3, -1, -1], "float32", "x")])
    out = pir_to_legacy(files, tmp_path / "legacy", feed_shapes={"x": [2, 3, 20, 24]})
    assert {"pd_op.shape64", "pd_op.floor_divide", "pd_op.stack"} <= set(
        read_metadata(out.model_dir)["translation"]["pir_ops"])
    for shape in [(1, 3, 16, 16), (2, 3, 30, 12)]:  # other sizes than the check's: nothing was frozen
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        ref, got = infer(files, {"x": x}, onednn=False)[1], infer(out, {"x": x}, onednn=False)[1]
        assert ref[0].shape == (shape[0], 4, shape[2] // 2, shape[3] - 1) and ref[1].shape == (shape[0], 4, shape[2], 8)
        assert_close(ref, got)


def test_native_pir_exports_of_the_other_supported_ops_translate(tmp_path):
    vision = _export_pir(_VisionOps, tmp_path / "vision",
                         [paddle.static.InputSpec([-1, 3, 16, 16], "float32", "x")])
    more = _export_pir(_MoreOps, tmp_path / "more", [paddle.static.InputSpec([-1, 4, 6, 6], "float32", "x"),
                                                      paddle.static.InputSpec([-1, 3], "int64", "ids")])
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((2, 3, 16, 16)).astype("float32")},
             {"x": rng.standard_normal((2, 4, 6, 6)).astype("float32"), "ids": rng.integers(0, 10, (2, 3))}]
    for files, feed in zip([vision, more], feeds):
        out = pir_to_legacy(files, tmp_path / f"{files.model_dir.name}-legacy", feed=feed)
        check = read_metadata(out.model_dir)["translation"]
        assert set(check["pir_ops"]) <= set(supported_ops())
        ref = infer(files, feed, onednn=False)  # bilinear / nearest resize: PIR fails with oneDNN (docs/pir.md)
        got = infer(out, feed, onednn=False)
        assert got[0] == ref[0] == [f"fetch_name_{i}" for i in range(len(ref[0]))]
        assert_close(ref[1], got[1])
        with legacy_ir():
            load_model(out)
    ops = set(read_metadata(tmp_path / "vision-legacy")["translation"]["pir_ops"]) | set(
        read_metadata(tmp_path / "more-legacy")["translation"]["pir_ops"])
    assert {"pd_op.conv2d_transpose", "pd_op.bilinear_interp", "pd_op.layer_norm", "pd_op.split_with_num",
            "pd_op.split", "pd_op.pad3d", "pd_op.embedding", "pd_op.argmax", "pd_op.cast", "pd_op.gather",
            "pd_op.assign_value_"} <= ops


def test_the_translated_pir_model_quantizes_to_int8(digits_pir_files, digits_data, tmp_path):
    """What the translation is for: a compression engine (here PTQ) working on the legacy copy."""
    from autocompress.backend import inference_predictor
    from autocompress.config import QuantizationConfig
    from autocompress.evaluation import executor_predictor
    from autocompress.quant.apply import quantize_model, save_quantized
    from autocompress.quant.calibration import collect_stats
    from autocompress.quant.targets import find_targets
    from autocompress.quant.thresholds import compute_thresholds
    from test_quant_fixtures import calib_batches, top1_evaluator

    legacy = pir_to_legacy(digits_pir_files, tmp_path / "legacy")
    x, y = digits_data["eval"]
    evaluate = top1_evaluator(x[:200], y[:200])
    with legacy_ir():
        model = load_model(legacy)
        targets = find_targets(model.program, QuantizationConfig())
        stats = collect_stats(model, calib_batches(digits_data["calib"][0][:100]), targets, chunk_size=10)
        fp32 = evaluate(executor_predictor(model))
        q = quantize_model(model, compute_thresholds(stats, "avg"), targets)
        out = save_quantized(q, model, tmp_path / "int8")
        ops = {op.type for op in load_model(out).program.global_block().ops}
    assert "quantize_linear" in ops and "dequantize_linear" in ops
    assert fp32 > 0.9 and evaluate(inference_predictor(out, int8=True)) >= fp32 - 0.02


def test_generated_names_never_take_the_models_own():
    from autocompress.program.to_legacy import _Translator

    t = _Translator(None, "model.json")
    with legacy_ir():
        t.block = paddle.static.Program().global_block()
        t.reserved = {"softmax_1.tmp_0", "softmax_2.tmp_0"}  # e.g. a fetch name kept from a legacy export
        assert t._new_name("softmax") == "softmax_3.tmp_0"


class _NoWeights(paddle.nn.Layer):
    def forward(self, x):
        return paddle.nn.functional.relu(x) * 2.0


def test_a_model_without_weights_translates(tmp_path):
    files = _export_pir(_NoWeights, tmp_path / "m", [paddle.static.InputSpec([-1, 4], "float32", "x")])
    assert files.params_filename is None
    out = pir_to_legacy(files, tmp_path / "legacy")
    assert out.params_filename is None and sorted(p.name for p in out.model_dir.iterdir()) == [
        "autocompress.json", "inference.pdmodel"]
    with legacy_ir():
        model = load_model(out)
        x = np.array([[-1.0, 0.5, 2.0, -3.0]], dtype="float32")
        (y,) = model.executor.run(model.program, feed={"x": x}, fetch_list=model.fetch_targets, scope=model.scope)
    assert np.array_equal(y, np.maximum(x, 0) * 2)
