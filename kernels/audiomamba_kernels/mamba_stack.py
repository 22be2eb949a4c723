"""K residual Mamba blocks' generation step in one Triton kernel.

Same contract as ``audiomamba.ops.mamba_stack.mamba_stack_step_ref`` (the test oracle). One
program takes one batch row through all K blocks; its residual stream u (H,) stays in registers.
A block makes two passes over its inner channels, in chunks of CE:

1. fronts: LayerNorm(u), in_proj's x and z rows of the chunk, and the conv step with silu (the
   buffer shifted in place), kept in a small per-row scratch buffer; and the chunk's share of
   x_proj (dt_low, B, C).
2. backs, once x_proj is summed over every chunk: dt_proj and softplus, the state update, D and
   the silu(z) gate, and the chunk's share of out_proj; u += out_proj(y).

Each chunk issues all of its loads (weights, conv buffer, state) before it computes. A tile of
16384 weights (width 128) needs 8 warps' registers; with many rows, 4 warps let more programs
share an SM (``_num_warps``; BENCHMARKS.md, "Generation, sessions 10 and 19", has the measurements).
Where every size equals its padded one, the masks become constants and compile away (``EXACT``).

Everything is fp32 FMAs and reductions: one row gives no tile for tensor cores. The projections
may come in bf16 (``narrow_projections``, where that is exact); they are widened as they load.
Each row's program reads its stage's weights from L2 (128 KiB per block at width 64 in fp32),
so one program a row pays for narrow stages and moderate batches only; ``fused_step_pays`` says
where, from the measurements in BENCHMARKS.md (H100, "Generation, session 10"; H200, sessions
22 and 23 for split rows).

On Hopper GPUs, the outer and middle stages of d_model-64 recipes with bf16 projections go to a
Gluon kernel where it is faster (``gluon_fits``, ``mamba_stack_gluon``): the outer stage at batches
up to one row an SM and from 1.5 to 2, the middle one while its rows' clusters of 8 CTAs take up
to 3 CTAs an SM. It holds one inner channel a thread (or two) and copies each block's weights into
shared memory.

A split row. At batch 1 a row's program is one SM streaming every weight of every block, and
its time is latency. Where it pays (``programs_per_row``), SPLIT programs share a row, each
taking E / SPLIT inner channels: at width 128 where the Gluon kernel's clusters do not run (off
Hopper, fp32 projections, other shapes), and at width 256, where the fused kernel with split rows
beats the per-block kernels. ``ROW_SPLITS`` gives each split its warps a program
(one warp in 32 programs at width 128: every reduction stays within the warp). Each program
holds the whole stream u, so each computes the LayerNorm itself; the two sums over all
channels, x_proj's and out_proj's, are exchanged: every program stores its share, arrives at a
barrier on a counter in global memory (``_arrive``), waits there for the others (``_wait``) and
sums all shares in the same order, so every program keeps the same u. Where
``LOADS_DURING_WAITS`` says so (a program's share is one chunk), a program issues its next loads
between arriving and waiting: the back's at the first barrier, the next block's front at the
second. The wait spins on acquire loads, which, unlike the release an arrival needs, do not wait
for those loads to land. A launch's last program to finish sets the row's counters back to zero,
so a CUDA graph can replay it. The counters are one tensor per device: two launches that split
rows must not run at the same time on different streams (this project's
sampling runs one generation at a time, and so does the demo's queue).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from audiomamba_kernels import gluon_dispatch
from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs
from audiomamba_kernels.selective_scan import _advance, _softplus

TILE = 16384  # elements of a weight tile (CE x H): CE = TILE // H, at most E
FEW_ROWS = 128  # up to this batch, 8 warps for tiles of more than 8192 weights
MAX_WIDTH = 128  # where this kernel measured faster than the per-block kernels: stages up to this
MAX_ROWS_WIDTH2 = 1024 * 64**2  # width, at batch x width^2 (the weights read per block) up to this
BF16_MAX_WIDTH = 128  # stages up to this width read their projections in bf16 where that is exact
SPLIT_ROWS = 64  # at most this many programs in all when rows are split (all must run at once)
# Measured (BENCHMARKS.md, "Generation, sessions 23 and 26"): per stage width, how rows are split, as
# (programs a row, warps a program), in order of preference; the first that fits the batch is used.
ROW_SPLITS = {128: ((32, 1), (16, 4), (4, 4)), 256: ((64, 4), (32, 4), (16, 8))}
# Measured (BENCHMARKS.md, "Generation, session 28"): the (width, programs a row) whose programs issue
# their next loads between arriving at a barrier and waiting there (7-9% faster a block); slower
# at width 256 (up to 9%), no faster at (128, 4).
LOADS_DURING_WAITS = {(128, 32), (128, 16)}

_ROW_COUNTERS: dict[torch.device, torch.Tensor] = {}


def fused_step_pays(u: torch.Tensor, E: int) -> bool:
    """Whether this kernel beats the per-block kernels for rows u (batch, H) of E inner channels.
    Measured (BENCHMARKS.md): one program a row is faster at width 64 up to batch 1024 and at width
    128 up to batch 256; slower at width 128 from batch 512 and at width 256, except where rows
    are split (``programs_per_row``)."""
    batch, width = u.shape
    return (width <= MAX_WIDTH and batch * width**2 <= MAX_ROWS_WIDTH2) or programs_per_row(u, E) > 1


def bf16_projections_pay(width: int) -> bool:
    """Measured (BENCHMARKS.md, "Generation, session 13"): reading bf16 projections instead of fp32
    made every stage of width up to 128 faster, in this kernel and in the per-block kernels alike,
    and the per-block kernels of width 256 slower at batches up to 256."""
    return width <= BF16_MAX_WIDTH


def chunk_channels(E: int, h_pad: int) -> int:
    """CE, the inner channels a chunk of a block's front or back pass takes: (CE, H_PAD) weight
    tiles of at most TILE elements, and no more than E (rounded up to a power of two)."""
    return min(triton.next_power_of_2(E), max(16, TILE // h_pad))


def programs_per_row(u: torch.Tensor, E: int) -> int:
    """How many programs share a batch row's E inner channels (u: (batch, H)): the first of
    ``ROW_SPLITS`` that fits. Measured (BENCHMARKS.md, "Generation, sessions 22, 23 and 26"): a
    block of width 128 takes 7.5 us in one program a row at batch 1, 6.2 in 16 programs and 5.4
    in 32, and at batch 16 7.5 in one program a row and 6.9 in 4; of width 256, 15.1 in the
    per-block kernels and 6.9 in 64 programs; at width 64 one program a row is fastest. Split
    rows wait for each other twice a block, on counters in global memory, so every program must
    be resident at once: never under the Triton interpreter, which runs programs one after
    another, and never more programs than the device has SMs."""
    batch, width = u.shape
    if not u.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return 1
    for programs, _ in ROW_SPLITS.get(width, ()):
        if split_fits(batch, E, programs) and batch * programs <= _sm_count(u.device.index):
            return programs
    return 1


@functools.cache
def _sm_count(device_index: int | None) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_fits(batch: int, E: int, split: int) -> bool:
    """Whether rows of E inner channels can be split over ``split`` programs each: a power of two
    that divides E, and at most SPLIT_ROWS programs in all."""
    return split == triton.next_power_of_2(split) and E % split == 0 and batch * split <= SPLIT_ROWS


def _num_warps(batch: int, tile: int, width: int, split: int) -> int:
    """Warps a program: a split row's from its plan in ``ROW_SPLITS`` (4 for a split it does not
    list); one program a row: 8 for tiles of more than 8192 weights at few rows, else 4."""
    if split > 1:
        return dict(ROW_SPLITS.get(width, ())).get(split, 4)
    return 8 if batch <= FEW_ROWS and tile > 8192 else 4


def _masks_exact(sizes: tuple[int, ...], padded: tuple[int, ...], bf16: bool, num_warps: int, tile: int) -> bool:
    """EXACT: every size (H, N, R, conv width, E's remainder) is its padded one, so the kernel's
    masks can compare against constants and compile away. Measured (BENCHMARKS.md, "Generation,
    session 19"): 3-18% faster a block, except bf16 projections in 4-warp programs of big tiles
    (width 128 at batch 256), 16% slower there; that case keeps the masks."""
    return sizes == padded and not (bf16 and num_warps == 4 and tile > 8192)


@triton.jit
def _front_loads(in_w, conv_row, conv_w, conv_b, xp, e, e_ok, h, h_ok, w, w_ok, r, r_ok, n, n_ok, E, H, R, N,
                 WIDTH: tl.constexpr):
    """What the front of channels e reads: in_proj's x and z rows (CE, H_PAD), the conv buffer
    (CE, W_PAD) with the weights of its taps aligned to it (the oldest tap drops out), the newest
    input's conv weight and the bias (CE,), and x_proj's columns (R_PAD or N_PAD, CE)."""
    rows = in_w + e[:, None] * H + h[None, :]
    in_ok = e_ok[:, None] & h_ok[None, :]
    buf_ok = e_ok[:, None] & w_ok[None, :]
    p_ok = n_ok[:, None] & e_ok[None, :]
    return (tl.load(rows, mask=in_ok, other=0.0).to(tl.float32),
            tl.load(rows + E * H, mask=in_ok, other=0.0).to(tl.float32),
            tl.load(conv_row + e[:, None] * WIDTH + w[None, :], mask=buf_ok, other=0.0),
            tl.load(conv_w + e[:, None] * WIDTH + w[None, :] - 1, mask=buf_ok & (w[None, :] >= 1), other=0.0),
            tl.load(conv_w + e * WIDTH + WIDTH - 1, mask=e_ok, other=0.0), tl.load(conv_b + e, mask=e_ok, other=0.0),
            tl.load(xp + r[:, None] * E + e[None, :], mask=r_ok[:, None] & e_ok[None, :], other=0.0).to(tl.float32),
            tl.load(xp + (R + n[:, None]) * E + e[None, :], mask=p_ok, other=0.0).to(tl.float32),
            tl.load(xp + (R + N + n[:, None]) * E + e[None, :], mask=p_ok, other=0.0).to(tl.float32))


@triton.jit
def _front(un, w_x, w_z, buf, buf_w, new_w, conv_b, xp_dt, xp_B, xp_C, conv_row, e, e_ok, w, w_ok,
           WIDTH: tl.constexpr):
    """Channels e of one block, from ``_front_loads``: x, z (CE,) after in_proj and the conv step
    (the buffer shifted in place), and their shares of x_proj: dt_low (R_PAD,), B and C (N_PAD,)."""
    x = tl.sum(w_x * un[None, :], 1)
    z = tl.sum(w_z * un[None, :], 1)
    acc = conv_b + x * new_w + tl.sum(buf * buf_w, 1)
    tl.debug_barrier()  # every read of the buffer before the shifted writes
    shifted_ok = e_ok[:, None] & w_ok[None, :] & (w[None, :] >= 1)
    tl.store(conv_row + e[:, None] * WIDTH + w[None, :] - 1, buf, mask=shifted_ok)
    tl.store(conv_row + e * WIDTH + WIDTH - 1, x, mask=e_ok)
    x = acc * tl.sigmoid(acc)
    return x, z, tl.sum(xp_dt * x[None, :], 1), tl.sum(xp_B * x[None, :], 1), tl.sum(xp_C * x[None, :], 1)


@triton.jit
def _back_loads(dt_w, dt_b, A, D, out_w, ssm_row, e, e_ok, h, h_ok, r, r_ok, n, n_ok, E, R, N):
    """What the back of channels e reads: dt_proj's rows (CE, R_PAD), the bias and D (CE,), the
    state and A (CE, N_PAD), and out_proj's columns (H_PAD, CE)."""
    s_ok = e_ok[:, None] & n_ok[None, :]
    return (tl.load(dt_w + e[:, None] * R + r[None, :], mask=e_ok[:, None] & r_ok[None, :], other=0.0).to(tl.float32),
            tl.load(dt_b + e, mask=e_ok, other=0.0), tl.load(D + e, mask=e_ok, other=0.0),
            tl.load(ssm_row + e[:, None] * N + n[None, :], mask=s_ok, other=0.0),
            tl.load(A + e[:, None] * N + n[None, :], mask=s_ok, other=0.0),
            tl.load(out_w + h[:, None] * E + e[None, :], mask=h_ok[:, None] & e_ok[None, :], other=0.0).to(tl.float32))


@triton.jit
def _back(x, z, dt_low, Bv, Cv, w_dt, dt_b, D, s, A, w_out, ssm_row, e, e_ok, n, n_ok, N):
    """Channels e of one block, from ``_back_loads``: the SSM step (state stored) and their share
    of out_proj (H_PAD,)."""
    dt = _softplus(tl.sum(w_dt * dt_low[None, :], 1) + dt_b)
    y = _advance(ssm_row, e[:, None] * N + n[None, :], e_ok[:, None] & n_ok[None, :], s, A, dt, x, Bv, Cv)
    y = (y + D * x) * z * tl.sigmoid(z)
    return tl.sum(w_out * y[None, :], 1)


@triton.jit
def _arrive(sync):
    """This program's arrival at its row's barrier (counted at ``sync``): every store it made before
    is then visible to the row's programs that wait for it."""
    tl.debug_barrier()  # the program's own stores (from all its threads) before its arrival
    tl.atomic_add(sync, 1, sem="release", scope="gpu")


@triton.jit
def _wait(sync, arrivals):
    """Wait until the row's programs have made ``arrivals`` arrivals in all. Acquire loads (not
    atomics, which would queue behind each other): the one that sees the last arrival also makes
    what the others stored before arriving visible. Loads issued between ``_arrive`` and here
    proceed while the program waits (a release atomic or fence would wait for them instead)."""
    while _load_acquire(sync) < arrivals:
        pass
    tl.debug_barrier()


@triton.jit
def _load_acquire(ptr):
    """``*ptr`` (int32) by ``ld.acquire.gpu``."""
    return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _publish(shares, part, value, idx, WIDTH: tl.constexpr):
    """Store this program's ``value`` (WIDTH,) at row ``part`` of a (SPLIT, WIDTH) buffer."""
    tl.store(shares + part * WIDTH + idx, value)


@triton.jit
def _gather_sum(shares, idx, SPLIT: tl.constexpr, WIDTH: tl.constexpr):
    """The sum over the rows of a (SPLIT, WIDTH) buffer, read from L2 (past the L1 cache, which
    may hold what was there before), in the same order in every program."""
    return tl.sum(tl.load(shares + tl.arange(0, SPLIT)[:, None] * WIDTH + idx[None, :], cache_modifier=".cg"), 0)


@triton.jit
def _block_pointers(k, b, batch, skip_at, conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr, in_w_ptr, xp_ptr,
                    conv_w_ptr, conv_b_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, out_w_ptr, H, E, N, R,
                    WIDTH: tl.constexpr):
    """Block k's weights, and row b's conv and SSM states in it (before or after the skip)."""
    if k < skip_at:
        conv_row = conv_ptr + (k * batch + b) * E * WIDTH
        ssm_row = ssm_ptr + (k * batch + b) * E * N
    else:
        conv_row = conv_after_ptr + ((k - skip_at) * batch + b) * E * WIDTH
        ssm_row = ssm_after_ptr + ((k - skip_at) * batch + b) * E * N
    return (conv_row, ssm_row, in_w_ptr + k * 2 * E * H, xp_ptr + k * (R + 2 * N) * E, conv_w_ptr + k * E * WIDTH,
            conv_b_ptr + k * E, dtw_ptr + k * E * R, dtb_ptr + k * E, A_ptr + k * E * N, D_ptr + k * E,
            out_w_ptr + k * H * E)


@triton.jit
def _mamba_stack_step(u_ptr, out_ptr, scratch_ptr, norm_w_ptr, norm_b_ptr, in_w_ptr, conv_w_ptr, conv_b_ptr,
                      xp_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, out_w_ptr, conv_ptr, ssm_ptr, conv_after_ptr,
                      ssm_after_ptr, skip_at, skip_out_ptr, skip_out_stride, skip_in_ptr, skip_in_stride,
                      sync_ptr, shares_ptr, n_blocks, batch, H, E, N, R, eps, H_PAD: tl.constexpr,
                      CE: tl.constexpr, N_PAD: tl.constexpr, R_PAD: tl.constexpr, WIDTH: tl.constexpr,
                      W_PAD: tl.constexpr, SPLIT: tl.constexpr, AHEAD: tl.constexpr, EXACT: tl.constexpr,
                      PDL: tl.constexpr):
    """AHEAD (a split row whose share is one chunk): each barrier's wait overlaps loads, the
    back's at the first and the next block's front's at the second."""
    b = tl.program_id(0)
    part = tl.program_id(1)  # which of the row's SPLIT shares of the inner channels this program takes
    h, n, r, w = tl.arange(0, H_PAD), tl.arange(0, N_PAD), tl.arange(0, R_PAD), tl.arange(0, W_PAD)
    h_ok, n_ok, r_ok, w_ok = h < H, n < N, r < R, w < WIDTH
    if EXACT:  # every size is its padded size: masks the compiler sees as all-true, and drops
        h_ok, n_ok, r_ok, w_ok = h < H_PAD, n < N_PAD, r < R_PAD, w < W_PAD
    e_begin = part * (E // SPLIT)
    e_end = e_begin + E // SPLIT
    pointers = (b, batch, skip_at, conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr, in_w_ptr, xp_ptr, conv_w_ptr,
                conv_b_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, out_w_ptr, H, E, N, R, WIDTH)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    u = tl.load(u_ptr + b * H + h, mask=h_ok, other=0.0).to(tl.float32)
    x_scratch = scratch_ptr + b * 2 * E
    z_scratch = x_scratch + E
    sync = sync_ptr + b * 2  # a split row's arrivals, then its exits
    shares = shares_ptr + b * SPLIT * (R_PAD + 2 * N_PAD + H_PAD)  # its programs' x_proj shares, then out_proj's
    if AHEAD:
        e = e_begin + tl.arange(0, CE)
        e_ok = tl.arange(0, CE) < CE
        conv_row, _, in_w, xp, conv_w, conv_b, _, _, _, _, _ = _block_pointers(0, *pointers)
        front = _front_loads(in_w, conv_row, conv_w, conv_b, xp, e, e_ok, h, h_ok, w, w_ok, r, r_ok, n, n_ok,
                             E, H, R, N, WIDTH)
    for k in range(n_blocks):
        if k == skip_at:  # the U-Net's skip connection: the stream goes out, the upsampled row comes in
            tl.store(skip_out_ptr + b * skip_out_stride + h, u, mask=h_ok & (part == 0))
            u += tl.load(skip_in_ptr + b * skip_in_stride + h, mask=h_ok, other=0.0)
        conv_row, ssm_row, in_w, xp, conv_w, conv_b, dt_w, dt_b, A, D, out_w = _block_pointers(k, *pointers)
        norm_w = tl.load(norm_w_ptr + k * H + h, mask=h_ok, other=0.0)
        norm_b = tl.load(norm_b_ptr + k * H + h, mask=h_ok, other=0.0)
        centred = tl.where(h_ok, u - tl.sum(u, 0) / H, 0.0)
        un = centred / tl.sqrt(tl.sum(centred * centred, 0) / H + eps) * norm_w + norm_b
        dt_low = tl.zeros([R_PAD], dtype=tl.float32)
        Bv = tl.zeros([N_PAD], dtype=tl.float32)
        Cv = tl.zeros([N_PAD], dtype=tl.float32)
        for e0 in range(e_begin, e_end, CE):
            e = e0 + tl.arange(0, CE)
            e_ok = (tl.arange(0, CE) < CE) if EXACT else (e < e_end)
            if AHEAD:
                w_x, w_z, buf, buf_w, new_w, cb, xp_dt, xp_B, xp_C = front
            else:
                w_x, w_z, buf, buf_w, new_w, cb, xp_dt, xp_B, xp_C = _front_loads(
                    in_w, conv_row, conv_w, conv_b, xp, e, e_ok, h, h_ok, w, w_ok, r, r_ok, n, n_ok, E, H, R, N,
                    WIDTH)
            x, z, dt_part, B_part, C_part = _front(un, w_x, w_z, buf, buf_w, new_w, cb, xp_dt, xp_B, xp_C,
                                                   conv_row, e, e_ok, w, w_ok, WIDTH)
            tl.store(x_scratch + e, x, mask=e_ok)
            tl.store(z_scratch + e, z, mask=e_ok)
            dt_low += dt_part
            Bv += B_part
            Cv += C_part
        if SPLIT > 1:  # x_proj summed over the row's programs
            _publish(shares, part, dt_low, r, R_PAD)
            _publish(shares + SPLIT * R_PAD, part, Bv, n, N_PAD)
            _publish(shares + SPLIT * (R_PAD + N_PAD), part, Cv, n, N_PAD)
            _arrive(sync)
            if AHEAD:
                back = _back_loads(dt_w, dt_b, A, D, out_w, ssm_row, e, e_ok, h, h_ok, r, r_ok, n, n_ok, E, R, N)
            _wait(sync, (2 * k + 1) * SPLIT)
            dt_low = _gather_sum(shares, r, SPLIT, R_PAD)
            Bv = _gather_sum(shares + SPLIT * R_PAD, n, SPLIT, N_PAD)
            Cv = _gather_sum(shares + SPLIT * (R_PAD + N_PAD), n, SPLIT, N_PAD)
        tl.debug_barrier()  # the fronts' scratch writes before the backs read them
        out = tl.zeros([H_PAD], dtype=tl.float32)
        for e0 in range(e_begin, e_end, CE):
            e = e0 + tl.arange(0, CE)
            e_ok = (tl.arange(0, CE) < CE) if EXACT else (e < e_end)
            if AHEAD:
                w_dt, db, Dv, s, Av, w_out = back
            else:
                w_dt, db, Dv, s, Av, w_out = _back_loads(dt_w, dt_b, A, D, out_w, ssm_row, e, e_ok, h, h_ok, r, r_ok,
                                                         n, n_ok, E, R, N)
            x = tl.load(x_scratch + e, mask=e_ok, other=0.0)
            z = tl.load(z_scratch + e, mask=e_ok, other=0.0)
            out += _back(x, z, dt_low, Bv, Cv, w_dt, db, Dv, s, Av, w_out, ssm_row, e, e_ok, n, n_ok, N)
        tl.debug_barrier()  # the backs' scratch reads before the next block's writes
        if SPLIT > 1:  # out_proj summed over the row's programs
            _publish(shares + SPLIT * (R_PAD + 2 * N_PAD), part, out, h, H_PAD)
            _arrive(sync)
            if AHEAD:  # the next block's (the last block's again after it: unused)
                conv_row, _, in_w, xp, conv_w, conv_b, _, _, _, _, _ = _block_pointers(
                    tl.minimum(k + 1, n_blocks - 1), *pointers)
                front = _front_loads(in_w, conv_row, conv_w, conv_b, xp, e, e_ok, h, h_ok, w, w_ok, r, r_ok, n,
                                     n_ok, E, H, R, N, WIDTH)
            _wait(sync, (2 * k + 2) * SPLIT)
            out = _gather_sum(shares + SPLIT * (R_PAD + 2 * N_PAD), h, SPLIT, H_PAD)
        u += out
    tl.store(out_ptr + b * H + h, u.to(out_ptr.dtype.element_ty), mask=h_ok & (part == 0))
    if SPLIT > 1:  # the last of the row's programs to leave sets its counts back to zero for the next launch
        tl.debug_barrier()
        if tl.atomic_add(sync + 1, 1, sem="acq_rel", scope="gpu") == SPLIT - 1:
            tl.atomic_xchg(sync, 0, sem="relaxed", scope="gpu")
            tl.atomic_xchg(sync + 1, 0, sem="relaxed", scope="gpu")


def _row_counters(device: torch.device) -> torch.Tensor:
    """The (SPLIT_ROWS, 2) int32 arrival and exit counts of split rows on ``device``: zero between
    launches (each launch's last program sets them back), made once and kept, so that a CUDA graph
    may hold their address."""
    counters = _ROW_COUNTERS.get(device)
    if counters is None:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("step once outside CUDA graph capture first: split rows' counters must exist")
        counters = _ROW_COUNTERS[device] = torch.zeros(SPLIT_ROWS, 2, dtype=torch.int32, device=device)
    return counters


def level_arguments(u, out, conv_state, ssm_state, skip):
    """What a stage kernel's launch takes for the skip connection: (the block it comes before, the
    blocks' states after it, the skip's out and add rows). Without ``skip`` it never comes, and the
    tensors stand in unread."""
    if skip is None:
        return len(conv_state), conv_state, ssm_state, out, u
    if not (skip.out.stride(1) == skip.add.stride(1) == 1 and skip.out.dtype == skip.add.dtype == torch.float32):
        raise ValueError("the skip connection's rows must be fp32 with contiguous columns")
    return len(conv_state), skip.conv_state, skip.ssm_state, skip.out, skip.add


def gluon_fits(u, weights, conv_state, ssm_state) -> bool:
    """Whether ``mamba_stack_gluon`` (the outer and middle stages' shapes on Hopper GPUs) takes this
    step: on CUDA outside the interpreter, unless ``AUDIOMAMBA_GLUON=0`` (for comparisons), where it
    imports and its ``fits`` says so. Measured (BENCHMARKS.md, "Generation, sessions 27 and 32"): at
    width 64, 2.20 us a block at batch 1 against this kernel's 2.81; at width 128, 3.0 against 5.0
    for this kernel's split rows."""
    if not gluon_dispatch.may_run(u):
        return False
    gluon = gluon_kernel()
    return gluon is not None and gluon.fits(u, weights, conv_state, ssm_state)


def gluon_kernel():
    """The module ``mamba_stack_gluon``, or None where Gluon does not import: then this kernel takes
    every step."""
    return gluon_dispatch.kernel_module("mamba_stack_gluon", "stage kernel")


def mamba_stack_step(u, weights, conv_state, ssm_state, skip=None, split=None):
    """All the blocks' step in one launch; arguments and result as ``mamba_stack_step_ref``, its
    ``skip`` included (then the states given are the down stage's, and ``skip`` holds the up
    stage's). ``split``: programs per batch row (default: the Gluon kernel where ``gluon_fits``, else
    ``programs_per_row``; an explicit split, 1 included, keeps this kernel)."""
    states = [("conv", conv_state), ("SSM", ssm_state)]
    if skip is not None:
        states += [("conv", skip.conv_state), ("SSM", skip.ssm_state)]
    for name, state in states:
        if state.dtype != torch.float32 or not state.is_contiguous():
            raise ValueError(f"the {name} state must be a contiguous fp32 tensor (it is updated in place)")
    w = weights
    K, batch, E, width = w.in_proj.shape[0], *conv_state.shape[1:]
    H, N, R = u.shape[1], ssm_state.shape[3], w.dt_proj.shape[2]
    if split is None and gluon_fits(u, w, conv_state, ssm_state):
        return gluon_kernel().stage_step(u, w, conv_state, ssm_state, skip)
    split = programs_per_row(u, E) if split is None else split
    if split > 1 and not (u.is_cuda and split_fits(batch, E, split)):
        raise ValueError(f"{split} programs a row need CUDA, a power of two dividing the {E} inner channels, and "
                         f"at most {SPLIT_ROWS} programs in all (batch {batch})")
    u = u.contiguous()
    out = torch.empty_like(u)
    skip_at, after_conv, after_ssm, skip_out, skip_in = level_arguments(u, out, conv_state, ssm_state, skip)
    h_pad, share = triton.next_power_of_2(H), E // split  # share: a program's inner channels
    n_pad, r_pad, w_pad = triton.next_power_of_2(N), max(2, triton.next_power_of_2(R)), triton.next_power_of_2(width)
    ce = min(chunk_channels(E, h_pad), triton.next_power_of_2(share))
    num_warps = _num_warps(batch, ce * h_pad, H, split)
    exact = _masks_exact((H, N, R, width, share % ce), (h_pad, n_pad, r_pad, w_pad, 0),
                         w.in_proj.dtype == torch.bfloat16, num_warps, ce * h_pad)
    scratch = torch.empty(batch, 2, E, device=u.device, dtype=torch.float32)
    if split > 1:
        counters = _row_counters(u.device)
        shares = torch.empty(batch, split, r_pad + 2 * n_pad + h_pad, device=u.device, dtype=torch.float32)
    else:  # never read
        counters, shares = scratch, scratch
    pdl = launch_options(u)
    _mamba_stack_step[(batch, split)](
        u, out, scratch, w.norm_weight, w.norm_bias, w.in_proj, w.conv_weight, w.conv_bias, w.x_proj, w.dt_proj,
        w.dt_bias, w.A, w.D, w.out_proj, conv_state, ssm_state, after_conv, after_ssm, skip_at, skip_out,
        skip_out.stride(0), skip_in, skip_in.stride(0), counters, shares, K, batch, H, E, N, R, w.norm_eps,
        H_PAD=h_pad, CE=ce, N_PAD=n_pad, R_PAD=r_pad, WIDTH=width, W_PAD=w_pad, SPLIT=split,
        AHEAD=(H, split) in LOADS_DURING_WAITS and share == ce, EXACT=exact, PDL=bool(pdl), num_warps=num_warps,
        **pdl)
    return out
