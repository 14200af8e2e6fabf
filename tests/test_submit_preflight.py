"""`autocompress submit` / `schedule` run `autocompress run`'s pre-flight, as far as it can run on the
submitting machine, before the KFP endpoint is contacted (tests/_kfp_fake.py records every request)."""
from __future__ import annotations

import logging

import pytest
import yaml

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")

from _kfp_fake import FakeKFP  # noqa: E402

from autocompress import cli  # noqa: E402
from autocompress.errors import AutoCompressError  # noqa: E402
from autocompress.kfp import cluster  # noqa: E402
from autocompress.kfp.arguments import run_config  # noqa: E402
from test_kfp_runner import CONFIG, FakeClient  # noqa: E402

DISTILL = {"DistillationConfig": {"teacher_model_dir": "s3://models/teacher"}, "TrainConfig": {"train_iter": 10}}

# (case, config changes, what the message must say, the CLI flags)
CASES = [
    ("unknown key", {"QuantizationConfig": {"weight_bitz": 8}}, ("weight_bitz",), []),
    ("not a device", {"Device": "tpu:0"}, ("tpu:0", "cpu, gpu"), []),
    ("accelerator on the CPU pipeline", {"Device": "gpu:0"}, ("gpu:0", "--cpu", "Device: cpu"), ["--cpu"]),
    ("unknown metric", {"Eval": {"metric": "top3", "max_drop": 0.02}}, ("top3", "top1"), []),
    ("malformed plugin", {"Eval": {"metric": "my metric:fn", "max_drop": 0.02}}, ("my metric:fn", "package.module"), []),
    ("plugin without the function", {"Eval": {"metric": "json:no_such_metric", "max_drop": 0.02}},
     ("no_such_metric", "json"), []),
    ("local model", {"Model": {"model_dir": "/data/model"}}, ("model_uri", "/data/model", "s3://"), []),
    ("local eval data", {"Data": {"train": "s3://data/train", "eval": "./eval"}}, ("eval_data_uri", "local path"), []),
    ("local teacher", {"QuantizationConfig": None, "HyperParameterOptimizationConfig": None,
                       "DistillationConfig": {"teacher_model_dir": "/data/teacher"}, "TrainConfig": {"train_iter": 10}},
     ("DistillationConfig.teacher_model_dir", "/data/teacher", "s3://"), []),
    ("local multi-teacher", {"QuantizationConfig": None, "HyperParameterOptimizationConfig": None,
                             "MultiTeacherDistillationConfig": {"teacher_model_dir": ["s3://m/t0", "/data/t1"],
                                                                "distill_loss": ["l2_loss", "l2_loss"],
                                                                "distill_lambda": [1.0, 1.0]},
                             "TrainConfig": {"train_iter": 10}},
     ("MultiTeacherDistillationConfig.teacher_model_dir[1]", "/data/t1"), []),
]


def _write(tmp_path, changes: dict):
    cfg = {**CONFIG, **changes}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def endpoint():
    fake = FakeKFP()
    yield fake
    fake.close()


@pytest.mark.parametrize("case,changes,says,flags", CASES, ids=[c[0] for c in CASES])
def test_submit_refuses_before_contacting_the_endpoint(tmp_path, endpoint, capsys, case, changes, says, flags):
    path = _write(tmp_path, changes)
    with pytest.raises(AutoCompressError) as info:
        cluster.submit(path, host=endpoint.host, gpu="--cpu" not in flags)
    for fragment in says:
        assert fragment.lower() in str(info.value).lower(), (fragment, str(info.value))
    code = cli.main(["submit", str(path), "--host", endpoint.host, *flags])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and says[0].lower() in err.lower()
    code = cli.main(["schedule", str(path), "--cron", "0 3 * * *", "--host", endpoint.host, *flags])
    assert code == 2
    assert endpoint.calls == []  # nothing reached the KFP API


def test_what_cannot_be_checked_here_passes_and_is_said(tmp_path, caplog):
    """A plugin the submitting machine cannot import, remote teachers: submitted, and the log says
    which checks were left to the cluster."""
    path = _write(tmp_path, {"Eval": {"metric": "acme_metrics.ocr:score", "max_drop": 0.02}, **DISTILL,
                             "QuantizationConfig": None, "HyperParameterOptimizationConfig": None})
    fake = FakeClient()
    with caplog.at_level(logging.INFO, logger="autocompress"):
        out = cluster.submit(path, kfp_client=fake, host="http://kfp.local")
    assert out["run_id"] == "r-1" and [c[0] for c in fake.calls][-1] == "run_pipeline"
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "acme_metrics.ocr:score" in said and "load stages check them" in said
    skipped = cluster.preflight(run_config(path), gpu=True)
    assert len(skipped) == 2 and "acme_metrics.ocr:score" in skipped[1]
