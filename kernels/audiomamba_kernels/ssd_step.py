"""Mamba-2's generation step from the conv's outputs to the gated output, in one Triton kernel.

Same contract as ``audiomamba.ops.ssd.ssd_gated_step_ref`` (the test oracle). One program per
(batch row, head) holds the head's (P, N) state: it reads the head's x and z, the row's B and C
and the head's raw step size, and computes

    dt = softplus(dt_raw + dt_bias);   S <- exp(dt A) S + dt x B^T;   y = S C + D x;   out = y silu(z)

in fp32, storing S in place and out. Its PyTorch reference is about a dozen kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs
from audiomamba_kernels.selective_scan import _softplus


@triton.jit
def _ssd_gated_step(state_ptr, xbc_ptr, zdt_ptr, dt_bias_ptr, A_ptr, D_ptr, out_ptr, heads, P, N,
                    P_PAD: tl.constexpr, N_PAD: tl.constexpr, PDL: tl.constexpr):
    b, head = tl.program_id(0), tl.program_id(1)
    E = heads * P
    p, n = tl.arange(0, P_PAD), tl.arange(0, N_PAD)
    p_ok, n_ok = p < P, n < N
    dt_bias, A, D = tl.load(dt_bias_ptr + head), tl.load(A_ptr + head), tl.load(D_ptr + head)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    xbc, zdt = xbc_ptr + b * (E + 2 * N), zdt_ptr + b * (E + heads)
    x = tl.load(xbc + head * P + p, mask=p_ok, other=0.0).to(tl.float32)
    B = tl.load(xbc + E + n, mask=n_ok, other=0.0).to(tl.float32)
    C = tl.load(xbc + E + N + n, mask=n_ok, other=0.0).to(tl.float32)
    z = tl.load(zdt + head * P + p, mask=p_ok, other=0.0).to(tl.float32)
    dt = _softplus(tl.load(zdt + E + head).to(tl.float32) + dt_bias)
    cells = state_ptr + ((b * heads + head) * P + p[:, None]) * N + n[None, :]
    ok = p_ok[:, None] & n_ok[None, :]
    s = tl.load(cells, mask=ok, other=0.0) * tl.exp(dt * A) + (dt * x)[:, None] * B[None, :]
    tl.store(cells, s, mask=ok)
    y = tl.sum(s * C[None, :], 1) + D * x
    tl.store(out_ptr + b * E + head * P + p, y * z * tl.sigmoid(z), mask=p_ok)


def ssd_gated_step(state, xBC, zdt, dt_bias, A, D):
    """One fused step; arguments and result as ``ssd_gated_step_ref``."""
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("the SSM state must be a contiguous fp32 tensor (it is updated in place)")
    batch, heads, P, N = state.shape
    out = torch.empty(batch, heads * P, device=state.device, dtype=torch.float32)
    pdl = launch_options(state)
    _ssd_gated_step[(batch, heads)](state, xBC.contiguous(), zdt.contiguous(), dt_bias, A, D, out, heads, P, N,
                                    P_PAD=triton.next_power_of_2(P), N_PAD=triton.next_power_of_2(N),
                                    PDL=bool(pdl), **pdl)
    return out
