"""The deployment backend: Paddle Inference, as users will run the model.

DESIGN §8: simulated quantization (fake-quant ops in the executor) and deployed int8 kernels can
disagree widely, so models are selected and reported by what they do here. On CPU, int8 kernels
need oneDNN with `enable_mkldnn_int8()`; without that switch a quantized model runs (correctly)
but slower than FP32.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from .model_io import ModelFiles

Predictor = Callable[[dict], list]


def _config(files: ModelFiles, int8: bool, threads: int):
    from paddle import inference

    if files.params_path is not None:
        config = inference.Config(str(files.model_path), str(files.params_path))
    else:
        config = inference.Config(str(files.model_path))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    config.enable_mkldnn()
    if int8:
        config.enable_mkldnn_int8()
    config.disable_glog_info()
    config.switch_ir_optim(True)
    return config


@contextlib.contextmanager
def _quiet_native_output():
    """Paddle's oneDNN int8 passes print pages of pass statistics from C++ straight to fd 1/2, past
    `disable_glog_info`. Send them to a temporary file; replay it only if creation fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace")[-4000:])
            raise
        _restore(saved)


def _restore(saved: list[int]) -> None:
    for fd, copy in zip((1, 2), saved):
        os.dup2(copy, fd)
        os.close(copy)
    saved.clear()


def inference_predictor(files: ModelFiles, int8: bool = False, threads: int = 1) -> Predictor:
    """A Predictor (feed dict in, list of numpy outputs out) backed by a Paddle Inference predictor."""
    from paddle import inference

    with _quiet_native_output():
        predictor = inference.create_predictor(_config(files, int8, threads))
    input_names = predictor.get_input_names()
    output_names = predictor.get_output_names()

    def predict(feed: dict) -> list:
        for name in input_names:
            handle = predictor.get_input_handle(name)
            handle.copy_from_cpu(np.ascontiguousarray(feed[name]))
        predictor.run()
        return [predictor.get_output_handle(n).copy_to_cpu() for n in output_names]

    return predict


def measure_latency(files: ModelFiles, feed: dict, int8: bool = False, threads: int = 1,
                    warmup: int = 5, repeats: int = 30) -> float:
    """Median milliseconds per `predict(feed)` call with Paddle Inference."""
    return compare_latency([(files, int8)], feed, threads, warmup, rounds=repeats, calls_per_round=1)[0]


def compare_latency(models: list[tuple[ModelFiles, bool]], feed: dict, threads: int = 1, warmup: int = 10,
                    rounds: int = 15, calls_per_round: int = 10) -> list[float]:
    """Milliseconds per call for each (model files, int8) pair, measured in the same process with the
    same threads. Rounds alternate between the models so that load from other processes and CPU
    frequency changes hit all of them alike; the result is the median round."""
    predictors = [inference_predictor(files, int8=int8, threads=threads) for files, int8 in models]
    for predict in predictors:
        for _ in range(warmup):
            predict(feed)
    samples: list[list[float]] = [[] for _ in predictors]
    for _ in range(rounds):
        for predict, times in zip(predictors, samples):
            start = time.perf_counter()
            for _ in range(calls_per_round):
                predict(feed)
            times.append((time.perf_counter() - start) * 1000.0 / calls_per_round)
    return [float(np.median(times)) for times in samples]
