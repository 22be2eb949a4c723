"""The selective scan (Mamba's SSM) behind one function, and its one-step update for generation.

    h[t] = exp(delta[t] * A) * h[t-1] + delta[t] * B[t] * u[t]        (per channel d, state n)
    y[t] = <C[t], h[t]> + D * u[t],   then  y[t] *= silu(z[t])  when z is given

``selective_scan``, ``selective_state_update`` and ``projected_state_update`` (Mamba's whole SSM
step, its projections included) dispatch to the Triton kernels for CUDA tensors
when they are importable, and to the pure-PyTorch references here otherwise (CPU, or
``AUDIOMAMBA_SCAN=reference``). The references are the test oracle for the kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels
from audiomamba.ops.linear_scan import linear_scan


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """delta (B, D, L) in fp32, with the per-channel bias (D,) added and softplus applied."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """Reference selective scan in fp32.

    u, delta, z: (batch, d, L); A: (d, n) real; B, C: (batch, n, L); D, delta_bias: (d,);
    initial_state: (batch, d, n) or None. Returns y (batch, d, L) in u's dtype, and with
    ``return_last_state`` also the final state (batch, d, n) in fp32.
    """
    dtype = u.dtype
    u32, delta = u.float(), _prepare_delta(delta, delta_bias, delta_softplus)
    decay = torch.exp(delta[:, :, None, :] * A.float()[None, :, :, None])  # (b, d, n, L)
    drive = (delta * u32)[:, :, None, :] * B.float()[:, None, :, :]  # (b, d, n, L)
    h = linear_scan(decay, drive, None if initial_state is None else initial_state.float())
    y = torch.einsum("bdnl,bnl->bdl", h, C.float())
    if D is not None:
        y = y + D.float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, h[..., -1]) if return_last_state else y


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None):
    """The selective scan: Triton kernels on CUDA when available, else the reference. Shapes as
    in :func:`selective_scan_ref`."""
    kernels = triton_kernels.load("selective_scan") if u.is_cuda else None
    fn = kernels.selective_scan if kernels else selective_scan_ref
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)


def selective_state_update_ref(state, x, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One step of the scan. state: (batch, d, n) fp32, updated in place; x, delta, z: (batch, d);
    B, C: (batch, n). Returns y: (batch, d) in x's dtype."""
    x32, delta = x.float(), delta.float()  # few, fused ops: a CPU step is bound by per-op overhead
    if delta_bias is not None:
        delta = delta + delta_bias.float()
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(2) * A.float())  # (b, d, n)
    state.mul_(decay).baddbmm_((delta * x32).unsqueeze(2), B.float().unsqueeze(1))  # + outer(delta x, B)
    y = torch.bmm(state, C.float().unsqueeze(2)).squeeze(2)
    if D is not None:
        y = torch.addcmul(y, D.float(), x32)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def selective_state_update(state, x, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One recurrent step (kernel on CUDA when available); see :func:`selective_state_update_ref`."""
    kernels = triton_kernels.load("selective_scan") if x.is_cuda else None
    fn = kernels.selective_state_update if kernels else selective_state_update_ref
    return fn(state, x, delta, A, B, C, D, z, delta_bias, delta_softplus)


def projected_state_update_ref(state, x, z, x_proj_weight, dt_proj_weight, dt_bias, A, D):
    """Mamba's recurrent step from x itself: dt_low, B, C = x_proj(x), delta = dt_proj(dt_low),
    then :func:`selective_state_update_ref` with dt_bias, softplus, D and the silu(z) gate.

    state: (batch, d, n) fp32, updated in place; x, z: (batch, d); x_proj_weight: (R + 2n, d);
    dt_proj_weight: (d, R); dt_bias, D: (d,); A: (d, n). Returns y: (batch, d) in x's dtype.
    """
    rank, n = dt_proj_weight.shape[1], A.shape[1]
    dt_low, B, C = torch.split(F.linear(x, x_proj_weight), [rank, n, n], dim=-1)
    delta = F.linear(dt_low, dt_proj_weight)
    return selective_state_update_ref(state, x, delta, A, B, C, D, z, dt_bias, True)


def projected_state_update(state, x, z, x_proj_weight, dt_proj_weight, dt_bias, A, D):
    """Mamba's recurrent step in one kernel on CUDA when available; see :func:`projected_state_update_ref`."""
    kernels = triton_kernels.load("selective_scan") if x.is_cuda else None
    fn = kernels.projected_state_update if kernels else projected_state_update_ref
    return fn(state, x, z, x_proj_weight, dt_proj_weight, dt_bias, A, D)
