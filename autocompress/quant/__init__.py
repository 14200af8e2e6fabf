"""Quantization. PTQ search (DESIGN §8), one module per job:

targets (which tensors, paddle's tables) -> calibration (statistics once, .npz) -> thresholds
(KL/hist/mse/avg/abs_max, vectorised) -> apply (int8 quantize/dequantize_linear model, no
recalibration) -> search/space (trials, samplers) -> ptq_search (`run_ptq_search`, the engine entry).
`qat` (quantization-aware training) belongs to the training engine.
"""
