"""Mamba's causal depthwise conv with silu: over a whole sequence (training), and the generation
step up to the scan (the optional pre-norm, in_proj, and the conv's step with silu).

    y[t] = silu(bias + sum_k weight[:, k] * x[t - width + 1 + k])          (x zero before t = 0)

    u <- LayerNorm(u) (when the block's residual norm is fused in);   x, z = in_proj(u)
    conv_buf <- [conv_buf[..., 1:], x];   x = silu(sum_k conv_buf[..., k] * weight[:, k] + bias)

x is in_proj's first rows, as many as the conv has channels, and z the rest: Mamba's gate, or
Mamba-2's gate and step sizes (whose x also holds B and C).

For CUDA tensors, when the kernels are importable, ``causal_conv_silu`` runs Triton kernels
(forward and backward) and ``in_proj_conv_step`` one kernel (instead of a norm, a GEMM and the
conv's seven small kernels); otherwise each runs its reference here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels


def causal_conv_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x: (batch, channels, length); weight: (channels, width); bias: (channels,). Returns
    silu(causal depthwise conv) (batch, channels, length)."""
    width = weight.shape[1]
    return F.silu(F.conv1d(x, weight[:, None], bias, padding=width - 1, groups=x.shape[1])[..., :x.shape[-1]])


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The conv over a sequence (kernels on CUDA when available); see :func:`causal_conv_silu_ref`."""
    kernels = triton_kernels.load("causal_conv") if x.is_cuda else None
    return (kernels.causal_conv_silu if kernels else causal_conv_silu_ref)(x, weight, bias)


def causal_conv_step_ref(conv_buf: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor) -> torch.Tensor:
    """conv_buf: (batch, channels, width), updated in place (oldest tap first); x: (batch, channels)
    the newest input; weight: (channels, width); bias: (channels,). Returns y (batch, channels)."""
    conv_buf.copy_(torch.roll(conv_buf, -1, dims=-1))
    conv_buf[:, :, -1] = x
    return F.silu((conv_buf * weight).sum(-1) + bias)


def in_proj_conv_step_ref(u: torch.Tensor, conv_buf: torch.Tensor, in_proj_weight: torch.Tensor,
                          conv_weight: torch.Tensor, conv_bias: torch.Tensor, norm_weight: torch.Tensor | None = None,
                          norm_bias: torch.Tensor | None = None, norm_eps: float = 1e-5):
    """u: (batch, H); conv_buf: (batch, E, width), updated in place; in_proj_weight: (E + F, H);
    conv_weight: (E, width); conv_bias: (E,); norm_weight, norm_bias: (H,) for a LayerNorm first,
    or None. Returns x (batch, E), the conv's output after silu, and z (batch, F), in_proj's other
    outputs, both in u's dtype."""
    if norm_weight is not None:
        u = torch.layer_norm(u, u.shape[-1:], norm_weight, norm_bias, norm_eps)
    E = conv_buf.shape[1]
    x, z = F.linear(u, in_proj_weight).split([E, in_proj_weight.shape[0] - E], dim=-1)
    return causal_conv_step_ref(conv_buf, x, conv_weight, conv_bias).to(u.dtype), z


def in_proj_conv_step(u, conv_buf, in_proj_weight, conv_weight, conv_bias, norm_weight=None, norm_bias=None,
                      norm_eps=1e-5):
    """One step (one kernel on CUDA when available); see :func:`in_proj_conv_step_ref`."""
    kernels = triton_kernels.load("causal_conv") if u.is_cuda else None
    fn = kernels.in_proj_conv_step if kernels else in_proj_conv_step_ref
    return fn(u, conv_buf, in_proj_weight, conv_weight, conv_bias, norm_weight, norm_bias, norm_eps)
