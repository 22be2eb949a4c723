"""The selective scan's forward and its backward's two chunk passes in Gluon for Hopper GPUs, time
inside each thread (16 states).

Lane (channel, state) of a warp's 2 x 16 holds its state's 32 times in registers (32 is what fits
the gradients pass in 255 registers), so the recurrences run inside each thread, one FMA a time.
Values per (channel, time) (softplus, the gate, delta u) are computed once, spread over the warp,
and reach the 16 state lanes through shared memory; sums over the states go back the same way,
each thread adding the 16 states of 2 times. ``forward_fits`` and ``fits`` say where they run.

**The forward** (``_scan_forward``; same contract as ``selective_scan._scan_sequential``): a
program takes ``FORWARD_WARPS`` channel pairs of one batch row, a warp each, and runs all their
chunks of 32 in time order, the state carried in registers: h[t] = a[t] h[t-1] + dt[t] u[t] B[t].
It writes y (and y before the gate), and every 32 or 64 samples the incoming state and delta sum
for the backward. Each chunk goes through three phases (its deltas; its states; its output), and a
step of the loop runs chunk c+1's first, chunk c-1's last and chunk c's second with no barrier
between them, on two buffers of shared memory. bf16 rows are read a step ahead as int32 pairs,
one register a pair until they are unpacked. The TMA unit copies B's and C's tiles into shared
memory a chunk ahead, once for the program's warps, and the state lanes read them there: read
directly in the state lanes' layout, each of a warp's loads touched 16 rows, and the L1's tag
lookups bound the kernel (0.86 ms at the outer stage against 0.53; 0.41 by the TMA unit).

**The gradients pass** (``_scan_chunks_grads``; same contract as ``selective_scan._scan_chunks_bwd``
with GRADS=True and one group of states, at chunks of ``CHUNK`` = 32): from each chunk's incoming
state (saved by the forward every 32 samples where this pass runs, ``selective_scan._backward_chunk``)
and the adjoint carried in from later chunks (``_pass_chunks``), every gradient: gu, gdelta and
gz per element; gA, gD and gbias as one partial sum per (batch row, chunk); gB and gC as one per
channel block. A program takes one chunk of one batch row and a block of channels, two channels
at a time, in one warp:
- the forward states, recomputed from the incoming state;
- the adjoint lambda[t] = C[t] gy[t] + a[t+1] lambda[t+1], backwards in time. The times are
  reversed in registers (``_flip``: splits and joins, which only rename registers), scanned forward
  and reversed back. Triton's own reverse scan ran shuffles across the warp instead (547 in the
  kernel against 72). a[t+1] comes from the same registers (``_next_time``).

Both backward passes copy a channel pair's rows (delta, gy, ...) into shared memory a pair ahead
by ``cp.async`` (``_copy_rows``). Loaded into registers a pair ahead instead, bf16 rows were
unpacked right after their loads, and about a fifth of the gradients pass's stall samples waited
there (Nsight Compute, BENCHMARKS.md "Selective-scan kernels, session 36").

**The adjoint handed back** (``_scan_chunks_handed``; same contract as ``_scan_chunks_bwd`` with
GRADS=False), the backward's first pass, on the gradients pass's grid and layout: per (channel,
state) of a chunk, the sum over its times of exp(A cumsum(dt)[t]) C[t] gy[t], inside each thread.

The plain-Triton passes lay time across lanes, and many of their instructions go to the scans'
shuffles: 42 a state element in the gradients pass against 27 here, 18.5 in the forward against
14 (``kernels/sass_count.py``). Measured on an H200 (BENCHMARKS.md, "Selective-scan kernels,
sessions 33 to 38"): at the outer stage (B=16, D=128, L=16000), the forward 0.38 ms (0.41 with its
bf16 rows carried as bf16) against the Triton forward's 0.55; fwd+bwd 1.63 ms; in session 36's
code (1.73 ms), 1.84 with the backward's rows loaded into registers, 1.91 with the adjoint handed
back by Triton too, 2.27 with the Triton forward as well, 2.41 with all three in Triton (the last
two before the saved states' layout changed).

Gluon kernels do not run under the Triton interpreter. So CI compiles them for sm_90
(``compile_for_hopper``), and the GPU tests check their numbers against the reference and the
Triton passes.
"""
from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from audiomamba_kernels import gluon_dispatch

N_STATES = 16  # the states it is written for: 2 channels x 16 states fill a warp's lanes
CHUNK = 32  # times a thread holds: the backward's chunk (the forward saves its states this often)
N_ = gl.constexpr(N_STATES)  # the same two, for the kernels
T_ = gl.constexpr(CHUNK)
FORWARD_REGISTERS = 144  # the forward's registers a thread at most: ptxas then takes 113, 142 without it (session 35)
TILE_TYPES = {torch.bfloat16: gl.bfloat16, torch.float32: gl.float32, torch.int32: gl.int32}
LOG2E = gl.constexpr(1.4426950408889634)
LN2 = gl.constexpr(0.6931471805599453)
# channel pairs a forward program, a warp each, sharing each chunk's B and C tiles. H200, session 36: 2 as fast as 1
# at the outer stage and 6-7% faster at the others (GPU time of the forward); 4 lost 4% at the outer stage
FORWARD_WARPS = 2


def _layouts(warps: int) -> tuple:
    """The layouts of (CH = 2 x ``warps`` channels, N states, T times) tiles, a channel pair a warp,
    whose lane (channel, state) holds T times: the tile (CH, N, T); its slices (CH, T), a channel's
    times in each of its state lanes; (N, T), a state's times; (CH, N), one value a lane; (N, T / 2),
    a state's times as bf16 pairs; (CH, T) spread over the warp, 2 times a lane; (CH, N, T) for sums
    over the states, each lane holding the N states of its 2 times; and (CH, T / 2), the spread
    layout's times as bf16 pairs."""
    tile = gl.BlockedLayout([1, 1, CHUNK], [2, N_STATES, 1], [warps, 1, 1], [2, 1, 0])
    pairs = gl.BlockedLayout([1, 1, CHUNK // 2], [2, N_STATES, 1], [warps, 1, 1], [2, 1, 0])
    spread = gl.BlockedLayout([1, 2], [2, 16], [warps, 1], [1, 0])
    sums = gl.BlockedLayout([1, N_STATES, 2], [2, 1, 16], [warps, 1, 1], [1, 2, 0])
    spread_pairs = gl.BlockedLayout([1, 1], [2, 16], [warps, 1], [1, 0])
    return tuple(gl.constexpr(x) for x in (tile, gl.SliceLayout(1, tile), gl.SliceLayout(0, tile),
                                           gl.SliceLayout(2, tile), gl.SliceLayout(0, pairs), spread, sums,
                                           spread_pairs))


L3, L_CT, L_NT, L_CN, L_PAIRS, L_SPREAD, L_SUM, _ = _layouts(1)  # the backward's, one warp
F3, F_CT, F_NT, F_CN, F_PAIRS, F_SPREAD, F_SUM, F_SPREAD_PAIRS = _layouts(FORWARD_WARPS)  # the forward's
F_CH = gl.constexpr(2 * FORWARD_WARPS)  # the forward's channels a program
FLAT = gl.constexpr(gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
SWZ = gl.constexpr(gl.SwizzledSharedLayout(4, 1, 8, [2, 1, 0]))  # 16-byte pieces XOR-swizzled by row


def fits(u: torch.Tensor, n_state: int, chunk: int, channels: int, block: int, groups: int) -> bool:
    """Whether this kernel takes the gradients pass of a scan of rows u with ``n_state`` states, in
    chunks of ``chunk`` times, over blocks of ``block`` of its ``channels`` in ``groups`` state
    groups: on a Hopper GPU (the caller has checked CUDA outside the interpreter), 16 states in one
    group, chunks of ``CHUNK``, and whole blocks of an even number of channels."""
    return (n_state == N_STATES and groups == 1 and chunk == CHUNK and channels % block == 0 and block % 2 == 0
            and u.numel() < 2**31 and _hopper(u.device.index))


def forward_fits(u: torch.Tensor, B: torch.Tensor, C: torch.Tensor, channels: int, every: int) -> bool:
    """Whether the forward kernel takes a scan of rows u with B and C (batch, states, length) over
    ``channels``, saving its states every ``every`` samples: on a Hopper GPU (the caller has checked
    CUDA outside the interpreter), 16 states, channels in whole programs (2 x ``FORWARD_WARPS``),
    ``every`` a multiple of ``CHUNK``, and B and C as the TMA unit reads them (16-byte aligned, rows of a multiple of 16
    bytes: a length that is a multiple of 8 in bf16, of 4 in fp32)."""
    tma_ok = all(x.is_contiguous() and x.data_ptr() % 16 == 0 and x.shape[-1] * x.element_size() % 16 == 0
                 and x.dtype in TILE_TYPES for x in (B, C))
    return (B.shape[1] == N_STATES and channels % (2 * FORWARD_WARPS) == 0 and every % CHUNK == 0
            and u.numel() < 2**31 and tma_ok and _hopper(u.device.index))


@functools.cache
def _hopper(device_index: int | None) -> bool:
    return torch.cuda.get_device_properties(device_index).major == 9


@gluon.jit
def _lg2(x):
    """log2 by the SFU (MUFU.LG2, about 2^-22 relative), not libdevice's polynomial."""
    return gl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _sigmoid(x):
    return 1.0 / (1.0 + gl.exp2(-x * LOG2E))


@gluon.jit
def _delta(raw, bias, ok, SOFTPLUS: gl.constexpr):
    """delta in fp32 from its raw row and bias (softplus by flag), 0 where not ``ok``; and raw + bias."""
    x = raw.to(gl.float32) + bias
    dt = gl.where(x > 20.0, x, _lg2(1.0 + gl.exp2(x * LOG2E)) * LN2) if SOFTPLUS else x
    return gl.where(ok, dt, 0.0), x


@gluon.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@gluon.jit
def _combine_fused(a1, b1, a2, b2):
    """_combine with its sum one FMA of the carried value. Written a2 * b1 + b2, the compiler may fuse
    b2's own product into the FMA instead and leave a2 * b1 a separate multiply: two dependent
    instructions a time on the scan's chain. The gradients pass gains by it; the forward lost
    (H200, session 38: BENCHMARKS.md), so it keeps _combine."""
    return a1 * a2, gl.fma(a2, b1, b2)


@gluon.jit
def _flip(x, CH: gl.constexpr, N: gl.constexpr, T: gl.constexpr, BITS: gl.constexpr):
    """x (CH, N, T = 2^BITS) reversed along T, which each thread holds whole: every bit of the time
    index flipped, one size-2 axis at a time."""
    y = gl.reshape(x, [CH, N] + [2] * BITS)
    for _ in gl.static_range(BITS):
        lo, hi = gl.split(y)
        y = gl.join(hi, lo)
        y = gl.permute(y, [0, 1, BITS + 1] + list(range(2, BITS + 1)))
    return gl.reshape(y, [CH, N, T])


@gluon.jit
def _next_time(x, CH: gl.constexpr, T: gl.constexpr):
    """x (CH, T = 32) one time later, 0 at its last time, where each thread holds a channel's times
    whole: only registers renamed. x[t + 1] at even t is x's odd times; at odd t, the even times one
    later, taken the same way, down to one time."""
    e0, o0 = gl.split(gl.reshape(x, [CH, T // 2, 2]))
    e1, o1 = gl.split(gl.reshape(e0, [CH, T // 4, 2]))
    e2, o2 = gl.split(gl.reshape(e1, [CH, T // 8, 2]))
    e3, o3 = gl.split(gl.reshape(e2, [CH, T // 16, 2]))
    _e4, o4 = gl.split(gl.reshape(e3, [CH, T // 32, 2]))
    y = gl.reshape(gl.join(o4, gl.zeros_like(o4)), [CH, T // 16])
    y = gl.reshape(gl.join(o3, gl.convert_layout(y, o3.type.layout)), [CH, T // 8])
    y = gl.reshape(gl.join(o2, gl.convert_layout(y, o2.type.layout)), [CH, T // 4])
    y = gl.reshape(gl.join(o1, gl.convert_layout(y, o1.type.layout)), [CH, T // 2])
    return gl.convert_layout(gl.reshape(gl.join(o0, gl.convert_layout(y, o0.type.layout)), [CH, T]), x.type.layout)


@gluon.jit
def _row_buffers(ptrs, CH: gl.constexpr, T: gl.constexpr):
    """Two pairs' rows (2, CH, T) in shared memory for each tensor at ``ptrs``, as stored."""
    buffers = ()
    for k in gl.static_range(len(ptrs)):
        buffers = buffers + (gl.allocate_shared_memory(ptrs[k].dtype.element_ty, [2, CH, T], FLAT),)
    return buffers


@gluon.jit
def _copy_rows(rows_in, ptrs, slot, rows, t_ok):
    """Start copying a channel pair's rows at offsets ``rows`` (CH, T) of the tensors at ``ptrs``
    into buffer ``slot`` of their shared buffers ``rows_in`` (``_row_buffers``), 0 past the end.
    The copies are asynchronous, so no register waits for them: loaded into registers a pair ahead
    of their use, bf16 rows were unpacked at once and the loop waited there for every load."""
    for k in gl.static_range(len(ptrs)):
        async_copy.async_copy_global_to_shared(rows_in[k].index(slot), ptrs[k] + rows, mask=t_ok)


@gluon.jit
def _rows_of_pair(rows_in, slot):
    """The rows in buffer ``slot`` of ``rows_in`` (CH, T each, spread over the warp), once they
    have come. The copies started since the last commit (the next pair's; none at the last pair)
    are committed as one group, and all groups but that one awaited: a group a pair, the first
    committed before the loop. The barrier also means that the last pair's reads of shared memory
    are done."""
    async_copy.commit_group()
    async_copy.wait_group(1)
    gl.thread_barrier()
    rows = ()
    for k in gl.static_range(len(rows_in)):
        rows = rows + (rows_in[k].index(slot).load(L_SPREAD),)
    return rows


@gluon.jit
def _pair_channels(A_ptr, bias_ptr, a_rows, d, HAS_BIAS: gl.constexpr):
    """Channels d and d + 1's A (CH, N) at offsets ``a_rows``, and delta's bias (CH,) (0 without
    one): loaded a pair ahead of their use, as every input of a pair is, so that no load waits in
    the loop."""
    bias = gl.zeros([2], gl.float32, gl.SliceLayout(1, L_SPREAD))
    if HAS_BIAS:
        bias = gl.load(bias_ptr + d + gl.arange(0, 2, layout=gl.SliceLayout(1, L_SPREAD)))
    return gl.load(A_ptr + a_rows), bias


@gluon.jit
def _scan_chunks_grads(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gy_ptr, pre_ptr,
                       incoming_ptr, carry_in_ptr,
                       gu_ptr, gdelta_ptr, gz_ptr, sums_ptr, gB_ptr, gC_ptr,
                       n_ch, L_UNITS, n_chunks,
                       L_ALIGN: gl.constexpr, BLOCK: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr,
                       HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr):
    N: gl.constexpr = 16
    CH: gl.constexpr = 2
    T: gl.constexpr = 32
    BITS: gl.constexpr = 5
    PAIRS: gl.constexpr = BLOCK // CH
    c = gl.program_id(0)
    b = gl.program_id(1)
    blk = gl.program_id(2)
    L = L_UNITS * L_ALIGN  # the length, known to be a multiple of L_ALIGN: rows load in vectors
    rows_s = gl.allocate_shared_memory(gl.float32, [3, CH, T], FLAT)  # dt, dt u, gy
    # the rows read: raw delta, u, the output gradient, and with z, z and the output before the gate
    row_ptrs = (delta_ptr, u_ptr, gy_ptr, z_ptr, pre_ptr) if HAS_Z else (delta_ptr, u_ptr, gy_ptr)
    rows_in = _row_buffers(row_ptrs, CH, T)
    sums_s = gl.allocate_shared_memory(gl.float32, [2 * CH, N, T], SWZ)  # lambda B, and dL/d(dt A)
    tiles_s = gl.allocate_shared_memory(gl.float32, [2, N, T], gl.SwizzledSharedLayout(4, 1, 8, [1, 0]))  # B, C

    ch_s = gl.arange(0, CH, layout=gl.SliceLayout(1, L_SPREAD))
    t_s = gl.arange(0, T, layout=gl.SliceLayout(0, L_SPREAD))
    ch_cn = gl.arange(0, CH, layout=gl.SliceLayout(1, L_CN))
    n_cn = gl.arange(0, N, layout=gl.SliceLayout(0, L_CN))
    n_nt = gl.arange(0, N, layout=gl.SliceLayout(1, L_NT))
    t_nt = gl.arange(0, T, layout=gl.SliceLayout(0, L_NT))
    t_ct = gl.arange(0, T, layout=gl.SliceLayout(0, L_CT))
    first = (t_ct == 0)[None, None, :]
    last = (t_ct == T - 1)[None, None, :]
    d0 = blk * BLOCK
    t0 = c * T
    t_ok = (t0 + t_s < L)[None, :] & (ch_s >= 0)[:, None]
    bc_off = (b * N + n_nt[:, None]) * L + t0 + t_nt[None, :]
    bc_ok = (t0 + t_nt < L)[None, :] & (n_nt >= 0)[:, None]
    tiles_s.index(0).store(gl.load(B_ptr + bc_off, mask=bc_ok, other=0.0).to(gl.float32))
    tiles_s.index(1).store(gl.load(C_ptr + bc_off, mask=bc_ok, other=0.0).to(gl.float32))
    acc_B = gl.zeros([CH, N, T], gl.float32, L3)
    acc_C = gl.zeros([CH, N, T], gl.float32, L3)
    rows0 = (b * n_ch + d0 + ch_s[:, None]) * L + t0 + t_s[None, :]
    a_rows0 = (d0 + ch_cn[:, None]) * N + n_cn[None, :]
    # pair 0's (CH, N) states of this chunk in the saved (batch, channel, chunk, state) tensors
    saved0 = ((b * n_ch + d0 + ch_cn[:, None]) * n_chunks + c) * N + n_cn[None, :]
    # this (batch row, chunk)'s row of partial sums (see selective_scan._sum_partials): gA's, gD's, gbias's
    sums_row = sums_ptr + (b * n_chunks + c) * n_ch * (N + 2)
    _copy_rows(rows_in, row_ptrs, 0, rows0, t_ok)
    async_copy.commit_group()
    # pair 0's A and bias, and its incoming state, carried adjoint and D (D_ptr is u's without D: read, unused)
    nxt = _pair_channels(A_ptr, bias_ptr, a_rows0, d0, HAS_BIAS) + (
        gl.load(incoming_ptr + saved0), gl.load(carry_in_ptr + saved0), gl.load(D_ptr + d0 + ch_s))
    gdt_last = gl.zeros([CH, T], gl.float32, L_SPREAD)  # the last pair's gdelta
    for i in range(PAIRS):
        d = d0 + i * CH
        rows = rows0 + i * CH * L
        A, bias, h0, carry, D = nxt  # A, delta's bias, the chunk's incoming state and carried adjoint, D
        if i + 1 < PAIRS:  # the next pair's inputs load while this pair runs
            _copy_rows(rows_in, row_ptrs, (i + 1) % 2, rows + CH * L, t_ok)
            saved = saved0 + (i + 1) * CH * n_chunks * N
            nxt = _pair_channels(A_ptr, bias_ptr, a_rows0 + (i + 1) * CH * N, d + CH, HAS_BIAS) + (
                gl.load(incoming_ptr + saved), gl.load(carry_in_ptr + saved), gl.load(D_ptr + d + CH + ch_s))
        rows_i = _rows_of_pair(rows_in, i % 2)
        raw, u, g = rows_i[0], rows_i[1], rows_i[2]
        zz, pre = g, g
        if HAS_Z:
            zz, pre = rows_i[3], rows_i[4]
        A2 = A * LOG2E
        # Per (channel, time), spread over the warp: delta (0 past the end), delta u, and the gradient before the gate
        dt, x = _delta(raw, bias[:, None], t_ok, SOFTPLUS)
        u = u.to(gl.float32)
        g = g.to(gl.float32)
        gy = g
        if HAS_Z:
            zz = zz.to(gl.float32)
            sig = _sigmoid(zz)
            gy = g * zz * sig
            gz = g * pre.to(gl.float32) * sig * (1.0 + zz * (1.0 - sig))
            gl.store(gz_ptr + rows, gz.to(gz_ptr.dtype.element_ty), mask=t_ok)
        rows_s.index(0).store(dt)
        rows_s.index(1).store(dt * u)
        rows_s.index(2).store(gy)
        gl.thread_barrier()
        # gD's sum over the times here, where the scans' work hides its shuffles; and the last pair's gbias
        gl.store(sums_row + n_ch * N + d + ch_s, gl.sum(gy * u, 1))
        gl.store(sums_row + n_ch * (N + 1) + d - CH + ch_s, gl.sum(gdt_last, 1), mask=(ch_s >= 0) & (i > 0))
        # The adjoint, backwards in time, from the carried one at the chunk's last time. Each (CH, T)
        # row is loaded from shared memory where it is used, not kept through the scans: at 32
        # registers a row, keeping them spilled.
        # a one time later, 1 at the chunk's last time, where the carried adjoint comes in: ptxas
        # shares its exponentials with a's below (1.9 MUFU an element, 2.5 with delta loaded again)
        a_next = gl.exp2(_next_time(rows_s.index(0).load(L_CT), CH, T)[:, None, :] * A2[:, :, None])
        lam_in = tiles_s.index(1).load(L_NT)[None, :, :] * rows_s.index(2).load(L_CT)[:, None, :]
        lam_in = gl.where(last, lam_in + carry[:, :, None], lam_in)
        lam = _flip(gl.associative_scan((_flip(a_next, CH, N, T, BITS), _flip(lam_in, CH, N, T, BITS)), 2,
                                        _combine_fused)[1], CH, N, T, BITS)
        du3 = rows_s.index(1).load(L_CT)[:, None, :]
        acc_B += lam * du3
        B_tile = tiles_s.index(0).load(L_NT)[None, :, :]
        sums_s.slice(0, CH).store(lam * B_tile)
        # The states, forwards, from the chunk's incoming state
        dt3 = rows_s.index(0).load(L_CT)[:, None, :]
        a = gl.exp2(dt3 * A2[:, :, None])
        drive = du3 * B_tile
        h = gl.associative_scan((a, gl.where(first, drive + a * h0[:, :, None], drive)), 2, _combine_fused)[1]
        acc_C += h * rows_s.index(2).load(L_CT)[:, None, :]
        g_decay = lam * (h - drive)  # d loss / d (dt A) = lambda[t] a[t] h[t-1]
        sums_s.slice(CH, CH).store(g_decay * A[:, :, None])
        gl.store(sums_row + (d + ch_cn[:, None]) * N + n_cn[None, :], gl.sum(g_decay * dt3, 2))
        gl.thread_barrier()
        # Sums over the states, back in the spread layout
        lam_B = gl.convert_layout(gl.sum(sums_s.slice(0, CH).load(L_SUM), 1), L_SPREAD)
        g_dtA = gl.convert_layout(gl.sum(sums_s.slice(CH, CH).load(L_SUM), 1), L_SPREAD)
        gu = lam_B * dt
        if HAS_D:
            gu += gy * D[:, None]
        gdt = lam_B * u + g_dtA
        if SOFTPLUS:
            gdt = gdt * _sigmoid(x)
        gdt = gl.where(t_ok, gdt, 0.0)
        gl.store(gdelta_ptr + rows, gdt.to(gdelta_ptr.dtype.element_ty), mask=t_ok)
        gl.store(gu_ptr + rows, gu.to(gu_ptr.dtype.element_ty), mask=t_ok)
        gdt_last = gdt  # summed over its times in the next pair's iteration (or after the loop)
    gl.store(sums_row + n_ch * (N + 1) + d0 + BLOCK - CH + ch_s, gl.sum(gdt_last, 1))
    # This block's partial sums of gB and gC, the offsets and mask made again here: kept through the
    # loop, they would take registers
    part = blk * gl.num_programs(1) * N * L
    end_off = (b * N + n_nt[:, None]) * L + t_nt[None, :] + t0
    end_ok = (t_nt < L - t0)[None, :] & (n_nt >= 0)[:, None]
    gl.store(gB_ptr + part + end_off, gl.sum(acc_B, 0), mask=end_ok)
    gl.store(gC_ptr + part + end_off, gl.sum(acc_C, 0), mask=end_ok)


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _scan_chunks_handed(delta_ptr, bias_ptr, A_ptr, C_ptr, z_ptr, gy_ptr, first_ptr, n_ch, L_UNITS, n_chunks,
                        L_ALIGN: gl.constexpr, BLOCK: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
                        SOFTPLUS: gl.constexpr):
    """The adjoint each chunk hands back to the chunk before it, with none carried in: per (channel,
    state), the sum over the chunk's times t of exp(A cumsum(dt)[t]) C[t] gy[t], gy the output's
    gradient before the gate (``selective_scan._scan_chunks_bwd`` with GRADS=False, into the same
    (batch, channel, chunk, state) tensor). ``_scan_chunks_grads``'s grid: a program takes one
    chunk of one batch row and a block of channels, two at a time."""
    CH: gl.constexpr = 2
    PAIRS: gl.constexpr = BLOCK // CH
    c = gl.program_id(0)
    b = gl.program_id(1)
    blk = gl.program_id(2)
    L = L_UNITS * L_ALIGN  # the length, known to be a multiple of L_ALIGN: rows load in vectors
    rows_s = gl.allocate_shared_memory(gl.float32, [2, CH, T_], FLAT)  # cumsum(dt), gy
    row_ptrs = (delta_ptr, gy_ptr, z_ptr) if HAS_Z else (delta_ptr, gy_ptr)  # raw delta, the output gradient, z
    rows_in = _row_buffers(row_ptrs, CH, T_)

    ch_s = gl.arange(0, CH, layout=gl.SliceLayout(1, L_SPREAD))
    t_s = gl.arange(0, T_, layout=gl.SliceLayout(0, L_SPREAD))
    ch_cn = gl.arange(0, CH, layout=gl.SliceLayout(1, L_CN))
    n_cn = gl.arange(0, N_, layout=gl.SliceLayout(0, L_CN))
    n_nt = gl.arange(0, N_, layout=gl.SliceLayout(1, L_NT))
    t_nt = gl.arange(0, T_, layout=gl.SliceLayout(0, L_NT))
    d0 = blk * BLOCK
    t0 = c * T_
    t_ok = (t0 + t_s < L)[None, :] & (ch_s >= 0)[:, None]
    # C's tile, each state lane reading its state's row (once a program; 0 past the end)
    c_off = (b * N_ + n_nt[:, None]) * L + t0 + t_nt[None, :]
    c_ok = (t0 + t_nt < L)[None, :] & (n_nt >= 0)[:, None]
    C_tile = gl.load(C_ptr + c_off, mask=c_ok, other=0.0).to(gl.float32)[None, :, :]
    rows0 = (b * n_ch + d0 + ch_s[:, None]) * L + t0 + t_s[None, :]
    a_rows0 = (d0 + ch_cn[:, None]) * N_ + n_cn[None, :]
    saved0 = ((b * n_ch + d0 + ch_cn[:, None]) * n_chunks + c) * N_ + n_cn[None, :]
    _copy_rows(rows_in, row_ptrs, 0, rows0, t_ok)
    async_copy.commit_group()
    nxt = _pair_channels(A_ptr, bias_ptr, a_rows0, d0, HAS_BIAS)
    for i in range(PAIRS):
        A, bias = nxt
        if i + 1 < PAIRS:  # the next pair's inputs load while this pair runs
            _copy_rows(rows_in, row_ptrs, (i + 1) % 2, rows0 + (i + 1) * CH * L, t_ok)
            nxt = _pair_channels(A_ptr, bias_ptr, a_rows0 + (i + 1) * CH * N_, d0 + (i + 1) * CH, HAS_BIAS)
        rows_i = _rows_of_pair(rows_in, i % 2)
        raw, g = rows_i[0], rows_i[1]
        dt, _x = _delta(raw, bias[:, None], t_ok, SOFTPLUS)  # 0 past the end
        gy = g.to(gl.float32)
        if HAS_Z:
            zz = rows_i[2].to(gl.float32)
            gy = gy * zz * _sigmoid(zz)
        cum = gl.associative_scan(dt, 1, _add)
        rows_s.index(0).store(cum)
        rows_s.index(1).store(gy)
        gl.thread_barrier()
        A2 = A * LOG2E
        decay = gl.exp2(rows_s.index(0).load(L_CT)[:, None, :] * A2[:, :, None])
        handed = gl.sum(decay * (C_tile * rows_s.index(1).load(L_CT)[:, None, :]), 2)
        gl.store(first_ptr + saved0 + i * CH * n_chunks * N_, handed)


@gluon.jit
def _take_last(a, b):
    """A reduction's combine that keeps the later value: along a thread's times, the last time."""
    return b


@gluon.jit
def _row_mask(c, L, STEP: gl.constexpr = 1, layout: gl.constexpr = F_SPREAD):
    """Which of chunk c's (CH, T / STEP) times (every STEP-th time) lie in the sequence [0, L)."""
    t = c * T_ + STEP * gl.arange(0, T_ // STEP, layout=gl.SliceLayout(0, layout))
    return ((t >= 0) & (t < L))[None, :] & (gl.arange(0, F_CH, layout=gl.SliceLayout(1, layout)) >= 0)[:, None]


@gluon.jit
def _forward_rows(delta_ptr, u_ptr, z_ptr, rows0, c, L, HAS_Z: gl.constexpr, ROW_PAIRS: gl.constexpr):
    """Chunk c's rows of the channel pairs, as stored: raw delta, u and z (u again without z), (CH, T);
    zeros past the end. With ROW_PAIRS, bf16 rows read as int32 pairs (CH, T / 2) from offsets
    ``rows0`` in pairs: carried through the loop as bf16, each pair was split into two registers at
    the loop's end, and the warp waited there for loads meant for the next step (Nsight Compute,
    session 37)."""
    if ROW_PAIRS:
        ok = _row_mask(c, L, 2, F_SPREAD_PAIRS)
        at = rows0 + c * (T_ // 2)
        pairs: gl.constexpr = gl.pointer_type(gl.int32)
        delta_ptr = delta_ptr.to(pairs, bitcast=True)
        u_ptr = u_ptr.to(pairs, bitcast=True)
        z_ptr = z_ptr.to(pairs, bitcast=True)
    else:
        ok = _row_mask(c, L)
        at = rows0 + c * T_
    u = gl.load(u_ptr + at, mask=ok, other=0)
    zz = u
    if HAS_Z:
        zz = gl.load(z_ptr + at, mask=ok, other=0)
    return gl.load(delta_ptr + at, mask=ok, other=0), u, zz


@gluon.jit
def _row(x, ROW_PAIRS: gl.constexpr):
    """A row from ``_forward_rows`` as (CH, T) fp32 in F_SPREAD."""
    return _bf16_pairs(x, F_SPREAD) if ROW_PAIRS else x.to(gl.float32)


@gluon.jit
def _forward_tiles(B_desc, C_desc, b, c, bar, tiles_buf):
    """Chunk c's B and C tiles of batch row b into ``tiles_buf`` by the TMA unit, ``bar`` counting
    their bytes: (N, T), or (N, T / 2) bf16 pairs as int32. Zeros past the end. (Loaded by the
    warp, in the state lanes' layout each load touched 16 rows' lines and the L1's tag lookups bound
    the kernel; loaded along time they still took a quarter of its L1 work.)"""
    mbarrier.expect(bar, B_desc.block_type.nbytes + C_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(B_desc, [b * N_, c * B_desc.block_type.shape[1]], bar, tiles_buf[0])
    tma.async_copy_global_to_shared(C_desc, [b * N_, c * C_desc.block_type.shape[1]], bar, tiles_buf[1])


@gluon.jit
def _bf16_pairs(x, layout: gl.constexpr):
    """int32 pairs of bf16 values (R, K) as fp32 (R, 2K) in ``layout``: one shift or mask a value (a
    bf16's fp32 value is its bits shifted up 16), where Triton's conversion takes two."""
    low = (x << 16).to(gl.float32, bitcast=True)
    high = (x & -65536).to(gl.float32, bitcast=True)
    return gl.convert_layout(gl.reshape(gl.join(low, high), [x.shape[0], 2 * x.shape[1]]), layout)


@gluon.jit
def _tile(x, PAIRS: gl.constexpr):
    """A loaded tile as (N, T) fp32 in F_NT."""
    return _bf16_pairs(x, F_NT) if PAIRS else x.to(gl.float32)


@gluon.jit
def _forward_deltas(rows, c, L, bias, dt_sum, rows_buf, dt_sum_ptr, sums_at, n_chunks, EVERY: gl.constexpr,
                    SOFTPLUS: gl.constexpr, ROW_PAIRS: gl.constexpr):
    """Phase 1 of chunk c: its delta and delta u from its rows, spread over the warp, into
    ``rows_buf`` (two (CH, T) buffers) for the state lanes. Adds delta to ``dt_sum`` (CH,),
    written every EVERY chunks; returns the sums not yet written."""
    raw, u, _z = rows
    dt, _x = _delta(_row(raw, ROW_PAIRS), bias, _row_mask(c, L), SOFTPLUS)
    rows_buf[0].store(dt)
    rows_buf[1].store(dt * _row(u, ROW_PAIRS))
    dt_sum += gl.sum(dt, 1)
    saved = ((c % EVERY == EVERY - 1) | (c == n_chunks - 1)) & (c < n_chunks)
    gl.store(dt_sum_ptr + sums_at + c // EVERY, dt_sum, mask=saved & (sums_at >= 0))
    return gl.where(saved, 0.0, dt_sum)


@gluon.jit
def _forward_states(rows_buf, tiles_buf, bar, A2, h, sums_buf, c, n_chunks, incoming_ptr, saved0,
                    EVERY: gl.constexpr, PAIRS: gl.constexpr):
    """Phase 2 of chunk c: its states, forwards in each thread from its incoming state h (CH, N)
    (written every EVERY chunks), times C into ``sums_buf`` (CH, N, T); returns the state after it.
    Its B and C tiles come from ``tiles_buf`` (two buffers, as loaded) when ``bar`` says they are
    there."""
    layout: gl.constexpr = F_PAIRS if PAIRS else F_NT
    mbarrier.wait(bar, c // 2 & 1)  # chunk c is the (c // 2)-th load into its buffer
    B, C = tiles_buf[0].load(layout), tiles_buf[1].load(layout)
    gl.store(incoming_ptr + saved0 + c // EVERY * N_, h, mask=(c % EVERY == 0) & (c < n_chunks) & (saved0 >= 0))
    a = gl.exp2(rows_buf[0].load(F_CT)[:, None, :] * A2[:, :, None])
    drive = rows_buf[1].load(F_CT)[:, None, :] * _tile(B, PAIRS)[None, :, :]
    first = (gl.arange(0, T_, layout=gl.SliceLayout(0, F_CT)) == 0)[None, None, :]
    hs = gl.associative_scan((a, gl.where(first, drive + a * h[:, :, None], drive)), 2, _combine)[1]
    sums_buf.store(hs * _tile(C, PAIRS)[None, :, :])
    return gl.reduce(hs, 2, _take_last)


@gluon.jit
def _forward_output(sums_buf, uz, c, rows0, L, D, y_ptr, pre_ptr, SAVE_PRE: gl.constexpr, HAS_D: gl.constexpr,
                    HAS_Z: gl.constexpr, ROW_PAIRS: gl.constexpr):
    """Phase 3 of chunk c: y (and y before the gate) from the sums over the states in ``sums_buf`` and
    the chunk's u and z; nothing is written outside the sequence."""
    u, zz = uz
    ok = _row_mask(c, L)
    at = rows0 + c * T_
    y = gl.convert_layout(gl.sum(sums_buf.load(F_SUM), 1), F_SPREAD)
    if HAS_D:
        y += D * _row(u, ROW_PAIRS)
    if HAS_Z:
        if SAVE_PRE:
            gl.store(pre_ptr + at, y.to(pre_ptr.dtype.element_ty), mask=ok)
        zz = _row(zz, ROW_PAIRS)
        y = y * zz * _sigmoid(zz)
    gl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=ok)


@gluon.jit
def _forward_step(c, rows_next, uz_prev, uz, h, dt_sum, buffers, other_buffers, ptrs, rows0, rows_in0, b, L, n_chunks,
                  saved0, sums_at, A2, bias, D, EVERY: gl.constexpr, SAVE_PRE: gl.constexpr, HAS_D: gl.constexpr,
                  HAS_Z: gl.constexpr, SOFTPLUS: gl.constexpr, PAIRS: gl.constexpr, ROW_PAIRS: gl.constexpr):
    """One step of the software pipeline: chunk c+1's tiles sent for and its phase 1, chunk c-1's
    phase 3 and chunk c's phase 2, with no barrier between them, so that their instructions
    interleave; then one barrier. Chunk c's phases use ``buffers`` (its rows, sums and tiles in
    shared memory, and the tiles' mbarrier), chunks c-1's and c+1's ``other_buffers``. Takes chunk
    c+1's rows (loaded a step before), u and z of chunks c-1 and c; returns the same for the next
    step, loading chunk c+2's rows."""
    u_ptr, delta_ptr, B_desc, C_desc, z_ptr, y_ptr, pre_ptr, incoming_ptr, dt_sum_ptr = ptrs
    rows_now_buf, sums_now_buf, tiles_now_buf, bar = buffers
    rows_next_buf, sums_prev_buf, tiles_next_buf, next_bar = other_buffers
    rows_after = _forward_rows(delta_ptr, u_ptr, z_ptr, rows_in0, c + 2, L, HAS_Z, ROW_PAIRS)
    # The tiles' buffer was last read by chunk c-1's phase 2, before the last barrier
    fence_async_shared()
    _forward_tiles(B_desc, C_desc, b, c + 1, next_bar, tiles_next_buf)
    dt_sum = _forward_deltas(rows_next, c + 1, L, bias, dt_sum, rows_next_buf, dt_sum_ptr, sums_at, n_chunks,
                             EVERY, SOFTPLUS, ROW_PAIRS)
    _forward_output(sums_prev_buf, uz_prev, c - 1, rows0, L, D, y_ptr, pre_ptr, SAVE_PRE, HAS_D, HAS_Z, ROW_PAIRS)
    h = _forward_states(rows_now_buf, tiles_now_buf, bar, A2, h, sums_now_buf, c, n_chunks, incoming_ptr, saved0,
                        EVERY, PAIRS)
    gl.thread_barrier()
    return rows_after, uz, (rows_next[1], rows_next[2]), h, dt_sum


@gluon.jit
def _scan_forward(u_ptr, delta_ptr, A_ptr, B_desc, C_desc, D_ptr, z_ptr, bias_ptr, y_ptr, pre_ptr,
                  init_ptr, incoming_ptr, dt_sum_ptr, final_ptr, n_ch, L_UNITS,
                  L_ALIGN: gl.constexpr, EVERY: gl.constexpr, SAVE_PRE: gl.constexpr, HAS_INIT: gl.constexpr,
                  HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
                  PAIRS: gl.constexpr, ROW_PAIRS: gl.constexpr):
    """The forward for channels d to d + CH - 1 of batch row b, a channel pair a warp: see the module's docstring.
    B_desc and C_desc: TMA descriptors of B and C as (batch * N, L) (bf16 pairs as int32 with
    PAIRS), (N, T) blocks. ROW_PAIRS: u, delta and z are bf16 read as int32 pairs (L even)."""
    CH: gl.constexpr = F_CH
    b = gl.program_id(0)
    d = gl.program_id(1) * CH
    L = L_UNITS * L_ALIGN  # the length, known to be a multiple of L_ALIGN: rows load in vectors
    n_chunks = gl.cdiv(L, T_)
    n_saved = gl.cdiv(n_chunks, EVERY)
    # Each chunk's values go through shared memory twice: delta and delta u from the spread layout to
    # the state lanes, C h from the state lanes to the sums over the states. Two buffers of each, and
    # of B's and C's tiles, so that consecutive chunks' phases need no barrier between them.
    dt_s = gl.allocate_shared_memory(gl.float32, [2, CH, T_], FLAT)  # [buffer] dt
    du_s = gl.allocate_shared_memory(gl.float32, [2, CH, T_], FLAT)  # [buffer] dt u
    sums_s = gl.allocate_shared_memory(gl.float32, [2, CH, N_, T_], SWZ)  # [buffer] C h
    B_s = gl.allocate_shared_memory(B_desc.dtype, [2] + B_desc.block_type.shape, B_desc.layout)
    C_s = gl.allocate_shared_memory(C_desc.dtype, [2] + C_desc.block_type.shape, C_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(0), count=1)
    mbarrier.init(bars.index(1), count=1)
    ch_s = gl.arange(0, CH, layout=gl.SliceLayout(1, F_SPREAD))
    ch_cn = gl.arange(0, CH, layout=gl.SliceLayout(1, F_CN))
    n_cn = gl.arange(0, N_, layout=gl.SliceLayout(0, F_CN))
    rows0 = (b * n_ch + d + ch_s[:, None]) * L + gl.arange(0, T_, layout=gl.SliceLayout(0, F_SPREAD))[None, :]
    rows_in0 = rows0  # where the rows are read, in their elements or with ROW_PAIRS in pairs
    if ROW_PAIRS:
        rows_in0 = ((b * n_ch + d + gl.arange(0, CH, layout=gl.SliceLayout(1, F_SPREAD_PAIRS))[:, None]) * (L // 2)
                    + gl.arange(0, T_ // 2, layout=gl.SliceLayout(0, F_SPREAD_PAIRS))[None, :])
    states = (b * n_ch + d + ch_cn[:, None]) * N_ + n_cn[None, :]  # (CH, N): (batch row, channel, state)
    # the same in the saved (batch, channel, chunk, state) tensor, at chunk 0
    saved0 = (b * n_ch + d + ch_cn[:, None]) * n_saved * N_ + n_cn[None, :]
    sums_at = (b * n_ch + d + ch_s) * n_saved
    A2 = gl.load(A_ptr + (d + ch_cn[:, None]) * N_ + n_cn[None, :]) * LOG2E
    if HAS_INIT:
        h = gl.load(init_ptr + states)
    else:
        h = gl.zeros([CH, N_], gl.float32, F_CN)
    bias = 0.0
    if HAS_BIAS:
        bias = gl.load(bias_ptr + d + ch_s)[:, None]
    D = 0.0
    if HAS_D:
        D = gl.load(D_ptr + d + ch_s)[:, None]
    ptrs = (u_ptr, delta_ptr, B_desc, C_desc, z_ptr, y_ptr, pre_ptr, incoming_ptr, dt_sum_ptr)
    sizes = (rows0, rows_in0, b, L, n_chunks, saved0, sums_at, A2, bias, D)
    even = ((dt_s.index(0), du_s.index(0)), sums_s.index(0), (B_s.index(0), C_s.index(0)), bars.index(0))
    odd = ((dt_s.index(1), du_s.index(1)), sums_s.index(1), (B_s.index(1), C_s.index(1)), bars.index(1))
    # The pipeline's start: chunk 0's tiles sent for and its phase 1, chunk 1's rows
    _forward_tiles(B_desc, C_desc, b, 0, bars.index(0), even[2])
    rows = _forward_rows(delta_ptr, u_ptr, z_ptr, rows_in0, 0, L, HAS_Z, ROW_PAIRS)
    dt_sum = _forward_deltas(rows, 0, L, bias, gl.zeros([CH], gl.float32, gl.SliceLayout(1, F_SPREAD)), even[0],
                             dt_sum_ptr, sums_at, n_chunks, EVERY, SOFTPLUS, ROW_PAIRS)
    uz = (rows[1], rows[2])
    uz_prev = uz  # chunk -1's phase 3 writes nothing
    rows = _forward_rows(delta_ptr, u_ptr, z_ptr, rows_in0, 1, L, HAS_Z, ROW_PAIRS)
    gl.thread_barrier()
    # Two steps a loop (the buffers alternate, and the loads' registers carry over the loop's edge as
    # they are), to an even number of chunks: one past the end is all masked
    steps = gl.cdiv(n_chunks, 2) * 2
    for c in range(0, steps, 2):
        rows, uz_prev, uz, h, dt_sum = _forward_step(c, rows, uz_prev, uz, h, dt_sum, even, odd, ptrs, *sizes, EVERY,
                                                     SAVE_PRE, HAS_D, HAS_Z, SOFTPLUS, PAIRS, ROW_PAIRS)
        rows, uz_prev, uz, h, dt_sum = _forward_step(c + 1, rows, uz_prev, uz, h, dt_sum, odd, even, ptrs, *sizes,
                                                     EVERY, SAVE_PRE, HAS_D, HAS_Z, SOFTPLUS, PAIRS, ROW_PAIRS)
    _forward_output(sums_s.index(1), uz_prev, steps - 1, rows0, L, D, y_ptr, pre_ptr, SAVE_PRE, HAS_D, HAS_Z,
                    ROW_PAIRS)
    gl.store(final_ptr + states, h)
    mbarrier.wait(bars.index(0), steps // 2 & 1)  # the last step sent for chunk `steps`' tiles (all zeros)
    mbarrier.invalidate(bars.index(0))
    mbarrier.invalidate(bars.index(1))


def forward(args, outputs, sizes, every: int, flags: dict) -> None:
    """The whole forward, as ``selective_scan._scan_sequential`` takes it: ``args`` (u, delta, A, B,
    C, D, z, bias), ``outputs`` (y, y before the gate, the initial state, the saved incoming states,
    the delta sums, the final state), ``sizes`` (batch, channels, length in units of ``L_ALIGN``),
    with a state saved every ``every`` samples (a multiple of ``CHUNK``), and ``flags`` (L_ALIGN,
    SAVE_PRE, HAS_INIT, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, PAIRS). ``forward_fits`` has passed. The
    rows u, delta and z are read as int32 pairs where all are bf16, 4-byte aligned, of an even length."""
    batch, n_ch, L_UNITS = sizes
    u, delta, A, B, C, *rest = args
    B_desc, C_desc = (_tile_descriptor(x, flags["PAIRS"]) for x in (B, C))
    z = args[6]  # u where the scan has no z
    row_pairs = flags["L_ALIGN"] % 2 == 0 and all(x.dtype == torch.bfloat16 and x.data_ptr() % 4 == 0
                                                  for x in (u, delta, z))
    _scan_forward[(batch, n_ch // F_CH)](u, delta, A, B_desc, C_desc, *rest, *outputs, n_ch, L_UNITS,
                                      EVERY=every // CHUNK, ROW_PAIRS=row_pairs, **_forward_options(), **flags)


def _tile_descriptor(x: torch.Tensor, pairs: bool) -> TensorDescriptor:
    """A TMA descriptor of B or C (batch, N, L) as (batch * N, L) in (N, CHUNK) blocks, or with
    ``pairs`` of bf16 (batch * N, L / 2) int32 in (N, CHUNK / 2) blocks."""
    if pairs:
        x = x.view(torch.int32)
    x = x.view(-1, x.shape[-1])
    block = (N_STATES, CHUNK // 2 if pairs else CHUNK)
    return TensorDescriptor.from_tensor(x, list(block), _tile_layout(block, x.dtype))


@functools.cache
def _tile_layout(block: tuple[int, int], dtype: torch.dtype) -> gl.NVMMASharedLayout:
    """The shared-memory layout of a tile; cached, as its making took half a descriptor's 20 us."""
    return gl.NVMMASharedLayout.get_default_for(list(block), TILE_TYPES[dtype])


def _forward_options() -> dict:
    """The forward's launch options: ``FORWARD_WARPS`` warps, and ``FORWARD_REGISTERS`` at most a thread."""
    options = dict(num_warps=FORWARD_WARPS)
    return dict(options, maxnreg=FORWARD_REGISTERS) if FORWARD_REGISTERS else options


def handed_back(grid, args, sizes, tiles: dict, flags: dict) -> None:
    """Launch the backward's first pass (``_scan_chunks_handed``) with the arguments, sizes, tiles
    and flags that ``gradients`` takes; it writes the ``first`` of them."""
    u, delta, A, B, C, D, z, bias, gy, pre, incoming, first, *_grads = args
    n_ch, L_UNITS, _n_state, n_chunks = sizes
    _scan_chunks_handed[grid](delta, bias, A, C, z, gy, first, n_ch, L_UNITS, n_chunks, L_ALIGN=tiles["L_ALIGN"],
                              BLOCK=tiles["BLOCK"], HAS_Z=flags["HAS_Z"], HAS_BIAS=flags["HAS_BIAS"],
                              SOFTPLUS=flags["SOFTPLUS"], num_warps=1)


def gradients(grid, args, sizes, tiles: dict, flags: dict) -> None:
    """Launch the pass with ``_scan_chunks_bwd``'s grid, arguments (its ``first`` included, unread),
    sizes (channels, length in units of ``tiles["L_ALIGN"]``, states, chunks), tiles and flags."""
    (u, delta, A, B, C, D, z, bias, gy, pre, incoming, _first_unread, carry_in,
     gu, gdelta, gz, sums, gB, gC) = args
    n_ch, L_UNITS, _n_state, n_chunks = sizes
    _scan_chunks_grads[grid](u, delta, A, B, C, D, z, bias, gy, pre, incoming, carry_in, gu, gdelta, gz, sums, gB, gC,
                             n_ch, L_UNITS, n_chunks, L_ALIGN=tiles["L_ALIGN"], BLOCK=tiles["BLOCK"], num_warps=1,
                             **flags)


def compile_for_hopper(kernel: str = "gradients", block: int = 128):
    """A kernel ("gradients", "handed" or "forward") compiled for sm_90 (any machine; Triton ships the
    toolchain) as the Mamba block calls it in training, bf16 rows and B and C read as pairs: its
    SASS is in ``asm["cubin"]`` (``kernels/sass_count.py`` reads it)."""
    rows = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "gy_ptr", "y_ptr", "pre_ptr", "gu_ptr", "gdelta_ptr",
            "gz_ptr"}
    flags = dict(L_ALIGN=16, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    if kernel == "forward":
        constexprs = dict(flags, EVERY=1, SAVE_PRE=True, HAS_INIT=False, PAIRS=True, ROW_PAIRS=True)
        block = (N_STATES, CHUNK // 2)
        tiles = ("i32", block, _tile_layout(block, torch.int32))
        return gluon_dispatch.compile_for_sm90(_scan_forward, constexprs, rows, _forward_options(),
                                               dict(B_desc=tiles, C_desc=tiles))
    if kernel == "handed":
        flags.pop("HAS_D")
        return gluon_dispatch.compile_for_sm90(_scan_chunks_handed, dict(flags, BLOCK=block), rows, dict(num_warps=1))
    return gluon_dispatch.compile_for_sm90(_scan_chunks_grads, dict(flags, BLOCK=block), rows, dict(num_warps=1))
