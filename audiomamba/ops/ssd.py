"""Mamba-2's scan (SSD, "state-space duality"; Dao & Gu 2024): a selective SSM whose decay is one
scalar per head and time step, so that a chunk of it is a masked matrix product.

For each head (P channels sharing N states), with a_t = dt_t A <= 0:

    S_t = exp(a_t) S_{t-1} + dt_t x_t B_t^T          S: (P, N), zero before t = 0
    y_t = S_t C_t

In a chunk of Q steps, with c_t = a_1 + ... + a_t counted from the chunk's start and S_in the
state the chunk starts from:

    y_t   = sum_{s <= t} exp(c_t - c_s) (C_t . B_s) dt_s x_s   +   exp(c_t) S_in C_t
    S_out = exp(c_Q) S_in + sum_s exp(c_Q - c_s) dt_s x_s B_s^T

The first sum is a (Q, Q) lower-triangular matrix times the chunk's inputs (the "attention" form);
the states handed from chunk to chunk are one more such product over the chunks. Everything is
matmuls in fp32: no sequential loop, on any device. ``ssd_step`` is the recurrence itself, one
sample at a time, for generation; ``ssd_gated_step`` is the block's step around it, from the conv's
outputs to the gated output (one Triton kernel on CUDA when the kernels are importable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels

CHUNK = 64  # steps per chunk: (Q, Q) products in the chunk, (L/Q, L/Q) across chunks


def _decay_matrix(a: torch.Tensor) -> torch.Tensor:
    """a (..., T) log-decays per step -> (..., T, T) with exp(a_{s+1} + ... + a_t) at [t, s] for
    s <= t (1 on the diagonal), else 0. Each sum is accumulated over its own terms, not taken as a
    difference of two running sums: those grow without bound over a clip (-10^4 after a second of
    strong decay), and their difference would lose the weak decays that follow (fp32 keeps 7 digits)."""
    T = a.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()  # [t, s]: s <= t
    sums = a[..., :, None].expand(*a.shape, T).masked_fill(~causal.tril(-1), 0.0).cumsum(-2)  # a_{s+1} + ... + a_t
    return torch.exp(sums.masked_fill(~causal, float("-inf")))


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk: int = CHUNK) -> torch.Tensor:
    """x: (batch, L, heads, P); dt: (batch, L, heads), positive; A: (heads,), negative; B, C:
    (batch, L, N), shared by the heads. Returns y (batch, L, heads, P) in fp32."""
    batch, length, heads, P = x.shape
    pad = -length % chunk  # padded steps come last with dt = 0 (no decay, no input): they change nothing before them
    x, dt, B, C = (F.pad(t.float(), (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    n = (length + pad) // chunk
    x, dt, B, C = (t.unflatten(1, (n, chunk)) for t in (x, dt, B, C))  # (batch, n, Q, ...)
    a = (dt * A.float()).transpose(2, 3)  # log-decay of each step, (batch, n, heads, Q)
    c = a.cumsum(-1)  # from the chunk's start
    drive = (x * dt[..., None]).transpose(2, 3)  # dt_s x_s, (batch, n, heads, Q, P)

    scores = C @ B.transpose(-1, -2)  # C_t . B_s, (batch, n, Q, Q)
    y = (_decay_matrix(a) * scores[:, :, None]) @ drive  # within each chunk, (batch, n, heads, Q, P)

    to_end = torch.exp(c[..., -1:] - c)  # exp(c_Q - c_s), (batch, n, heads, Q)
    chunk_states = (drive * to_end[..., None]).transpose(-1, -2) @ B[:, :, None]  # (batch, n, heads, P, N)
    totals = c[..., -1].transpose(1, 2)  # each chunk's whole log-decay, (batch, heads, n)
    # S_in of chunk k = sum_{j < k} exp(totals[j+1] + ... + totals[k-1]) chunk_states[j]
    handed_on = _decay_matrix(totals)  # [k, j] = exp(totals[j+1] + ... + totals[k]) for j <= k
    incoming = torch.einsum("bhkj,bjhpn->bkhpn", handed_on[..., :-1, :], chunk_states)  # into chunks 1 .. n-1
    incoming = torch.cat([torch.zeros_like(chunk_states[:, :1]), incoming], 1)  # chunk 0 starts from zero
    y = y + torch.exp(c)[..., None] * (incoming @ C[:, :, None].transpose(-1, -2)).transpose(-1, -2)
    return y.transpose(2, 3).flatten(1, 2)[:, :length]


def ssd_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor) -> torch.Tensor:
    """One step of the recurrence. state: (batch, heads, P, N) fp32, updated in place; x: (batch,
    heads, P); dt: (batch, heads); A: (heads,); B, C: (batch, N). Returns y (batch, heads, P) fp32."""
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    state.mul_(torch.exp(dt * A)[..., None, None]).add_((dt[..., None] * x)[..., None] * B[:, None, None, :])
    return (state @ C[:, None, :, None]).squeeze(-1)


def ssd_gated_step_ref(state: torch.Tensor, xBC: torch.Tensor, zdt: torch.Tensor, dt_bias: torch.Tensor,
                       A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Mamba-2's step between its conv and its norm. state: (batch, heads, P, N) fp32, updated in
    place; xBC: (batch, E + 2N), the conv's outputs x (E = heads x P), B and C; zdt: (batch, E +
    heads), the gate z and the step sizes before softplus; dt_bias, A, D: (heads,) fp32.
    Returns (y + D x) silu(z), (batch, E) fp32, y from ``ssd_step`` with dt = softplus(dt + dt_bias)."""
    batch, heads, P, N = state.shape
    x, B, C = xBC.float().split([heads * P, N, N], dim=-1)
    z, dt = zdt.float().split([heads * P, heads], dim=-1)
    x = x.unflatten(-1, (heads, P))
    y = ssd_step(state, x, F.softplus(dt + dt_bias), A, B, C) + D[:, None] * x
    return y.flatten(1) * F.silu(z)


def ssd_gated_step(state, xBC, zdt, dt_bias, A, D):
    """One kernel on CUDA when available; see :func:`ssd_gated_step_ref`."""
    kernels = triton_kernels.load("ssd_step") if state.is_cuda else None
    return (kernels.ssd_gated_step if kernels else ssd_gated_step_ref)(state, xBC, zdt, dt_bias, A, D)
