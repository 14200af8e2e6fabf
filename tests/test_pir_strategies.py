"""Paddle 3 PIR models (`inference.json`) through every strategy: the engines work on a verified
legacy translation (program.to_legacy) and the result goes back to the input's format, so deploy
code that loaded `inference.json` loads the compressed one unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autocompress import AutoCompression
from autocompress.data import FeedSource

TRAIN = {"train_iter": 6, "eval_iter": 3, "learning_rate": 0.001, "optimizer": "Momentum"}
PTQ = {"QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
       "HyperParameterOptimizationConfig": {"ptq_algo": ["avg", "KL"], "bias_correct": [False], "batch_size": [16],
                                            "batch_num": [2], "max_quant_count": 2, "search_algo": "grid",
                                            "finalists": 1}}
STRATEGIES = {
    "ptq_hpo": (PTQ, None),
    "qat_distill": ({"QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
                     "DistillationConfig": {}}, TRAIN),
    "prune_distill": ({"PruneConfig": {"pruned_ratio": 0.25}, "DistillationConfig": {}}, TRAIN),
    "sparse_distill": ({"UnstructurePruneConfig": {"prune_ratio": 0.5}, "DistillationConfig": {}}, TRAIN),
    "distill": ({"DistillationConfig": {}}, TRAIN),
    "multi_teacher_distill": ({"MultiTeacherDistillationConfig": {"teacher_model_dir": ["TEACHER"]}}, TRAIN),
}
BUDGET = 0.05


def _run(files, save_dir, name, digits_data, teacher):
    strategy, train = STRATEGIES[name]
    strategy = json.loads(json.dumps(strategy).replace("TEACHER", str(teacher)))
    xc, yc = digits_data["calib"]
    xe, ye = digits_data["eval"]
    return AutoCompression(str(files.model_dir), None, None, str(save_dir), strategy, train,
                           FeedSource.from_arrays({"x": xc[:128]}, yc[:128], batch_size=32),
                           FeedSource.from_arrays({"x": xe[:200]}, ye[:200], batch_size=100), "cpu",
                           max_drop=BUDGET, deploy={"allow_slower": True}, progress=False).compression()


def _stock_outputs(model_dir, name, x):
    from paddle import inference

    config = inference.Config(str(model_dir / f"{name}.json"), str(model_dir / f"{name}.pdiparams"))
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    predictor.get_input_handle(predictor.get_input_names()[0]).copy_from_cpu(x)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_compresses_a_pir_model(tmp_path, name, digits_pir_files, digits_files, digits_data, hashes):
    before = hashes(digits_pir_files.model_dir)
    s = _run(digits_pir_files, tmp_path / "out", name, digits_data, digits_pir_files.model_dir)
    assert hashes(digits_pir_files.model_dir) == before  # the input is never modified
    assert s["strategy"] == name and s["metric_drop"] <= BUDGET and s["baseline_metric"] > 0.9
    model_dir = tmp_path / "out" / "model"
    if s["precision"] == "int8":
        # Paddle 3.3.1 cannot run an int8 quantize/dequantize program as PIR: the model is kept in the
        # legacy format, and the summary says why
        assert (model_dir / "inference.pdmodel").exists() and not (model_dir / "inference.json").exists()
        assert any("could not be converted back to PIR" in w and "3.3.1" in w for w in s["warnings"])
    else:
        assert sorted(p.name for p in model_dir.glob("inference.*")) == ["inference.json", "inference.pdiparams"]
        x = digits_data["eval"][0][:4]
        out = _stock_outputs(model_dir, "inference", x)
        assert out.shape == (4, 10) and np.isfinite(out).all()
    if name == "prune_distill":
        assert s["params_after"] < s["params_before"]


def test_pir_and_legacy_twins_select_the_same_ptq_model(tmp_path, digits_pir_files, digits_files, digits_data):
    pir = _run(digits_pir_files, tmp_path / "pir", "ptq_hpo", digits_data, None)
    legacy = _run(digits_files, tmp_path / "legacy", "ptq_hpo", digits_data, None)
    assert pir["best_config"] == legacy["best_config"]
    assert abs(pir["metric"] - legacy["metric"]) <= 0.002
    assert [t["metric"] for t in pir["trials"]] == pytest.approx([t["metric"] for t in legacy["trials"]], abs=0.002)


def test_the_local_pipeline_compresses_a_pir_model(tmp_path, digits_pir_files, digits_datasets):
    pytest.importorskip("kfp")
    import yaml

    from autocompress.kfp import local_run

    cfg = {"Model": {"model_dir": str(digits_pir_files.model_dir)},
           "Data": {"train": str(digits_datasets / "train"), "eval": str(digits_datasets / "eval"), "batch_size": 32},
           "Eval": {"metric": "top1", "max_drop": BUDGET}, "Deploy": {"allow_slower": True}, "Device": "cpu",
           "SaveDir": str(tmp_path / "out"), "DistillationConfig": {}, "TrainConfig": TRAIN}
    path = tmp_path / "pir.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = local_run.run_local(path, echo=lambda line: None)
    assert run.summary["metric_drop"] <= BUDGET
    assert sorted(p.name for p in run.model_dir.glob("inference.*")) == ["inference.json", "inference.pdiparams"]
