"""Shared fixtures: the real digits model and data, trained once per test session."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory):
    """The demo CNN trained on scikit-learn's real digits (legacy .pdmodel), in a session cache."""
    from autocompress.demo.digits import digits_model

    return digits_model(cache_dir=tmp_path_factory.mktemp("digits-cache"))


@pytest.fixture(scope="session")
def digits_data():
    from autocompress.demo.digits import digits_splits

    return digits_splits()


@pytest.fixture(scope="session")
def digits_datasets(tmp_path_factory, digits_data):
    """Small Dataset folders of the real digits: `train` (128 calibration samples) and `eval` (200)."""
    from autocompress.data.dataset import write_dataset

    root = tmp_path_factory.mktemp("digits-datasets")
    x, y = digits_data["calib"]
    write_dataset(root / "train", {"x": x[:128]}, labels=y[:128])
    x, y = digits_data["eval"]
    write_dataset(root / "eval", {"x": x[:200]}, labels=y[:200])
    return root


@pytest.fixture
def digits_copy(digits_files, tmp_path):
    """A private copy of the digits model, for tests that must prove the input is never modified."""
    from autocompress.model_io import copy_model

    return copy_model(digits_files, tmp_path / "input-model")


def tree_hashes(folder) -> dict[str, str]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hashes():
    return tree_hashes


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs.argmax(-1) == labels.reshape(-1)).mean())


@pytest.fixture(scope="session")
def digits_pir_files(digits_files):
    """The same trained digits CNN (digits_files' weights) saved by Paddle 3 in its default PIR mode: a
    native `inference.json` + `inference.pdiparams` written by `paddle.jit.save`."""
    from autocompress.demo.digits import digits_pir_model

    return digits_pir_model(cache_dir=digits_files.model_dir.parent)
