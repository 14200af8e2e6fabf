"""Every strategy pipeline in containers: `images/build.py` builds (or reuses) the images, then
`kfp.local.DockerRunner` runs each CPU pipeline's stages in the CPU image as the manifests run pods
(non-root, read-only root file system with a writable /tmp, no new privileges, no capabilities), and
one run reads the model from and publishes to a real S3 server (nanio) the containers reach.

Skips when Docker cannot run here: no docker client or SDK, no daemon and none can be started (root and
dockerd are needed for that), or the stand-in base cannot be built (root and debootstrap). A build
that starts and fails is a failure."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")
pytest.importorskip("docker", reason="kfp's DockerRunner needs the Docker SDK (pip install docker)")
if shutil.which("docker") is None:
    pytest.skip("the docker client is not installed (Debian: apt-get install docker.io)", allow_module_level=True)

from test_kfp_local import STRATEGIES, _assert_no_secret, _config  # noqa: E402

from autocompress.kfp import local_run  # noqa: E402
from autocompress.kfp.image import CPU_IMAGE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "images"))
import build as image_build  # noqa: E402

sys.path.pop(0)


@pytest.fixture(scope="module")
def images():
    """The daemon (started if none runs and this user can), the stand-in base and the images."""
    try:
        image_build.ensure_daemon()
    except image_build.BuildError as err:
        pytest.skip(f"Docker cannot run here: {err}")
    if image_labels_missing() and (os.geteuid() != 0 or shutil.which("debootstrap") is None):
        pytest.skip("no stand-in base image and it cannot be built here (needs root and debootstrap)")
    return image_build.build_all(gpu="package")


def image_labels_missing() -> bool:
    return image_build.image_labels(image_build.STANDIN_BASE) is None and \
        image_build.image_labels(CPU_IMAGE) is None


@pytest.fixture(scope="module")
def readable(digits_files, digits_datasets):
    """The session's model and data folders readable by the containers' user (pytest makes them 0700)."""
    for top in (digits_files.model_dir, digits_datasets):
        for folder, _, files in os.walk(top):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
    return digits_files, digits_datasets


def test_components_command_runs_as_the_pods_user(images):
    """The regression a real run found: an ENTRYPOINT swallowed the component's `sh -c ...`."""
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", images["cpu"], "sh", "-c",
                          "id -u && autocompress --version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000", "autocompress", "0.1.0"]
    gpu = subprocess.run(["docker", "run", "--rm", "--network", "none", images["gpu"], "sh", "-c",
                          "id -u && autocompress --version"], capture_output=True, text=True, timeout=120)
    assert gpu.returncode == 0 and gpu.stdout.split() == ["1000", "autocompress", "0.1.0"], gpu.stderr


def test_security_options_hold_inside_the_container(images, tmp_path, readable):
    """The runner `--runner docker` uses: non-root, read-only root fs, writable /tmp, no new
    privileges, no capabilities, no network for a local-only run; the inputs read-only."""
    import docker

    digits_files, data = readable
    cfg = _config(tmp_path, "ptq_hpo", digits_files.model_dir, data)
    rc = local_run._materialize_builtin(local_run.run_config(cfg))
    pipeline = local_run.pipelines_module().by_name("ptq_hpo_cpu")
    name, args = local_run.pipeline_arguments(rc, publish_uri="")
    runner, _ = local_run._docker_runner(rc, pipeline, args, tmp_path / "root", "", echo=lambda line: None)
    opts = runner.container_run_args
    assert opts["network_mode"] == "none"
    probe = ("id -u; touch /probe 2>&1 || true; touch /tmp/probe && echo tmp-ok; "
             f"touch {digits_files.model_dir}/probe 2>&1 || true; grep -E 'CapEff|NoNewPrivs' /proc/self/status")
    client = docker.from_env()
    try:
        out = client.containers.run(images["cpu"], ["sh", "-c", probe], remove=True, **opts).decode()
    finally:
        client.close()
    lines = out.splitlines()
    assert lines[0] == str(1000 if os.geteuid() == 0 else os.getuid())
    assert "Read-only file system" in lines[1] and lines[2] == "tmp-ok" and "Read-only file system" in lines[3]
    status = dict(line.split(":\t") for line in lines[4:])
    assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1"


def test_inputs_under_roots_home_are_reachable(images, tmp_path):
    """As root, the demo's builtin:// files live under /root, which is 0700 in the image: the runner
    opens the demo cache up and lays a traversable folder over /root, still read-only for uid 1000."""
    import docker

    rc = local_run._materialize_builtin(local_run.run_config(REPO / "examples" / "digits" / "ptq_hpo.yaml"))
    if os.geteuid() != 0 or not rc.Model.model_dir.startswith("/root/"):
        pytest.skip("the builtin demo files are not under /root here")
    pipeline = local_run.pipelines_module().by_name("ptq_hpo_cpu")
    _, args = local_run.pipeline_arguments(rc, publish_uri="")
    runner, _ = local_run._docker_runner(rc, pipeline, args, tmp_path / "root", "", echo=lambda line: None)
    client = docker.from_env()
    try:
        out = client.containers.run(images["cpu"], ["sh", "-c", f"ls {rc.Model.model_dir}; touch /root/x 2>&1 || true"],
                                    remove=True, **runner.container_run_args).decode()
    finally:
        client.close()
    assert "inference.pdmodel" in out and "Permission denied" in out


@pytest.mark.parametrize("combination", list(STRATEGIES))
def test_pipeline_in_containers(images, tmp_path, combination, readable, hashes):
    digits_files, data = readable
    before = hashes(digits_files.model_dir)
    lines = []
    run = local_run.run_local(_config(tmp_path, combination, digits_files.model_dir, data), echo=lines.append,
                              runner="docker")
    s = run.summary
    assert s["strategy"] == combination and run.pipeline == f"{combination}_cpu"
    # the accuracy budget (Eval.max_drop 0.5), as under the subprocess runner; target_met also weighs
    # the measured latency, which on a shared CPU is noise
    assert s["metric_drop"] <= 0.5 and s["metric"] >= s["baseline_metric"] - 0.5
    assert s["model_dir"] == str(run.model_dir) and (run.model_dir / digits_files.model_filename).exists()
    assert (run.save_dir / "report.md").read_text().startswith(f"# autocompress report: {combination}")
    assert any("in containers" in line for line in lines) and any(line.startswith("  ok load-model") for line in lines)
    assert hashes(digits_files.model_dir) == before
    (run.save_dir / "seconds.json").write_text(json.dumps({"pipeline": s["pipeline"], "seconds": s["seconds"]}))


def test_pipeline_in_containers_reads_from_and_publishes_to_s3(images, tmp_path, monkeypatch, readable, capfd):
    """nanio on the host's loopback: the containers share the host's network for it."""
    pytest.importorskip("nanio", reason="the S3 test server is the nanio package")
    from _s3server import nanio_server, s3_env

    from autocompress import storage

    digits_files, data = readable
    with nanio_server(tmp_path / "s3") as endpoint:
        env = {**s3_env(endpoint), "AUTOCOMPRESS_CACHE": str(tmp_path / "cache")}
        for key in env:
            monkeypatch.setenv(key, env[key])
        store = storage.ObjectStore(scheme="s3")
        store.client.make_bucket("containers")
        uris = {"model": "s3://containers/in/model", "train": "s3://containers/in/train"}
        for local, uri in ((digits_files.model_dir, uris["model"]), (data / "train", uris["train"])):
            store.upload(local, uri)
        cfg = _config(tmp_path, "ptq_hpo", digits_files.model_dir, data, model_uri=uris["model"], train=uris["train"])
        run = local_run.run_local(cfg, publish_uri="s3://containers/out", echo=lambda line: None, runner="docker")
        assert run.summary["model_dir"] == "s3://containers/out/model" and run.summary["metric_drop"] <= 0.5
        published = sorted(store.list("s3://containers/out"))
        assert "model/inference.pdiparams" in published and "summary.json" in published
        assert (run.model_dir / "inference.pdiparams").exists()
        _assert_no_secret(tmp_path, exclude=tmp_path / "s3", printed=capfd.readouterr())


def test_user_error_in_a_container_is_typed_and_not_retried(images, tmp_path, monkeypatch, readable):
    """A stage's user error crosses the container boundary: its exit code fails the task (kfp's own
    handler may count a quick exit as success), its mark stops the retries, its message is typed."""
    import time

    import autocompress.preflight
    from autocompress.errors import ModelError

    monkeypatch.setattr(autocompress.preflight, "preflight", lambda rc, save: None)
    digits_files, data = readable
    cfg = _config(tmp_path, "distill", digits_files.model_dir, data, model_uri=str(tmp_path / "no-model"))
    start = time.perf_counter()
    with pytest.raises(ModelError, match="stage load-model: model_dir .*no-model does not exist"):
        local_run.run_local(cfg, echo=lambda line: None, runner="docker")
    assert time.perf_counter() - start < 25, "the user error was retried with backoff"
    assert not subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={images['cpu']}"], capture_output=True,
                              text=True).stdout.strip(), "a task's container was left behind"


def test_missing_image_names_the_build_command(tmp_path, readable, monkeypatch):
    """Without the image, the run stops before any stage and says how to build it."""
    import docker

    try:
        docker.from_env().ping()
    except Exception:  # noqa: BLE001
        pytest.skip("no Docker daemon")
    from autocompress.kfp import KFPError

    monkeypatch.setattr(local_run, "_has_image", lambda client, image: False)
    digits_files, data = readable
    with pytest.raises(KFPError, match=r"is not on this Docker daemon: build it with `python images/build.py`"):
        local_run.run_local(_config(tmp_path, "distill", digits_files.model_dir, data), echo=lambda line: None,
                            runner="docker")
