"""Weight quantization: scales, int8 values and bias correction, vectorised per channel.

Paddle's ONNX-format export (`QuantWeightPass`) ignores `bias_correction` in PTQ and its
`utils.bias_correction_w` tiles per-channel corrections with `np.resize` (misaligned for axis 0)
and re-quantizes without rounding, so we quantize the weights ourselves.
"""
from __future__ import annotations

import numpy as np


def weight_scales(w: np.ndarray, quant_axis: int) -> np.ndarray:
    """abs_max (quant_axis -1: one scale) or channel_wise_abs_max (one per slice along quant_axis)."""
    if quant_axis < 0:
        return np.array([np.abs(w).max(initial=0.0)], np.float32)
    moved = np.moveaxis(np.abs(w), quant_axis, 0).reshape(w.shape[quant_axis], -1)
    return moved.max(axis=1, initial=0.0).astype(np.float32)


def quantize_weight(w: np.ndarray, scales: np.ndarray, quant_axis: int, bits: int = 8,
                    bias_correct: bool = False) -> np.ndarray:
    """Integer weights q = clip(round(w / s * qmax)) as paddle's `quant_tensor(onnx_format=True)`.

    With `bias_correct`, the rounding of the elements closest to a rounding boundary is flipped so
    that each output channel's mean quantization error (a systematic shift of the layer's output,
    Banner et al. 2019 / arXiv:1810.05723) becomes ~0, at the smallest possible MSE cost.
    """
    qmax = 2 ** (bits - 1) - 1
    axis = 0 if quant_axis < 0 else quant_axis
    moved = np.moveaxis(np.asarray(w, np.float64), axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    s = np.asarray(scales, np.float64).reshape(-1)
    s = np.where(s == 0, 1e-8, s)
    per_row = (s if s.size == rows.shape[0] else np.full(rows.shape[0], s[0]))[:, None]
    x = rows / per_row * qmax
    q = np.clip(np.round(x), -qmax - 1, qmax)
    if bias_correct:
        q = _correct_mean(x, q, qmax, by_row=quant_axis >= 0)
    out = q.reshape(moved.shape)
    return np.moveaxis(out, 0, axis).astype(np.int8 if bits <= 8 else np.int16)


def _correct_mean(x: np.ndarray, q: np.ndarray, qmax: int, by_row: bool) -> np.ndarray:
    """Move whole steps of rounding so that sum(x - q) per row (or overall) is within 0.5 step."""
    if not by_row:  # a per-tensor scale: one correction over all elements
        return _correct_mean(x.reshape(1, -1), q.reshape(1, -1), qmax, True).reshape(q.shape)
    residual = x - q                               # in [-0.5, 0.5] where not clipped
    need = np.round(residual.sum(axis=1))          # whole steps the row's sum is off by
    sign = np.sign(need)[:, None]
    room = np.where(sign > 0, q < qmax, q > -qmax - 1)
    # most-worth-flipping first: the residual closest to the boundary in the needed direction
    key = np.where(room, -residual * sign, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(q.shape[1])[None, :].repeat(q.shape[0], 0), axis=1)
    flip = (ranks < np.abs(need)[:, None]) & room
    return q + sign * flip
