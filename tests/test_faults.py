"""Faults (issue 11 item 2): a run SIGKILLed during calibration, the PTQ search, training or export
leaves the previous complete output intact, and a rerun resumes (the search from its trial log,
training from its checkpoint) and ends with the result of an uninterrupted run.

The kill is injected, not timed: the child process wraps one engine function so that it SIGKILLs
itself at a chosen call (`_killed_run`), so each phase is hit exactly, on 2 shared cores too.
The figures (phase, calls before the kill, what the rerun reused, resumed vs uninterrupted) are
collected in FIGURES and written to $AUTOCOMPRESS_FAULT_FIGURES when set (RELIABILITY.md quotes them)."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autocompress.runner import run_config
from conftest import tree_hashes

FIGURES: list[dict] = []
HPO = {"ptq_algo": ["avg", "abs_max", "KL", "mse"], "bias_correct": [False], "batch_size": [16], "batch_num": [1, 4],
       "search_algo": "grid", "max_quant_count": 8}
QUANT = {"quantize_op_types": ["conv2d", "matmul_v2", "mul"]}
TRAIN = {"train_iter": 60, "eval_iter": 20, "logging_iter": 20, "learning_rate": 0.002, "optimizer": "Momentum"}

KILLER = """
import inspect, json, os, signal, sys, time
from importlib import import_module
from autocompress.runner import run_config
owner = import_module({module!r})
*path, name = {attr!r}.split(".")
for part in path:
    owner = getattr(owner, part)
original, calls = getattr(owner, name), [0]
def wrapper(*args, **kwargs):
    if {within!r} and not any(f.filename.endswith({within!r}) for f in inspect.stack()):
        return original(*args, **kwargs)
    calls[0] += 1
    if {when!r} == "before" and calls[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    out = original(*args, **kwargs)
    if {when!r} == "after" and calls[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(owner, name, wrapper)
run_config({config!r}, progress=False)
"""

# phase -> (module, attribute, call number, before/after the call, only when called from this file)
KILL_POINTS = {
    "calibration": ("autocompress.quant.calibration", "_ActivationRunner.__call__", 3, "before", ""),
    "search": ("autocompress.quant.search", "TrialRunner.run", 5, "before", ""),
    # export: the model folder copied into its temporary sibling, not yet renamed into place
    "export": ("autocompress.stages.artifact", "copy_model", 1, "after", "stages/export.py"),
    # export: model/ in place, summary.json not yet written
    "export-summary": ("autocompress.stages.export", "model_card", 1, "before", ""),
    "training": ("autocompress.train.checkpoint", "save", 3, "after", ""),  # step 20 of 60
}


def _config(root: Path, data: Path, model: Path, save: Path, strategy: dict) -> Path:
    cfg = {"Model": {"model_dir": str(model)},
           "Data": {"train": str(data / "train"), "eval": str(data / "eval"), "batch_size": 32},
           "Eval": {"metric": "top1", "max_drop": 0.5}, "Device": "cpu", "SaveDir": str(save), **strategy}
    path = root / f"{save.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _killed_run(config: Path, phase: str) -> float:
    module, attr, n, when, within = KILL_POINTS[phase]
    code = KILLER.format(module=module, attr=attr, n=n, when=when, within=within, config=str(config))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GLOG_minloglevel="2"), cwd=Path(__file__).parent)
    assert proc.returncode == -signal.SIGKILL, f"not killed in {phase} (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return time.perf_counter() - start


def _deliverable(save: Path) -> dict:
    """The files a consumer reads (not the work folder, checkpoints or hidden temporary siblings)."""
    return {k: v for k, v in tree_hashes(save).items() if not k.startswith((".", "checkpoints"))}


def _stray(save: Path) -> list[str]:
    """Temporary siblings the atomic writers left behind (outside the work folder)."""
    return sorted(str(p.relative_to(save)) for p in save.rglob(".*") if not str(p.relative_to(save)).startswith(".work"))


def _outcome(save: Path) -> dict:
    summary = json.loads((save / "summary.json").read_text())
    meta = json.loads((save / "model" / "autocompress.json").read_text())
    return {"metric": summary["metric"], "config": meta.get("ptq_config"), "model_sha256": summary["model_sha256"],
            "files": {k: v for k, v in tree_hashes(save / "model").items() if k.endswith((".pdmodel", ".pdiparams"))}}


def _check_complete_model(folder: Path) -> None:
    """A model folder is complete: every file the metadata lists matches its recorded sha256."""
    from autocompress.stages.artifact import ModelArtifact

    ModelArtifact.load(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits_files, digits_datasets):
    import shutil

    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(digits_files.model_dir, root / "model")
    return root, digits_datasets, root / "model"


@pytest.fixture(scope="module")
def ptq_reference(inputs):
    """The uninterrupted search, and a previous complete output of another config (one trial)."""
    root, data, model = inputs
    ref = root / "reference"
    run_config(_config(root, data, model, ref, {"QuantizationConfig": QUANT, "HyperParameterOptimizationConfig": HPO}),
               progress=False)
    previous = root / "previous"
    run_config(_config(root, data, model, previous, {"QuantizationConfig": QUANT, "HyperParameterOptimizationConfig":
                                                     {**HPO, "ptq_algo": ["avg"], "max_quant_count": 1}}),
               progress=False)
    return _outcome(ref), previous, json.loads((ref / "trials.json").read_text())


def _over_previous(inputs, ptq_reference, tmp_path):
    """A save dir holding the previous complete output, its deliverable's hashes, the search's config."""
    import shutil

    _, data, model = inputs
    save = tmp_path / "out"
    shutil.copytree(ptq_reference[1], save)
    config = _config(tmp_path, data, model, save, {"QuantizationConfig": QUANT, "HyperParameterOptimizationConfig": HPO})
    return save, _deliverable(save), config


@pytest.mark.parametrize("phase", ["calibration", "search", "export", "export-summary"])
def test_killed_ptq_run_keeps_the_previous_output_and_a_rerun_matches(inputs, ptq_reference, phase, tmp_path):
    reference, _, ref_trials = ptq_reference
    save, before, config = _over_previous(inputs, ptq_reference, tmp_path)

    killed_after = _killed_run(config, phase)
    after = _deliverable(save)
    if phase in ("calibration", "search", "export"):
        assert after == before  # nothing of the previous deliverable touched
    else:  # export-summary: model/ replaced as a whole, summary.json still the previous one
        assert {k: v for k, v in after.items() if not k.startswith("model/")} == \
            {k: v for k, v in before.items() if not k.startswith("model/")}
    _check_complete_model(save / "model")
    log = save / ".work" / "search" / "trials.json"
    logged = json.loads(log.read_text())["trials"] if log.exists() else []
    # the search's trial log: none before the search, the finished trials in it, all of them after it
    assert len(logged) == {"calibration": 0, "search": KILL_POINTS["search"][2] - 1}.get(phase, HPO["max_quant_count"])

    start = time.perf_counter()
    rerun = run_config(config, progress=False)
    rerun_seconds = time.perf_counter() - start
    reused = sum(bool(t.get("reused")) for t in rerun["trials"])
    assert reused == len(logged)
    assert _outcome(save) == reference  # same chosen config, metric and model files as uninterrupted
    assert [t["config"] for t in rerun["trials"]] == [t["config"] for t in ref_trials]
    assert not (save / ".work").exists() and _stray(save) == []
    FIGURES.append({"phase": phase, "killed_after_s": round(killed_after, 1), "rerun_s": round(rerun_seconds, 1),
                    "trials_reused": reused, "trials": len(rerun["trials"]), "same_config": True,
                    "same_metric": True, "same_model_sha256": True, "metric": reference["metric"]})


def test_killed_training_run_resumes_and_matches_an_uninterrupted_one(inputs, tmp_path):
    """Training resumed from its checkpoint against the same training run uninterrupted."""
    import shutil

    root, data, model = inputs
    strategy = {"DistillationConfig": {}, "TrainConfig": TRAIN}
    ref = tmp_path / "reference"
    reference = run_config(_config(tmp_path, data, model, ref, strategy), progress=False)
    previous = tmp_path / "previous"
    run_config(_config(tmp_path, data, model, previous, {**strategy, "TrainConfig": {**TRAIN, "train_iter": 20}}),
               progress=False)
    save = tmp_path / "out"
    shutil.copytree(previous, save)
    shutil.rmtree(save / "checkpoints")  # the previous run's checkpoints are of another run: start clean
    before = _deliverable(save)
    config = _config(tmp_path, data, model, save, strategy)

    _killed_run(config, "training")
    assert _deliverable(save) == before
    state = json.loads((save / "checkpoints" / "last" / "state.json").read_text())
    killed_at = state["step"]
    assert 0 < killed_at < TRAIN["train_iter"]

    rerun = run_config(config, progress=False)
    ref_files = _outcome(ref)["files"]
    got = _outcome(save)
    curve = [(c["step"], round(c.get("metric", 0), 6)) for c in rerun.get("curve") or [] if "metric" in c]
    ref_curve = [(c["step"], round(c.get("metric", 0), 6)) for c in reference.get("curve") or [] if "metric" in c]
    FIGURES.append({"phase": "training", "killed_at_step": killed_at, "steps": TRAIN["train_iter"],
                    "metric": rerun["metric"], "reference_metric": reference["metric"],
                    "same_model_sha256": got["files"] == ref_files, "curve": curve, "reference_curve": ref_curve})
    assert rerun["metric"] == pytest.approx(reference["metric"], abs=0.01)
    assert got["files"] == ref_files
    assert _stray(save) == []


def teardown_module(module):
    out = os.environ.get("AUTOCOMPRESS_FAULT_FIGURES")
    if out and FIGURES:
        Path(out).write_text(json.dumps(copy.deepcopy(FIGURES), indent=2) + "\n")


QUANTIZE_ONCE = """
import hashlib, sys
from autocompress.config import QuantizationConfig
from autocompress.model_io import load_model, locate_model
from autocompress.paddle_env import legacy_ir
from autocompress.quant.apply import QuantTemplate, save_quantized
from autocompress.quant.calibration import collect_stats
from autocompress.quant.targets import find_targets
from autocompress.quant.thresholds import compute_thresholds
import numpy as np
padding = [object() for _ in range({padding})]   # other allocations before the graph is built
with legacy_ir():
    model = load_model(locate_model({model!r}))
    targets = find_targets(model.program, QuantizationConfig(quantize_op_types=["conv2d", "matmul_v2", "mul"]))
    x = np.asarray(np.load({data!r})["x"][:32], dtype="float32")
    stats = collect_stats(model, [{{"x": x[:16]}}, {{"x": x[16:]}}], targets, chunk_size=16)
    q = QuantTemplate(model, targets, 8).instantiate(compute_thresholds(stats, "avg", 32, 0.999, 8), False)
    def nest(k):  # another call stack for every process (Paddle records it in the saved ops)
        return save_quantized(q, model, {out!r}) if k == 0 else nest(k - 1)
    print(hashlib.sha256(nest({padding} % 7).model_path.read_bytes()).hexdigest())
"""


def test_quantized_program_is_the_same_in_every_process(digits_files, digits_datasets, tmp_path):
    """Paddle's passes iterate sets of address-hashed nodes (fixed by program.legacy.quantize.stable_node_order)
    and its save records the caller's stack in the feed / fetch ops (model_io._strip_callstacks): the
    int8 .pdmodel differed from process to process (4 of 4 differed), so no rerun could match."""
    shard = next((digits_datasets / "train").glob("*.npz"))
    digests = set()
    for i, padding in enumerate((0, 5001, 77777)):
        code = QUANTIZE_ONCE.format(padding=padding, model=str(digits_files.model_dir), data=str(shard),
                                    out=str(tmp_path / f"q{i}"))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, GLOG_minloglevel="2"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.add(proc.stdout.split()[-1])
    assert len(digests) == 1


# ---- a full disk ---------------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_in_each_atomic_writer_is_a_clean_error(tmp_path, monkeypatch):
    """ENOSPC injected into each atomic writer: a DiskFullError naming the path and the fix, the
    previous version in place, no temporary sibling left."""
    import numpy as np

    from autocompress import atomic
    from autocompress.errors import DiskFullError
    from autocompress.quant.calibration import CalibrationStats

    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("previous")
    with pytest.raises(DiskFullError, match=r"no space left on the device writing .*model.*save dir"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "half").write_text("x")
            _enospc()
    assert (target / "old").read_text() == "previous" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    summary = tmp_path / "summary.json"
    summary.write_text("{}")

    class FullFile:
        def __init__(self, fd, *a, **k):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        write = staticmethod(_enospc)

    monkeypatch.setattr(atomic.os, "fdopen", FullFile)
    with pytest.raises(DiskFullError, match="summary.json"):
        atomic.write_json_atomic(summary, {"metric": 1.0})
    monkeypatch.undo()
    assert summary.read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["model", "summary.json"]

    stats = CalibrationStats(["a"], np.ones(1), np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1, 4)), np.ones(1), {})
    monkeypatch.setattr(np, "savez_compressed", _enospc)
    with pytest.raises(DiskFullError, match="stats.npz"):
        stats.save(tmp_path / "stats.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "summary.json"]


def test_stale_temporaries_of_a_killed_writer_are_swept(tmp_path):
    from autocompress import atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".model.tmp-{dead}-abc").mkdir()
    (tmp_path / f".model.old-{dead}").mkdir()
    (tmp_path / f".summary.json.tmp-{dead}-x").write_text("half")
    mine = tmp_path / f".model.tmp-{os.getppid()}-live"  # a live process's: kept
    mine.mkdir()
    with atomic.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "f").write_text("new")
    atomic.write_text_atomic(tmp_path / "summary.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", "summary.json", mine.name])


def _tmpfs(path: Path, size: str, remount: bool = False) -> bool:
    path.mkdir(exist_ok=True)
    opts = f"remount,size={size}" if remount else f"size={size}"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_really_full_disk_fails_cleanly_and_a_rerun_resumes(inputs, tmp_path):
    """SaveDir on a 150 KiB tmpfs (the int8 model does not fit next to the search's working copy):
    exit 2, the message names the problem and the fix, no traceback, nothing half-written; with room
    made, the rerun reuses the finished trial. Needs root (mount); skipped elsewhere."""
    root, data, model = inputs
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _tmpfs(disk, "150k"):
        pytest.skip("mounting a small tmpfs needs root; the injected-ENOSPC test covers the writers")
    try:
        save = disk / "out"
        hpo = {**HPO, "ptq_algo": ["avg"], "batch_num": [2], "max_quant_count": 1}
        config = _config(tmp_path, data, model, save, {"QuantizationConfig": QUANT,
                                                       "HyperParameterOptimizationConfig": hpo})
        cmd = [sys.executable, "-m", "autocompress.cli", "run", "--in-process", str(config)]
        env = dict(os.environ, GLOG_minloglevel="2")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "no space left on the device writing" in proc.stderr and "larger disk" in proc.stderr
        assert "Traceback" not in proc.stderr
        for meta in save.rglob("autocompress.json"):  # every model folder there is complete
            _check_complete_model(meta.parent)
        assert [p for p in save.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name] == []
        assert not (save / "summary.json").exists()

        assert _tmpfs(disk, "600k", remount=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        trials = json.loads((save / "trials.json").read_text())
        assert [t["reused"] for t in trials] == [True]
        _check_complete_model(save / "model")
        FIGURES.append({"phase": "full disk (150 KiB tmpfs)", "exit": 2, "rerun_after_space": "ok",
                        "trials_reused": 1})
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---- the object store going away mid-transfer ----------------------------------------------------
@pytest.fixture
def going_away(tmp_path):
    """A nanio server that a CuttingProxy stops mid-transfer (`store.server.stop()`), restartable on
    the same port and data (`store.server.start()`)."""
    pytest.importorskip("minio", reason="object-store support needs the minio package")
    pytest.importorskip("nanio", reason="the S3 test server is the nanio package (pip install nanio)")
    from _s3server import free_port, nanio_server

    class Server:
        def __init__(self):
            self.port, self.data, self.ctx = free_port(), tmp_path / "nanio-data", None
            self.starts = 0

        def start(self):
            self.ctx = nanio_server(self.data, self.port)
            self.ctx.__enter__()
            self.starts += 1

        def stop(self):
            if self.ctx is not None:
                ctx, self.ctx = self.ctx, None
                ctx.__exit__(None, None, None)

    server = Server()
    server.start()
    yield server
    server.stop()


def _store(endpoint: str, **kw):
    from _s3server import ACCESS_KEY, SECRET_KEY

    from autocompress import storage

    settings = storage.StorageSettings(endpoint=endpoint.split("://", 1)[1], secure=False, access_key=ACCESS_KEY,
                                       secret_key=SECRET_KEY)
    return storage.ObjectStore(settings, **kw)


def _blob(path: Path, size: int) -> Path:
    import numpy as np

    path.write_bytes(np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def test_store_gone_mid_download_and_back_during_the_backoff(going_away, tmp_path):
    from _s3server import CuttingProxy

    src = _blob(tmp_path / "w.bin", 1_500_000)
    direct = _store(f"http://127.0.0.1:{going_away.port}")
    direct.client.make_bucket("models")
    direct.upload(src, "s3://models/w.bin")
    sleeps = []

    def sleep(delay):  # the backoff: the server comes back during the second wait
        sleeps.append(delay)
        if len(sleeps) == 2:
            going_away.start()

    proxy = CuttingProxy(going_away.port, cut_after=200_000, direction="down", on_cut=going_away.stop)
    try:
        out = _store(proxy.endpoint, sleep=sleep).download("s3://models/w.bin", tmp_path / "w.out")
    finally:
        proxy.close()
    assert proxy.cut_count == 1 and going_away.starts == 2
    assert out.read_bytes() == src.read_bytes()
    assert len(sleeps) >= 2 and sleeps[1] > sleeps[0]  # exponential backoff
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file
    FIGURES.append({"phase": "object store stopped mid-download, back after 2 backoffs", "attempts": len(sleeps) + 1,
                    "backoff_s": [round(s, 2) for s in sleeps], "result": "sha256 verified"})


@pytest.mark.parametrize("direction", ["down", "up"])
def test_store_gone_for_good_is_reported_after_the_retries(going_away, tmp_path, direction):
    from _s3server import SECRET_KEY, CuttingProxy

    from autocompress.errors import TransientStorageError

    src = _blob(tmp_path / "w.bin", 1_500_000)
    direct = _store(f"http://127.0.0.1:{going_away.port}")
    direct.client.make_bucket("models")
    if direction == "down":
        direct.upload(src, "s3://models/w.bin")
    sleeps = []
    proxy = CuttingProxy(going_away.port, cut_after=200_000, direction=direction, on_cut=going_away.stop)
    store = _store(proxy.endpoint, sleep=sleeps.append)
    try:
        with pytest.raises(TransientStorageError) as info:
            if direction == "down":
                store.download("s3://models/w.bin", tmp_path / "w.out")
            else:
                store.upload(src, "s3://models/up/w.bin")
    finally:
        proxy.close()
    message = str(info.value)
    assert proxy.cut_count == 1
    assert f"failed after {store.retries + 1} attempts" in message and "s3://models/" in message
    assert f"127.0.0.1:{proxy.port}" in message and "Check the endpoint and network, then run again" in message
    assert SECRET_KEY not in message
    assert len(sleeps) == store.retries and all(b > a for a, b in zip(sleeps, sleeps[1:]))
    assert not (tmp_path / "w.out").exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    FIGURES.append({"phase": f"object store stopped mid-{'download' if direction == 'down' else 'upload'}, gone",
                    "attempts": store.retries + 1, "backoff_s": [round(s, 2) for s in sleeps],
                    "result": "TransientStorageError"})


def test_a_trial_log_of_another_search_is_not_reused(digits_files, digits_data, tmp_path):
    """Interrupted after 2 trials: the same search reuses them (and evaluates only the rest); another
    config or other eval data (another baseline) reuses nothing."""
    from test_train_support import top1_evaluator

    from autocompress.quant.ptq_search import run_ptq_search

    x, y = digits_data["eval"]
    calib = [{"x": digits_data["calib"][0][i:i + 16]} for i in range(0, 64, 16)]
    hpo = {**HPO, "max_quant_count": 5}
    calls = {"n": 0}

    def evaluate(stop_at):
        inner = top1_evaluator(x[:200], y[:200])

        def call(predict, limit=None):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise KeyboardInterrupt
            return inner(predict, limit)
        return call

    first = run_ptq_search(digits_files, calib, evaluate(4), QUANT, hpo, tmp_path, progress=False, deploy_eval=False)
    assert first["interrupted"] and len(first["trials"]) == 2
    calls["n"] = 0
    other = run_ptq_search(digits_files, calib, evaluate(0), QUANT, {**hpo, "ptq_algo": ["avg", "mse"]},
                           tmp_path / "other", progress=False, deploy_eval=False)
    assert other["reused_trials"] == 0
    import shutil

    shutil.copy(tmp_path / "trials.json", tmp_path / "trials.saved")
    for changed in ({**hpo, "seed": 1}, hpo):
        shutil.copy(tmp_path / "trials.saved", tmp_path / "trials.json")
        calls["n"] = 0
        data = (x[200:400], y[200:400]) if changed is hpo else (x[:200], y[:200])
        inner = top1_evaluator(*data)
        result = run_ptq_search(digits_files, calib, lambda p, limit=None: inner(p, limit), QUANT, changed, tmp_path,
                                progress=False, deploy_eval=False)
        assert result["reused_trials"] == 0  # another seed; other eval data (another baseline)
    shutil.copy(tmp_path / "trials.saved", tmp_path / "trials.json")
    calls["n"] = 0
    again = run_ptq_search(digits_files, calib, evaluate(0), QUANT, hpo, tmp_path, progress=False, deploy_eval=False)
    assert again["reused_trials"] == 2 and len(again["trials"]) == 5
    assert calls["n"] == 1 + 3  # the baseline and the 3 trials the log lacked


def test_killed_local_pipeline_keeps_the_previous_output(inputs, ptq_reference, tmp_path):
    """`autocompress run` (the local KFP pipeline) SIGKILLed, its stage processes with it, once the
    PTQ search stage has started: the save dir is written only by the export stage, so the previous
    deliverable is untouched; the rerun delivers the uninterrupted run's model."""
    pytest.importorskip("kfp", reason="the local pipeline needs kfp")
    reference = ptq_reference[0]
    save, before, config = _over_previous(inputs, ptq_reference, tmp_path)
    cmd = [sys.executable, "-m", "autocompress.cli", "run", str(config)]
    env = dict(os.environ, GLOG_minloglevel="2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if list((save / "pipeline-root").glob("*/for-loop-*")):  # the ptq-trial stage started
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert {k: v for k, v in _deliverable(save).items() if not k.startswith("pipeline-root")} == before

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _outcome(save)
    assert (got["metric"], got["config"]) == (reference["metric"], reference["config"])
    FIGURES.append({"phase": "local KFP pipeline, PTQ search stage", "previous_intact": True,
                    "same_config": True, "same_model_sha256": got["files"] == reference["files"]})
    assert got["files"] == reference["files"]
