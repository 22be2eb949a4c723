"""S4D's generation step up to its output projection: the optional pre-norm (the residual block's
LayerNorm), the diagonal recurrence, the readout and GELU.

    x <- LayerNorm(u) (when fused in);   h <- dA h + x;   y = gelu(Re(sum_m w_m h_m))

per channel, over complex modes m, where the last mode has dA = 0 and weight D, so that the sum
holds the D x term (``S4DBlock._step_matrices``). For CUDA tensors, when the kernels are
importable, ``s4d_step`` is one Triton kernel (in place of a norm and five small kernels);
otherwise the reference here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels


def s4d_step_ref(state: torch.Tensor, u: torch.Tensor, dA: torch.Tensor, out_weight: torch.Tensor,
                 norm_weight: torch.Tensor | None = None, norm_bias: torch.Tensor | None = None,
                 norm_eps: float = 1e-5) -> torch.Tensor:
    """state: (batch, H, M) complex64, updated in place; u: (batch, H); dA, out_weight: (H, M)
    complex64; norm_weight, norm_bias: (H,) for a LayerNorm first, or None. Returns y (batch, H) fp32."""
    if norm_weight is not None:
        u = torch.layer_norm(u, u.shape[-1:], norm_weight, norm_bias, norm_eps)
    state.mul_(dA).add_(u.unsqueeze(-1))  # fp32, bf16 or fp16 values are exact in complex64: no .float()
    return F.gelu((out_weight * state).sum(-1).real)  # few ops: a CPU step is overhead-bound


def s4d_step(state, u, dA, out_weight, norm_weight=None, norm_bias=None, norm_eps=1e-5):
    """One kernel on CUDA when available; see :func:`s4d_step_ref`."""
    kernels = triton_kernels.load("s4d_step") if state.is_cuda else None
    fn = kernels.s4d_step if kernels else s4d_step_ref
    return fn(state, u, dA, out_weight, norm_weight, norm_bias, norm_eps)
