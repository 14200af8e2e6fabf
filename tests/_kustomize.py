"""Render a kustomize folder with kubectl (skip the test when kubectl is missing)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml


def render(path: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (Debian: kubernetes-client)")
    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]
