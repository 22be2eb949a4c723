"""One generation step of a whole Mamba block in one Triton kernel.

Same contract as ``audiomamba.models.mamba.MambaBlock.step`` in PyTorch (the test oracle), for
u (batch, H) already layer-normed:

    x, z = in_proj(u);  conv_buf <- [conv_buf[1:], x];  x = silu(<conv_buf, w> + conv_bias)
    dt_low, B, C = x_proj(x);  delta = softplus(dt_proj(dt_low))
    h <- exp(delta A) h + delta B x;   y = (<C, h> + D x) silu(z);   out = out_proj(y)

The eager step is about twenty small kernels per block; at small batches their launches, not
their arithmetic, set the speed of generation. Here one program takes ``ROWS`` batch rows and
walks the E channels in chunks twice:

1. per chunk: in_proj (x and z), the conv buffer shift and the causal conv, silu; x and z go to
   a scratch buffer, and x's products with x_proj's rows accumulate dt_low, B and C;
2. per chunk: delta from dt_low, the state update (the (rows, chunk, N) state tile read and
   written once), the gated output, and its product with out_proj's columns accumulates out.

Matrix products use ``tl.dot`` in IEEE fp32 (never TF32); the states are fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS = 16  # batch rows per program (tl.dot needs at least 16)
CHUNK = 32  # channels per chunk
NUM_WARPS = 4


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _mamba_step(u_ptr, conv_ptr, state_ptr, w_in_ptr, w_conv_ptr, b_conv_ptr, w_xp_ptr, w_dt_ptr, b_dt_ptr,
                a_log_ptr, d_ptr, w_out_ptr, xs_ptr, zs_ptr, out_ptr,
                batch, H, E, N, R,
                ROWS: tl.constexpr, CHUNK: tl.constexpr, H_PAD: tl.constexpr, N_PAD: tl.constexpr,
                R_PAD: tl.constexpr, K: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    h, n, r = tl.arange(0, H_PAD), tl.arange(0, N_PAD), tl.arange(0, R_PAD)
    row_ok, h_ok, n_ok, r_ok = rows < batch, h < H, n < N, r < R
    u = tl.load(u_ptr + rows[:, None] * H + h[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0)
    dt_low = tl.zeros([ROWS, R_PAD], dtype=tl.float32)
    B = tl.zeros([ROWS, N_PAD], dtype=tl.float32)
    C = tl.zeros([ROWS, N_PAD], dtype=tl.float32)
    for e0 in range(0, E, CHUNK):
        e = e0 + tl.arange(0, CHUNK)
        e_ok = e < E
        w_ok = h_ok[:, None] & e_ok[None, :]
        x = _dot(u, tl.load(w_in_ptr + e[None, :] * H + h[:, None], mask=w_ok, other=0.0))  # (ROWS, CHUNK)
        z = _dot(u, tl.load(w_in_ptr + (e[None, :] + E) * H + h[:, None], mask=w_ok, other=0.0))
        ok = row_ok[:, None] & e_ok[None, :]
        buf = conv_ptr + (rows[:, None] * E + e[None, :]) * K
        conv = tl.load(b_conv_ptr + e, mask=e_ok, other=0.0)[None, :] + x * tl.load(
            w_conv_ptr + e * K + K - 1, mask=e_ok, other=0.0)[None, :]
        for k in tl.static_range(K - 1):  # shift the buffer one tap towards the past
            older = tl.load(buf + k + 1, mask=ok, other=0.0)
            conv += older * tl.load(w_conv_ptr + e * K + k, mask=e_ok, other=0.0)[None, :]
            tl.debug_barrier()  # every read of tap k+1 before any write of tap k
            tl.store(buf + k, older, mask=ok)
        tl.store(buf + K - 1, x, mask=ok)
        xs = conv * tl.sigmoid(conv)
        xs = tl.where(ok, xs, 0.0)
        tl.store(xs_ptr + rows[:, None] * E + e[None, :], xs, mask=ok)
        tl.store(zs_ptr + rows[:, None] * E + e[None, :], z, mask=ok)
        # x_proj rows: [0, R) dt_low, [R, R + N) B, [R + N, R + 2N) C; each (CHUNK, cols) tile.
        dt_low += _dot(xs, tl.load(w_xp_ptr + r[None, :] * E + e[:, None], mask=e_ok[:, None] & r_ok[None, :], other=0.0))
        nw_ok = e_ok[:, None] & n_ok[None, :]
        B += _dot(xs, tl.load(w_xp_ptr + (R + n[None, :]) * E + e[:, None], mask=nw_ok, other=0.0))
        C += _dot(xs, tl.load(w_xp_ptr + (R + N + n[None, :]) * E + e[:, None], mask=nw_ok, other=0.0))
    tl.debug_barrier()  # the scratch x and z of every chunk are written
    out = tl.zeros([ROWS, H_PAD], dtype=tl.float32)
    for e0 in range(0, E, CHUNK):
        e = e0 + tl.arange(0, CHUNK)
        e_ok = e < E
        ok = row_ok[:, None] & e_ok[None, :]
        xs = tl.load(xs_ptr + rows[:, None] * E + e[None, :], mask=ok, other=0.0)
        z = tl.load(zs_ptr + rows[:, None] * E + e[None, :], mask=ok, other=0.0)
        dt = _dot(dt_low, tl.load(w_dt_ptr + e[None, :] * R + r[:, None], mask=r_ok[:, None] & e_ok[None, :], other=0.0))
        dt += tl.load(b_dt_ptr + e, mask=e_ok, other=0.0)[None, :]
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
        en_ok = e_ok[:, None] & n_ok[None, :]
        A = -tl.exp(tl.load(a_log_ptr + e[:, None] * N + n[None, :], mask=en_ok, other=0.0))  # (CHUNK, N_PAD)
        s_offsets = (rows[:, None, None] * E + e[None, :, None]) * N + n[None, None, :]
        s_ok = ok[:, :, None] & n_ok[None, None, :]
        state = tl.load(state_ptr + s_offsets, mask=s_ok, other=0.0)
        state = tl.exp(dt[:, :, None] * A[None, :, :]) * state + (dt * xs)[:, :, None] * B[:, None, :]
        tl.store(state_ptr + s_offsets, state, mask=s_ok)
        y = tl.sum(state * C[:, None, :], axis=2) + tl.load(d_ptr + e, mask=e_ok, other=0.0)[None, :] * xs
        y = tl.where(ok, y * z * tl.sigmoid(z), 0.0)
        out += _dot(y, tl.load(w_out_ptr + h[None, :] * E + e[:, None], mask=e_ok[:, None] & h_ok[None, :], other=0.0))
    tl.store(out_ptr + rows[:, None] * H + h[None, :], out, mask=row_ok[:, None] & h_ok[None, :])


def mamba_step(block, u: torch.Tensor, conv_buf: torch.Tensor, ssm_state: torch.Tensor) -> torch.Tensor:
    """One step of ``block`` (a MambaBlock) for u (batch, H) fp32; conv_buf (batch, E, d_conv) and
    ssm_state (batch, E, N), both contiguous fp32, are updated in place. Returns (batch, H) fp32."""
    for name, t in (("u", u), ("conv buffer", conv_buf), ("SSM state", ssm_state)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"the fused Mamba step needs a contiguous fp32 {name}, got {t.dtype}")
    batch, H = u.shape
    E, N = block.A_log.shape
    R, K = block.dt_rank, block.conv.kernel_size[0]
    weights = [w.detach().float().contiguous() for w in (
        block.in_proj.weight, block.conv.weight, block.conv.bias, block.x_proj.weight, block.dt_proj.weight,
        block.dt_proj.bias, block.A_log, block.D, block.out_proj.weight)]
    scratch = torch.empty(2, batch, E, device=u.device, dtype=torch.float32)
    out = torch.empty(batch, H, device=u.device, dtype=torch.float32)
    _mamba_step[(triton.cdiv(batch, ROWS),)](
        u, conv_buf, ssm_state, *weights, scratch[0], scratch[1], out, batch, H, E, N, R,
        ROWS=ROWS, CHUNK=CHUNK, H_PAD=_pad(H), N_PAD=_pad(N), R_PAD=_pad(R), K=K, num_warps=NUM_WARPS)
    return out
