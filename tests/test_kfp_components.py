"""Each component's python_func on tiny real inputs (the digits CNN, scikit-learn's real digits): the
bodies only translate artifacts into stage calls, so this checks the translation and the stages."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")

from kfp import dsl  # noqa: E402

from autocompress.kfp import components as c  # noqa: E402

PTQ_CONFIG = json.dumps({
    "QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
    "HyperParameterOptimizationConfig": {"ptq_algo": ["avg", "hist"], "bias_correct": [False],
                                         "hist_percent": [0.999], "batch_size": [16], "batch_num": [4],
                                         "max_quant_count": 2, "search_algo": "grid", "finalists": 1}})


def art(cls, folder: Path, name: str):
    return cls(name=name, uri=str(folder / name), metadata={})


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, digits_files, digits_datasets):
    out = tmp_path_factory.mktemp("loaded")
    model = art(dsl.Model, out, "model")
    c.load_model.python_func(model_uri=str(digits_files.model_dir), config=PTQ_CONFIG, model=model)
    calib, evald = art(dsl.Dataset, out, "calib"), art(dsl.Dataset, out, "eval")
    c.load_data.python_func(data_uri=str(digits_datasets / "train"), dataset=calib)
    c.load_data.python_func(data_uri=str(digits_datasets / "eval"), dataset=evald)
    return model, calib, evald


def test_load_model_copies_untouched_with_metadata(loaded, digits_files, hashes):
    model, calib, evald = loaded
    meta = json.loads((Path(model.path) / "autocompress.json").read_text())
    assert meta["format"] == "pdmodel" and meta["parent"] == str(digits_files.model_dir)
    assert meta["stages"][0]["stage"] == "load_model" and "inputs" not in meta  # no Paddle in load_model
    from autocompress.kfp import adapters

    facts = adapters.describe(model.path)  # the first stage that loads the program records its facts
    assert facts["inputs"][0]["name"] == "x" and facts["params"] > 0
    src = hashes(digits_files.model_dir)
    dst = hashes(model.path)
    assert all(dst[name] == digest for name, digest in src.items() if name.endswith((".pdmodel", ".pdiparams")))
    assert model.metadata["format"] == "pdmodel" and model.metadata["precision"] == "fp32"
    assert calib.metadata["samples"] == 128 and evald.metadata["labelled"] is True


def test_load_model_rejects_a_bad_config_first(tmp_path, digits_files):
    from autocompress.errors import ConfigError

    with pytest.raises(ConfigError, match="QuantizationConfig.weight_bitz"):
        c.load_model.python_func(model_uri=str(digits_files.model_dir), model=art(dsl.Model, tmp_path, "m"),
                                 config='{"QuantizationConfig": {"weight_bitz": 8}, '
                                        '"HyperParameterOptimizationConfig": {}}')
    assert not (tmp_path / "m").exists()


def test_ptq_components_chain(loaded, tmp_path):
    model, calib, evald = loaded
    stats = art(dsl.Artifact, tmp_path, "stats")
    plan = c.calibrate.python_func(model=model, calib_data=calib, config=PTQ_CONFIG, stats=stats, trial_shards=2)
    assert (Path(stats.path) / "stats.npz").exists() and stats.metadata["samples"] == 64
    assert [json.loads(p)["max_quant_count"] for p in plan] == [1, 1]
    candidates = []
    for i, trial in enumerate(plan):
        cand, metrics = art(dsl.Model, tmp_path, f"cand{i}"), art(dsl.Metrics, tmp_path, f"metrics{i}")
        c.ptq_trial.python_func(model=model, stats=stats, calib_data=calib, eval_data=evald, config=PTQ_CONFIG,
                                trial=trial, candidate=cand, metrics=metrics)
        assert 0.5 < metrics.metadata["metric"] <= 1.0 and metrics.metadata["trials"] == 1
        candidates.append(cand)
    best = art(dsl.Model, tmp_path, "best")
    c.select_best.python_func(candidates=candidates, best=best)
    assert best.metadata["candidates"] == 2
    assert best.metadata["metric"] == max(x.metadata["metric"] for x in candidates)
    best_meta = json.loads((Path(best.path) / "autocompress.json").read_text())
    assert best_meta["precision"] == "int8"
    assert [s["stage"] for s in best_meta["stages"]] == ["load_model", "calibrate", "ptq_search", "ptq_search",
                                                         "select_best"]
    assert len(json.loads((Path(best.path) / "trials.json").read_text())) == 2

    metrics, confusion = art(dsl.Metrics, tmp_path, "m"), art(dsl.ClassificationMetrics, tmp_path, "cm")
    summary = art(dsl.Artifact, tmp_path, "summary")
    no_test = art(dsl.Dataset, tmp_path, "no-test")
    c.load_data.python_func(data_uri="", dataset=no_test)  # the run has no test split
    assert no_test.metadata["absent"] is True
    c.evaluate.python_func(model=best, baseline=model, eval_data=evald, test_data=no_test, config=PTQ_CONFIG,
                           metrics=metrics, confusion=confusion, summary=summary)
    s = json.loads((Path(summary.path) / "summary.json").read_text())
    assert s["strategy"] == "ptq_hpo" and s["precision"] == "int8"
    assert s["size_bytes_after"] < s["size_bytes_before"]
    assert metrics.metadata["metric"] == pytest.approx(s["metric"])
    assert metrics.metadata["target_met"] in (0.0, 1.0)
    cm = confusion.metadata["confusionMatrix"]
    assert len(cm["annotationSpecs"]) == 10 and sum(map(sum, [r["row"] for r in cm["rows"]])) == 200

    exported, report = art(dsl.Model, tmp_path, "exported"), art(dsl.Markdown, tmp_path, "report")
    publish = tmp_path / "published"
    c.export.python_func(model=best, summary=summary, exported=exported, report=report, publish_uri=str(publish))
    for root in (Path(exported.path), publish):
        assert sorted(p.name for p in (root / "model").iterdir()) == [
            "MODEL_CARD.md", "autocompress.json", "inference.pdiparams", "inference.pdmodel"]
        assert (root / "summary.json").exists() and (root / "report.md").exists()
    assert Path(report.path).read_text().startswith("# autocompress report: ptq_hpo")
    assert json.loads((publish / "summary.json").read_text())["model_dir"] == str(publish / "model")


def test_prune_component_makes_the_model_smaller(loaded, tmp_path):
    model, calib, _ = loaded
    # criterion 'activation' ranks channels on the training batches the component receives
    config = json.dumps({"PruneConfig": {"pruned_ratio": 0.5, "criterion": "activation"}, "DistillationConfig": {},
                         "TrainConfig": {"train_iter": 2}})
    pruned = art(dsl.Model, tmp_path, "pruned")
    c.prune.python_func(model=model, train_data=calib, config=config, pruned=pruned)
    assert pruned.metadata["params_after"] < pruned.metadata["params_before"]
    meta = json.loads((Path(pruned.path) / "autocompress.json").read_text())
    assert meta["strategy"] == "prune" and meta["stages"][-1]["stage"] == "prune"


def test_config_of_another_strategy_names_the_right_pipeline(loaded, tmp_path):
    from autocompress.errors import ConfigError

    model, calib, _ = loaded
    with pytest.raises(ConfigError, match="run the distill pipeline"):
        c.calibrate.python_func(model=model, calib_data=calib, stats=art(dsl.Artifact, tmp_path, "s"),
                                config='{"DistillationConfig": {}, "TrainConfig": {"epochs": 1}}')


def test_asp_masks_survive_the_pipeline_training_stage(loaded, tmp_path):
    """Regression: the pipeline's distill_train used to fine-tune an ASP model with the plain distill
    engine, so the 2:4 zeros drifted away during training."""
    from autocompress import model_io
    from autocompress.paddle_env import legacy_ir
    from autocompress.prune.asp import check_2_4, eligible
    from autocompress.prune.masks import read_param

    model, calib, evald = loaded
    config = json.dumps({"PruneConfig": {"prune_algo": "asp"}, "DistillationConfig": {},
                         "TrainConfig": {"train_iter": 8, "eval_iter": 4, "optimizer": "Adam", "learning_rate": 0.01}})
    pruned, trained = art(dsl.Model, tmp_path, "pruned"), art(dsl.Model, tmp_path, "trained")
    c.prune.python_func(model=model, train_data=calib, config=config, pruned=pruned)
    c.distill_train.python_func(student=pruned, teacher=model, train_data=calib, eval_data=evald, config=config,
                                trained=trained, metrics=art(dsl.Metrics, tmp_path, "m"))
    with legacy_ir():
        out = model_io.load_model(model_io.locate_model(trained.path))
        weights, _ = eligible(out.program)
        assert weights, "the digits CNN has a fully-connected layer eligible for 2:4"
        for name, use in weights.items():
            assert check_2_4(read_param(out.scope, name), use) == 1.0, name
    # the newest training checkpoint holds trained weights whatever step was best: 2:4 holds there too
    last = next(Path(trained.path + ".checkpoints").rglob("last"))
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == 8
    with np.load(last / "arrays.npz", allow_pickle=False) as arrays:
        for name, use in weights.items():
            w = arrays[f"a{state['array_names'].index(name)}"]
            assert check_2_4(w, use) == 1.0, name


def test_a_corrupted_artifact_is_refused_by_the_next_stage(tmp_path, digits_files):
    from autocompress.errors import ModelError
    from autocompress.kfp import adapters
    from autocompress.stages.artifact import ModelArtifact

    model = tmp_path / "model"
    adapters.load_model(str(digits_files.model_dir), model)
    assert ModelArtifact.load(model).files.model_filename == digits_files.model_filename
    params = model / digits_files.params_filename
    data = bytearray(params.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, same size
    params.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="no longer match the sha256 recorded"):
        ModelArtifact.load(model)
