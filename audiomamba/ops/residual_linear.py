"""A linear layer with the residual add: ``u + y @ weight.T``, the back of Mamba's generation step
(out_proj, then the residual block's add).

``residual_linear`` runs one Triton kernel for CUDA tensors when the kernels are importable (at
batch 256, cuBLAS picks an fp32 GEMM of two thread blocks for out_proj, then a separate add) and
the reference here otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels


def residual_linear_ref(u: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """u: (batch, H); y: (batch, K); weight: (H, K). Returns u + y @ weight.T, (batch, H)."""
    return u + F.linear(y, weight)


def residual_linear(u, y, weight):
    """One kernel on CUDA when available; see :func:`residual_linear_ref`."""
    kernels = triton_kernels.load("residual_linear") if u.is_cuda else None
    fn = kernels.residual_linear if kernels else residual_linear_ref
    return fn(u, y, weight)
