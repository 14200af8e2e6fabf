"""Every strategy pipeline end to end with kfp.local.SubprocessRunner on the digits CNN (real
scikit-learn digits), and a run that reads the model and data from a real S3 server (nanio on
127.0.0.1) and publishes the result back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")

import autocompress.kfp as kfp_layer  # noqa: E402
from autocompress.kfp import local_run  # noqa: E402
from autocompress.errors import ConfigError  # noqa: E402

TRAIN = {"train_iter": 4, "eval_iter": 2, "learning_rate": 0.001, "optimizer": "Momentum"}
STRATEGIES = {
    "ptq_hpo": {"QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
                "HyperParameterOptimizationConfig": {"ptq_algo": ["avg", "hist"], "bias_correct": [False],
                                                     "hist_percent": [0.999], "batch_size": [16],
                                                     "batch_num": [4], "max_quant_count": 2}},
    "qat_distill": {"QuantizationConfig": {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]},
                    "DistillationConfig": {}, "TrainConfig": TRAIN},
    # criterion 'activation' needs the training batches in the prune stage (as in-process runs have them)
    "prune_distill": {"PruneConfig": {"pruned_ratio": 0.25, "criterion": "activation"}, "DistillationConfig": {},
                      "TrainConfig": TRAIN},
    "sparse_distill": {"UnstructurePruneConfig": {"prune_ratio": 0.5}, "DistillationConfig": {},
                       "TrainConfig": TRAIN},
    "distill": {"DistillationConfig": {}, "TrainConfig": TRAIN},
    "multi_teacher_distill": {"MultiTeacherDistillationConfig": {"teacher_model_dir": ["TEACHER", "TEACHER"],
                                                                 "distill_loss": ["l2_loss", "l2_loss"],
                                                                 "distill_lambda": [1.0, 0.5]},
                              "TrainConfig": TRAIN},
}


@pytest.fixture(scope="module")
def data(digits_datasets):
    return digits_datasets


def _config(tmp_path, combination, model_dir, data, model_uri=None, train=None, evald=None, test=None):
    strategy = json.loads(json.dumps(STRATEGIES[combination]).replace("TEACHER", str(model_dir)))
    cfg = {"Model": {"model_dir": model_uri or str(model_dir)},
           "Data": {"train": train or str(data / "train"), "eval": evald or str(data / "eval"), "batch_size": 32,
                    **({"test": test} if test else {})},
           "Eval": {"metric": "top1", "max_drop": 0.5}, "Device": "cpu", "SaveDir": str(tmp_path / "out"),
           **strategy}
    path = tmp_path / f"{combination}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("combination", list(STRATEGIES))
def test_local_pipeline_end_to_end(tmp_path, combination, digits_files, data, hashes):
    before = hashes(digits_files.model_dir)
    lines = []
    run = local_run.run_local(_config(tmp_path, combination, digits_files.model_dir, data), echo=lines.append)
    s = run.summary
    assert s["strategy"] == combination and run.pipeline == f"{combination}_cpu"
    for key in ("baseline_metric", "metric", "metric_drop", "target_met", "size_bytes_before", "size_bytes_after",
                "latency_ms_before", "latency_ms_after", "params_before", "params_after", "flops_before",
                "flops_after", "seconds", "peak_rss_bytes"):
        assert key in s, key
    assert 0.0 <= s["metric"] <= 1.0 and s["baseline_metric"] > 0.9
    assert (run.save_dir / "report.md").read_text().startswith(f"# autocompress report: {combination}")
    assert (run.model_dir / digits_files.model_filename).exists()
    assert (run.model_dir / "MODEL_CARD.md").exists()
    stages = [r["stage"] for r in s["stages"]]
    assert stages[0] == "load_model" and stages[-1] == "evaluate"
    if combination == "ptq_hpo":
        assert s["precision"] == "int8" and s["size_bytes_after"] < s["size_bytes_before"] and len(s["trials"]) == 2
        assert "calibrate" in stages
    if combination == "prune_distill":
        assert s["params_after"] < s["params_before"] and "prune" in stages
    if combination == "qat_distill":
        assert s["precision"] == "int8"
    # progress: one line per stage, then where the results are
    assert any(line.startswith("  ok load-model") for line in lines)
    assert any(line.startswith("summary: ") for line in lines)
    assert hashes(digits_files.model_dir) == before  # the input model is never modified
    assert Path(s["pipeline_log"]).exists()


def test_missing_local_input_fails_before_the_pipeline_starts(tmp_path, digits_files, data):
    cfg = _config(tmp_path, "distill", digits_files.model_dir, data, evald=str(tmp_path / "missing-eval"))
    with pytest.raises(ConfigError, match="Data.eval: .*missing-eval does not exist"):
        local_run.run_local(cfg, echo=lambda line: None)
    assert not (tmp_path / "out" / "pipeline-root").exists()


def test_wrong_feed_is_refused_before_the_pipeline_starts(tmp_path, digits_files, data, digits_data):
    """Calibration data whose feed is not the model's input: the pre-flight binds the data to the
    model, as the API does, and names the user's folder."""
    from autocompress.data.dataset import write_dataset
    from autocompress.errors import DataError

    x, _ = digits_data["calib"]
    write_dataset(tmp_path / "wrong-feed", {"image": x[:64]})
    cfg = _config(tmp_path, "ptq_hpo", digits_files.model_dir, data, train=str(tmp_path / "wrong-feed"))
    with pytest.raises(DataError, match=r"provides the feeds \['image'\] but the model expects \['x'\]") as info:
        local_run.run_local(cfg, echo=lambda line: None)
    assert str(tmp_path / "wrong-feed") in str(info.value)
    assert not (tmp_path / "out").exists()


def test_user_error_in_a_stage_is_not_retried(tmp_path, monkeypatch, digits_files, data):
    """A user error that reaches a retried stage (load-model: 2 retries, 30 s + 60 s backoff) fails at
    once with the stage's own typed error and no log tail; without the pre-flight to stop it first."""
    import time

    import autocompress.preflight
    from autocompress.errors import ModelError

    monkeypatch.setattr(autocompress.preflight, "preflight", lambda rc, save: None)
    cfg = _config(tmp_path, "ptq_hpo", digits_files.model_dir, data, model_uri=str(tmp_path / "no-model"))
    start = time.perf_counter()
    with pytest.raises(ModelError, match="stage load-model: model_dir .*no-model does not exist") as info:
        local_run.run_local(cfg, echo=lambda line: None)
    assert time.perf_counter() - start < 25, "the user error was retried with backoff"
    assert "end of the log" not in str(info.value) and "Traceback" not in str(info.value)
    log = next((tmp_path / "out" / "pipeline-root").glob("*.log")).read_text()
    assert log.count("Executing task 'load-model'") == 1 and "Traceback" not in log


def test_transient_errors_keep_their_retries(monkeypatch):
    """Only deterministic user errors skip retries: an object store that stayed unreachable through
    the in-process retries, or a bug, is still retried by the pipeline's policy."""
    from autocompress.errors import DataError, StorageError, TransientStorageError, is_user_error
    from autocompress.kfp import adapters

    assert is_user_error(DataError("x")) and is_user_error(StorageError("no such bucket"))
    assert not is_user_error(TransientStorageError("timed out")) and not is_user_error(RuntimeError("bug"))
    monkeypatch.setattr("sys.argv", ["executor_main", "--executor_input", "{}"])

    def flaky(*args, **kwargs):
        raise TransientStorageError("downloading s3://b/k failed after 4 attempts")

    with pytest.raises(TransientStorageError):  # propagates: the component fails and kfp retries it
        adapters._user_errors_exit(flaky)()
    with pytest.raises(SystemExit):  # a user error: the mark, the exit code, no traceback
        adapters._user_errors_exit(lambda: (_ for _ in ()).throw(DataError("bad")))()


def test_pipeline_reads_from_and_publishes_to_s3(tmp_path, monkeypatch, digits_files, data, capfd):
    pytest.importorskip("nanio", reason="the S3 test server is the nanio package")
    from _s3server import SECRET_KEY, nanio_server, s3_env

    from autocompress import storage

    with nanio_server(tmp_path / "s3") as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(tmp_path / "cache"))
        store = storage.ObjectStore(scheme="s3")
        store.client.make_bucket("mlbucket")
        store.upload(digits_files.model_dir, "s3://mlbucket/models/digits")
        store.upload(data / "train", "s3://mlbucket/data/train")
        store.upload(data / "eval", "s3://mlbucket/data/eval")
        cfg = _config(tmp_path, "ptq_hpo", digits_files.model_dir, data, model_uri="s3://mlbucket/models/digits",
                      train="s3://mlbucket/data/train", evald="minio://mlbucket/data/eval")
        run = local_run.run_local(cfg, publish_uri="s3://mlbucket/published/run1", echo=lambda line: None)
        assert run.summary["model_dir"] == "s3://mlbucket/published/run1/model"
        published = sorted(store.list("s3://mlbucket/published/run1"))
        assert published == ["model/MODEL_CARD.md", "model/autocompress.json", "model/inference.pdiparams",
                             "model/inference.pdmodel", "report.md", "summary.json", "trials.json"]
        stat = store.client.stat_object("mlbucket", "published/run1/model/inference.pdiparams")
        assert storage._meta(stat.metadata, "sha256") == __import__("autocompress.model_io", fromlist=["x"]).sha256_file(
            run.model_dir / "inference.pdiparams")
        assert json.loads((run.save_dir / "summary.json").read_text())["input_model"] == "s3://mlbucket/models/digits"
        # the credentials were in this process's environment all along: none of it may be written anywhere
        _assert_no_secret(tmp_path, exclude=tmp_path / "s3", printed=capfd.readouterr())
        with pytest.raises(Exception) as info:  # a failing transfer names the problem, not the key
            store.upload(data / "eval", "s3://no-such-bucket/data/eval")
        assert SECRET_KEY not in str(info.value)


def _assert_no_secret(root: Path, exclude: Path, printed) -> None:
    from _s3server import SECRET_KEY

    leaks = [str(p) for p in root.rglob("*") if p.is_file() and exclude not in p.parents
             and SECRET_KEY.encode() in p.read_bytes()]
    assert not leaks, f"the secret key was written to {leaks}"
    assert SECRET_KEY not in printed.out and SECRET_KEY not in printed.err
    compiled = Path(__file__).resolve().parents[1] / "pipelines" / "compiled"
    assert not any(SECRET_KEY in f.read_text() for f in compiled.glob("*.yaml"))


def test_pipeline_reports_on_the_test_split(tmp_path, digits_files, data, digits_data):
    from autocompress.data.dataset import write_dataset

    x, y = digits_data["eval"]
    write_dataset(tmp_path / "test", {"x": x[200:400]}, labels=y[200:400])
    cfg = _config(tmp_path, "ptq_hpo", digits_files.model_dir, data, test=str(tmp_path / "test"))
    s = local_run.run_local(cfg, echo=lambda line: None).summary
    assert s["metric_split"] == "test" and not any("selection used" in w for w in s["warnings"])
    # the selection scored the eval split; the report the test split
    assert s["trials"] and all(t["metric"] is not None for t in s["trials"])


def test_parallel_tasks_printing_at_once_leave_a_readable_log(tmp_path):
    """kfp's local runner runs parallel tasks (the auto pipeline's families) in threads that print to
    one stream: CI read a log with a split multi-byte character. Every line must arrive whole, in
    UTF-8, and a partial line stays with the thread that printed it."""
    import threading

    log = tmp_path / "run.log"
    echoed = []
    lines_per_thread, threads = 400, 8
    with local_run._StageProgress(log, echoed.append) as stream:
        def task(n):
            for i in range(lines_per_thread):
                # each line in three pieces, so other threads' writes land in between
                stream.write(f"task {n} · line {i} ")
                stream.write("·" * 50)
                stream.write(" end\n")

        workers = [threading.Thread(target=task, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == lines_per_thread * threads
    assert all(line.startswith("task ") and line.endswith("·" * 50 + " end") for line in lines)
    for n in range(threads):
        assert [ln for ln in lines if ln.startswith(f"task {n} ")] == \
            [f"task {n} · line {i} " + "·" * 50 + " end" for i in range(lines_per_thread)]
