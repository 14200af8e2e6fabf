"""Dockerfiles: every COPY source exists, the image version is the package version the pipelines
reference, the user is not root, and the GPU image keeps the base image's CUDA Paddle."""
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
    assert [r for w, r in cpu if w == "FROM"][0].startswith("python:3.")
    gpu_text = DOCKERFILES["gpu"].read_text()
    assert re.search(r"ARG PADDLE_IMAGE=paddlepaddle/paddle:[\d.]+-gpu-cuda", gpu_text)
    assert "--skip paddlepaddle" in gpu_text and "pip install --no-deps ." in gpu_text


def test_install_deps_keeps_everything_but_the_skipped(tmp_path):
    sys.path.insert(0, str(REPO / "images"))
    try:
        import install_deps
    finally:
        sys.path.pop(0)
    reqs = install_deps.requirements(REPO / "pyproject.toml", [], ["paddlepaddle"])
    assert reqs and not [r for r in reqs if r.lower().startswith("paddlepaddle")]
    assert any(r.startswith("numpy") for r in reqs)


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed")
def test_dockerfiles_parse_with_docker():
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.skip("no Docker daemon to talk to (docker info failed)")
    for path in DOCKERFILES.values():  # --check lints the Dockerfile without building
        result = subprocess.run(["docker", "build", "--check", "-f", str(path), str(REPO)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
