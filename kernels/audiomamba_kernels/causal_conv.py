"""The causal depthwise convolution's generation step in one Triton kernel.

Same contract as ``audiomamba.ops.causal_conv.causal_conv_step_ref`` (the test oracle). Each
program takes a block of (batch row, channel) pairs; every one of them reads its ``WIDTH`` taps,
then (after a barrier, since the shift writes where other taps were read) writes them back one
place older with the new input last.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 256  # (row, channel) pairs per program


@triton.jit
def _causal_conv_step(buf_ptr, x_ptr, w_ptr, b_ptr, y_ptr, total, channels, x_row_stride,
                      WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (row, channel) index
    ok = i < total
    c = i % channels
    x = tl.load(x_ptr + (i // channels) * x_row_stride + c, mask=ok, other=0.0).to(tl.float32)
    acc = tl.load(b_ptr + c, mask=ok, other=0.0).to(tl.float32) + x * tl.load(w_ptr + c * WIDTH + WIDTH - 1, mask=ok,
                                                                               other=0.0).to(tl.float32)
    for k in tl.static_range(WIDTH - 1):
        tap = tl.load(buf_ptr + i * WIDTH + k + 1, mask=ok, other=0.0)
        acc += tap.to(tl.float32) * tl.load(w_ptr + c * WIDTH + k, mask=ok, other=0.0).to(tl.float32)
        tl.debug_barrier()  # every read of tap k + 1 before any write of tap k
        tl.store(buf_ptr + i * WIDTH + k, tap, mask=ok)
    tl.store(buf_ptr + i * WIDTH + WIDTH - 1, x.to(buf_ptr.dtype.element_ty), mask=ok)
    tl.store(y_ptr + i, (acc * tl.sigmoid(acc)).to(y_ptr.dtype.element_ty), mask=ok)


def causal_conv_step(conv_buf, x, weight, bias):
    """One fused step; arguments and result as ``causal_conv_step_ref``."""
    if not conv_buf.is_contiguous():
        raise ValueError("the conv buffer must be contiguous (it is updated in place)")
    batch, channels, width = conv_buf.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    weight, bias = weight.contiguous(), bias.contiguous()
    y = torch.empty(batch, channels, device=x.device, dtype=x.dtype)
    total = batch * channels
    _causal_conv_step[(triton.cdiv(total, BLOCK),)](conv_buf, x, weight, bias, y, total, channels, x.stride(0),
                                                   WIDTH=width, BLOCK=BLOCK)
    return y
