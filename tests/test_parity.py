"""One orchestration: the same digits job through the Python API, `autocompress run --in-process`
and `autocompress run` (the local Kubeflow pipeline) gives the same trials, the same selected
configuration and the same final metric — for the PTQ search and for a training strategy."""
from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("kfp", reason="the local pipeline needs kfp")

from autocompress import AutoCompression  # noqa: E402
from autocompress.cli import main  # noqa: E402
from autocompress.data.dataset import read_dataset  # noqa: E402

JOBS = {
    # batch sizes 10 and 16 with chunked calibration: the case where the API and the pipeline used to
    # calibrate on different samples (chunks of the smallest trial batch vs chunks of 8)
    "ptq_hpo": {"QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
                "HyperParameterOptimizationConfig": {"ptq_algo": ["avg", "hist", "KL"], "bias_correct": [False],
                                                     "hist_percent": [0.99, 0.999], "batch_size": [10, 16],
                                                     "batch_num": [1, 2], "max_quant_count": 4, "seed": 3}},
    "distill": {"DistillationConfig": {}, "TrainConfig": {"train_iter": 4, "eval_iter": 2, "learning_rate": 0.001,
                                                          "optimizer": "Momentum"}},
}
BATCH = 32


def _yaml(tmp_path, name, model_dir, data) -> str:
    cfg = {"Model": {"model_dir": str(model_dir)},
           "Data": {"train": str(data / "train"), "eval": str(data / "eval"), "batch_size": BATCH},
           "Eval": {"metric": "top1", "max_drop": 0.5}, "Device": "cpu", **JOBS[name]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _api(tmp_path, name, model_dir, data) -> dict:
    job = dict(JOBS[name])
    train = job.pop("TrainConfig", None)
    return AutoCompression(str(model_dir), None, None, str(tmp_path / "api"), job, train,
                           read_dataset(data / "train", batch_size=BATCH), read_dataset(data / "eval", batch_size=BATCH),
                           devices="cpu", max_drop=0.5, progress=False).compression()


def _cli(tmp_path, name, config, *flags) -> dict:
    out = tmp_path / ("inproc" if flags else "pipeline")
    assert main(["run", config, "--quiet", "--save-dir", str(out), *flags]) == 0
    return json.loads((out / "summary.json").read_text())


def _trial_view(trials):
    return [(json.dumps(t.get("config"), sort_keys=True), round(t["metric"], 6) if t.get("metric") is not None else None)
            for t in trials]


@pytest.mark.parametrize("name", list(JOBS))
def test_api_in_process_and_pipeline_agree(tmp_path, name, digits_files, digits_datasets):
    config = _yaml(tmp_path, name, digits_files.model_dir, digits_datasets)
    runs = {"api": _api(tmp_path, name, digits_files.model_dir, digits_datasets),
            "in-process": _cli(tmp_path, name, config, "--in-process"),
            "pipeline": _cli(tmp_path, name, config)}
    api = runs["api"]
    for label, s in runs.items():
        assert s["strategy"] == name, label
        assert s["baseline_metric"] == pytest.approx(api["baseline_metric"], abs=1e-6), label
        assert s["metric"] == pytest.approx(api["metric"], abs=1e-6), label
        assert s["precision"] == api["precision"], label
        assert [r["stage"] for r in s["stages"]], label  # per-stage time and peak RSS on every path
        assert all(r["seconds"] >= 0 and r["peak_rss_bytes"] > 0 for r in s["stages"]), label
        if name == "ptq_hpo":
            assert len(s["trials"]) == 4, label
            assert _trial_view(s["trials"]) == _trial_view(api["trials"]), label
            assert s["best_config"] == api["best_config"], label
            assert s["calibration_samples"] == api["calibration_samples"], label
        else:
            assert [round(p["metric"], 6) for p in s["curve"] if "metric" in p] == \
                   [round(p["metric"], 6) for p in api["curve"] if "metric" in p], label
