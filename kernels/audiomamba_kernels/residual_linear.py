"""``u + y @ weight.T`` in one Triton kernel, for the small GEMMs of generation.

Same contract as ``audiomamba.ops.residual_linear.residual_linear_ref`` (the test oracle). Each
program takes BM rows and BH outputs and sums over K in BK chunks with ``tl.dot`` in 3xTF32
(fp32 accuracy on tensor cores), then adds the residual. With ``rms_eps`` it also sums each row's
squares of y on the way and scales the row's outputs by 1 / sqrt(mean(y^2) + eps) at the end. For
"glu" it sums the gate's outputs (weight rows H + j) beside the values' (rows j) and multiplies
the values by the sigmoid of the gates; the bias is added to both before. "gelu" is the exact
(erf) GELU, as torch's default.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs

BM = 16  # rows per program (tl.dot needs at least 16)
BH = 32  # outputs per program
BK = 64  # reduction chunk


@triton.jit
def _residual_linear(u_ptr, y_ptr, w_ptr, bias_ptr, out_ptr, batch, K, H, eps, HAS_RESIDUAL: tl.constexpr,
                     RMS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, GLU: tl.constexpr, GELU: tl.constexpr,
                     BM: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    row_ok, col_ok = rows < batch, cols < H
    wait_for_inputs(PDL)  # (the weights are read chunk by chunk with y, so only the launch overlaps)
    release_dependents(PDL)
    acc = tl.zeros([BM, BH], dtype=tl.float32)
    gate = tl.zeros([BM, BH], dtype=tl.float32)
    squares = tl.zeros([BM], dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        k_ok = k < K
        y = tl.load(y_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = col_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptr + cols[:, None] * K + k[None, :], mask=w_ok, other=0.0)
        y = y.to(tl.float32)
        if RMS_NORM:
            squares += tl.sum(y * y, 1)
        acc += tl.dot(y, tl.trans(w.to(tl.float32)), input_precision="tf32x3")
        if GLU:
            w = tl.load(w_ptr + (H + cols[:, None]) * K + k[None, :], mask=w_ok, other=0.0)
            gate += tl.dot(y, tl.trans(w.to(tl.float32)), input_precision="tf32x3")
    if RMS_NORM:
        rstd = (1.0 / tl.sqrt(squares / K + eps))[:, None]
        acc *= rstd
        gate *= rstd
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if GLU:
            gate += tl.load(bias_ptr + H + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GLU:
        acc *= tl.sigmoid(gate)
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    ok = row_ok[:, None] & col_ok[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(u_ptr + rows[:, None] * H + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=ok)


def residual_linear(u, y, weight, rms_eps=None, bias=None, activation=None):
    """One fused GEMM (and add); arguments and result as ``residual_linear_ref``."""
    batch, K = y.shape
    glu = activation == "glu"
    H = weight.shape[0] // 2 if glu else weight.shape[0]
    y, weight = y.contiguous(), weight.contiguous()
    out = torch.empty(batch, H, device=y.device, dtype=y.dtype if u is None else u.dtype)
    pdl = launch_options(y)
    _residual_linear[(triton.cdiv(batch, BM), triton.cdiv(H, BH))](
        out if u is None else u.contiguous(), y, weight, out if bias is None else bias,  # (out: a pointer never read)
        out, batch, K, H, 0.0 if rms_eps is None else rms_eps, HAS_RESIDUAL=u is not None,
        RMS_NORM=rms_eps is not None, HAS_BIAS=bias is not None, GLU=glu, GELU=activation == "gelu",
        BM=BM, BH=BH, BK=BK, PDL=bool(pdl), **pdl)
    return out
