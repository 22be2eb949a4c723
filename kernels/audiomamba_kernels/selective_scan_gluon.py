"""The selective scan's gradients pass in Gluon for Hopper GPUs, time inside each thread (16 states).

Same contract as ``selective_scan._scan_chunks_bwd`` with GRADS=True and one group of states, at
chunks of ``CHUNK`` = 32: from each chunk's incoming state (the forward saves one every 32 samples
where this pass runs, ``selective_scan._backward_chunk``) and the adjoint carried in from later
chunks (``_pass_chunks``), every gradient: gu, gdelta and gz per element; gA, gD and gbias as one
partial sum per (batch row, chunk); gB and gC as one per channel block. ``fits`` says where it runs.

A program takes one chunk of one batch row and a block of channels, two channels at a time, in one
warp. Lane (channel, state) of the 2 x 16 holds its state's 32 times in registers (32 is what fits
in 255 registers), so both recurrences run inside each thread, one FMA a time:
- the forward states h[t] = a[t] h[t-1] + dt[t] u[t] B[t], recomputed from the incoming state;
- the adjoint lambda[t] = C[t] gy[t] + a[t+1] lambda[t+1], backwards in time. The times are
  reversed in registers (``_flip``: splits and joins, which only rename registers), scanned forward
  and reversed back. Triton's own reverse scan ran shuffles across the warp instead (547 in the
  kernel against 72).
Values per (channel, time) (softplus, the gate, delta u) are computed once, spread over the warp,
and reach the 16 state lanes through shared memory; the sums over the states (for gu and gdelta) go
back the same way, each thread adding the 16 states of 2 times.

The plain-Triton pass lays time across lanes, and most of its instructions go to its scans'
shuffles: 42 a state element against 27 here (``kernels/sass_count.py``). Measured on an H200
(BENCHMARKS.md, "Selective-scan kernels, session 33"): the scan's fwd+bwd at the outer stage
(B=16, D=128, L=16000) 2.27 ms against 2.41 with the Triton pass, and a ``sc09_mamba`` training
step 93.4 ms against 98.2.

Gluon kernels do not run under the Triton interpreter. So CI compiles this one for sm_90
(``compile_for_hopper``), and the GPU tests check its numbers against the reference and the
Triton pass.
"""
from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from audiomamba_kernels import gluon_dispatch

N_STATES = 16  # the states it is written for: 2 channels x 16 states fill a warp's lanes
CHUNK = 32  # times a thread holds: the backward's chunk (the forward saves its states this often)
LOG2E = gl.constexpr(1.4426950408889634)
LN2 = gl.constexpr(0.6931471805599453)


def fits(u: torch.Tensor, n_state: int, chunk: int, channels: int, block: int, groups: int) -> bool:
    """Whether this kernel takes the gradients pass of a scan of rows u with ``n_state`` states, in
    chunks of ``chunk`` times, over blocks of ``block`` of its ``channels`` in ``groups`` state
    groups: on a Hopper GPU (the caller has checked CUDA outside the interpreter), 16 states in one
    group, chunks of ``CHUNK``, and whole blocks of an even number of channels."""
    return (n_state == N_STATES and groups == 1 and chunk == CHUNK and channels % block == 0 and block % 2 == 0
            and _hopper(u.device.index))


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
def _pair_inputs(delta_ptr, u_ptr, z_ptr, gy_ptr, pre_ptr, A_ptr, incoming_ptr, carry_in_ptr, rows, t_ok, next_ok,
                 a_rows, states, c, n_chunks, HAS_Z: gl.constexpr):
    """A channel pair's inputs, loaded a pair ahead of their use: its rows at offsets ``rows``
    (CH, T) as stored (raw delta, raw delta one time later, u, the output gradient, z and the output
    before the gate), and its A, the chunk's incoming state and carried adjoint (CH, N)."""
    raw = gl.load(delta_ptr + rows, mask=t_ok, other=0.0)
    raw_next = gl.load(delta_ptr + rows + 1, mask=next_ok, other=0.0)
    u = gl.load(u_ptr + rows, mask=t_ok, other=0.0)
    g = gl.load(gy_ptr + rows, mask=t_ok, other=0.0)
    zz, pre = g, g
    if HAS_Z:
        zz = gl.load(z_ptr + rows, mask=t_ok, other=0.0)
        pre = gl.load(pre_ptr + rows, mask=t_ok, other=0.0)
    A = gl.load(A_ptr + a_rows)
    h0 = gl.load(incoming_ptr + states * n_chunks + c)
    carry = gl.load(carry_in_ptr + states * n_chunks + c)
    return raw, raw_next, u, g, zz, pre, A, h0, carry


@gluon.jit
def _scan_chunks_grads(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gy_ptr, pre_ptr,
                       incoming_ptr, carry_in_ptr,
                       gu_ptr, gdelta_ptr, gz_ptr, gA_ptr, gB_ptr, gC_ptr, gD_ptr, gbias_ptr,
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
    # (CH, N, T): lane (channel, state) holds T times
    L3: gl.constexpr = gl.BlockedLayout([1, 1, T], [CH, N, 1], [1, 1, 1], [2, 1, 0])
    L_CT: gl.constexpr = gl.SliceLayout(1, L3)  # (CH, T): a channel's times, in each of its state lanes
    L_NT: gl.constexpr = gl.SliceLayout(0, L3)  # (N, T): a state's times
    L_CN: gl.constexpr = gl.SliceLayout(2, L3)  # (CH, N): one value a lane
    # (CH, T) spread over the warp, 2 times a lane; and (CH, N, T) for the sums over states, each lane
    # holding the N states of its 2 times
    L_SPREAD: gl.constexpr = gl.BlockedLayout([1, T * CH // 32], [CH, 32 // CH], [1, 1], [1, 0])
    L_SUM: gl.constexpr = gl.BlockedLayout([1, N, T * CH // 32], [CH, 1, 32 // CH], [1, 1, 1], [1, 2, 0])
    FLAT: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    SWZ: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, [2, 1, 0])  # 16-byte pieces XOR-swizzled by row
    rows_s = gl.allocate_shared_memory(gl.float32, [4, CH, T], FLAT)  # dt, dt one time later, dt u, gy
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
    next_ok = (t0 + t_s + 1 < L)[None, :] & (t_s < T - 1)[None, :] & (ch_s >= 0)[:, None]
    bc_off = (b * N + n_nt[:, None]) * L + t0 + t_nt[None, :]
    bc_ok = (t0 + t_nt < L)[None, :] & (n_nt >= 0)[:, None]
    tiles_s.index(0).store(gl.load(B_ptr + bc_off, mask=bc_ok, other=0.0).to(gl.float32))
    tiles_s.index(1).store(gl.load(C_ptr + bc_off, mask=bc_ok, other=0.0).to(gl.float32))
    acc_B = gl.zeros([CH, N, T], gl.float32, L3)
    acc_C = gl.zeros([CH, N, T], gl.float32, L3)
    rows0 = (b * n_ch + d0 + ch_s[:, None]) * L + t0 + t_s[None, :]
    a_rows0 = (d0 + ch_cn[:, None]) * N + n_cn[None, :]
    states0 = (b * n_ch + d0 + ch_cn[:, None]) * N + n_cn[None, :]  # (batch row, channel, state) of pair 0
    inputs = (delta_ptr, u_ptr, z_ptr, gy_ptr, pre_ptr, A_ptr, incoming_ptr, carry_in_ptr)
    nxt = _pair_inputs(*inputs, rows0, t_ok, next_ok, a_rows0, states0, c, n_chunks, HAS_Z)
    for i in range(PAIRS):
        d = d0 + i * CH
        rows = rows0 + i * CH * L
        raw, raw_next, u, g, zz, pre, A, h0, carry = nxt
        if i + 1 < PAIRS:  # the next pair's inputs load while this pair runs
            nxt = _pair_inputs(*inputs, rows + CH * L, t_ok, next_ok, a_rows0 + (i + 1) * CH * N,
                               states0 + (i + 1) * CH * N, c, n_chunks, HAS_Z)
        A2 = A * LOG2E
        # Per (channel, time), spread over the warp: delta (0 past the end), delta one time later (0 at
        # the chunk's last time, where the carried adjoint comes in), delta u, and the gradient before the gate
        bias = 0.0
        if HAS_BIAS:
            bias = gl.load(bias_ptr + d + ch_s)[:, None]
        dt, x = _delta(raw, bias, t_ok, SOFTPLUS)
        dt_next, _x = _delta(raw_next, bias, next_ok, SOFTPLUS)
        u = u.to(gl.float32)
        g = g.to(gl.float32)
        gy = g
        if HAS_Z:
            zz = zz.to(gl.float32)
            sig = _sigmoid(zz)
            gy = g * zz * sig
            gz = g * pre.to(gl.float32) * sig * (1.0 + zz * (1.0 - sig))
            gl.store(gz_ptr + rows, gz.to(gz_ptr.dtype.element_ty), mask=t_ok)
        gl.thread_barrier()  # the last pair's reads of rows_s and sums_s are done
        rows_s.index(0).store(dt)
        rows_s.index(1).store(dt_next)
        rows_s.index(2).store(dt * u)
        rows_s.index(3).store(gy)
        gl.thread_barrier()
        # The adjoint, backwards in time, from the carried one at the chunk's last time. Each (CH, T)
        # row is loaded from shared memory where it is used, not kept through the scans: at 32
        # registers a row, keeping them spilled.
        a_next = gl.exp2(rows_s.index(1).load(L_CT)[:, None, :] * A2[:, :, None])
        lam_in = tiles_s.index(1).load(L_NT)[None, :, :] * rows_s.index(3).load(L_CT)[:, None, :]
        lam_in = gl.where(last, lam_in + carry[:, :, None], lam_in)
        lam = _flip(gl.associative_scan((_flip(a_next, CH, N, T, BITS), _flip(lam_in, CH, N, T, BITS)), 2,
                                        _combine)[1], CH, N, T, BITS)
        du3 = rows_s.index(2).load(L_CT)[:, None, :]
        acc_B += lam * du3
        B_tile = tiles_s.index(0).load(L_NT)[None, :, :]
        sums_s.slice(0, CH).store(lam * B_tile)
        # The states, forwards, from the chunk's incoming state
        dt3 = rows_s.index(0).load(L_CT)[:, None, :]
        a = gl.exp2(dt3 * A2[:, :, None])
        drive = du3 * B_tile
        h = gl.associative_scan((a, gl.where(first, drive + a * h0[:, :, None], drive)), 2, _combine)[1]
        acc_C += h * rows_s.index(3).load(L_CT)[:, None, :]
        g_decay = lam * (h - drive)  # d loss / d (dt A) = lambda[t] a[t] h[t-1]
        sums_s.slice(CH, CH).store(g_decay * A[:, :, None])
        per_channel = (b * n_chunks + c) * n_ch + d
        gl.store(gA_ptr + (per_channel + ch_cn[:, None]) * N + n_cn[None, :], gl.sum(g_decay * dt3, 2))
        gl.thread_barrier()
        # Sums over the states, back in the spread layout
        lam_B = gl.convert_layout(gl.sum(sums_s.slice(0, CH).load(L_SUM), 1), L_SPREAD)
        g_dtA = gl.convert_layout(gl.sum(sums_s.slice(CH, CH).load(L_SUM), 1), L_SPREAD)
        gu = lam_B * dt
        if HAS_D:
            gu += gy * gl.load(D_ptr + d + ch_s)[:, None]
        gdt = lam_B * u + g_dtA
        if SOFTPLUS:
            gdt = gdt * _sigmoid(x)
        gdt = gl.where(t_ok, gdt, 0.0)
        gl.store(gdelta_ptr + rows, gdt.to(gdelta_ptr.dtype.element_ty), mask=t_ok)
        gl.store(gu_ptr + rows, gu.to(gu_ptr.dtype.element_ty), mask=t_ok)
        gl.store(gD_ptr + per_channel + ch_s, gl.sum(gy * u, 1))
        gl.store(gbias_ptr + per_channel + ch_s, gl.sum(gdt, 1))
    # This block's partial sums of gB and gC, the offsets and mask made again here: kept through the
    # loop, they would take registers
    part = blk * gl.num_programs(1) * N * L
    end_off = (b * N + n_nt[:, None]) * L + t_nt[None, :] + t0
    end_ok = (t_nt < L - t0)[None, :] & (n_nt >= 0)[:, None]
    gl.store(gB_ptr + part + end_off, gl.sum(acc_B, 0), mask=end_ok)
    gl.store(gC_ptr + part + end_off, gl.sum(acc_C, 0), mask=end_ok)


def gradients(grid, args, sizes, tiles: dict, flags: dict) -> None:
    """Launch the pass with ``_scan_chunks_bwd``'s grid, arguments (its ``first`` included, unread),
    sizes (channels, length in units of ``tiles["L_ALIGN"]``, states, chunks), tiles and flags."""
    (u, delta, A, B, C, D, z, bias, gy, pre, incoming, _first_unread, carry_in,
     gu, gdelta, gz, gA, gB, gC, gD, gbias) = args
    n_ch, L_UNITS, _n_state, n_chunks = sizes
    _scan_chunks_grads[grid](u, delta, A, B, C, D, z, bias, gy, pre, incoming, carry_in, gu, gdelta, gz, gA, gB, gC,
                             gD, gbias, n_ch, L_UNITS, n_chunks, L_ALIGN=tiles["L_ALIGN"], BLOCK=tiles["BLOCK"],
                             num_warps=1, **flags)


def compile_for_hopper(block: int = 64):
    """The kernel compiled for sm_90 (any machine; Triton ships the toolchain) as the Mamba block
    calls it, bf16 rows: its SASS is in ``asm["cubin"]`` (``kernels/sass_count.py`` reads it)."""
    rows = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "gy_ptr", "pre_ptr", "gu_ptr", "gdelta_ptr", "gz_ptr"}
    constexprs = dict(L_ALIGN=16, BLOCK=block, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    return gluon_dispatch.compile_for_sm90(_scan_chunks_grads, constexprs, rows, dict(num_warps=1))
