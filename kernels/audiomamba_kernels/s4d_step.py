"""S4D's generation step (pre-norm, recurrence, readout, GELU) in one Triton kernel.

Same contract as ``audiomamba.ops.s4d_step.s4d_step_ref`` (the test oracle). One program per
(batch row, BH channels): it normalises its row (recomputed by every channel block, as the front
kernel of Mamba's step does), advances its channels' complex modes and sums their readout, all in
fp32. The complex64 tensors are read as (channels, modes, 2) tiles of their (real, imaginary)
pairs, then split: reading the two parts as separate strided tiles took up to 1.9x as long
(BENCHMARKS.md, "Generation, session 20").
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs

BH = 32  # channels per program


@triton.jit
def _s4d_step(state_ptr, u_ptr, dA_ptr, w_ptr, norm_w_ptr, norm_b_ptr, y_ptr, H, M, eps, HAS_NORM: tl.constexpr,
              H_PAD: tl.constexpr, BH: tl.constexpr, M_PAD: tl.constexpr, PDL: tl.constexpr):
    b = tl.program_id(0)
    c = tl.program_id(1) * BH + tl.arange(0, BH)
    m = tl.arange(0, M_PAD)
    part = tl.arange(0, 2)
    c_ok = c < H
    ok = c_ok[:, None] & (m < M)[None, :]
    # (real, imaginary) pairs of (H, M) complex64, loaded as (BH, M_PAD, 2) tiles: contiguous pairs
    mode = (c[:, None, None] * M + m[None, :, None]) * 2 + part[None, None, :]
    pair_ok = ok[:, :, None] & (part < 2)[None, None, :]
    dA_re, dA_im = tl.split(tl.load(dA_ptr + mode, mask=pair_ok, other=0.0))
    w_re, w_im = tl.split(tl.load(w_ptr + mode, mask=pair_ok, other=0.0))
    if HAS_NORM:
        norm_w = tl.load(norm_w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        norm_b = tl.load(norm_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    x = tl.load(u_ptr + b * H + c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_NORM:
        h = tl.arange(0, H_PAD)
        row = tl.load(u_ptr + b * H + h, mask=h < H, other=0.0).to(tl.float32)
        mean = tl.sum(row, 0) / H
        centred = tl.where(h < H, row - mean, 0.0)
        x = (x - mean) / tl.sqrt(tl.sum(centred * centred, 0) / H + eps) * norm_w + norm_b
    cell = state_ptr + b * H * M * 2 + mode
    h_re, h_im = tl.split(tl.load(cell, mask=pair_ok, other=0.0))
    h_re, h_im = dA_re * h_re - dA_im * h_im + x[:, None], dA_re * h_im + dA_im * h_re
    tl.store(cell, tl.join(h_re, h_im), mask=pair_ok)
    y = tl.sum(w_re * h_re - w_im * h_im, 1)
    tl.store(y_ptr + b * H + c, 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476)), mask=c_ok)


def s4d_step(state, u, dA, out_weight, norm_weight=None, norm_bias=None, norm_eps=1e-5):
    """One fused step; arguments and result as ``s4d_step_ref``."""
    for name, t in (("state", state), ("dA", dA), ("readout", out_weight)):
        if t.dtype != torch.complex64 or not t.is_contiguous():
            raise ValueError(f"the {name} must be a contiguous complex64 tensor")
    batch, H, M = state.shape
    y = torch.empty(batch, H, device=u.device, dtype=torch.float32)
    has_norm = norm_weight is not None
    u = u.contiguous()
    pdl = launch_options(u)
    _s4d_step[(batch, triton.cdiv(H, BH))](
        torch.view_as_real(state), u, torch.view_as_real(dA), torch.view_as_real(out_weight),
        norm_weight if has_norm else u, norm_bias if has_norm else u, y, H, M, norm_eps, HAS_NORM=has_norm,
        H_PAD=triton.next_power_of_2(H), BH=BH, M_PAD=triton.next_power_of_2(M), PDL=bool(pdl), **pdl)
    return y
