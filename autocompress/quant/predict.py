"""Predictors (feed dict -> list of numpy outputs) for trials: executor (simulated int8) and
Paddle Inference (deployed, oneDNN int8). Uses `autocompress.evaluation` / `autocompress.backend`
when they exist; the local versions keep this package usable and testable on its own."""
from __future__ import annotations

import contextlib
import dataclasses
import os

import numpy as np


def executor_predictor(model, program=None, scope=None):
    """Run `program` (default: the model's) with the static executor in `scope` (default: the model's)."""
    if scope is not None:
        model = dataclasses.replace(model, scope=scope)
    try:
        from ..evaluation import executor_predictor as shared
    except ImportError:
        shared = None
    if shared is not None:
        return shared(model, program=program)
    program = program if program is not None else model.program
    fetch = list(model.fetch_names)

    def predict(feed: dict) -> list[np.ndarray]:
        feed = {n: np.asarray(feed[n]) for n in model.feed_names}
        return [np.asarray(o) for o in model.executor.run(program, feed=feed, fetch_list=fetch,
                                                          scope=model.scope, return_numpy=True)]
    return predict


def inference_predictor(model_files, int8: bool, threads: int = 1):
    """Paddle Inference on CPU with oneDNN (and its int8 kernels when `int8`)."""
    try:
        from ..backend import inference_predictor as shared
    except ImportError:
        shared = None
    if shared is not None:
        return shared(model_files, int8=int8, threads=threads)
    from paddle import inference

    config = inference.Config(str(model_files.model_path), str(model_files.params_path))
    config.disable_gpu()
    config.enable_mkldnn()
    if int8:
        config.enable_mkldnn_int8()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    with quiet_stdout():  # the oneDNN int8 passes print their statistics with std::cout
        predictor = inference.create_predictor(config)
    inputs = predictor.get_input_names()

    def predict(feed: dict) -> list[np.ndarray]:
        for name in inputs:
            handle = predictor.get_input_handle(name)
            value = np.ascontiguousarray(feed[name])
            handle.reshape(value.shape)
            handle.copy_from_cpu(value)
        predictor.run()
        return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
    return predict


@contextlib.contextmanager
def quiet_stdout():
    """Silence C++ writes to stdout (fd 1) for the duration."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
