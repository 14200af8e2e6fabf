"""Property-based fuzzing (hypothesis) of the run-config, strategy-config and `dataset.yaml` parsers:
whatever the input, nothing but our own validation errors (AutoCompressError) comes out — never a
KeyError, TypeError, AttributeError or a pydantic ValidationError."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from autocompress.errors import AutoCompressError  # noqa: E402

SECTIONS = ["Model", "Data", "Eval", "Deploy", "Device", "SaveDir", "TrainConfig", "QuantizationConfig",
            "HyperParameterOptimizationConfig", "DistillationConfig", "MultiTeacherDistillationConfig",
            "PruneConfig", "UnstructurePruneConfig"]
KEYS = ["model_dir", "model_filename", "train", "eval", "calib", "test", "batch_size", "metric", "max_drop",
        "drop_type", "runtimes", "allow_slower", "epochs", "train_iter", "learning_rate", "optimizer",
        "quantize_op_types", "weight_bits", "activation_bits", "deploy_backend", "ptq_algo", "bias_correct",
        "hist_percent", "batch_num", "max_quant_count", "distill_loss", "distill_node_pair", "distill_lambda",
        "teacher_model_dir", "pruned_ratio", "prune_params_name", "prune_algo", "criterion", "prune_ratio",
        "prune_strategy", "format", "feeds", "shards", "file", "samples", "sha256", "label_field", "label",
        "shape", "dtype", "version", "reader", "options", "x"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["cpu", "gpu:0", "top1", "KL", "l2_loss", "npz", "float32",
                                                           "../x.npz", "shard-00000.npz", "builtin://digits"]))
values = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                          st.dictionaries(st.sampled_from(KEYS), children,
                                                                          max_size=4)),
                      max_leaves=12)
sections = st.dictionaries(st.sampled_from(SECTIONS + ["Unknown"]),
                           st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=5)), max_size=6)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@FUZZ
@given(sections)
def test_run_config_parser_raises_only_our_errors(data):
    from autocompress.config import load_run_config
    from autocompress.job import Job

    try:
        Job.from_run_config(load_run_config(data))
    except AutoCompressError:
        pass


@FUZZ
@given(st.text(max_size=200))
def test_run_config_text_raises_only_our_errors(text):
    from autocompress.config import load_run_config

    try:
        load_run_config(yaml.safe_load(text) if _parses(text) else {"Model": text})
    except AutoCompressError:
        pass


@FUZZ
@given(sections)
def test_pipeline_config_parser_raises_only_our_errors(data):
    from autocompress.job import Job

    try:
        Job.from_pipeline(yaml.safe_dump(data) if data else "")
    except AutoCompressError:
        pass


def _parses(text) -> bool:
    try:
        return isinstance(yaml.safe_load(text), dict)
    except yaml.YAMLError:
        return False


def _shard_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 1, 8, 8), "float32"), label=np.zeros((4, 1), "int64"))
    return buf.getvalue()


VALID = {"version": 1, "format": "npz", "feeds": {"x": {"shape": [1, 8, 8], "dtype": "float32"}},
         "label_field": "label", "label": {"shape": [1], "dtype": "int64"}, "samples": 4,
         "shards": [{"file": "shard-00000.npz", "samples": 4}]}


@FUZZ
@given(st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=8),
                 st.builds(lambda k, v: {**VALID, k: v}, st.sampled_from(list(VALID) + KEYS), values)))
def test_dataset_yaml_parser_raises_only_our_errors(tmp_path_factory, meta):
    from autocompress.data.dataset import read_dataset

    folder = tmp_path_factory.mktemp("fuzz-dataset")
    (folder / "shard-00000.npz").write_bytes(_shard_bytes())
    (folder / "dataset.yaml").write_text(yaml.safe_dump(meta))
    try:
        for _ in read_dataset(folder, batch_size=2).batches(limit=2):
            pass
    except AutoCompressError:
        pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)
