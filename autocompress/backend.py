"""The deployment backend: Paddle Inference, as users will run the model.

DESIGN §8: simulated quantization (fake-quant ops in the executor) and deployed int8 kernels can
disagree widely, so models are selected and reported by what they do here. On CPU, int8 kernels
need oneDNN with `enable_mkldnn_int8()`; without that switch a quantized model runs (correctly)
but slower than FP32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from .model_io import ModelFiles

Predictor = Callable[[dict], list]


@dataclasses.dataclass(frozen=True)
class DeployTarget:
    """Where the final model is measured: the runtime the user deploys on.

    runtime: 'onednn' (CPU, oneDNN; int8 models with `enable_mkldnn_int8()`), 'paddle-cpu' (a stock
    `paddle.inference.Config` on CPU, no oneDNN: what clients such as rapidocr_paddle run), 'gpu'
    (Paddle Inference on CUDA) or 'tensorrt' (CUDA + TensorRT, int8 precision for int8 models),
    'openvino' (OpenVINO reading the Paddle model; an int8 one through its ONNX QDQ export, see
    `openvino_model_path`), 'onnxruntime' (ONNX Runtime CPU on the model's
    ONNX export, made on the fly and cached: program/to_onnx.py; int8 models as QDQ).
    """

    runtime: str = "onednn"
    device_id: int = 0

    @classmethod
    def for_job(cls, deploy_backend: str, place) -> "DeployTarget":
        """The target for QuantizationConfig.deploy_backend on the resolved device (never a substitute)."""
        from .errors import ConfigError
        from .paddle_env import device_string

        device = device_string(place)
        on_gpu = device.startswith("gpu")
        device_id = int(device.split(":")[1]) if on_gpu and ":" in device else 0
        if deploy_backend == "tensorrt":
            if not on_gpu:
                raise ConfigError(f"deploy_backend 'tensorrt' needs a GPU, but the job runs on {device}; pass "
                                  "devices='gpu' on a CUDA build of Paddle, or use deploy_backend 'onednn' or 'none'")
            return cls("tensorrt", device_id)
        if on_gpu:
            return cls("gpu", device_id)
        if device != "cpu":
            raise ConfigError(f"the deployed model can be measured on cpu or gpu, not on {device}; pass devices='cpu' "
                              "or 'gpu'")
        return cls(deploy_backend if deploy_backend in ("onednn", "openvino") else "paddle-cpu")

    def describe(self, int8: bool, threads: int, batch: int) -> str:
        names = {"onednn": "Paddle Inference CPU oneDNN" + (" int8" if int8 else ""),
                 "paddle-cpu": "Paddle Inference CPU (stock Config, no oneDNN)",
                 "gpu": f"Paddle Inference GPU {self.device_id}",
                 "tensorrt": f"Paddle Inference GPU {self.device_id} TensorRT" + (" int8" if int8 else " fp32"),
                 "openvino": "OpenVINO CPU (" + ("the model's ONNX QDQ export" if int8 else "reading the Paddle model")
                             + ", default precision)",
                 "onnxruntime": "ONNX Runtime CPU (the model's ONNX export" + (", QDQ int8)" if int8 else ")")}
        where = f", {threads} thread(s)" if self.runtime in ("onednn", "paddle-cpu", "openvino", "onnxruntime") else ""
        return f"{names[self.runtime]}{where}, batch {batch}"


CPU_ONEDNN = DeployTarget("onednn")


def _config(files: ModelFiles, int8: bool, threads: int, target: DeployTarget = CPU_ONEDNN):
    from paddle import inference

    if files.params_path is not None:
        config = inference.Config(str(files.model_path), str(files.params_path))
    else:
        config = inference.Config(str(files.model_path))
    if target.runtime in ("gpu", "tensorrt"):
        config.enable_use_gpu(256, target.device_id)
        if target.runtime == "tensorrt":
            precision = inference.PrecisionType.Int8 if int8 else inference.PrecisionType.Float32
            # quantize/dequantize models carry their scales: no TensorRT calibration pass
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=1, min_subgraph_size=3,
                                          precision_mode=precision, use_static=False, use_calib_mode=False)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads)
        if target.runtime == "onednn":
            config.enable_mkldnn()
            if int8:
                config.enable_mkldnn_int8()
        else:
            config.disable_mkldnn()
    config.disable_glog_info()
    config.switch_ir_optim(True)
    return config


@contextlib.contextmanager
def _quiet_native_output():
    """Paddle's oneDNN int8 passes print pages of pass statistics from C++ straight to fd 1/2, past
    `disable_glog_info`. Send them to a temporary file; replay it only if creation fails. Yields a
    function that returns what was printed so far (the profiler's tables, in benchmarks)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)

        def printed() -> str:
            sys.stdout.flush()
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield printed
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


def inference_predictor(files: ModelFiles, int8: bool = False, threads: int = 1,
                        target: DeployTarget = CPU_ONEDNN) -> Predictor:
    """A Predictor (feed dict in, list of numpy outputs out) on the target's runtime."""
    if target.runtime == "openvino":
        return _openvino_predictor(files, threads, int8)
    if target.runtime == "onnxruntime":
        from .program.to_onnx import cached_onnx, onnx_predictor

        return onnx_predictor(cached_onnx(files), threads)
    from paddle import inference

    with _quiet_native_output():
        predictor = inference.create_predictor(_config(files, int8, threads, target))
    input_names = predictor.get_input_names()
    output_names = predictor.get_output_names()

    def predict(feed: dict) -> list:
        for name in input_names:
            handle = predictor.get_input_handle(name)
            handle.copy_from_cpu(np.ascontiguousarray(feed[name]))
        predictor.run()
        return [predictor.get_output_handle(n).copy_to_cpu() for n in output_names]

    return predict


def openvino_model_path(files: ModelFiles, int8: bool):
    """What OpenVINO should read: an FP32 model as it is (OpenVINO's Paddle frontend), an int8 one
    through its ONNX QDQ export with the QDQ placed for OpenVINO's int8 kernels (program/qdq_openvino.py).
    The Paddle frontend misreads our quantize_linear / dequantize_linear programs: on PP-OCRv4 det (one
    int8 model, 4 rendered pages, map IoU vs FP32 at 0.3) it gives 0.870 with OpenVINO's default precision
    and 0.0004 with INFERENCE_PRECISION_HINT f32, where the ONNX QDQ export of the same model gives 0.960
    (Paddle's own oneDNN int8: 0.863). Through ONNX too, OpenVINO's int8 path loses a layer whose folded
    weight step is tiny (det's conv2d_159: map IoU 0.01 against ONNX Runtime on the same file);
    quantization keeps such layers FP32 (quant/targets.TINY_WEIGHT_STEP)."""
    if not int8:
        return files.model_path
    from .program.to_onnx import cached_onnx

    return cached_onnx(files, placement="openvino")


def _openvino_predictor(files: ModelFiles, threads: int, int8: bool = False) -> Predictor:
    """OpenVINO's CPU plugin (its default inference precision: bf16 on CPUs with AMX / AVX512-BF16,
    such as this one) on the model (`openvino_model_path`); outputs in the model's fetch order."""
    from .errors import ConfigError

    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("the 'openvino' runtime needs OpenVINO: pip install 'autocompress[openvino]'") from None
    core = ov.Core()
    model = core.read_model(str(openvino_model_path(files, int8)))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads)})
    request = compiled.create_infer_request()
    input_names = [i.get_any_name() for i in model.inputs]
    outputs = list(compiled.outputs)

    def predict(feed: dict) -> list:
        result = request.infer({name: np.ascontiguousarray(feed[name]) for name in input_names})
        return [np.array(result[o]) for o in outputs]

    return predict


def measure_latency(files: ModelFiles, feed: dict, int8: bool = False, threads: int = 1,
                    warmup: int = 5, repeats: int = 30) -> float:
    """Median milliseconds per `predict(feed)` call with Paddle Inference."""
    return compare_latency([(files, int8)], feed, threads, warmup, rounds=repeats, calls_per_round=1)[0]


def compare_latency(models: list[tuple[ModelFiles, bool]], feed: dict, threads: int = 1, warmup: int = 10,
                    rounds: int = 15, calls_per_round: int | None = None, target: DeployTarget = CPU_ONEDNN,
                    budget_s: float = 3.0, per_round: list | None = None) -> list[float]:
    """Milliseconds per call for each (model files, int8) pair on the target, measured in the same
    process with the same threads (`compare_predictors`)."""
    predictors = [inference_predictor(files, int8=int8, threads=threads, target=target) for files, int8 in models]
    return compare_predictors(predictors, feed, warmup, rounds, calls_per_round, budget_s, per_round)


def compare_predictors(predictors: list[Predictor], feed: dict, warmup: int = 10, rounds: int = 15,
                       calls_per_round: int | None = None, budget_s: float = 3.0,
                       per_round: list | None = None) -> list[float]:
    """Milliseconds per call for each predictor. Rounds alternate between them so that load from other
    processes and CPU frequency changes hit all of them alike; the result is the median round. Warm-up
    stops early for slow models, and `calls_per_round` (default: as many as fit `budget_s`, 1 to 10)
    keeps a large model or deployment batch from taking minutes while small ones still average over
    10 calls. `per_round`, when given, receives each predictor's per-round times (ms per call)."""
    per_call = []
    for predict in predictors:
        start = time.perf_counter()
        for i in range(warmup):
            predict(feed)
            if i >= 2 and time.perf_counter() - start > budget_s / 4:
                break  # a slow model is warm after a few calls
        per_call.append((time.perf_counter() - start) / (i + 1))
    if calls_per_round is None:
        calls_per_round = int(max(1, min(10, budget_s / (rounds * sum(per_call)))))
    samples: list[list[float]] = [[] for _ in predictors]
    for _ in range(rounds):
        for predict, times in zip(predictors, samples):
            start = time.perf_counter()
            for _ in range(calls_per_round):
                predict(feed)
            times.append((time.perf_counter() - start) * 1000.0 / calls_per_round)
    if per_round is not None:
        per_round.extend(samples)
    return [float(np.median(times)) for times in samples]
