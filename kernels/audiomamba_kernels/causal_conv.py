"""Mamba's generation step up to its scan, in one Triton kernel: the optional pre-norm
(LayerNorm), in_proj, the causal depthwise conv step and silu.

Same contract as ``audiomamba.ops.causal_conv.in_proj_conv_step_ref`` (the test oracle). Each
program takes BM batch rows and BE channels: it normalises its rows (a few hundred values each,
recomputed by every channel block), multiplies them with its channels' rows of in_proj (x and z
halves) by ``tl.dot`` on tensor cores in 3xTF32 (fp32 accuracy; with plain IEEE fp32 dots the
kernel was slower than the three it replaced: 10 against about 7 us at batch 1), then steps the
conv for its (row, channel) pairs: it reads their taps, and after a barrier (the shift writes
where other taps were read) writes them back one place older with the new input last. With
programmatic dependent launch (``pdl``) it loads its weights before waiting for u.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs

BM = 16  # batch rows per program (tl.dot needs at least 16)
BE = 32  # channels per program


@triton.jit
def _in_proj_conv_step(u_ptr, norm_w_ptr, norm_b_ptr, w_ptr, buf_ptr, conv_w_ptr, conv_b_ptr, x_ptr, z_ptr,
                       batch, H, E, eps, HAS_NORM: tl.constexpr, WIDTH: tl.constexpr, H_PAD: tl.constexpr,
                       BM: tl.constexpr, BE: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    h = tl.arange(0, H_PAD)
    row_ok, e_ok, h_ok = rows < batch, e < E, h < H
    w_ok = e_ok[:, None] & h_ok[None, :]  # in_proj weight (2E, H): (BE, H) tiles, read along H
    w_x = tl.load(w_ptr + e[:, None] * H + h[None, :], mask=w_ok, other=0.0).to(tl.float32)
    w_z = tl.load(w_ptr + (E + e[:, None]) * H + h[None, :], mask=w_ok, other=0.0).to(tl.float32)
    if HAS_NORM:
        norm_w = tl.load(norm_w_ptr + h, mask=h_ok, other=0.0).to(tl.float32)
        norm_b = tl.load(norm_b_ptr + h, mask=h_ok, other=0.0).to(tl.float32)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    u = tl.load(u_ptr + rows[:, None] * H + h[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0)
    u = u.to(tl.float32)
    if HAS_NORM:
        centred = tl.where(h_ok[None, :], u - (tl.sum(u, 1) / H)[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / H + eps)
        u = centred * rstd[:, None] * norm_w[None, :] + norm_b[None, :]
    x = tl.dot(u, tl.trans(w_x), input_precision="tf32x3")  # (BM, BE)
    z = tl.dot(u, tl.trans(w_z), input_precision="tf32x3")

    pair = rows[:, None] * E + e[None, :]
    ok = row_ok[:, None] & e_ok[None, :]
    acc = (tl.load(conv_b_ptr + e, mask=e_ok, other=0.0).to(tl.float32)[None, :]
           + x * tl.load(conv_w_ptr + e * WIDTH + WIDTH - 1, mask=e_ok, other=0.0).to(tl.float32)[None, :])
    for k in tl.static_range(WIDTH - 1):
        tap = tl.load(buf_ptr + pair * WIDTH + k + 1, mask=ok, other=0.0)
        acc += tap.to(tl.float32) * tl.load(conv_w_ptr + e * WIDTH + k, mask=e_ok, other=0.0).to(tl.float32)[None, :]
        tl.debug_barrier()  # every read of tap k + 1 before any write of tap k
        tl.store(buf_ptr + pair * WIDTH + k, tap, mask=ok)
    tl.store(buf_ptr + pair * WIDTH + WIDTH - 1, x.to(buf_ptr.dtype.element_ty), mask=ok)
    tl.store(x_ptr + pair, (acc * tl.sigmoid(acc)).to(x_ptr.dtype.element_ty), mask=ok)
    tl.store(z_ptr + pair, z.to(z_ptr.dtype.element_ty), mask=ok)


def in_proj_conv_step(u, conv_buf, in_proj_weight, conv_weight, conv_bias, norm_weight=None, norm_bias=None,
                      norm_eps=1e-5):
    """One fused step; arguments and results as ``in_proj_conv_step_ref``."""
    if not conv_buf.is_contiguous():
        raise ValueError("the conv buffer must be contiguous (it is updated in place)")
    batch, H = u.shape
    E, width = conv_buf.shape[1], conv_buf.shape[2]
    u, in_proj_weight, conv_weight = u.contiguous(), in_proj_weight.contiguous(), conv_weight.contiguous()
    x = torch.empty(batch, E, device=u.device, dtype=u.dtype)
    z = torch.empty_like(x)
    has_norm = norm_weight is not None
    pdl = launch_options(u)
    _in_proj_conv_step[(triton.cdiv(batch, BM), triton.cdiv(E, BE))](
        u, norm_weight if has_norm else u, norm_bias if has_norm else u, in_proj_weight, conv_buf, conv_weight,
        conv_bias, x, z, batch, H, E, norm_eps, HAS_NORM=has_norm, WIDTH=width,
        H_PAD=max(16, triton.next_power_of_2(H)), BM=BM, BE=BE, PDL=bool(pdl), **pdl)
    return x, z
