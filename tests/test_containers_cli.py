"""`autocompress run --runner docker` without Docker: the option reaches the runner, and what cannot
run in containers is refused before any stage with the fix (tests/test_containers.py runs them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")

from autocompress import cli  # noqa: E402
from autocompress.errors import ConfigError  # noqa: E402
from autocompress.kfp import local_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_run_passes_the_runner(monkeypatch, tmp_path):
    seen = {}

    class Run:
        summary = {"save_dir": str(tmp_path)}

    def fake(config, **kwargs):
        seen.update(kwargs, config=config)
        return Run()

    monkeypatch.setattr(local_run, "run_local", fake)
    monkeypatch.setattr(cli, "_print_result", lambda summary, paths=False: None)
    assert cli.main(["run", "cfg.yaml", "--runner", "docker", "--quiet"]) == 0
    assert seen["runner"] == "docker" and seen["config"] == "cfg.yaml"
    assert cli.build_parser().parse_args(["run", "cfg.yaml"]).runner == "subprocess"


def test_unknown_runner_and_gpu_device_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown runner 'kubernetes'; use one of: subprocess, docker"):
        local_run.run_local(tmp_path / "x.yaml", runner="kubernetes")

    class RC:
        Device = "gpu:0"

    with pytest.raises(ConfigError, match="Device is gpu:0: use Device: cpu, or --runner subprocess"):
        pytest.importorskip("docker", reason="the Docker SDK")
        local_run._docker_runner(RC(), None, {}, tmp_path, "", print)


def test_local_inputs_are_each_folder_once_outside_the_pipeline_root(tmp_path):
    model, data, root = tmp_path / "model", tmp_path / "data", tmp_path / "root"
    for folder in (model, data / "train", root / "x"):
        folder.mkdir(parents=True)
    (data / "list.txt").write_text("a.png 0\n")
    args = {"model_uri": str(model), "train_data_uri": str(data / "train"), "eval_data_uri": str(data / "list.txt"),
            "test_data_uri": "", "publish_uri": "s3://b/k", "inside": str(root / "x"),
            "config": '{"MultiTeacherDistillationConfig": {"teacher_model_dir": ["%s", "%s"]}}' % (model, model)}
    assert local_run._local_inputs(args, root) == [data, model]


def test_unreadable_input_is_found(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a").write_text("x")
    os.chmod(tmp_path / "model", 0o755)
    os.chmod(tmp_path / "model" / "a", 0o644)
    assert local_run._unreadable_by_others(tmp_path / "model") is None
    os.chmod(tmp_path / "model" / "a", 0o600)
    assert local_run._unreadable_by_others(tmp_path / "model") == tmp_path / "model" / "a"


def test_build_script_says_why_without_a_daemon():
    """No daemon at DOCKER_HOST: the script does not start one elsewhere and names the fix."""
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    out = subprocess.run([sys.executable, str(REPO / "images" / "build.py"), "--gpu", "skip"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "images/build.py: error:" in out.stderr
    assert "point DOCKER_HOST at a running one" in out.stderr or "install Docker" in out.stderr
