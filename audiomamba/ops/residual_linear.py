"""A linear layer with the residual add: ``u + y @ weight.T``, the back of a block's generation step
(out_proj, then the residual block's add). Options cover every block's linear layers: ``rms_eps``
RMS-normalises y first (Mamba-2, its norm's weight folded into ``weight``'s columns); ``bias`` and
an ``activation`` after it: "glu" (the first half of the outputs times the sigmoid of the second,
S4D's out_proj) or "gelu" (the MLP's first layer).

``residual_linear`` runs one Triton kernel for CUDA tensors when the kernels are importable (at
batch 256, cuBLAS picks an fp32 GEMM of two thread blocks for out_proj, then a separate add) and
the reference here otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels


ACTIVATIONS = (None, "glu", "gelu")


def residual_linear_ref(u: torch.Tensor | None, y: torch.Tensor, weight: torch.Tensor, rms_eps: float | None = None,
                        bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """u: (batch, H), or None for no residual; y: (batch, K); weight: (H, K), or (2H, K) for "glu";
    bias: like weight's rows, or None. Returns u + activation(y @ weight.T + bias), (batch, H); with
    ``rms_eps``, y / sqrt(mean(y^2) + rms_eps) (per row, in fp32) stands in for y."""
    if rms_eps is not None:
        y = F.rms_norm(y.float(), y.shape[-1:], eps=rms_eps).to(y.dtype)
    out = F.linear(y, weight, bias)
    if activation == "glu":
        out = F.glu(out, dim=-1)
    elif activation == "gelu":
        out = F.gelu(out)
    return out if u is None else u + out


def residual_linear(u, y, weight, rms_eps=None, bias=None, activation=None):
    """One kernel on CUDA when available; see :func:`residual_linear_ref`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    kernels = triton_kernels.load("residual_linear") if y.is_cuda else None
    fn = kernels.residual_linear if kernels else residual_linear_ref
    return fn(u, y, weight, rms_eps, bias, activation)
