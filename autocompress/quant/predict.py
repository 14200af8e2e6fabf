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
        with quiet_native_output():  # the oneDNN int8 passes print pages of statistics
            return shared(model_files, int8=int8, threads=threads)
    from paddle import inference

    config = inference.Config(str(model_files.model_path), str(model_files.params_path))
    config.disable_gpu()
    config.enable_mkldnn()
    if int8:
        config.enable_mkldnn_int8()
    config.set_cpu_math_library_num_threads(threads)
    config.disable_glog_info()
    with quiet_native_output():  # the oneDNN int8 passes print pages of statistics
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
def quiet_native_output():
    """Hold back what C++ code writes to stdout/stderr (fd 1/2); replay it only if the block raises."""
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield
        except BaseException:
            _restore(saved)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            _restore(saved)


def _restore(saved: dict) -> None:
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    for fd, copy in list(saved.items()):
        os.dup2(copy, fd)
        os.close(copy)
        saved.pop(fd)
