"""Mamba's causal depthwise conv with silu, in Triton: over whole sequences for training (forward
and backward), and as one kernel for the generation step up to the scan.

**Sequences.** Same contract as ``audiomamba.ops.causal_conv.causal_conv_silu_ref``. A program
takes SEQ_BLOCK samples of one (batch row, channel): y[t] = silu(bias + sum_k w[k] x[t - W + 1 + k])
from shifted loads of its row (the overlaps are cache hits). The backward recomputes the
pre-activations instead of storing them and writes the gradient g at each one (in fp32: in bf16
its rounding added to gx's); a second kernel gathers the gradient at x[t] from g[t + m], m < W
(one kernel that recomputed all W pre-activations of every sample took 1.6x as long at the outer
stage). Weight and bias gradients are summed per program, then by torch (no atomics:
deterministic). Both are custom operators, so torch.compile keeps them in its graph; eager code
calls them as a plain autograd Function. PyTorch's depthwise conv took 23 of a compiled
sc09_mamba training step's 151 GPU milliseconds; these kernels are 3.6x faster forward+backward at
the outer stage (``kernels/bench_conv.py``, BENCHMARKS.md).

**The generation step**: the optional pre-norm (LayerNorm), in_proj, the causal depthwise conv
step and silu.

Same contract as ``audiomamba.ops.causal_conv.in_proj_conv_step_ref`` (the test oracle). Each
program takes BM batch rows and channel block BE of both outputs (x: the E conv channels; z: the F
others): it normalises its rows (a few hundred values each, recomputed by every channel block),
multiplies them with its channels' rows of in_proj by ``tl.dot`` on tensor cores in 3xTF32 (fp32 accuracy; with plain IEEE fp32 dots the
kernel was slower than the three it replaced: 10 against about 7 us at batch 1), then steps the
conv for its (row, channel) pairs: it reads their taps, and after a barrier (the shift writes
where other taps were read) writes them back one place older with the new input last. With
programmatic dependent launch (``pdl``) it loads its weights before waiting for u.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiomamba_kernels.eager_function import for_caller, plain_function
from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs

BM = 16  # batch rows per program (tl.dot needs at least 16)
BE = 32  # channels per program
SEQ_BLOCK = 1024  # samples per program of the sequence kernels (tests lower it to cross several)


@triton.jit
def _tap(x_ptr, row_start, t, shift, L):
    """x[t + shift] of one row (BLOCK,) in fp32; 0 outside [0, L) (the causal zero padding)."""
    s = t + shift
    return tl.load(x_ptr + row_start + s, mask=(s >= 0) & (s < L), other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(x_ptr, w_ptr, bias, row_start, e, t, L, WIDTH: tl.constexpr):
    """bias + sum_k w[k] x[t - WIDTH + 1 + k] (BLOCK,): the conv before silu."""
    acc = tl.zeros(t.shape, dtype=tl.float32) + bias
    for k in tl.static_range(WIDTH):
        acc += tl.load(w_ptr + e * WIDTH + k).to(tl.float32) * _tap(x_ptr, row_start, t, k - WIDTH + 1, L)
    return acc


@triton.jit
def _conv_silu(x_ptr, w_ptr, b_ptr, y_ptr, E, L, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    row, e = tl.program_id(1), tl.program_id(1) % E
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pre = _pre_activation(x_ptr, w_ptr, tl.load(b_ptr + e).to(tl.float32), row * L, e, t, L, WIDTH)
    tl.store(y_ptr + row * L + t, (pre * tl.sigmoid(pre)).to(y_ptr.dtype.element_ty), mask=t < L)


@triton.jit
def _conv_silu_backward(x_ptr, w_ptr, b_ptr, gy_ptr, g_ptr, gw_ptr, gb_ptr, E, L, WIDTH: tl.constexpr,
                        BLOCK: tl.constexpr):
    """g = gy * silu'(pre-activation), recomputed, for this program's samples; its partial sums of
    gw (WIDTH,) and gb at (row, block)."""
    row, e = tl.program_id(1), tl.program_id(1) % E
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pre = _pre_activation(x_ptr, w_ptr, tl.load(b_ptr + e).to(tl.float32), row * L, e, t, L, WIDTH)
    sig = tl.sigmoid(pre)
    g = _tap(gy_ptr, row * L, t, 0, L) * sig * (1.0 + pre * (1.0 - sig))
    tl.store(g_ptr + row * L + t, g.to(g_ptr.dtype.element_ty), mask=t < L)
    partial = row * tl.num_programs(0) + tl.program_id(0)
    tl.store(gb_ptr + partial, tl.sum(g, axis=0))
    for k in tl.static_range(WIDTH):
        tl.store(gw_ptr + partial * WIDTH + k, tl.sum(g * _tap(x_ptr, row * L, t, k - WIDTH + 1, L), axis=0))


@triton.jit
def _conv_input_grad(g_ptr, w_ptr, gx_ptr, E, L, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    """gx[t] = sum_m w[WIDTH - 1 - m] g[t + m]: x[t] is tap WIDTH - 1 - m of sample t + m."""
    row, e = tl.program_id(1), tl.program_id(1) % E
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    gx = tl.zeros([BLOCK], dtype=tl.float32)
    for m in tl.static_range(WIDTH):
        gx += tl.load(w_ptr + e * WIDTH + WIDTH - 1 - m).to(tl.float32) * _tap(g_ptr, row * L, t, m, L)
    tl.store(gx_ptr + row * L + t, gx.to(gx_ptr.dtype.element_ty), mask=t < L)


def _forward(x, weight, bias):
    batch, E, L = x.shape
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    _conv_silu[(triton.cdiv(L, SEQ_BLOCK), batch * E)](x, weight, bias, y, E, L, WIDTH=weight.shape[1],
                                                       BLOCK=SEQ_BLOCK)
    return y


def _backward(gy, x, weight, bias):
    """(gx, gweight, gbias)."""
    batch, E, L = x.shape
    width = weight.shape[1]
    x, weight, gy = x.contiguous(), weight.contiguous(), gy.contiguous()
    blocks = triton.cdiv(L, SEQ_BLOCK)
    g = torch.empty(x.shape, device=x.device, dtype=torch.float32)  # the gradient at the pre-activations
    gx = torch.empty_like(x)
    gw = torch.empty(batch, E, blocks, width, device=x.device, dtype=torch.float32)
    gb = torch.empty(batch, E, blocks, device=x.device, dtype=torch.float32)
    _conv_silu_backward[(blocks, batch * E)](x, weight, bias, gy, g, gw, gb, E, L, WIDTH=width, BLOCK=SEQ_BLOCK)
    _conv_input_grad[(blocks, batch * E)](g, weight, gx, E, L, WIDTH=width, BLOCK=SEQ_BLOCK)
    return gx, gw.sum((0, 2)).to(weight.dtype), gb.sum((0, 2)).to(bias.dtype)


# The conv as custom operators for torch.compile, and as a plain Function for eager code (see
# eager_function.py).

@torch.library.custom_op("audiomamba::causal_conv_silu", mutates_args=())
def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _forward(x, weight, bias)


@_conv.register_fake
def _conv_shape(x, weight, bias):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("audiomamba::causal_conv_silu_backward", mutates_args=())
def _conv_backward(gy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(gy, x, weight, bias)


@_conv_backward.register_fake
def _conv_backward_shapes(gy, x, weight, bias):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(weight.shape, dtype=weight.dtype, device=x.device), torch.empty_like(bias))


def _conv_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


_conv.register_autograd(lambda ctx, gy: _conv_backward(gy, *ctx.saved_tensors), setup_context=_conv_setup_context)
_eager_conv = plain_function("EagerConv", _forward, _conv_setup_context,
                             lambda ctx, gy: _backward(gy, *ctx.saved_tensors))


def causal_conv_silu(x, weight, bias):
    """silu(causal depthwise conv); arguments and result as ``causal_conv_silu_ref``."""
    return for_caller(_conv, _eager_conv)(x, weight, bias)


@triton.jit
def _in_proj_conv_step(u_ptr, norm_w_ptr, norm_b_ptr, w_ptr, buf_ptr, conv_w_ptr, conv_b_ptr, x_ptr, z_ptr,
                       batch, H, E, F, eps, HAS_NORM: tl.constexpr, WIDTH: tl.constexpr, H_PAD: tl.constexpr,
                       BM: tl.constexpr, BE: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    h = tl.arange(0, H_PAD)
    row_ok, e_ok, f_ok, h_ok = rows < batch, e < E, e < F, h < H
    # in_proj weight (E + F, H): (BE, H) tiles of x's rows and of z's, read along H
    w_x = tl.load(w_ptr + e[:, None] * H + h[None, :], mask=e_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)
    w_z = tl.load(w_ptr + (E + e[:, None]) * H + h[None, :], mask=f_ok[:, None] & h_ok[None, :],
                  other=0.0).to(tl.float32)
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
    tl.store(z_ptr + rows[:, None] * F + e[None, :], z.to(z_ptr.dtype.element_ty), mask=row_ok[:, None] & f_ok[None, :])


def in_proj_conv_step(u, conv_buf, in_proj_weight, conv_weight, conv_bias, norm_weight=None, norm_bias=None,
                      norm_eps=1e-5):
    """One fused step; arguments and results as ``in_proj_conv_step_ref``."""
    if not conv_buf.is_contiguous():
        raise ValueError("the conv buffer must be contiguous (it is updated in place)")
    batch, H = u.shape
    E, width = conv_buf.shape[1], conv_buf.shape[2]
    F = in_proj_weight.shape[0] - E
    u, in_proj_weight, conv_weight = u.contiguous(), in_proj_weight.contiguous(), conv_weight.contiguous()
    x = torch.empty(batch, E, device=u.device, dtype=u.dtype)
    z = torch.empty(batch, F, device=u.device, dtype=u.dtype)
    has_norm = norm_weight is not None
    pdl = launch_options(u)
    _in_proj_conv_step[(triton.cdiv(batch, BM), triton.cdiv(max(E, F), BE))](
        u, norm_weight if has_norm else u, norm_bias if has_norm else u, in_proj_weight, conv_buf, conv_weight,
        conv_bias, x, z, batch, H, E, F, norm_eps, HAS_NORM=has_norm, WIDTH=width,
        H_PAD=max(16, triton.next_power_of_2(H)), BM=BM, BE=BE, PDL=bool(pdl), **pdl)
    return x, z
