"""Triton selective scan: a chunked, sequence-parallel forward and backward, and a one-step update.

Same contract as ``audiomamba.ops.selective_scan.selective_scan_ref`` (the test oracle):

    h[t] = exp(delta[t] * A) * h[t-1] + delta[t] * B[t] * u[t];   y[t] = <C[t], h[t]> + D u[t];   y *= silu(z)

Layout: u, delta, z (batch, d, L); A (d, n); B, C (batch, n, L). The time axis is cut into chunks
of T samples. Within a chunk, time is parallel: ``tl.associative_scan`` combines the pairs (a, b)
of h = a h + b as (a1 a2, a2 b1 + b2), and the incoming state enters as part of the first
sample's input (``_chunk_states``).

The forward, up to 16 states (``_scan_sequential``): one program takes two channels of one batch
row and runs their chunks in time order, each from the state the chunk before left in registers,
both channels reading each chunk's B and C tiles once. It writes y, and for the backward each
chunk's incoming state and delta sum, and with z also y before the silu(z) gate (for gz). One
pass evaluates each exponential once. With 64 states that ran slower than the three passes below
(BENCHMARKS.md, "Selective-scan kernels, session 30"), which are parallel over chunks as well
(each program takes one (chunk, batch row, block of channels)), and larger states use those:

1. ``_scan_chunks`` (pass "local") computes each chunk's end state from a zero state, and the
   sum of its delta.
2. ``_pass_chunks`` carries the state across chunks, one program per (batch, channel). Chunk c
   multiplies the carried state by exp(A * sum(delta_c)) and adds its end state: the same pairs
   (a, b) again, so it scans PASS_CHUNKS chunks at a time.
3. ``_scan_chunks`` (pass "output") rescans each chunk from its true incoming state and writes
   what the sequential forward writes.

The backward always runs in those three passes, backwards in time for the adjoint
lambda[t] = C[t] dy[t] + a[t+1] lambda[t+1]. It never stores the (batch, d, n, L) states. The
gradient through the decay uses lambda[t] * (h[t] - b[t]), which equals lambda[t] * a[t] * h[t-1]
with no division. A program loads its B and C tiles (n x T) once and reuses them for every
channel of its block (C flipped to backwards in time, where the adjoint's scan uses it). It
accumulates dB and dC over those channels and writes one partial sum per block (dA, dD and
dbias: one per program); torch adds the partial sums up afterwards. With no atomics the
gradients are deterministic. A large state is split over backward programs (``BACKWARD_TILE``):
each takes some of the states and writes its own partial of gu and gdelta, since a tile of
64 states x 32 samples spills one warp's registers. State and accumulation are fp32 whatever the
input dtype.

On Hopper GPUs at 16 states, the forward and the backward's two chunk passes are Gluon kernels with
time inside each thread (``selective_scan_gluon``), and the backward runs in chunks of 32: the
forward saves its state every 32 samples when a backward will follow (``_backward_chunk``; the
Triton forward, switched to, then saves the state at the middle of each chunk too), and the
backward takes its chunk from the states it is given.

A chunk kernel's program runs its channels one after another, so each loop iteration loads the
next channel's rows (``_channel_inputs``) while it scans the current one: with one warp per
program and few programs per SM (the tiles take 168-255 registers a thread), load latency would
otherwise stall every iteration.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from audiomamba_kernels import gluon_dispatch
from audiomamba_kernels.eager_function import for_caller, plain_function
from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs

BLOCK_D = 128  # channels per backward chunk program at most (their B, C tiles are loaded once; see _tiles)
FORWARD_BLOCK_D = 32  # channels per program of the chunked forward (more than SEQUENTIAL_MAX_STATES states)
MAX_CHUNK = 64  # samples per chunk at most (tests lower both to exercise many chunks cheaply)
TILE = 2048  # elements of an (n, T) tile: the chunk length is TILE / n, within [16, MAX_CHUNK]
NUM_WARPS = 1  # warps per program of the chunk kernels (kernels/tune.py on H100: 1 warp, 64-sample chunks)
BACKWARD_TILE = 1024  # (states, T) elements per backward program at most: more states are split over programs
LOOP_STAGES = 1  # software-pipelining stages of the loop over a block's channels (tl.range's num_stages)
LOOP_UNROLL = 1  # unroll factor of that loop
# Measured (BENCHMARKS.md, "Selective-scan kernels, session 30"): up to 16 states the forward is
# one pass in time order (_scan_sequential), 14-19% faster on H200; 64 states run faster chunked.
SEQUENTIAL_MAX_STATES = 16
GLUON = True  # the Gluon forward and backward passes where they fit (tests and benchmarks turn them off to compare)
PASS_CHUNKS = 32  # chunks that _pass_chunks scans at a time (an (n, PASS_CHUNKS) tile; 32-128 time the same on H100)
# warps of a _pass_chunks program: at the outer stage's backward 42.6 us, 2 warps 48.2, 4 64.6 (H200, session 39)
PASS_WARPS = 1
# _sum_partials' (rows, columns) tile, 8 warps: on the H200 the outer stage's 73 MB of partial sums in
# 26.8 us, against 32.5 for torch's sum over them and 60 for three sums over separate tensors (session 39)
SUM_ROWS, SUM_COLUMNS = 128, 8
# Measured (BENCHMARKS.md, "Generation, session 24"): from these batches the SSM step runs x_proj and
# dt_proj first, 16 rows a program, then the update; bf16 projections of fewer than 512 channels
# (half the bytes for the fused kernel to read) pay only from the larger batch.
PROJECT_FIRST_FROM = 256
PROJECT_FIRST_FROM_NARROW_BF16 = 1024
PROJECTION_ROWS = 16  # batch rows a program of _step_projections (the M of its dots; tl.dot needs 16)
PROJECTION_PROGRAMS = 128  # about this many programs: each recomputes x_proj for its rows, so not more
LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x log2 e): the chunk kernels scale A once, not every exponent


def _chunk_len(n_state: int) -> int:
    """Samples per chunk for state size ``n_state``."""
    return max(min(16, MAX_CHUNK), min(MAX_CHUNK, TILE // triton.next_power_of_2(n_state)))


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _delta(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta in fp32 from its raw row, with bias and softplus; 0 where masked (so a = 1 and b = 0 there)."""
    dt = raw + bias if HAS_BIAS else raw
    if SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask, dt, 0.0)


@triton.jit
def _chunk_states(a, drive, h0, T: tl.constexpr):
    """A chunk's states h (n, T) from its decays a and drives (n, T) and its incoming state h0 (n,):
    h[t] = a[t] h[t-1] + drive[t]. h0 is folded into the first sample's drive, so that a scan from
    zero gives the true states: h[0] = a[0] h0 + drive[0]. (Adding a_cum * h0 after the scan would
    cost a multiply for the scan's products and an FMA per element; the select here is constant
    for every column but the first.)"""
    first = (tl.arange(0, T) == 0)[None, :]
    return tl.associative_scan((a, tl.where(first, drive + a * h0[:, None], drive)), 1, _combine)[1]


@triton.jit
def _chunk_layout(c, b, L, N, T: tl.constexpr, N_PAD: tl.constexpr, n0=0):
    """Chunk c of batch row b: times t (T,), states n (N_PAD,) from n0, their masks, the (n, T)
    tile mask and the offsets of the (n, T) tiles of B and C."""
    t = c * T + tl.arange(0, T)
    n = n0 + tl.arange(0, N_PAD)
    t_ok, n_ok = t < L, n < N
    return t, n, t_ok, n_ok, n_ok[:, None] & t_ok[None, :], b * N * L + n[:, None] * L + t[None, :]


@triton.jit
def _channel(blk, i, b, n_ch, L, t_ok, BLOCK: tl.constexpr):
    """Channel i of the block (none for i = BLOCK): its index, whether it exists, its time mask and its row offset."""
    d = blk * BLOCK + i
    d_ok = (d < n_ch) & (i < BLOCK)
    return d, d_ok, t_ok & d_ok, (b * n_ch + d) * L


@triton.jit
def _channel_inputs(delta_ptr, bias_ptr, u_ptr, z_ptr, gy_ptr, pre_ptr, A_ptr, state_ptr, carry_ptr,
                    blk, i, b, c, n_ch, L, N, n_chunks, t, n, t_ok, n_ok,
                    BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Z: tl.constexpr, GY: tl.constexpr,
                    PRE: tl.constexpr, STATE: tl.constexpr, CARRY: tl.constexpr):
    """Channel i's rows in this chunk, loaded one channel ahead of their use so that their latency
    overlaps the scan of the channel before (the loop below carries them): raw delta (T,), its bias,
    u (T,), and by flag z, the output gradient gy, the output before the gate (T,), A (n,), the
    chunk's incoming state and carried adjoint (n,). Unused results are zeros."""
    d, d_ok, mask, row = _channel(blk, i, b, n_ch, L, t_ok, BLOCK)
    zero_t = tl.zeros_like(t).to(tl.float32)
    zero_n = tl.zeros_like(n).to(tl.float32)
    raw = tl.load(delta_ptr + row + t, mask=mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32) if HAS_BIAS else tl.full([], 0.0, tl.float32)
    u = tl.load(u_ptr + row + t, mask=mask, other=0.0).to(tl.float32)
    zz = tl.load(z_ptr + row + t, mask=mask, other=0.0).to(tl.float32) if HAS_Z else zero_t
    g = tl.load(gy_ptr + row + t, mask=mask, other=0.0).to(tl.float32) if GY else zero_t
    pre = tl.load(pre_ptr + row + t, mask=mask, other=0.0).to(tl.float32) if PRE else zero_t
    A = tl.load(A_ptr + d * N + n, mask=n_ok & d_ok, other=0.0).to(tl.float32)
    state_offsets = ((b * n_ch + d) * n_chunks + c) * N + n
    h0 = tl.load(state_ptr + state_offsets, mask=n_ok & d_ok, other=0.0) if STATE else zero_n
    carry = tl.load(carry_ptr + state_offsets, mask=n_ok & d_ok, other=0.0) if CARRY else zero_n
    return raw, bias, u, zz, g, pre, A, h0, carry


@triton.jit
def _scan_chunks(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, pre_ptr,
                 end_state_ptr, dt_sum_ptr, incoming_ptr,
                 n_ch, L_UNITS, N, n_chunks,
                 L_ALIGN: tl.constexpr, T: tl.constexpr, N_PAD: tl.constexpr, BLOCK: tl.constexpr,
                 STAGES: tl.constexpr, UNROLL: tl.constexpr, OUTPUT: tl.constexpr, SAVE_PRE: tl.constexpr,
                 HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """OUTPUT=False: chunk end states (from zero) and delta sums. OUTPUT=True: y from incoming
    states, and with SAVE_PRE also y before the silu(z) gate (for the backward's gz)."""
    c, b, blk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    L = L_UNITS * L_ALIGN  # the length, known to the compiler as a multiple of L_ALIGN (see _prepare)
    t, n, t_ok, n_ok, tile_ok, bc_offsets = _chunk_layout(c, b, L, N, T, N_PAD)
    rows = (delta_ptr, bias_ptr, u_ptr, z_ptr, u_ptr, u_ptr, A_ptr, incoming_ptr, incoming_ptr)
    flags = (BLOCK, HAS_BIAS, HAS_Z and OUTPUT, False, False, OUTPUT, False)
    raw_n, bias_n, u_n, z_n, _, _, A_n, h0_n, _ = _channel_inputs(*rows, blk, 0, b, c, n_ch, L, N, n_chunks, t, n,
                                                                  t_ok, n_ok, *flags)
    B_tile = tl.load(B_ptr + bc_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    if OUTPUT:
        C_tile = tl.load(C_ptr + bc_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    for i in tl.range(BLOCK, num_stages=STAGES, loop_unroll_factor=UNROLL):
        raw, bias, u, zz, A, h0 = raw_n, bias_n, u_n, z_n, A_n, h0_n
        raw_n, bias_n, u_n, z_n, _, _, A_n, h0_n, _ = _channel_inputs(*rows, blk, i + 1, b, c, n_ch, L, N, n_chunks,
                                                                      t, n, t_ok, n_ok, *flags)
        d, d_ok, mask, row = _channel(blk, i, b, n_ch, L, t_ok, BLOCK)
        dt = _delta(raw, bias, mask, HAS_BIAS, SOFTPLUS)
        A2 = A * LOG2E
        drive = (dt * u)[None, :] * B_tile
        state_offsets = ((b * n_ch + d) * n_chunks + c) * N + n
        if OUTPUT:
            a = tl.exp2(dt[None, :] * A2[:, None])
            h = _chunk_states(a, drive, h0, T)
            y = tl.sum(C_tile * h, axis=0)
            if HAS_D:
                y += tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32) * u
            if HAS_Z:
                if SAVE_PRE:
                    tl.store(pre_ptr + row + t, y.to(pre_ptr.dtype.element_ty), mask=mask)
                y = y * zz * tl.sigmoid(zz)
            tl.store(y_ptr + row + t, y.to(y_ptr.dtype.element_ty), mask=mask)
        else:  # end state = sum_t exp(A * sum(dt after t)) * drive[t]: a weighted sum, no scan needed
            after = tl.sum(dt, axis=0) - tl.cumsum(dt, axis=0)
            end = tl.sum(tl.exp2(A2[:, None] * after[None, :]) * drive, axis=1)
            tl.store(end_state_ptr + state_offsets, end, mask=n_ok & d_ok)
            tl.store(dt_sum_ptr + (b * n_ch + d) * n_chunks + c, tl.sum(dt, axis=0), mask=d_ok)


@triton.jit
def _bf16_pairs(ptr, b, c, L, N, n, n_ok, T: tl.constexpr):
    """Chunk c's (n, T) tile of a bf16 (batch, n, L) tensor, read as int32 pairs (n, T / 2): L even."""
    k = c * (T // 2) + tl.arange(0, T // 2)
    return tl.load(ptr.to(tl.pointer_type(tl.int32)) + (b * N * L + n[:, None] * L) // 2 + k[None, :],
                   mask=n_ok[:, None] & (k < L // 2)[None, :], other=0)


@triton.jit
def _unpack_pairs(pairs, N_PAD: tl.constexpr, T: tl.constexpr):
    """The (n, T) fp32 tile of a tile of bf16 pairs. A bf16's fp32 value is its bits shifted up 16, so
    each value costs one shift or mask (Triton's own conversion takes two instructions a value)."""
    low = (pairs << 16).to(tl.float32, bitcast=True)
    high = (pairs & -65536).to(tl.float32, bitcast=True)
    return tl.reshape(tl.join(low, high), [N_PAD, T])


@triton.jit
def _sequence_tiles(B_ptr, C_ptr, b, c, L, N, n, n_ok, T: tl.constexpr, PAIRS: tl.constexpr):
    """Chunk c's B and C tiles for ``_scan_sequential``: bf16 pairs (``PAIRS``), else (n, T) in fp32."""
    if PAIRS:
        B_tile = _bf16_pairs(B_ptr, b, c, L, N, n, n_ok, T)
        C_tile = _bf16_pairs(C_ptr, b, c, L, N, n, n_ok, T)
    else:
        t = c * T + tl.arange(0, T)
        offsets = b * N * L + n[:, None] * L + t[None, :]
        tile_ok = n_ok[:, None] & (t < L)[None, :]
        B_tile = tl.load(B_ptr + offsets, mask=tile_ok, other=0.0).to(tl.float32)
        C_tile = tl.load(C_ptr + offsets, mask=tile_ok, other=0.0).to(tl.float32)
    return B_tile, C_tile


@triton.jit
def _sequence_rows(delta_ptr, u_ptr, z_ptr, row, c, L, d_ok, T: tl.constexpr, HAS_Z: tl.constexpr):
    """Chunk c of one channel's rows in fp32 (T,): raw delta, u and the gate silu(z) (raw delta
    again without z). The gate is computed here, as the rows load: in the scan's loop, Triton would
    compute it in the tile's layout, for each time 4 times over."""
    t = c * T + tl.arange(0, T)
    mask = (t < L) & d_ok
    raw = tl.load(delta_ptr + row + t, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + row + t, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row + t, mask=mask, other=0.0).to(tl.float32)
        gate = z * tl.sigmoid(z)
    else:
        gate = raw
    return raw, u, gate


@triton.jit
def _sequence_channel(A_ptr, bias_ptr, D_ptr, d, d_ok, N, n, n_ok, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """One channel's constants: A log2(e) (n,), delta's bias and D."""
    A2 = tl.load(A_ptr + d * N + n, mask=n_ok & d_ok, other=0.0).to(tl.float32) * LOG2E
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    D = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32) if HAS_D else 0.0
    return A2, bias, D


@triton.jit
def _sequence_chunk(raw, u, gate, A2, bias, D, B_tile, C_tile, h, y_ptr, pre_ptr, incoming_ptr, dt_sum_ptr,
                    b, d, d_ok, c, n_ch, L, N, n_saved, n, n_ok, T: tl.constexpr, SPLIT: tl.constexpr,
                    SAVE_PRE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr):
    """Chunk c of channel d from its incoming state h (n,): writes y (and y before the gate), and
    for the backward the state and delta sum of each of its SPLIT parts (its incoming state and
    delta sum, or with SPLIT = 2 also the state at its middle and each half's sum); returns the
    state after the chunk."""
    ch = b * n_ch + d
    row = ch.to(tl.int64) * L
    t = c * T + tl.arange(0, T)
    mask = (t < L) & d_ok
    dt = _delta(raw, bias, mask, HAS_BIAS, SOFTPLUS)
    tl.store(incoming_ptr + (ch * n_saved + c * SPLIT) * N + n, h, mask=n_ok & d_ok)
    a = tl.exp2(dt[None, :] * A2[:, None])
    h_all = _chunk_states(a, (dt * u)[None, :] * B_tile, h, T)
    if SPLIT == 1:
        tl.store(dt_sum_ptr + ch * n_saved + c, tl.sum(dt, axis=0), mask=d_ok)
    else:
        early = tl.arange(0, T) < T // 2
        later_ok = d_ok & (c * T + T // 2 < L)
        tl.store(dt_sum_ptr + ch * n_saved + 2 * c, tl.sum(tl.where(early, dt, 0.0), axis=0), mask=d_ok)
        tl.store(dt_sum_ptr + ch * n_saved + 2 * c + 1, tl.sum(tl.where(early, 0.0, dt), axis=0), mask=later_ok)
        middle = tl.sum(tl.where((tl.arange(0, T) == T // 2 - 1)[None, :], h_all, 0.0), axis=1)
        tl.store(incoming_ptr + (ch * n_saved + 2 * c + 1) * N + n, middle, mask=n_ok & later_ok)
    y = tl.sum(C_tile * h_all, axis=0)
    if HAS_D:
        y += D * u
    if HAS_Z:
        if SAVE_PRE:
            tl.store(pre_ptr + row + t, y.to(pre_ptr.dtype.element_ty), mask=mask)
        y = y * gate
    tl.store(y_ptr + row + t, y.to(y_ptr.dtype.element_ty), mask=mask)
    return tl.sum(tl.where((tl.arange(0, T) == T - 1)[None, :], h_all, 0.0), axis=1)


@triton.jit
def _scan_sequential(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, pre_ptr,
                     init_ptr, incoming_ptr, dt_sum_ptr, final_ptr, n_ch, L_UNITS, N, n_chunks, n_saved,
                     L_ALIGN: tl.constexpr, T: tl.constexpr, SPLIT: tl.constexpr, N_PAD: tl.constexpr,
                     SAVE_PRE: tl.constexpr, HAS_INIT: tl.constexpr, PAIRS: tl.constexpr, HAS_D: tl.constexpr,
                     HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The whole forward for two channels (d, e) of one batch row: their chunks in time order, each
    scanned from the state the one before left (in registers), the two sharing each chunk's B and C
    tiles. Writes what ``_forward`` returns, with the states for the backward every T // SPLIT
    samples (``n_saved`` of them). Rows and tiles load one chunk ahead of their use."""
    b, d = tl.program_id(0), 2 * tl.program_id(1)
    e = d + 1
    L = L_UNITS * L_ALIGN
    n = tl.arange(0, N_PAD)
    n_ok = n < N
    d_ok, e_ok = d < n_ch, e < n_ch
    d_row, e_row = (b * n_ch + d).to(tl.int64) * L, (b * n_ch + e).to(tl.int64) * L
    if HAS_INIT:
        h_d = tl.load(init_ptr + (b * n_ch + d) * N + n, mask=n_ok & d_ok, other=0.0)
        h_e = tl.load(init_ptr + (b * n_ch + e) * N + n, mask=n_ok & e_ok, other=0.0)
    else:
        h_d = tl.zeros([N_PAD], dtype=tl.float32)
        h_e = h_d
    d_consts = _sequence_channel(A_ptr, bias_ptr, D_ptr, d, d_ok, N, n, n_ok, HAS_BIAS, HAS_D)
    e_consts = _sequence_channel(A_ptr, bias_ptr, D_ptr, e, e_ok, N, n, n_ok, HAS_BIAS, HAS_D)
    rows = (delta_ptr, u_ptr, z_ptr)
    outputs = (y_ptr, pre_ptr, incoming_ptr, dt_sum_ptr)
    flags = (SAVE_PRE, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS)
    B_next, C_next = _sequence_tiles(B_ptr, C_ptr, b, 0, L, N, n, n_ok, T, PAIRS)
    d_next = _sequence_rows(*rows, d_row, 0, L, d_ok, T, HAS_Z)
    e_next = _sequence_rows(*rows, e_row, 0, L, e_ok, T, HAS_Z)
    for c in range(n_chunks):
        B_tile, C_tile, d_in, e_in = B_next, C_next, d_next, e_next
        B_next, C_next = _sequence_tiles(B_ptr, C_ptr, b, c + 1, L, N, n, n_ok, T, PAIRS)
        d_next = _sequence_rows(*rows, d_row, c + 1, L, d_ok, T, HAS_Z)
        e_next = _sequence_rows(*rows, e_row, c + 1, L, e_ok, T, HAS_Z)
        if PAIRS:
            B_tile, C_tile = _unpack_pairs(B_tile, N_PAD, T), _unpack_pairs(C_tile, N_PAD, T)
        h_d = _sequence_chunk(*d_in, *d_consts, B_tile, C_tile, h_d, *outputs, b, d, d_ok, c, n_ch, L, N, n_saved,
                              n, n_ok, T, SPLIT, *flags)
        h_e = _sequence_chunk(*e_in, *e_consts, B_tile, C_tile, h_e, *outputs, b, e, e_ok, c, n_ch, L, N, n_saved,
                              n, n_ok, T, SPLIT, *flags)
    tl.store(final_ptr + (b * n_ch + d) * N + n, h_d, mask=n_ok & d_ok)
    tl.store(final_ptr + (b * n_ch + e) * N + n, h_e, mask=n_ok & e_ok)


@triton.jit
def _pass_chunks(A_ptr, chunk_ptr, dt_sum_ptr, carry_in_ptr, init_ptr, final_ptr, n_ch, N, n_chunks,
                 N_PAD: tl.constexpr, K: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr):
    """Carries the state across the chunks of one (batch row, channel), in time order (or reverse
    time order): carry_out[c] = exp(A * dt_sum[c]) * carry_in[c] + chunk[c], and carry_in of the
    next chunk is carry_out[c]. Writes carry_in (the first chunk's is ``init`` or zero) and ``final``
    (the carry after the last chunk). K chunks at a time, in parallel: the same associative scan as
    within a chunk, so the loop runs n_chunks / K times instead of n_chunks."""
    b, d = tl.program_id(0), tl.program_id(1)
    n = tl.arange(0, N_PAD)
    n_ok = n < N
    row = b * n_ch + d
    A = tl.load(A_ptr + d * N + n, mask=n_ok, other=0.0).to(tl.float32)
    base = row * n_chunks * N + n  # chunk c's state of this row: base + c * N
    if HAS_INIT:
        carry = tl.load(init_ptr + row * N + n, mask=n_ok, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([N_PAD], dtype=tl.float32)
    tl.store(carry_in_ptr + base + (n_chunks - 1 if REVERSE else 0) * N, carry, mask=n_ok)
    for k0 in range(0, n_chunks, K):
        j = k0 + tl.arange(0, K)  # places in the order of the pass
        ok = j < n_chunks
        c = n_chunks - 1 - j if REVERSE else j  # the chunk at each place
        dt_sum = tl.load(dt_sum_ptr + row * n_chunks + c, mask=ok, other=0.0)  # 0 past the end: a = 1, adds 0
        chunk = tl.load(chunk_ptr + base[:, None] + c[None, :] * N, mask=n_ok[:, None] & ok[None, :], other=0.0)
        decay, carry_out = tl.associative_scan((tl.exp(A[:, None] * dt_sum[None, :]), chunk), 1, _combine)
        carry_out = carry_out + decay * carry[:, None]
        following = c - 1 if REVERSE else c + 1  # the chunk whose carry_in this is
        tl.store(carry_in_ptr + base[:, None] + following[None, :] * N, carry_out,
                 mask=n_ok[:, None] & (j + 1 < n_chunks)[None, :])
        carry = tl.sum(tl.where((j == k0 + K - 1)[None, :], carry_out, 0.0), axis=1)
    tl.store(final_ptr + row * N + n, carry, mask=n_ok)


@triton.jit
def _scan_chunks_bwd(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gy_ptr, pre_ptr,
                     incoming_ptr, first_ptr, carry_in_ptr,
                     gu_ptr, gdelta_ptr, gz_ptr, sums_ptr, gB_ptr, gC_ptr,
                     n_ch, L_UNITS, N, n_chunks,
                     L_ALIGN: tl.constexpr, T: tl.constexpr, N_PAD: tl.constexpr, GROUPS: tl.constexpr,
                     BLOCK: tl.constexpr, STAGES: tl.constexpr, UNROLL: tl.constexpr, GRADS: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """GRADS=False: per chunk, a[first] * lambda_local[first] (the adjoint a chunk hands to the one
    before it). GRADS=True: every gradient, from the adjoint carried in from later chunks; gA, gD
    and gbias as one partial sum per (batch row, chunk), in that chunk's row of ``sums`` (see
    ``_sum_partials``), gB and gC as one per channel block. gz comes from the forward's output
    before the gate (``pre_ptr``), so no C h sum is needed here.

    The states are split into GROUPS groups of N_PAD, one program each: only gu, gdelta and gbias
    sum over the states, and each is linear in its group's terms, so with GROUPS > 1 every group
    writes its own fp32 partial of them (gu's and gdelta's indexed first by group, gbias's in its
    group's columns of ``sums``); group 0 adds the D terms and writes gz and gD."""
    c, b = tl.program_id(0), tl.program_id(1)
    blk, group = tl.program_id(2) // GROUPS, tl.program_id(2) % GROUPS
    L = L_UNITS * L_ALIGN  # the length, known to the compiler as a multiple of L_ALIGN (see _prepare)
    t, n, t_ok, n_ok, tile_ok, bc_offsets = _chunk_layout(c, b, L, N, T, N_PAD, group * N_PAD)
    partial = group.to(tl.int64) * tl.num_programs(1) * n_ch * L if GROUPS > 1 else 0  # its slice of gu, gdelta
    sums_row = sums_ptr + (b * n_chunks + c).to(tl.int64) * n_ch * (N + 1 + GROUPS)  # see _sum_partials
    rows = (delta_ptr, bias_ptr, u_ptr, z_ptr, gy_ptr, pre_ptr, A_ptr, incoming_ptr, carry_in_ptr)
    flags = (BLOCK, HAS_BIAS, HAS_Z, True, GRADS and HAS_Z, GRADS, GRADS)
    raw_n, bias_n, u_n, z_n, g_n, pre_n, A_n, h0_n, carry_n = _channel_inputs(*rows, blk, 0, b, c, n_ch, L, N,
                                                                              n_chunks, t, n, t_ok, n_ok, *flags)
    B_tile = tl.load(B_ptr + bc_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    C_tile = tl.load(C_ptr + bc_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    if GRADS:  # C backwards in time, flipped once for all channels: the adjoint's scan is its only use
        C_tile = tl.flip(C_tile, 1)
    gB_acc = tl.zeros([N_PAD, T], dtype=tl.float32)
    gC_acc = tl.zeros([N_PAD, T], dtype=tl.float32)
    for i in tl.range(BLOCK, num_stages=STAGES, loop_unroll_factor=UNROLL):
        raw, bias, u, zz, g, pre, A, h0, carry = raw_n, bias_n, u_n, z_n, g_n, pre_n, A_n, h0_n, carry_n
        raw_n, bias_n, u_n, z_n, g_n, pre_n, A_n, h0_n, carry_n = _channel_inputs(*rows, blk, i + 1, b, c, n_ch, L, N,
                                                                                  n_chunks, t, n, t_ok, n_ok, *flags)
        d, d_ok, mask, row = _channel(blk, i, b, n_ch, L, t_ok, BLOCK)
        dt = _delta(raw, bias, mask, HAS_BIAS, SOFTPLUS)
        A2 = A * LOG2E
        state_offsets = ((b * n_ch + d) * n_chunks + c) * N + n
        gy = g
        if HAS_Z:
            sig = tl.sigmoid(zz)
            gy = g * zz * sig
        if GRADS:
            # Forward states of this chunk, recomputed from its incoming state.
            a = tl.exp2(dt[None, :] * A2[:, None])
            drive = (dt * u)[None, :] * B_tile
            h = _chunk_states(a, drive, h0, T)
            # Adjoint: lambda[t] = C[t] gy[t] + a[t+1] lambda[t+1], and at the chunk's last sample
            # (where a[t+1] is 1) plus the adjoint carried in from later chunks. That is a forward
            # scan over the chunk backwards in time. Position j holds time T - 1 - j, whose decay
            # takes dt[T - j], gathered from the row: zero at j = 0 (the chunk's end) and past the
            # sequence's end (where dt is masked to zero). C is flipped once for the block (above),
            # gy flipped in (a row: cheap), lambda flipped out (a tile: the one tile flip per
            # channel). At the outer stage Triton's reverse scan cost 1.1 ms more than a forward
            # one, a tile's tl.flip about 0.2 ms (BENCHMARKS.md). Padded states and times, and a
            # block's missing channels, load as zeros, so lambda and h are zero there and need no mask.
            back = tl.arange(0, T)
            dt_next_back = tl.where(back == 0, 0.0, tl.gather(dt, tl.minimum(T - back, T - 1), 0))
            last = (back == 0)[None, :]  # the chunk's last sample, first backwards
            lam_in_back = C_tile * tl.flip(gy, 0)[None, :] + tl.where(last, carry[:, None], 0.0)
            a_next_back = tl.exp2(dt_next_back[None, :] * A2[:, None])
            lam_back = tl.associative_scan((a_next_back, lam_in_back), 1, _combine)[1]
            lam = tl.flip(lam_back, 1)
            g_decay = lam * (h - drive)  # d loss / d (dt * A) = lambda[t] a[t] h[t-1]
            gdt = tl.sum(lam * B_tile, axis=0) * u + tl.sum(g_decay * A[:, None], axis=0)
            gu = tl.sum(lam * B_tile, axis=0) * dt
            D = tl.load(D_ptr + d, mask=d_ok & (group == 0), other=0.0).to(tl.float32) if HAS_D else 0.0
            gu += gy * D
            if HAS_Z:
                gz = g * pre * sig * (1.0 + zz * (1.0 - sig))
                tl.store(gz_ptr + row + t, gz.to(gz_ptr.dtype.element_ty), mask=mask & (group == 0))
            if SOFTPLUS:
                gdt = gdt * tl.sigmoid(raw + bias if HAS_BIAS else raw)
            gdt = tl.where(mask, gdt, 0.0)
            tl.store(gdelta_ptr + partial + row + t, gdt.to(gdelta_ptr.dtype.element_ty), mask=mask)
            tl.store(gu_ptr + partial + row + t, gu.to(gu_ptr.dtype.element_ty), mask=mask)
            tl.store(sums_row + d * N + n, tl.sum(g_decay * dt[None, :], axis=1), mask=n_ok & d_ok)
            tl.store(sums_row + n_ch * N + d, tl.sum(gy * u, axis=0), mask=d_ok & (group == 0))
            tl.store(sums_row + n_ch * (N + 1 + group) + d, tl.sum(gdt, axis=0), mask=d_ok)
            gB_acc += lam * (dt * u)[None, :]
            gC_acc += h * gy[None, :]
        else:
            # a[first] * lambda_local[first] = sum_t exp(A * cumsum(dt)[t]) * C[t] gy[t]: no scan needed.
            cum = tl.cumsum(dt, axis=0)
            handed = tl.sum(tl.exp2(A2[:, None] * cum[None, :]) * C_tile * gy[None, :], axis=1)
            tl.store(first_ptr + state_offsets, handed, mask=n_ok & d_ok)
    if GRADS:
        block_offset = blk * tl.num_programs(1) * N * L  # this channel block's slice of the partial sums
        tl.store(gB_ptr + block_offset + bc_offsets, gB_acc, mask=tile_ok)
        tl.store(gC_ptr + block_offset + bc_offsets, gC_acc, mask=tile_ok)


@triton.jit
def _sum_partials(sums_ptr, gA_ptr, gD_ptr, gbias_ptr, rows, n_ch, N, GROUPS: tl.constexpr,
                  BLOCK_ROWS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr):
    """Adds up the gradients pass's partial sums: ``sums`` is (rows, n_ch (N + 1 + GROUPS)), one row
    per (batch row, chunk) holding gA's (channel, state) terms, then gD's channels, then gbias's
    (group, channel). A program takes BLOCK_COLUMNS columns through all the rows, in order (the sum
    is deterministic: no atomics, no second pass), and writes gA (n_ch, N), gD (n_ch) and the
    per-group gbias (GROUPS, n_ch)."""
    width = n_ch * (N + 1 + GROUPS)
    col = tl.program_id(0) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    row = tl.arange(0, BLOCK_ROWS)
    acc = tl.zeros([BLOCK_ROWS, BLOCK_COLUMNS], tl.float32)
    for r0 in range(0, rows, BLOCK_ROWS):
        ok = (r0 + row < rows)[:, None] & (col < width)[None, :]
        acc += tl.load(sums_ptr + (r0 + row)[:, None].to(tl.int64) * width + col[None, :], mask=ok, other=0.0)
    total = tl.sum(acc, axis=0)
    n_A = n_ch * N
    tl.store(gA_ptr + col, total, mask=col < n_A)
    tl.store(gD_ptr + col - n_A, total, mask=(col >= n_A) & (col < n_A + n_ch))
    tl.store(gbias_ptr + col - n_A - n_ch, total, mask=(col >= n_A + n_ch) & (col < width))


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    tensors = [x.contiguous() if x is not None else None for x in (u, delta, A, B, C, D, z, delta_bias)]
    return tensors, _meta(u, A)


def _meta(u, A):
    """The scan's sizes and chunking: the batch, channels, length L, states N (N_PAD, a power of
    two), the chunk length T and the number of chunks."""
    batch, n_ch, L = u.shape
    N = A.shape[1]
    T = _chunk_len(N)
    # Triton assumes an integer argument divisible by 16 when it is (and compiles for that), else
    # nothing. A length like 1000 (the U-Net's center stage) would then make every row's start look
    # unaligned, and the loads scalar: 2.4x slower per element. So the kernels take L as
    # L_UNITS * L_ALIGN, with L_ALIGN (a power of two up to 16 dividing L) fixed at compile time.
    align = math.gcd(L, 16)
    return dict(batch=batch, n_ch=n_ch, L=L, N=N, T=T, n_chunks=triton.cdiv(L, T), N_PAD=triton.next_power_of_2(N),
                L_UNITS=L // align, L_ALIGN=align)


def _chunked(m, T):
    """Meta ``m`` with chunks of T."""
    return dict(m, T=T, n_chunks=triton.cdiv(m["L"], T))


def _backward_chunk(u, m, backward_follows: bool) -> int:
    """The backward's chunk length, and so how often the forward saves its state for it: the
    forward's chunk, or half of it where a backward will follow and the Gluon gradients pass can
    run, which takes chunks of 32 (``selective_scan_gluon``). The Gluon forward, which runs there
    too, saves its state after any chunk of 32; switched to, the Triton forward saves a state at
    the middle of each of its chunks of 64 too (0.62 ms against 0.55 at the outer stage,
    BENCHMARKS.md, "Selective-scan kernels, session 33"). This depends on the shape and the
    machine only, never on a switch (``AUDIOMAMBA_GLUON``, ``GLUON``): torch.compile caches graphs
    that hold these shapes."""
    if backward_follows and m["N_PAD"] <= SEQUENTIAL_MAX_STATES and m["T"] % 2 == 0:
        half = _chunked(m, m["T"] // 2)
        if _gluon_fits(u, half, _tiles(half, backward=True)):
            return half["T"]
    return m["T"]


def _tiles(m, backward: bool):
    """The chunk kernels' tile settings, from the module defaults (which tests and kernels/tune.py
    change). A backward program runs BLOCK = min(BLOCK_D, channels) channels, one after another, reusing its
    B and C tiles; where they do not come in whole blocks of BLOCK_D, half of that, so that the Gluon
    backward, which takes whole blocks only, still runs at widths such as 192. More channels a
    program also means fewer partial sums of gB and gC to write and add up: on the H200, 64 against
    16 cut fwd+bwd by 1.8-3.1% at the outer, middle and LM-like shapes of kernels/bench.py and a
    sc09_mamba training step by 1.5% (session 31); 128 against 64, with the Gluon backward, 2.2% at
    the outer stage (one block: no partial sums), 1.1-1.4% at the middle and LM-like shapes, the
    same at the center (session 38; 256 was 3% slower there). The chunked forward, which runs only
    for more than SEQUENTIAL_MAX_STATES states and needs no whole blocks, takes FORWARD_BLOCK_D
    channels: at 64 states 2.02 ms, against 2.04-2.05 at 16 and 64 and 2.09 at 128 (session 39). A
    backward program takes N_PAD of the states, GROUPS programs all of them: BACKWARD_TILE elements
    at most, since larger tiles spill (H200, outer stage fwd+bwd: n = 32 in one program 10.1 ms, in
    two 7.0; n = 64 in one program with 2 warps 22.0 ms, in two 13.6)."""
    if not backward:
        return dict(L_ALIGN=m["L_ALIGN"], T=m["T"], N_PAD=m["N_PAD"], BLOCK=min(FORWARD_BLOCK_D, m["n_ch"]),
                    STAGES=LOOP_STAGES, UNROLL=LOOP_UNROLL, num_warps=NUM_WARPS)
    block = min(BLOCK_D, m["n_ch"])
    if m["n_ch"] % block:
        block = min(max(1, BLOCK_D // 2), m["n_ch"])
    group = max(1, min(m["N_PAD"], BACKWARD_TILE // m["T"]))
    return dict(L_ALIGN=m["L_ALIGN"], T=m["T"], N_PAD=group, GROUPS=m["N_PAD"] // group, BLOCK=block,
                STAGES=LOOP_STAGES, UNROLL=LOOP_UNROLL, num_warps=NUM_WARPS)


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, save_pre):
    """y, the final state, each chunk's incoming state and delta sum, and with ``save_pre`` (and z)
    y before the gate (for the backward; else an empty tensor)."""
    (u, delta, A, B, C, D, z, bias), m = _prepare(u, delta, A, B, C, D, z, delta_bias)
    A = A.float()
    f32 = dict(device=u.device, dtype=torch.float32)
    every = _backward_chunk(u, m, save_pre)  # samples between the states saved for the backward
    saved = triton.cdiv(m["L"], every)
    dt_sum = torch.empty(m["batch"], m["n_ch"], saved, **f32)
    incoming = torch.empty(m["batch"], m["n_ch"], saved, m["N"], **f32)
    final = torch.empty(m["batch"], m["n_ch"], m["N"], **f32)
    y = torch.empty_like(u)
    save_pre = save_pre and z is not None
    pre = torch.empty_like(u) if save_pre else u.new_empty(0)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus)
    args = (u, delta, A, B, C, D if D is not None else u, z if z is not None else u, bias if bias is not None else u)
    sizes = (m["n_ch"], m["L_UNITS"], m["N"], m["n_chunks"])
    init = initial_state.float().contiguous() if initial_state is not None else final
    if m["N_PAD"] <= SEQUENTIAL_MAX_STATES:
        pairs = (B.dtype == C.dtype == torch.bfloat16 and m["L"] % 2 == 0
                 and B.data_ptr() % 4 == 0 and C.data_ptr() % 4 == 0)
        if GLUON and gluon_dispatch.may_run(u) and _gluon_forward_fits(u, B, C, m, every):
            _gluon().forward(args, (y, pre if save_pre else y, init, incoming, dt_sum, final),
                             (m["batch"], m["n_ch"], m["L_UNITS"]), every,
                             dict(L_ALIGN=m["L_ALIGN"], SAVE_PRE=save_pre, HAS_INIT=initial_state is not None,
                                  PAIRS=pairs, **flags))
            return y, final, incoming, dt_sum, pre
        _scan_sequential[(m["batch"], triton.cdiv(m["n_ch"], 2))](
            *args, y, pre if save_pre else y, init, incoming, dt_sum, final, *sizes, saved, L_ALIGN=m["L_ALIGN"],
            T=m["T"], SPLIT=m["T"] // every, N_PAD=m["N_PAD"], SAVE_PRE=save_pre, HAS_INIT=initial_state is not None,
            PAIRS=pairs, num_warps=1, **flags)
        return y, final, incoming, dt_sum, pre
    end_state = torch.empty_like(incoming)
    common = dict(_tiles(m, backward=False), **flags)
    grid = (m["n_chunks"], m["batch"], triton.cdiv(m["n_ch"], common["BLOCK"]))
    _scan_chunks[grid](*args, y, y, end_state, dt_sum, incoming, *sizes, OUTPUT=False, SAVE_PRE=False, **common)
    _pass_chunks[(m["batch"], m["n_ch"])](A, end_state, dt_sum, incoming, init, final, m["n_ch"], m["N"],
                                          m["n_chunks"], N_PAD=m["N_PAD"], REVERSE=False,
                                          HAS_INIT=initial_state is not None, K=PASS_CHUNKS, num_warps=PASS_WARPS)
    _scan_chunks[grid](*args, y, pre if save_pre else y, end_state, dt_sum, incoming, *sizes, OUTPUT=True,
                       SAVE_PRE=save_pre, **common)
    return y, final, incoming, dt_sum, pre


def _gluon_backward(u, m, tiles) -> bool:
    """Whether the Gluon kernels take this backward's two chunk passes (the adjoint handed back, the
    gradients), at chunks of ``m["T"]``: where they fit, unless switched off (``AUDIOMAMBA_GLUON=0``, GLUON)."""
    return GLUON and gluon_dispatch.may_run(u) and _gluon_fits(u, m, tiles)


def _gluon_fits(u, m, tiles) -> bool:
    """Whether the Gluon gradients pass (``selective_scan_gluon``) can take a backward at chunks of
    ``m["T"]`` with these tiles, on this machine."""
    gluon = _gluon() if gluon_dispatch.can_run(u) else None
    return gluon is not None and gluon.fits(u, m["N"], m["T"], m["n_ch"], tiles["BLOCK"], tiles["GROUPS"])


def _gluon_forward_fits(u, B, C, m, every: int) -> bool:
    """Whether the Gluon forward (``selective_scan_gluon``) can take this scan, saving its states
    every ``every`` samples, on this machine."""
    gluon = _gluon() if gluon_dispatch.can_run(u) else None
    return gluon is not None and gluon.forward_fits(u, B, C, m["n_ch"], every)


def _gluon():
    """The module ``selective_scan_gluon``, or None where Gluon does not import."""
    return gluon_dispatch.kernel_module("selective_scan_gluon", "scan passes")


def _backward(gy, u, delta, A, B, C, D, z, delta_bias, softplus, incoming, dt_sum, pre):
    (u, delta, A, B, C, D, z, bias), m = _prepare(u, delta, A, B, C, D, z, delta_bias)
    if incoming.shape[-2] != m["n_chunks"]:  # the forward saved its states every half chunk
        m = _chunked(m, m["T"] // 2)
        if incoming.shape[-2] != m["n_chunks"]:
            raise ValueError(f"the scan's backward got {incoming.shape[-2]} saved states for length {m['L']}")
    if z is not None and pre.shape != u.shape:
        raise ValueError("the scan's backward with z needs the output before the gate, saved by the forward")
    A, gy = A.float(), gy.contiguous()
    f32 = dict(device=u.device, dtype=torch.float32)
    first = torch.empty_like(incoming)
    carry_in = torch.empty_like(incoming)
    g_init = torch.empty(m["batch"], m["n_ch"], m["N"], **f32)
    tiles = _tiles(m, backward=True)
    groups, blocks = tiles["GROUPS"], triton.cdiv(m["n_ch"], tiles["BLOCK"])
    # Partial sums, added up below (no atomics); every element is written. With one group, gu and
    # gdelta are written in the inputs' dtypes; with several, as fp32 partials. gz is written once.
    def per_group(x):
        return torch.empty_like(x) if groups == 1 else torch.empty(groups, *x.shape, **f32)
    gu, gdelta = per_group(u), per_group(delta)
    gz = torch.empty_like(z) if z is not None else None
    sums = torch.empty(m["batch"] * m["n_chunks"], m["n_ch"] * (m["N"] + 1 + groups), **f32)  # gA, gD, gbias
    gB = torch.empty(blocks, *B.shape, **f32)
    gC = torch.empty(blocks, *C.shape, **f32)
    grid = (m["n_chunks"], m["batch"], blocks * groups)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus)
    args = (u, delta, A, B, C, D if D is not None else u, z if z is not None else u, bias if bias is not None else u,
            gy, pre if z is not None else gy, incoming, first, carry_in, gu, gdelta, gz if gz is not None else gu,
            sums, gB, gC)
    sizes = (m["n_ch"], m["L_UNITS"], m["N"], m["n_chunks"])
    common = dict(tiles, **flags)
    gluon = _gluon_backward(u, m, tiles)
    if gluon:
        _gluon().handed_back(grid, args, sizes, tiles, flags)
    else:
        _scan_chunks_bwd[grid](*args, *sizes, GRADS=False, **common)
    _pass_chunks[(m["batch"], m["n_ch"])](A, first, dt_sum, carry_in, g_init, g_init, m["n_ch"], m["N"],
                                          m["n_chunks"], N_PAD=m["N_PAD"], REVERSE=True, HAS_INIT=False, K=PASS_CHUNKS,
                                          num_warps=PASS_WARPS)
    if gluon:
        _gluon().gradients(grid, args, sizes, tiles, flags)  # the same grid and partial sums
    else:
        _scan_chunks_bwd[grid](*args, *sizes, GRADS=True, **common)
    if groups > 1:
        gu, gdelta = gu.sum(0).to(u.dtype), gdelta.sum(0).to(delta.dtype)
    if blocks == 1:  # one channel block: its partial sums are the sums, and no pass over them is needed
        gB, gC = gB[0], gC[0]
    else:
        gB, gC = gB.sum(0), gC.sum(0)
    gA, gD, gbias = torch.empty_like(A), torch.empty(m["n_ch"], **f32), torch.empty(groups, m["n_ch"], **f32)
    _sum_partials[(triton.cdiv(sums.shape[1], SUM_COLUMNS),)](sums, gA, gD, gbias, sums.shape[0], m["n_ch"], m["N"],
                                                              GROUPS=groups, BLOCK_ROWS=SUM_ROWS,
                                                              BLOCK_COLUMNS=SUM_COLUMNS, num_warps=8)
    return (gu, gdelta, gA, gB, gC, gD if D is not None else None, gz,
            (gbias[0] if groups == 1 else gbias.sum(0)) if bias is not None else None, g_init)


# The scan as two PyTorch custom operators, forward and backward, with the backward registered as
# the forward's gradient: torch.compile keeps them in its graph as single calls. (Before, the scan
# ran under torch.compiler.disable, which cut a compiled sc09_mamba training step into 166 graphs,
# each with its own Python overhead.) Custom operators return no None, so gradients of absent
# inputs come back as empty tensors. Eager code runs the same functions as a plain autograd Function
# (``_eager_scan``, see eager_function.py).

# torch.compile's on-disk cache (torch 2.11) keys a graph by its operators' names, not by the shapes
# their fake kernels give (pytorch/pytorch#160472). So a change to what an operator returns bumps
# OPS_VERSION, in its name; else a warm cache would replay code compiled for the old shapes.
OPS_VERSION = 2  # 2: the saved states laid out (batch, channel, chunk, state)


@torch.library.custom_op(f"audiomamba::selective_scan_v{OPS_VERSION}", mutates_args=())
def _scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
          D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], softplus: bool,
          initial_state: Optional[torch.Tensor], save_pre: bool
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, final state, each chunk's incoming state, each chunk's delta sum, y before the gate or
    an empty tensor); see ``_forward``."""
    return _forward(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, save_pre)


@_scan.register_fake
def _scan_shapes(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, save_pre):
    m = _meta(u, A)
    batch, n_ch, N = m["batch"], m["n_ch"], m["N"]
    n_chunks = triton.cdiv(m["L"], _backward_chunk(u, m, save_pre))
    f32 = dict(device=u.device, dtype=torch.float32)
    pre_shape = u.shape if save_pre and z is not None else (0,)
    return (torch.empty(u.shape, dtype=u.dtype, device=u.device), torch.empty(batch, n_ch, N, **f32),
            torch.empty(batch, n_ch, n_chunks, N, **f32), torch.empty(batch, n_ch, n_chunks, **f32),
            torch.empty(pre_shape, dtype=u.dtype, device=u.device))


@torch.library.custom_op(f"audiomamba::selective_scan_backward_v{OPS_VERSION}", mutates_args=())
def _scan_backward(gy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                   delta_bias: Optional[torch.Tensor], softplus: bool, incoming: torch.Tensor,
                   dt_sum: torch.Tensor, pre: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gu, gdelta, gA, gB, gC, gD, gz, gbias, g_initial_state); see ``_backward``."""
    grads = _backward(gy, u, delta, A, B, C, D, z, delta_bias, softplus, incoming, dt_sum, pre)
    return tuple(g if g is not None else u.new_empty(0) for g in grads)


@_scan_backward.register_fake
def _scan_backward_shapes(gy, u, delta, A, B, C, D, z, delta_bias, softplus, incoming, dt_sum, pre):
    def like(x, dtype=torch.float32):
        return torch.empty(x.shape, dtype=dtype, device=u.device) if x is not None else u.new_empty(0)
    return (like(u, u.dtype), like(delta, delta.dtype), like(A), like(B), like(C), like(D),
            like(z, z.dtype if z is not None else None), like(delta_bias), like(incoming[..., 0, :]))


def _scan_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, _ = inputs
    _, final, incoming, dt_sum, pre = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, incoming, dt_sum, pre, initial_state)
    ctx.softplus = softplus
    ctx.mark_non_differentiable(final, incoming, dt_sum, pre)
    # Only y is differentiable, so the backward runs only with y's gradient. Without this, autograd
    # would fill zero gradients for the four other outputs first (25 MB at the center stage).
    ctx.set_materialize_grads(False)


def _gradients(run_backward, ctx, gy):
    """The inputs' gradients from y's gradient gy, computed by ``run_backward`` (``_backward`` or
    its custom operator); absent inputs get None."""
    u, delta, A, B, C, D, z, bias, incoming, dt_sum, pre, initial_state = ctx.saved_tensors
    gu, gdelta, gA, gB, gC, gD, gz, gbias, g_init = run_backward(gy, u, delta, A, B, C, D, z, bias, ctx.softplus,
                                                                 incoming, dt_sum, pre)
    return (gu, gdelta, gA.to(A.dtype), gB.to(B.dtype), gC.to(C.dtype), gD.to(D.dtype) if D is not None else None,
            gz if z is not None else None, gbias.to(bias.dtype) if bias is not None else None, None,
            g_init.to(initial_state.dtype) if initial_state is not None else None, None)


_scan.register_autograd(lambda ctx, gy, *_: _gradients(_scan_backward, ctx, gy), setup_context=_scan_setup_context)


_eager_scan = plain_function("EagerScan", _forward, _scan_setup_context,
                             lambda ctx, gy, *_: _gradients(_backward, ctx, gy))


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None):
    """Triton selective scan; arguments and results as ``selective_scan_ref``. When autograd will
    need a backward, the forward also keeps y before the gate (one more (batch, d, L) tensor in u's
    dtype, as mamba_ssm keeps), which spares the backward a sum over the states."""
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    save_pre = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    scan = for_caller(_scan, _eager_scan)
    y, final, _, _, _ = scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save_pre)
    return (y, final) if return_last_state else y


@triton.jit
def _load_state(state_ptr, A_ptr, b, d, n, d_ok, n_ok, n_ch, N):
    """The state h (BLOCK, n) of channels d of batch row b, their A, and where h lives."""
    ok = d_ok[:, None] & n_ok[None, :]
    offsets = (b * n_ch + d[:, None]) * N + n[None, :]
    h = tl.load(state_ptr + offsets, mask=ok, other=0.0)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=ok, other=0.0).to(tl.float32)
    return h, A, offsets, ok


@triton.jit
def _advance(state_ptr, offsets, ok, h, A, dt, x, Bv, Cv):
    """h <- exp(dt A) h + dt x B, stored in place; returns <C, h> (BLOCK,)."""
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_ptr + offsets, h, mask=ok)
    return tl.sum(h * Cv[None, :], axis=1)


@triton.jit
def _state_update(state_ptr, x_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, n_ch, N,
                  N_PAD: tl.constexpr, BLOCK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One step for a block of channels: state (BLOCK, n) updated in place, y (BLOCK,) written."""
    b, blk = tl.program_id(0), tl.program_id(1)
    d = blk * BLOCK + tl.arange(0, BLOCK)
    n = tl.arange(0, N_PAD)
    d_ok, n_ok = d < n_ch, n < N
    dt = tl.load(delta_ptr + b * n_ch + d, mask=d_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    x = tl.load(x_ptr + b * n_ch + d, mask=d_ok, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * N + n, mask=n_ok, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * N + n, mask=n_ok, other=0.0).to(tl.float32)
    h, A, offsets, ok = _load_state(state_ptr, A_ptr, b, d, n, d_ok, n_ok, n_ch, N)
    y = _advance(state_ptr, offsets, ok, h, A, dt, x, Bv, Cv)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + b * n_ch + d, mask=d_ok, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(y_ptr + b * n_ch + d, y.to(y_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _projected_state_update(state_ptr, x_ptr, z_ptr, xp_ptr, dtw_ptr, bias_ptr, A_ptr, D_ptr, y_ptr, n_ch, N, R,
                            N_PAD: tl.constexpr, R_PAD: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                            PDL: tl.constexpr):
    """Mamba's step from x itself, for a block of channels: x_proj (dt_low, B, C from all of row
    b's x, recomputed by each block: a few thousand multiply-adds), dt_proj and softplus, then the
    update, D and the silu(z) gate. Everything that does not depend on x_proj is loaded first, so
    that those loads overlap its reduction (at batch 1 the kernel is latency-bound); with
    programmatic dependent launch (``pdl``), the weights before waiting for x."""
    b, blk = tl.program_id(0), tl.program_id(1)
    r, n = tl.arange(0, R_PAD), tl.arange(0, N_PAD)
    r_ok, n_ok = r < R, n < N
    d = blk * BLOCK + tl.arange(0, BLOCK)
    d_ok = d < n_ch
    w_dt = tl.load(dtw_ptr + d[:, None] * R + r[None, :], mask=d_ok[:, None] & r_ok[None, :], other=0.0)
    bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0)
    D = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    h, A, offsets, ok = _load_state(state_ptr, A_ptr, b, d, n, d_ok, n_ok, n_ch, N)
    x = tl.load(x_ptr + b * n_ch + d, mask=d_ok, other=0.0).to(tl.float32)
    zz = tl.load(z_ptr + b * n_ch + d, mask=d_ok, other=0.0).to(tl.float32)
    dt_low = tl.zeros([R_PAD], dtype=tl.float32)
    Bv = tl.zeros([N_PAD], dtype=tl.float32)
    Cv = tl.zeros([N_PAD], dtype=tl.float32)
    for e0 in range(0, n_ch, CHUNK):  # x_proj's rows: [0, R) dt_low, [R, R + N) B, [R + N, R + 2N) C
        e = e0 + tl.arange(0, CHUNK)
        e_ok = e < n_ch
        xe = tl.load(x_ptr + b * n_ch + e, mask=e_ok, other=0.0).to(tl.float32)[None, :]
        w_ok = n_ok[:, None] & e_ok[None, :]
        dt_low += tl.sum(tl.load(xp_ptr + r[:, None] * n_ch + e[None, :], mask=r_ok[:, None] & e_ok[None, :],
                                 other=0.0).to(tl.float32) * xe, axis=1)
        Bv += tl.sum(tl.load(xp_ptr + (R + n[:, None]) * n_ch + e[None, :], mask=w_ok, other=0.0).to(tl.float32) * xe,
                     axis=1)
        Cv += tl.sum(tl.load(xp_ptr + (R + N + n[:, None]) * n_ch + e[None, :], mask=w_ok, other=0.0).to(tl.float32)
                     * xe, axis=1)
    dt = _softplus(tl.sum(w_dt.to(tl.float32) * dt_low[None, :], axis=1) + bias)
    y = _advance(state_ptr, offsets, ok, h, A, dt, x, Bv, Cv) + D * x
    tl.store(y_ptr + b * n_ch + d, (y * zz * tl.sigmoid(zz)).to(y_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _step_projections(x_ptr, xp_ptr, dtw_ptr, dt_ptr, B_ptr, C_ptr, batch, n_ch, N, R, BM: tl.constexpr,
                      CHUNK: tl.constexpr, BLOCK: tl.constexpr, N_PAD: tl.constexpr, R_PAD: tl.constexpr,
                      PDL: tl.constexpr):
    """x_proj and dt_proj of BM batch rows: dt_low, B, C (BM, R / N) = x (BM, n_ch) x_proj^T by dots
    over chunks of CHUNK channels, each weight tile read once for the BM rows; then dt (BM, BLOCK)
    = dt_low dt_proj^T for this program's BLOCK channels (before the bias and softplus). Every
    program of a row block recomputes x_proj (a few thousand multiply-adds a row); the first writes
    B and C. Dots in 3xTF32, so fp32 accuracy (bf16 weights are exact in TF32)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    blk = tl.program_id(1)
    r, n = tl.arange(0, R_PAD), tl.arange(0, N_PAD)
    row_ok, r_ok, n_ok = rows < batch, r < R, n < N
    d = blk * BLOCK + tl.arange(0, BLOCK)
    d_ok = d < n_ch
    w_dt = tl.load(dtw_ptr + d[:, None] * R + r[None, :], mask=d_ok[:, None] & r_ok[None, :], other=0.0)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    dt_low = tl.zeros([BM, R_PAD], dtype=tl.float32)
    Bv = tl.zeros([BM, N_PAD], dtype=tl.float32)
    Cv = tl.zeros([BM, N_PAD], dtype=tl.float32)
    for e0 in range(0, n_ch, CHUNK):  # x_proj's rows: [0, R) dt_low, [R, R + N) B, [R + N, R + 2N) C
        e = e0 + tl.arange(0, CHUNK)
        e_ok = e < n_ch
        x = tl.load(x_ptr + rows[:, None] * n_ch + e[None, :], mask=row_ok[:, None] & e_ok[None, :],
                    other=0.0).to(tl.float32)
        w_ok = e_ok[:, None] & n_ok[None, :]
        w_r = tl.load(xp_ptr + r[None, :] * n_ch + e[:, None], mask=e_ok[:, None] & r_ok[None, :], other=0.0)
        w_B = tl.load(xp_ptr + (R + n[None, :]) * n_ch + e[:, None], mask=w_ok, other=0.0)
        w_C = tl.load(xp_ptr + (R + N + n[None, :]) * n_ch + e[:, None], mask=w_ok, other=0.0)
        dt_low = tl.dot(x, w_r.to(tl.float32), dt_low, input_precision="tf32x3")
        Bv = tl.dot(x, w_B.to(tl.float32), Bv, input_precision="tf32x3")
        Cv = tl.dot(x, w_C.to(tl.float32), Cv, input_precision="tf32x3")
    dt = tl.dot(dt_low, tl.trans(w_dt.to(tl.float32)), input_precision="tf32x3")  # (BM, BLOCK)
    tl.store(dt_ptr + rows[:, None] * n_ch + d[None, :], dt, mask=row_ok[:, None] & d_ok[None, :])
    if blk == 0:
        tl.store(B_ptr + rows[:, None] * N + n[None, :], Bv, mask=row_ok[:, None] & n_ok[None, :])
        tl.store(C_ptr + rows[:, None] * N + n[None, :], Cv, mask=row_ok[:, None] & n_ok[None, :])


def projections_first_pay(batch: int, n_ch: int, dtype: torch.dtype) -> bool:
    """Whether ``projected_state_update`` runs ``step_projections`` and then the update (two
    kernels) rather than the fused kernel, for ``batch`` rows of ``n_ch`` channels whose
    projections are in ``dtype``."""
    narrow_bf16 = dtype == torch.bfloat16 and n_ch < 512
    return batch >= (PROJECT_FIRST_FROM_NARROW_BF16 if narrow_bf16 else PROJECT_FIRST_FROM)


def step_projections(x, x_proj_weight, dt_proj_weight, N):
    """x (batch, n_ch) -> dt (batch, n_ch) before bias and softplus, B and C (batch, N), fp32: as
    ``projected_state_update_ref`` computes them with x_proj_weight (R + 2N, n_ch) and
    dt_proj_weight (n_ch, R)."""
    batch, n_ch = x.shape
    R = dt_proj_weight.shape[1]
    x, x_proj_weight, dt_proj_weight = x.contiguous(), x_proj_weight.contiguous(), dt_proj_weight.contiguous()
    dt = torch.empty(batch, n_ch, device=x.device, dtype=torch.float32)
    B = torch.empty(batch, N, device=x.device, dtype=torch.float32)
    C = torch.empty_like(B)
    row_blocks = triton.cdiv(batch, PROJECTION_ROWS)
    block = min(max(16, triton.next_power_of_2(n_ch)),
                max(64, triton.next_power_of_2(triton.cdiv(n_ch * row_blocks, PROJECTION_PROGRAMS))))
    pdl = launch_options(x)
    _step_projections[(row_blocks, triton.cdiv(n_ch, block))](
        x, x_proj_weight, dt_proj_weight, dt, B, C, batch, n_ch, N, R, BM=PROJECTION_ROWS,
        CHUNK=min(64, max(16, triton.next_power_of_2(n_ch))), BLOCK=block, N_PAD=max(16, triton.next_power_of_2(N)),
        R_PAD=max(16, triton.next_power_of_2(R)), PDL=bool(pdl), **pdl)
    return dt, B, C


def selective_state_update(state, x, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One recurrent step, fused; arguments and results as ``selective_state_update_ref``."""
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("the scan state must be a contiguous fp32 tensor (it is updated in place)")
    batch, n_ch = x.shape
    N = A.shape[1]
    x, delta, A, B, C = (t.contiguous() for t in (x, delta, A, B, C))
    y = torch.empty_like(x)
    block = min(64, triton.next_power_of_2(n_ch))
    _state_update[(batch, triton.cdiv(n_ch, block))](
        state, x, delta, A, B, C, D if D is not None else x, z.contiguous() if z is not None else x,
        delta_bias if delta_bias is not None else x, y, n_ch, N, N_PAD=triton.next_power_of_2(N), BLOCK=block,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
    return y


def projected_state_update(state, x, z, x_proj_weight, dt_proj_weight, dt_bias, A, D):
    """Mamba's recurrent step from x, fused; arguments and results as ``projected_state_update_ref``.
    At the batches where ``projections_first_pay``, x_proj and dt_proj run first
    (``step_projections``, each weight tile read once per 16 rows) and a second kernel does the
    rest (``selective_state_update``): the fused kernel's programs each read all of x_proj's
    weights for their row, which at such batches costs more than the extra launch."""
    if state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError("the scan state must be a contiguous fp32 tensor (it is updated in place)")
    batch, n_ch = x.shape
    if projections_first_pay(batch, n_ch, x_proj_weight.dtype):
        delta, B, C = step_projections(x, x_proj_weight, dt_proj_weight, A.shape[1])
        return selective_state_update(state, x, delta, A, B, C, D, z, dt_bias, delta_softplus=True)
    N, R = A.shape[1], dt_proj_weight.shape[1]
    x, z, x_proj_weight, dt_proj_weight, A = (t.contiguous() for t in (x, z, x_proj_weight, dt_proj_weight, A))
    y = torch.empty_like(x)
    block = min(64, triton.next_power_of_2(n_ch))
    pdl = launch_options(x)
    _projected_state_update[(batch, triton.cdiv(n_ch, block))](
        state, x, z, x_proj_weight, dt_proj_weight, dt_bias.float().contiguous(), A, D.contiguous(), y, n_ch, N, R,
        N_PAD=triton.next_power_of_2(N), R_PAD=max(2, triton.next_power_of_2(R)), BLOCK=block,
        CHUNK=min(128, triton.next_power_of_2(n_ch)), PDL=bool(pdl), **pdl)
    return y
