"""K residual Mamba blocks' generation step in one Triton kernel.

Same contract as ``audiomamba.ops.mamba_stack.mamba_stack_step_ref`` (the test oracle). One
program takes one batch row through all K blocks; its residual stream u (H,) stays in registers.
A block makes two passes over its inner channels, in chunks of CE:

1. fronts: LayerNorm(u), in_proj's x and z rows of the chunk, and the conv step with silu (the
   buffer shifted in place), kept in a small per-row scratch buffer; and the chunk's share of
   x_proj (dt_low, B, C).
2. backs, once x_proj is summed over every chunk: dt_proj and softplus, the state update, D and
   the silu(z) gate, and the chunk's share of out_proj; u += out_proj(y).

(Keeping x and z in registers when one chunk holds every channel measured 10% slower at width
64: the scratch round trip is in L1, and the backs' loads no longer wait for the fronts' tiles.)

Everything is fp32 FMAs and reductions: one row gives no tile for tensor cores. Each row's
program reads its stage's weights from L2 (128 KiB per block at width 64), so the kernel
pays for narrow stages and moderate batches only; ``fused_step_pays`` says where, from the
measurements in BENCHMARKS.md (H100, "Generation, session 10").
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs

TILE = 16384  # elements of a weight tile (CE x H): CE = TILE // H, at most E
NUM_WARPS = 4
MAX_WIDTH = 128  # the widest stage (H), and the largest batch, where this kernel was measured
MAX_BATCH = 256  # faster than the per-block kernels


def fused_step_pays(batch: int, width: int) -> bool:
    return batch <= MAX_BATCH and width <= MAX_WIDTH


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _front(un, h, h_ok, e, e_ok, in_w, conv_row, conv_w, conv_b, xp, E, H, R, N, r, r_ok, n, n_ok,
           WIDTH: tl.constexpr):
    """Channels e of one block: x, z (CE,) after in_proj and the conv step (buffer updated), and
    their shares of x_proj: dt_low (R_PAD,), B and C (N_PAD,)."""
    w_ok = e_ok[:, None] & h_ok[None, :]
    rows = in_w + e[:, None] * H + h[None, :]
    x = tl.sum(tl.load(rows, mask=w_ok, other=0.0) * un[None, :], 1)
    z = tl.sum(tl.load(rows + E * H, mask=w_ok, other=0.0) * un[None, :], 1)
    acc = tl.load(conv_b + e, mask=e_ok, other=0.0) + x * tl.load(conv_w + e * WIDTH + WIDTH - 1, mask=e_ok, other=0.0)
    for j in tl.static_range(WIDTH - 1):
        tap = tl.load(conv_row + e * WIDTH + j + 1, mask=e_ok, other=0.0)
        acc += tap * tl.load(conv_w + e * WIDTH + j, mask=e_ok, other=0.0)
        tl.debug_barrier()  # every read of tap j + 1 before any write of tap j
        tl.store(conv_row + e * WIDTH + j, tap, mask=e_ok)
    tl.store(conv_row + e * WIDTH + WIDTH - 1, x, mask=e_ok)
    x = acc * tl.sigmoid(acc)
    xe = x[None, :]
    p_ok = n_ok[:, None] & e_ok[None, :]
    dt_low = tl.sum(tl.load(xp + r[:, None] * E + e[None, :], mask=r_ok[:, None] & e_ok[None, :], other=0.0) * xe, 1)
    Bv = tl.sum(tl.load(xp + (R + n[:, None]) * E + e[None, :], mask=p_ok, other=0.0) * xe, 1)
    Cv = tl.sum(tl.load(xp + (R + N + n[:, None]) * E + e[None, :], mask=p_ok, other=0.0) * xe, 1)
    return x, z, dt_low, Bv, Cv


@triton.jit
def _back(x, z, dt_low, Bv, Cv, h, h_ok, e, e_ok, dt_w, dt_b, A, D, out_w, ssm_row, E, H, R, N, r, r_ok, n, n_ok):
    """Channels e of one block: the SSM step (state updated) and their share of out_proj (H_PAD,)."""
    w_dt = tl.load(dt_w + e[:, None] * R + r[None, :], mask=e_ok[:, None] & r_ok[None, :], other=0.0)
    dt = _softplus(tl.sum(w_dt * dt_low[None, :], 1) + tl.load(dt_b + e, mask=e_ok, other=0.0))
    s_ok = e_ok[:, None] & n_ok[None, :]
    state = ssm_row + e[:, None] * N + n[None, :]
    decay = tl.exp(dt[:, None] * tl.load(A + e[:, None] * N + n[None, :], mask=s_ok, other=0.0))
    s = decay * tl.load(state, mask=s_ok, other=0.0) + (dt * x)[:, None] * Bv[None, :]
    tl.store(state, s, mask=s_ok)
    y = tl.sum(s * Cv[None, :], 1) + tl.load(D + e, mask=e_ok, other=0.0) * x
    y = y * z * tl.sigmoid(z)
    w_out = tl.load(out_w + h[:, None] * E + e[None, :], mask=h_ok[:, None] & e_ok[None, :], other=0.0)
    return tl.sum(w_out * y[None, :], 1)


@triton.jit
def _mamba_stack_step(u_ptr, out_ptr, scratch_ptr, norm_w_ptr, norm_b_ptr, in_w_ptr, conv_w_ptr, conv_b_ptr,
                      xp_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, out_w_ptr, conv_ptr, ssm_ptr,
                      n_blocks, batch, H, E, N, R, eps, H_PAD: tl.constexpr, CE: tl.constexpr, N_PAD: tl.constexpr,
                      R_PAD: tl.constexpr, WIDTH: tl.constexpr, PDL: tl.constexpr):
    b = tl.program_id(0)
    h, n, r = tl.arange(0, H_PAD), tl.arange(0, N_PAD), tl.arange(0, R_PAD)
    h_ok, n_ok, r_ok = h < H, n < N, r < R
    P = R + 2 * N  # x_proj's rows: [0, R) dt_low, [R, R + N) B, [R + N, R + 2N) C
    wait_for_inputs(PDL)
    release_dependents(PDL)
    u = tl.load(u_ptr + b * H + h, mask=h_ok, other=0.0).to(tl.float32)
    x_scratch = scratch_ptr + b * 2 * E
    z_scratch = x_scratch + E
    for k in range(n_blocks):
        norm_w = tl.load(norm_w_ptr + k * H + h, mask=h_ok, other=0.0)
        norm_b = tl.load(norm_b_ptr + k * H + h, mask=h_ok, other=0.0)
        centred = tl.where(h_ok, u - tl.sum(u, 0) / H, 0.0)
        un = centred / tl.sqrt(tl.sum(centred * centred, 0) / H + eps) * norm_w + norm_b
        in_w, xp = in_w_ptr + k * 2 * E * H, xp_ptr + k * P * E
        conv_row, conv_w, conv_b = conv_ptr + (k * batch + b) * E * WIDTH, conv_w_ptr + k * E * WIDTH, conv_b_ptr + k * E
        ssm_row, dt_w, dt_b = ssm_ptr + (k * batch + b) * E * N, dtw_ptr + k * E * R, dtb_ptr + k * E
        A, D, out_w = A_ptr + k * E * N, D_ptr + k * E, out_w_ptr + k * H * E
        dt_low = tl.zeros([R_PAD], dtype=tl.float32)
        Bv = tl.zeros([N_PAD], dtype=tl.float32)
        Cv = tl.zeros([N_PAD], dtype=tl.float32)
        for e0 in range(0, E, CE):
            e = e0 + tl.arange(0, CE)
            e_ok = e < E
            x, z, dt_part, B_part, C_part = _front(un, h, h_ok, e, e_ok, in_w, conv_row, conv_w, conv_b, xp,
                                                   E, H, R, N, r, r_ok, n, n_ok, WIDTH)
            tl.store(x_scratch + e, x, mask=e_ok)
            tl.store(z_scratch + e, z, mask=e_ok)
            dt_low += dt_part
            Bv += B_part
            Cv += C_part
        tl.debug_barrier()  # the fronts' scratch writes before the backs read them
        out = tl.zeros([H_PAD], dtype=tl.float32)
        for e0 in range(0, E, CE):
            e = e0 + tl.arange(0, CE)
            e_ok = e < E
            x = tl.load(x_scratch + e, mask=e_ok, other=0.0)
            z = tl.load(z_scratch + e, mask=e_ok, other=0.0)
            out += _back(x, z, dt_low, Bv, Cv, h, h_ok, e, e_ok, dt_w, dt_b, A, D, out_w, ssm_row, E, H, R, N,
                         r, r_ok, n, n_ok)
        tl.debug_barrier()  # the backs' scratch reads before the next block's writes
        u += out
    tl.store(out_ptr + b * H + h, u.to(out_ptr.dtype.element_ty), mask=h_ok)


def mamba_stack_step(u, weights, conv_state, ssm_state):
    """All K blocks' step in one launch; arguments and result as ``mamba_stack_step_ref``."""
    for name, state in (("conv", conv_state), ("SSM", ssm_state)):
        if state.dtype != torch.float32 or not state.is_contiguous():
            raise ValueError(f"the {name} state must be a contiguous fp32 tensor (it is updated in place)")
    w = weights
    K, batch, E, width = conv_state.shape
    H, N, R = u.shape[1], ssm_state.shape[3], w.dt_proj.shape[2]
    u = u.contiguous()
    out = torch.empty_like(u)
    h_pad = triton.next_power_of_2(H)
    ce = min(triton.next_power_of_2(E), max(16, TILE // h_pad))
    scratch = torch.empty(batch, 2, E, device=u.device, dtype=torch.float32)
    pdl = launch_options(u)
    _mamba_stack_step[(batch,)](
        u, out, scratch, w.norm_weight, w.norm_bias, w.in_proj, w.conv_weight, w.conv_bias, w.x_proj, w.dt_proj,
        w.dt_bias, w.A, w.D, w.out_proj, conv_state, ssm_state, K, batch, H, E, N, R, w.norm_eps,
        H_PAD=h_pad, CE=ce, N_PAD=triton.next_power_of_2(N), R_PAD=max(2, triton.next_power_of_2(R)), WIDTH=width,
        PDL=bool(pdl), num_warps=NUM_WARPS, **pdl)
    return out
