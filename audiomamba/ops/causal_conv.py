"""The causal depthwise convolution's generation step, as Mamba uses it before its scan.

    conv_buf <- [conv_buf[..., 1:], x];   y = silu(sum_k conv_buf[..., k] * weight[:, k] + bias)

``causal_conv_step`` runs one Triton kernel for CUDA tensors when the kernels are importable
(instead of the seven small kernels of the PyTorch version) and the reference here otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels


def causal_conv_step_ref(conv_buf: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor) -> torch.Tensor:
    """conv_buf: (batch, channels, width), updated in place (oldest tap first); x: (batch, channels)
    the newest input; weight: (channels, width); bias: (channels,). Returns y (batch, channels)."""
    conv_buf.copy_(torch.roll(conv_buf, -1, dims=-1))
    conv_buf[:, :, -1] = x
    return F.silu((conv_buf * weight).sum(-1) + bias)


def causal_conv_step(conv_buf, x, weight, bias):
    """One step (kernel on CUDA when available); see :func:`causal_conv_step_ref`."""
    kernels = triton_kernels.load("causal_conv") if x.is_cuda else None
    fn = kernels.causal_conv_step if kernels else causal_conv_step_ref
    return fn(conv_buf, x, weight, bias)
