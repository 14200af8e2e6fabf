"""Every pipeline compiles; the IR has the task graph, accelerators, secret-as-env, tolerations,
caching and retries we intend; committed compiled files are current; no credential in them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp", reason="the Kubeflow layer needs kfp (pip install 'autocompress[kfp]')")
pytest.importorskip("kfp.kubernetes", reason="needs kfp-kubernetes")

from autocompress.kfp import compile as kfp_compile  # noqa: E402
from autocompress.kfp import CPU_IMAGE, GPU_IMAGE, pipelines  # noqa: E402
from autocompress.kfp.pipelines.common import DEFAULT_SECRET, SECRET_KEYS  # noqa: E402
from autocompress.version import __version__  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMPILED = REPO / "pipelines" / "compiled"
COMPONENTS = REPO / "components" / "compiled"
HEAVY = {"calibrate", "ptq-trial", "prune", "distill-train", "evaluate", "auto-branch", "auto-select"}
# not cached: loads (the URIs may point at new content), training, the deliverable, and auto mode's
# stages (the plan records the time budget's start; branches train; the ranking measures latency now)
UNCACHED = {"distill-train", "export", "load-model", "load-data", "auto-plan", "auto-branch", "auto-select",
            "auto-export"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    kfp_compile.compile_pipelines(out)
    return {p.stem: yaml.safe_load_all(p.read_text()) for p in out.glob("*.yaml")}, out


def _docs(compiled, name):
    docs = list(yaml.safe_load_all((compiled[1] / f"{name}.yaml").read_text()))
    spec = docs[0]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"] if len(docs) > 1 else {"executors": {}}
    return spec, platform


def _tasks(spec) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def _executor(spec, task) -> tuple[str, dict]:
    comp = spec["components"][task["componentRef"]["name"]]
    label = comp["executorLabel"]
    return label, spec["deploymentSpec"]["executors"][label]["container"]


def test_every_combination_compiles_in_both_variants(compiled):
    assert sorted(p.stem for p in compiled[1].glob("*.yaml")) == sorted(pipelines.names())
    assert len(pipelines.names()) == 14  # six strategies and auto, GPU and CPU


def test_committed_compiled_files_are_current():
    stale = kfp_compile.stale_files(COMPILED, COMPONENTS)
    assert not stale, ("compiled pipelines are stale; regenerate with `autocompress compile` "
                       f"(or python -m autocompress.kfp.compile): {stale}")


EXPECTED_STAGES = {
    "ptq_hpo": {"load-model", "load-data", "load-data-2", "load-data-3", "calibrate", "ptq-trial", "select-best", "evaluate",
                "export"},
    "prune_distill": {"load-model", "load-data", "load-data-2", "load-data-3", "prune", "distill-train", "evaluate", "export"},
    "distill": {"load-model", "load-data", "load-data-2", "load-data-3", "distill-train", "evaluate", "export"},
}


def test_ptq_hpo_graph_fans_out_and_collects(compiled):
    spec, _ = _docs(compiled, "ptq_hpo")
    tasks = _tasks(spec)
    assert {t for t in tasks if not t.startswith("for-loop")} == EXPECTED_STAGES["ptq_hpo"]
    loop = tasks["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("calibrate-Output")
    assert "ptq-trial" in spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    select = tasks["select-best"]
    assert select["dependentTasks"] == ["for-loop-1"]
    assert "candidates" in select["inputs"]["artifacts"]
    # calibrate once, outside the loop; trials consume its stats
    assert "calibrate" in spec["root"]["dag"]["tasks"]
    trial = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["ptq-trial"]
    assert trial["inputs"]["artifacts"]["stats"]["componentInputArtifact"].endswith("calibrate-stats")
    assert tasks["evaluate"]["inputs"]["artifacts"]["baseline"]["taskOutputArtifact"]["producerTask"] == "load-model"
    assert tasks["export"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "select-best"


@pytest.mark.parametrize("name", ["prune_distill", "distill", "qat_distill", "sparse_distill", "multi_teacher_distill"])
def test_training_graph(compiled, name):
    spec, _ = _docs(compiled, name)
    tasks = _tasks(spec)
    expected = EXPECTED_STAGES.get(name, EXPECTED_STAGES["distill"])
    assert set(tasks) == expected
    train = tasks["distill-train"]
    producer = train["inputs"]["artifacts"]["student"]["taskOutputArtifact"]["producerTask"]
    assert producer == ("prune" if name == "prune_distill" else "load-model")
    assert train["inputs"]["artifacts"]["teacher"]["taskOutputArtifact"]["producerTask"] == "load-model"


@pytest.mark.parametrize("name", pipelines.names())
def test_caching_retries_images(compiled, name):
    spec, _ = _docs(compiled, name)
    for task_name, task in _tasks(spec).items():
        if task_name.startswith("for-loop"):
            continue
        base = re.sub(r"-\d+$", "", task_name)
        cache = task.get("cachingOptions", {}).get("enableCache", False)
        if base in UNCACHED:
            assert cache is False, f"{task_name} must not be cached"
        else:
            assert cache is True, f"{task_name} should be cached"
        if base == "distill-train":
            assert task["retryPolicy"]["maxRetryCount"] == 3
        if base == "auto-branch":
            assert task["retryPolicy"]["maxRetryCount"] == 1
        _, container = _executor(spec, task)
        assert container["image"] == (GPU_IMAGE if base in HEAVY else CPU_IMAGE)
        assert container["image"].endswith(__version__) or container["image"].endswith(f"{__version__}-gpu")
        # lightweight components with the package preinstalled on the image: no pip install at run time
        assert "pip install" not in " ".join(container.get("command", []))


@pytest.mark.parametrize("name", pipelines.names())
def test_accelerators_tolerations_shm(compiled, name):
    spec, platform = _docs(compiled, name)
    gpu = not name.endswith("_cpu")
    for task_name, task in _tasks(spec).items():
        if task_name.startswith("for-loop"):
            continue
        base = re.sub(r"-\d+$", "", task_name)
        label, container = _executor(spec, task)
        resources = container.get("resources", {})
        k8s = platform["executors"].get(label, {})
        if gpu and base in HEAVY:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert k8s["tolerations"] or k8s.get("tolerationsJson") or "tolerations" in str(k8s)
            assert any(m["mountPath"] == "/dev/shm" and m["medium"] == "Memory" for m in k8s["emptyDirMounts"])
            assert "nodeSelector" in k8s
        else:
            assert "accelerator" not in resources, f"{task_name} requests an accelerator in {name}"
            assert "emptyDirMounts" not in k8s
        assert resources.get("resourceCpuLimit") and resources.get("resourceMemoryLimit")
        assert k8s["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("name", pipelines.names())
def test_credentials_come_from_a_secret_as_env(compiled, name):
    spec, platform = _docs(compiled, name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["object_store_secret"]["defaultValue"] == DEFAULT_SECRET
    assert not [p for p in params if re.search(r"secret_key|access_key|password|token", p, re.I)]
    for label, k8s in platform["executors"].items():
        [secret] = k8s["secretAsEnv"]
        assert secret["secretNameParameter"]["componentInputParameter"].endswith("object_store_secret")
        assert {m["secretKey"]: m["envVar"] for m in secret["keyToEnv"]} == SECRET_KEYS


def test_no_credential_in_any_compiled_file():
    import os

    files = list(COMPILED.glob("*.yaml")) + list(COMPONENTS.glob("*.yaml"))
    assert files
    secrets = [v for k, v in os.environ.items() if re.search(r"SECRET|PASSWORD|TOKEN", k) and len(v) >= 8]
    for path in files:
        text = path.read_text()
        for pattern in (r"AKIA[0-9A-Z]{16}", r"minioadmin", r"minio123", r"aws_secret_access_key\s*[:=]",
                        r"secretkey:\s*(?!accesskey|secretkey)\S", r"Bearer\s+\S"):
            assert not re.search(pattern, text, re.I), f"{path.name} matches {pattern}"
        assert not [s for s in secrets if s in text], f"{path.name} contains a value of a secret env variable"


def test_image_override_and_component_specs(tmp_path):
    [path] = kfp_compile.compile_pipelines(tmp_path / "p", names=["distill_cpu"],
                                          image_repository="registry.local/ac")
    text = path.read_text()
    assert "ghcr.io/autocompress" not in text and f"registry.local/ac:{__version__}" in text
    comps = kfp_compile.compile_pipelines(tmp_path / "p2", names=["distill"], components_dir=tmp_path / "c")
    assert sorted(p.stem for p in comps if p.parent == tmp_path / "c") == sorted(
        ["auto_branch", "auto_export", "auto_plan", "auto_select", "calibrate", "distill_train", "evaluate", "export",
         "load_data", "load_model", "prune", "ptq_trial", "select_best"])
