import paddle
import pytest

from autocompress.errors import DeviceError
from autocompress.paddle_env import DEFAULT_DEVICE, device_string, resolve_device

CPU_ONLY = not paddle.is_compiled_with_cuda()


def test_cpu():
    assert device_string(resolve_device("cpu")) == "cpu"


@pytest.mark.parametrize("text", ["tpu", "gpu:", "gpu:a", "cuda:0", ""])
def test_malformed_device(text):
    with pytest.raises(DeviceError, match="is not a device. Use one of: cpu, gpu"):
        resolve_device(text)


@pytest.mark.skipif(not CPU_ONLY, reason="needs a CPU-only Paddle build")
@pytest.mark.parametrize("text", ["gpu", "gpu:1", "xpu:0", "npu:0"])
def test_missing_accelerator_is_a_clear_error(text):
    with pytest.raises(DeviceError, match="was not compiled with .* Pass devices='cpu'"):
        resolve_device(text)


@pytest.mark.skipif(not CPU_ONLY, reason="needs a CPU-only Paddle build")
def test_spec_default_falls_back_to_cpu_with_warning(caplog):
    assert device_string(resolve_device(DEFAULT_DEVICE)) == "cpu"
    assert "falls back" in caplog.text or "running on CPU" in caplog.text


@pytest.mark.skipif(CPU_ONLY, reason="needs a CUDA Paddle build")
def test_gpu_index():
    assert device_string(resolve_device("gpu:0")) == "gpu:0"
