import json
import shutil

import numpy as np
import pytest

from autocompress import model_io
from autocompress.errors import ModelError
from autocompress.paddle_env import legacy_ir


def test_locate_detects_legacy_format(digits_files):
    files = model_io.locate_model(digits_files.model_dir)
    assert files.format == "pdmodel"
    assert (files.model_filename, files.params_filename) == ("inference.pdmodel", "inference.pdiparams")


def test_summary_numbers(digits_files):
    s = model_io.summarize(digits_files)
    assert s["inputs"] == [{"name": "x", "shape": [-1, 1, 8, 8], "dtype": "float32"}]
    assert s["outputs"][0]["shape"] == [-1, 10]
    # 3 convs + 3 BNs (4 vectors each) + fc, counted by hand from the architecture
    convs = 16 * 1 * 9 + 16 + 32 * 16 * 9 + 32 + 64 * 32 * 9 + 64
    bns = 4 * (16 + 32 + 64)
    assert s["params"] == convs + bns + 256 * 10 + 10
    assert s["param_bytes"] == 4 * s["params"]
    conv_macs = 8 * 8 * 16 * 9 + 8 * 8 * 32 * 16 * 9 + 4 * 4 * 64 * 32 * 9
    assert s["flops"] == 2 * (conv_macs + 256 * 10)
    assert s["size_bytes"] == sum(p.stat().st_size for p in digits_files.files())


def test_pir_json_format_detected_and_summarised(tmp_path):
    import paddle

    paddle.disable_static()
    try:
        net = paddle.nn.Linear(4, 3)
        paddle.jit.save(net, str(tmp_path / "inference"), input_spec=[paddle.static.InputSpec([None, 4], "float32", "x")])
    finally:
        paddle.enable_static()
    files = model_io.locate_model(tmp_path)
    assert files.format == "pir-json" and files.model_filename == "inference.json"
    s = model_io.summarize(files)
    assert s["params"] == 4 * 3 + 3 and s["inputs"][0]["shape"] == [-1, 4]
    with pytest.raises(ModelError, match="legacy \\*.pdmodel.*OldIrGuard"):
        model_io.require_legacy(files, "PTQ")


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        model_io.locate_model(tmp_path / "nope")
    with pytest.raises(ModelError, match="no model file.*found: nothing"):
        model_io.locate_model(tmp_path)


def test_wrong_file_name_lists_present_files(digits_copy):
    with pytest.raises(ModelError, match=r"model\.pdmodel does not exist; files in .*inference\.pdmodel"):
        model_io.locate_model(digits_copy.model_dir, "model.pdmodel")
    with pytest.raises(ModelError, match="params file .*does not exist"):
        model_io.locate_model(digits_copy.model_dir, "inference.pdmodel", "weights.pdiparams")


def test_ambiguous_folder(digits_copy):
    shutil.copy(digits_copy.model_path, digits_copy.model_dir / "other.pdmodel")
    with pytest.raises(ModelError, match="several model files.*pass model_filename"):
        model_io.locate_model(digits_copy.model_dir)


def test_corrupt_model_file(digits_copy):
    digits_copy.model_path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="could not load the model"):
        with legacy_ir():
            model_io.load_model(digits_copy)


def test_truncated_params_file(digits_copy):
    data = digits_copy.params_path.read_bytes()
    digits_copy.params_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="could not load the model"):
        with legacy_ir():
            model_io.load_model(digits_copy)


def test_save_round_trip_keeps_names_and_metadata(digits_copy, digits_data, tmp_path, hashes):
    import paddle

    before = hashes(digits_copy.model_dir)
    x = digits_data["eval"][0][:16]
    with legacy_ir():
        model = model_io.load_model(digits_copy)
        with paddle.static.scope_guard(model.scope):
            ref = model.executor.run(model.program, feed={"x": x}, fetch_list=model.fetch_targets)[0]
        out = model_io.save_model(model, tmp_path / "saved", {"strategy": "none", "parent": "test"})
        again = model_io.load_model(out)
        with paddle.static.scope_guard(again.scope):
            got = again.executor.run(again.program, feed={"x": x}, fetch_list=again.fetch_targets)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in out.model_dir.iterdir()) == ["autocompress.json", "inference.pdiparams",
                                                              "inference.pdmodel"]
    meta = json.loads((out.model_dir / "autocompress.json").read_text())
    for key in ("format", "model_filename", "params_filename", "inputs", "outputs", "sha256", "params", "flops",
                "size_bytes", "precision", "strategy", "parent", "metric", "autocompress_version"):
        assert key in meta
    assert meta["sha256"]["inference.pdmodel"] == model_io.sha256_file(out.model_path)
    assert meta["parent"] == "test" and meta["precision"] == "fp32"
    assert hashes(digits_copy.model_dir) == before  # input untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saved")]  # no temp leftovers


def test_input_guard_detects_change(digits_copy):
    guard = model_io.InputGuard(digits_copy)
    guard.verify()
    digits_copy.params_path.write_bytes(digits_copy.params_path.read_bytes() + b"x")
    with pytest.raises(ModelError, match="changed during the run"):
        guard.verify()
