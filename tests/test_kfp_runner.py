"""compile / submit / schedule against a recording fake kfp.Client; arguments never carry credentials;
the engine imports without kfp."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")

from autocompress.kfp import arguments  # noqa: E402
from autocompress.kfp import cluster  # noqa: E402
from autocompress.kfp import compile as kfp_compile  # noqa: E402
import autocompress.kfp as kfp_layer  # noqa: E402
from autocompress.errors import ConfigError  # noqa: E402

CONFIG = {
    "Model": {"model_dir": "s3://models/digits"},
    "Data": {"train": "s3://data/train", "eval": "minio://data/eval", "batch_size": 16},
    "Eval": {"metric": "fidelity", "max_drop": 0.02},
    "Device": "gpu",
    "QuantizationConfig": {},
    "HyperParameterOptimizationConfig": {"max_quant_count": 6},
}


class FakeClient:
    def __init__(self, existing_jobs=()):
        self.calls = []
        self.jobs = list(existing_jobs)

    def _rec(self, call, **kw):
        self.calls.append((call, kw))

    def get_pipeline_id(self, name):
        self._rec("get_pipeline_id", name=name)
        return None

    def upload_pipeline(self, path, pipeline_name, description=None):
        self._rec("upload_pipeline", path=path, text=Path(path).read_text(), pipeline_name=pipeline_name)
        return types.SimpleNamespace(pipeline_id="p-1")

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id):
        self._rec("upload_pipeline_version", name=pipeline_version_name, pipeline_id=pipeline_id)
        return types.SimpleNamespace(pipeline_version_id="v-1")

    def create_experiment(self, name, namespace=None):
        self._rec("create_experiment", name=name)
        return types.SimpleNamespace(experiment_id="e-1")

    def run_pipeline(self, **kw):
        self._rec("run_pipeline", **kw)
        return types.SimpleNamespace(run_id="r-1")

    def list_recurring_runs(self, experiment_id, page_size, page_token=""):
        return types.SimpleNamespace(recurring_runs=self.jobs, next_page_token=None)

    def delete_recurring_run(self, job_id):
        self._rec("delete_recurring_run", job_id=job_id)

    def create_recurring_run(self, **kw):
        self._rec("create_recurring_run", **kw)
        return types.SimpleNamespace(recurring_run_id="rr-2")


def _cfg(tmp_path, **changes):
    cfg = {**CONFIG, **changes}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_arguments_are_validated_and_carry_no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value-123")
    name, args = arguments.pipeline_arguments(_cfg(tmp_path), gpu=True)
    assert name == "ptq_hpo"
    assert args["model_uri"] == "s3://models/digits" and args["calib_data_uri"] == "s3://data/train"
    assert args["metric"] == "fidelity" and args["max_drop"] == 0.02 and args["batch_size"] == 16
    assert yaml.safe_load(args["config"])["HyperParameterOptimizationConfig"] == {"max_quant_count": 6}
    assert "super-secret-value-123" not in str(args)
    with pytest.raises(ConfigError, match="weight_bitz"):
        arguments.pipeline_arguments(_cfg(tmp_path, QuantizationConfig={"weight_bitz": 8}))
    with pytest.raises(ConfigError, match="no parameters"):
        arguments.pipeline_arguments(_cfg(tmp_path), extra={"aws_secret": "x"})


def test_submit_uploads_a_version_and_starts_a_run(tmp_path):
    fake = FakeClient()
    out = cluster.submit(_cfg(tmp_path), kfp_client=fake, host="http://kfp.local", run_name="nightly",
                            trial_shards=3, image_repository="registry.local/ac")
    names = [c[0] for c in fake.calls]
    assert names == ["get_pipeline_id", "upload_pipeline", "upload_pipeline_version", "create_experiment",
                     "run_pipeline"]
    upload = fake.calls[1][1]
    assert upload["pipeline_name"] == "autocompress-ptq-hpo" and "registry.local/ac:" in upload["text"]
    run = fake.calls[-1][1]
    assert run["pipeline_id"] == "p-1" and run["version_id"] == "v-1" and run["job_name"] == "nightly"
    assert run["params"]["trial_shards"] == 3
    assert out["run_id"] == "r-1" and out["url"] == "http://kfp.local/#/runs/details/r-1"


def test_submit_refuses_local_paths(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        cluster.submit(_cfg(tmp_path, Model={"model_dir": "/data/model"}), kfp_client=FakeClient())


def test_schedule_replaces_the_recurring_run_of_the_same_name(tmp_path):
    old = types.SimpleNamespace(display_name="autocompress-ptq-hpo", recurring_run_id="rr-1")
    other = types.SimpleNamespace(display_name="someone-else", recurring_run_id="rr-9")
    fake = FakeClient([old, other])
    out = cluster.schedule(_cfg(tmp_path), "0 3 * * *", kfp_client=fake)
    assert ("delete_recurring_run", {"job_id": "rr-1"}) in fake.calls
    assert ("delete_recurring_run", {"job_id": "rr-9"}) not in fake.calls
    create = fake.calls[-1][1]
    assert create["cron_expression"] == "0 0 3 * * *" and create["max_concurrency"] == 1
    assert create["job_name"] == "autocompress-ptq-hpo" and create["no_catchup"] is True
    assert out == {"pipeline": "ptq_hpo", "pipeline_id": "p-1", "version_id": "v-1", "recurring_run_id": "rr-2",
                   "replaced": ["rr-1"], "cron": "0 0 3 * * *"}
    with pytest.raises(ConfigError, match="5 or 6 fields"):
        cluster.schedule(_cfg(tmp_path), "daily", kfp_client=fake)


def test_client_needs_a_host(monkeypatch):
    for k in ("KFP_HOST", "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(kfp_layer.KFPError, match="--host URL or set KFP_HOST"):
        cluster.client()


def test_engine_and_stages_import_without_kfp():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'kfp' or name.startswith('kfp.') or name == 'minio':\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import autocompress, autocompress.stages.run, autocompress.storage, autocompress.api, autocompress.cli\n"
            "import autocompress.kfp.image, autocompress.kfp.adapters, autocompress.strategies, autocompress.job\n"
            "import autocompress.kfp as kfp_layer\n"
            "from autocompress.kfp import compile as kfp_compile\n"
            "try:\n"
            "    kfp_compile.compile_pipelines('/nonexistent')\n"
            "except kfp_layer.KFPError as e:\n"
            "    assert 'pip install' in str(e)\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
