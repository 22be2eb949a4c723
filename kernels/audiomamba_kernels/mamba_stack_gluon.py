"""The outer stage's Mamba blocks in one Gluon kernel for Hopper GPUs, one thread per inner channel.

Same contract as ``mamba_stack.mamba_stack_step`` (its ``skip`` included), and so as
``audiomamba.ops.mamba_stack.mamba_stack_step_ref``, the test oracle. It covers one shape, the
d_model-64 outer stages of this project's Mamba recipes:
- width H = 64 and E = 128 inner channels, in four warps;
- 16 states, dt rank 4, conv width 4;
- bf16 projections, one program per batch row.
``fits`` says where it runs, ``buffers_for`` at which batches.

Gluon, Triton's dialect with explicit layouts, puts each value on the thread that uses it. Plain
Triton picks its layouts itself, and for this kernel that cost 34 CTA barriers and 17 layout
conversions a block (BENCHMARKS.md, "Generation, sessions 24 and 25"). Here:
- Thread e holds inner channel e: its rows of in_proj, its conv buffer and taps, its row of dt_proj,
  its state and A. LayerNorm runs on u, which every thread holds whole.
- x_proj and out_proj sum over the channels. The channel vector goes to every thread through
  shared memory, swizzled so that a warp's reads of its different parts do not share banks. Each
  thread then sums an eighth of two rows (x_proj's B and C) or a half of one (out_proj), as two
  levels of 8 products, and shuffles add the parts.
- A block's weights and the row's states are copied into shared memory (cp.async). With two
  buffers (167 KB, one program an SM) each block's copies go one block ahead, so that no block
  waits for L2. With one buffer (84 KB) they go as the block starts, and two programs share each
  SM, one computing while the other waits: from 1.5 to 2 rows an SM (``buffers_for``).

Measured on an H200 (BENCHMARKS.md, "Generation, session 27"): 2.20 us a block at batch 1,
against 2.81 for the plain-Triton kernel, 2.29 against 3.04 at batch 128, and 4.04 (one buffer)
against 4.46 at batch 256. Sampling `sc09_mamba` takes 69 us a step at batch 1 with it.

Gluon kernels do not run under the Triton interpreter. So CI compiles this one for sm_90
(``compile_for_hopper``), and the GPU tests check its numbers against the reference.
"""
from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

from audiomamba_kernels.mamba_stack import level_arguments
from audiomamba_kernels.pdl import launch_options

SHAPE = dict(H=64, E=128, N=16, R=4, WIDTH=4)  # the one shape it is written for
X_PARTS, Y_PARTS = 8, 2  # x_proj's and out_proj's rows are summed in this many parts (measured fastest)
SHARED_BYTES = {2: 166_800, 1: 84_368}  # its shared memory with 2 or 1 buffers (compile_for_hopper reports it)


def buffers_for(batch: int, sms: int) -> int | None:
    """The buffers this kernel runs with for ``batch`` rows on a GPU of ``sms`` SMs, or None where
    the plain-Triton kernel is faster (measured on an H200, BENCHMARKS.md, "Generation, session 27"):
    - 2 while every row has an SM to itself (2.2-2.3 us a block against 2.8-3.0);
    - 1 from 1.5 to 2 rows an SM, so that two programs share each SM (4.0 us against 4.45);
    - None between (3.4-3.6 us against 3.9-4.0) and past 2 rows an SM."""
    if batch <= sms:
        return 2
    if 3 * sms < 2 * batch <= 4 * sms:
        return 1
    return None


def fits(u: torch.Tensor, weights, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> bool:
    """Whether this kernel takes rows u (batch, H) of a stage with these weights and states: ``SHAPE``,
    bf16 projections, a batch that ``buffers_for`` gives to it, and a device with room for its
    shared memory. The caller (``mamba_stack.gluon_fits``) has already checked for CUDA outside the
    interpreter, and kept split rows out."""
    batch, H = u.shape
    E, width, N, R = conv_state.shape[2], conv_state.shape[3], ssm_state.shape[3], weights.dt_proj.shape[2]
    projections = (weights.in_proj, weights.x_proj, weights.dt_proj, weights.out_proj)
    if dict(H=H, E=E, N=N, R=R, WIDTH=width) != SHAPE or any(p.dtype != torch.bfloat16 for p in projections):
        return False
    buffers = buffers_for(batch, _sm_count(u.device.index))
    return buffers is not None and _room_for_it(u.device.index, buffers)


@functools.cache
def _sm_count(device_index: int | None) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _room_for_it(device_index: int | None, buffers: int) -> bool:
    """A Hopper GPU whose SMs hold one program (2 buffers) or two (1 buffer), each with 1 KB more,
    what the system keeps a block."""
    props = torch.cuda.get_device_properties(device_index)
    programs = 1 if buffers == 2 else 2
    return props.major >= 9 and props.shared_memory_per_multiprocessor >= programs * (SHARED_BYTES[buffers] + 1024)


@gluon.constexpr_function
def _rows(K, NW):
    """[E, K] tiles with inner channel e's K values in thread e (E = 32 NW)."""
    return gl.BlockedLayout([1, K], [32, 1], [NW, 1], [1, 0])


@gluon.constexpr_function
def _copy_layout(COLS, VEC, NW):
    """[rows, COLS] tiles copied VEC elements (16 bytes, or a short row) a thread, coalesced."""
    lanes = min(COLS // VEC, 32)
    return gl.BlockedLayout([1, VEC], [32 // lanes, lanes], [NW, 1], [1, 0])


@gluon.constexpr_function
def _buffers(COLS, BYTES):
    """Two [rows, COLS] buffers of BYTES-byte values. Their 16-byte pieces are XOR-swizzled along
    each 128 bytes, so that threads reading a row each do not share banks."""
    row = COLS * BYTES
    if row >= 128:
        return gl.SwizzledSharedLayout(16 // BYTES, 1, 8, [1, 0])
    if row >= 32:
        return gl.SwizzledSharedLayout(16 // BYTES, 128 // row, row // 16, [1, 0])
    return gl.SwizzledSharedLayout(1, 1, 1, [1, 0])


@gluon.jit
def _pdl(PDL: gl.constexpr):
    """Wait for the kernel before this one, then let the next one launch (``pdl.py``)."""
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)


@gluon.jit
def _sigmoid(x):
    return 1.0 / (1.0 + gl.exp(-x))


@gluon.jit
def _total(v, H: gl.constexpr):
    """The sum of a vector that every thread holds whole, in two levels of 8 (short chains)."""
    return gl.sum(gl.sum(gl.reshape(v, [H // 8, 8]), 1), 0)


@gluon.jit
def _row_sums(products, SHAPE: gl.constexpr):
    """The sums over the last axis of a tile whose rows each thread holds whole, as two levels of 8
    (the summands' chain of dependent adds is 16 long, not a row's length). SHAPE: the tile's shape
    with its last axis split as [length / 8, 8]."""
    return gl.sum(gl.sum(gl.reshape(products, SHAPE), len(SHAPE) - 1), len(SHAPE) - 2)


@gluon.jit
def _copy(smem, src, ROWS: gl.constexpr, COLS: gl.constexpr, VEC: gl.constexpr, NW: gl.constexpr):
    """Start copying the contiguous [ROWS, COLS] tile at src into smem."""
    L: gl.constexpr = _copy_layout(COLS, VEC, NW)
    r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, L))
    c = gl.arange(0, COLS, layout=gl.SliceLayout(0, L))
    cp.async_copy_global_to_shared(smem, src + r[:, None] * COLS + c[None, :])


@gluon.jit
def _copy_vector(smem, src, SIZE: gl.constexpr, STRIDE: gl.constexpr, NW: gl.constexpr):
    """Start copying SIZE values STRIDE apart from src into smem."""
    L: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    cp.async_copy_global_to_shared(smem, src + gl.arange(0, SIZE, layout=L) * STRIDE)


@gluon.jit
def _copy_taps(smem, conv_w, E: gl.constexpr, WIDTH: gl.constexpr, NW: gl.constexpr):
    """Start copying the conv taps (E, WIDTH) aligned to the buffer: slot j meets tap j - 1, and
    slot 0, the sample that drops out, is zero-filled."""
    L: gl.constexpr = _copy_layout(WIDTH, 1, NW)
    e = gl.arange(0, E, layout=gl.SliceLayout(1, L))
    j = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, L))
    cp.async_copy_global_to_shared(smem, conv_w + e[:, None] * WIDTH + j[None, :] - 1,
                                   mask=(j[None, :] >= 1) & (e[:, None] >= 0))


@gluon.jit
def _state_rows(k, b, batch, skip_at, states, E: gl.constexpr, N: gl.constexpr, WIDTH: gl.constexpr):
    """Block k's conv buffer (E, WIDTH) and SSM state (E, N) of row b: the down stage's states
    before the skip connection, the up stage's after it."""
    conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr = states
    if k < skip_at:
        return conv_ptr + (k * batch + b) * E * WIDTH, ssm_ptr + (k * batch + b) * E * N
    return (conv_after_ptr + ((k - skip_at) * batch + b) * E * WIDTH,
            ssm_after_ptr + ((k - skip_at) * batch + b) * E * N)


@gluon.jit
def _prefetch(k, slot, b, batch, skip_at, weights, states, bufs, H: gl.constexpr, E: gl.constexpr,
              N: gl.constexpr, R: gl.constexpr, WIDTH: gl.constexpr, X_PARTS: gl.constexpr, Y_PARTS: gl.constexpr,
              NW: gl.constexpr):
    """Start copying block k's weights and row b's states into buffer ``slot``, as one group."""
    in_w, x_proj, dt_w, A, conv_w, conv_b, D, dt_b, norm_w, norm_b, out_w = weights
    in_s, bc_s, dt_s, dtw_s, A_s, taps_s, newest_s, conv_s, ssm_s, cb_s, D_s, dtb_s, nw_s, nb_s, out_s = bufs
    conv_row, ssm_row = _state_rows(k, b, batch, skip_at, states, E, N, WIDTH)
    xp = x_proj + k * (R + 2 * N) * E
    _copy(in_s.index(slot), in_w + k * 2 * E * H, 2 * E, H, 8, NW)
    _copy(bc_s.index(slot), xp + R * E, 2 * N * X_PARTS, E // X_PARTS, 8, NW)  # B's and C's rows, in parts
    _copy(dt_s.index(slot), xp, R * E // 4, 4, 4, NW)  # dt_low's rows, in pieces of 4
    _copy(dtw_s.index(slot), dt_w + k * E * R, E, R, R, NW)
    _copy(A_s.index(slot), A + k * E * N, E, N, 4, NW)
    _copy_taps(taps_s.index(slot), conv_w + k * E * WIDTH, E, WIDTH, NW)
    _copy_vector(newest_s.index(slot), conv_w + k * E * WIDTH + WIDTH - 1, E, WIDTH, NW)
    _copy(conv_s.index(slot), conv_row, E, WIDTH, WIDTH, NW)
    _copy(ssm_s.index(slot), ssm_row, E, N, 4, NW)
    _copy_vector(cb_s.index(slot), conv_b + k * E, E, 1, NW)
    _copy_vector(D_s.index(slot), D + k * E, E, 1, NW)
    _copy_vector(dtb_s.index(slot), dt_b + k * E, E, 1, NW)
    _copy_vector(nw_s.index(slot), norm_w + k * H, H, 1, NW)
    _copy_vector(nb_s.index(slot), norm_b + k * H, H, 1, NW)
    _copy(out_s.index(slot), out_w + k * H * E, Y_PARTS * H, E // Y_PARTS, 8, NW)  # out_proj's rows, in parts
    cp.commit_group()


@gluon.jit
def _stage_step(u_ptr, out_ptr, norm_w_ptr, norm_b_ptr, in_w_ptr, conv_w_ptr, conv_b_ptr, xp_ptr, dtw_ptr,
                dtb_ptr, A_ptr, D_ptr, out_w_ptr, conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr, skip_at,
                skip_out_ptr, skip_out_stride, skip_in_ptr, skip_in_stride, n_blocks, batch, eps,
                H: gl.constexpr, E: gl.constexpr, N: gl.constexpr, R: gl.constexpr, WIDTH: gl.constexpr,
                X_PARTS: gl.constexpr, Y_PARTS: gl.constexpr, BUFFERS: gl.constexpr, PDL: gl.constexpr):
    NW: gl.constexpr = gl.num_warps()
    L_H: gl.constexpr = _rows(H, NW)
    L_N: gl.constexpr = _rows(N, NW)
    L_R: gl.constexpr = _rows(R, NW)
    L_W: gl.constexpr = _rows(WIDTH, NW)
    # x_proj's B and C rows as [2N, X_PARTS, E / X_PARTS]: each thread sums one part of 2N X_PARTS / (32 NW) rows
    L_BC: gl.constexpr = gl.BlockedLayout([2 * N * X_PARTS // (32 * NW), 1, E // X_PARTS], [32 // X_PARTS, X_PARTS, 1],
                                          [NW, 1, 1], [2, 1, 0])
    # x_proj's dt rows as [R, E/4, 4]: warp r sums row r, each lane 4 channels
    L_DT: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 32, 1], [NW, 1, 1], [2, 1, 0])
    # out_proj as [H, Y_PARTS, E / Y_PARTS]: each thread sums one part of H Y_PARTS / (32 NW) rows
    L_OUT: gl.constexpr = gl.BlockedLayout([H * Y_PARTS // (32 * NW), 1, E // Y_PARTS], [32 // Y_PARTS, Y_PARTS, 1],
                                           [NW, 1, 1], [2, 1, 0])
    VEC: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])  # vectors, and BUFFERS copies of a vector
    b = gl.program_id(0)
    e_h = gl.arange(0, E, layout=gl.SliceLayout(1, L_H))
    h = gl.arange(0, H, layout=gl.SliceLayout(0, L_H))
    e_n = gl.arange(0, E, layout=gl.SliceLayout(1, L_N))
    n = gl.arange(0, N, layout=gl.SliceLayout(0, L_N))
    e_w = gl.arange(0, E, layout=gl.SliceLayout(1, L_W))
    w = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, L_W))
    bufs = (gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, 2 * E, H], _buffers(H, 2)),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, 2 * N * X_PARTS, E // X_PARTS], _buffers(E // X_PARTS, 2)),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, R * E // 4, 4], _buffers(4, 2)),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, E, R], _buffers(R, 2)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E, N], _buffers(N, 4)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E, WIDTH], _buffers(WIDTH, 4)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E, WIDTH], _buffers(WIDTH, 4)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E, N], _buffers(N, 4)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, E], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, H], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, H], VEC),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, Y_PARTS * H, E // Y_PARTS], _buffers(E // Y_PARTS, 2)))
    in_s, bc_s, dt_s, dtw_s, A_s, taps_s, newest_s, conv_s, ssm_s, cb_s, D_s, dtb_s, nw_s, nb_s, out_s = bufs
    # The channel vectors that every thread reads: x for dt_low in fours, x and y for B, C and out_proj
    # in parts, swizzled so that a warp's reads of different parts do not share banks
    x_all = gl.allocate_shared_memory(gl.float32, [E], VEC)
    x_by_part = gl.allocate_shared_memory(gl.float32, [X_PARTS, E // X_PARTS], _buffers(E // X_PARTS, 4))
    y_by_part = gl.allocate_shared_memory(gl.float32, [Y_PARTS, E // Y_PARTS], _buffers(E // Y_PARTS, 4))
    bc_sum = gl.allocate_shared_memory(gl.float32, [2 * N], VEC)
    dt_sum = gl.allocate_shared_memory(gl.float32, [R], VEC)
    out_sum = gl.allocate_shared_memory(gl.float32, [H], VEC)
    weights = (in_w_ptr, xp_ptr, dtw_ptr, A_ptr, conv_w_ptr, conv_b_ptr, D_ptr, dtb_ptr, norm_w_ptr, norm_b_ptr,
               out_w_ptr)
    states = (conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr)
    _pdl(PDL)
    u = gl.load(u_ptr + b * H + h).to(gl.float32)  # (H,) in every thread
    shifted = (w[None, :] >= 1) & (e_w[:, None] >= 0)  # the second term only gives the mask the tile's shape
    if BUFFERS == 2:
        _prefetch(0, 0, b, batch, skip_at, weights, states, bufs, H, E, N, R, WIDTH, X_PARTS, Y_PARTS, NW)
    for k in range(n_blocks):
        slot = k % BUFFERS
        if BUFFERS == 2:
            # The next block's copies go into the buffer every thread finished reading last block.
            # The last block copies itself again, unused, so that every block waits for the same
            # group count.
            _prefetch(gl.minimum(k + 1, n_blocks - 1), 1 - slot, b, batch, skip_at, weights, states, bufs,
                      H, E, N, R, WIDTH, X_PARTS, Y_PARTS, NW)
            cp.wait_group(1)
        else:  # this block's copies, while another program on the SM computes
            _prefetch(k, 0, b, batch, skip_at, weights, states, bufs, H, E, N, R, WIDTH, X_PARTS, Y_PARTS, NW)
            cp.wait_group(0)
        gl.thread_barrier()  # every thread's copies of this block have landed
        if k == skip_at:  # the U-Net's skip connection: the stream goes out, the upsampled row comes in
            gl.store(skip_out_ptr + b * skip_out_stride + h, u)
            u += gl.load(skip_in_ptr + b * skip_in_stride + h)
        conv_row, ssm_row = _state_rows(k, b, batch, skip_at, states, E, N, WIDTH)
        # LayerNorm, in_proj, the conv step with silu
        centred = u - _total(u, H) / H
        un = (centred / gl.sqrt(_total(centred * centred, H) / H + eps) * nw_s.index(slot).load(gl.SliceLayout(0, L_H))
              + nb_s.index(slot).load(gl.SliceLayout(0, L_H)))
        x = _row_sums(in_s.index(slot).slice(0, E).load(L_H).to(gl.float32) * un[None, :], [E, H // 8, 8])
        z = _row_sums(in_s.index(slot).slice(E, E).load(L_H).to(gl.float32) * un[None, :], [E, H // 8, 8])
        buf = conv_s.index(slot).load(L_W)
        x_w = gl.convert_layout(x, gl.SliceLayout(1, L_W), assert_trivial=True)
        acc = (cb_s.index(slot).load(gl.SliceLayout(1, L_W)) + x_w * newest_s.index(slot).load(gl.SliceLayout(1, L_W))
               + gl.sum(buf * taps_s.index(slot).load(L_W), 1))
        gl.store(conv_row + e_w[:, None] * WIDTH + w[None, :] - 1, buf, mask=shifted)
        gl.store(conv_row + e_w * WIDTH + WIDTH - 1, x_w)
        xs = acc * _sigmoid(acc)
        # x_proj: dt_low, B and C, each summed over the channels
        x_all.store(xs)
        x_by_part.store(gl.reshape(xs, [X_PARTS, E // X_PARTS]))
        gl.thread_barrier()
        x_parts = x_by_part.load(gl.SliceLayout(0, L_BC))
        bc = bc_s.index(slot).reshape([2 * N, X_PARTS, E // X_PARTS]).load(L_BC).to(gl.float32)
        bc_sum.store(gl.sum(_row_sums(bc * x_parts[None, :, :], [2 * N, X_PARTS, E // X_PARTS // 8, 8]), 1))
        x_fours = x_all.reshape([E // 4, 4]).load(gl.SliceLayout(0, L_DT))
        dt_rows = dt_s.index(slot).reshape([R, E // 4, 4]).load(L_DT).to(gl.float32)
        dt_sum.store(gl.sum(gl.sum(dt_rows * x_fours[None, :, :], 2), 1))
        gl.thread_barrier()
        # dt_proj and softplus, the state update, D and the silu(z) gate
        dt_low = dt_sum.load(gl.SliceLayout(0, L_R))
        dt = (gl.sum(dtw_s.index(slot).load(L_R).to(gl.float32) * dt_low[None, :], 1)
              + dtb_s.index(slot).load(gl.SliceLayout(1, L_R)))
        dt = gl.convert_layout(gl.where(dt > 20.0, dt, gl.log(1.0 + gl.exp(dt))), gl.SliceLayout(1, L_N),
                               assert_trivial=True)
        x_n = gl.convert_layout(xs, gl.SliceLayout(1, L_N), assert_trivial=True)
        z_n = gl.convert_layout(z, gl.SliceLayout(1, L_N), assert_trivial=True)
        Bv = bc_sum.slice(0, N).load(gl.SliceLayout(0, L_N))
        Cv = bc_sum.slice(N, N).load(gl.SliceLayout(0, L_N))
        s = (gl.exp(dt[:, None] * A_s.index(slot).load(L_N)) * ssm_s.index(slot).load(L_N)
             + (dt * x_n)[:, None] * Bv[None, :])
        gl.store(ssm_row + e_n[:, None] * N + n[None, :], s)
        y = (gl.sum(s * Cv[None, :], 1) + D_s.index(slot).load(gl.SliceLayout(1, L_N)) * x_n) * z_n * _sigmoid(z_n)
        # out_proj, summed over the channels, added to the stream in every thread
        y_by_part.store(gl.reshape(y, [Y_PARTS, E // Y_PARTS]))
        gl.thread_barrier()
        y_parts = y_by_part.load(gl.SliceLayout(0, L_OUT))
        rows = out_s.index(slot).reshape([H, Y_PARTS, E // Y_PARTS]).load(L_OUT).to(gl.float32)
        out_sum.store(gl.sum(_row_sums(rows * y_parts[None, :, :], [H, Y_PARTS, E // Y_PARTS // 8, 8]), 1))
        gl.thread_barrier()
        u += out_sum.load(gl.SliceLayout(0, L_H))
    cp.wait_group(0)
    gl.store(out_ptr + b * H + h, u.to(out_ptr.dtype.element_ty))


def stage_step(u, weights, conv_state, ssm_state, skip=None, buffers=None):
    """All the blocks' step in one launch, where ``fits``; arguments and result as
    ``mamba_stack.mamba_stack_step`` with one program a row (the states are checked there).
    ``buffers``: 2 copies each block's weights one block ahead, 1 copies them as the block starts,
    in half the shared memory, so that two programs share an SM; by default as ``buffers_for``
    gives, and 1 past its range."""
    w = weights
    K, batch, E, width = w.in_proj.shape[0], *conv_state.shape[1:]
    H, N, R = u.shape[1], ssm_state.shape[3], w.dt_proj.shape[2]
    u = u.contiguous()
    out = torch.empty_like(u)
    skip_at, after_conv, after_ssm, skip_out, skip_in = level_arguments(u, out, conv_state, ssm_state, skip)
    pdl = launch_options(u)
    if buffers is None:
        buffers = buffers_for(batch, _sm_count(u.device.index)) or 1
    _stage_step[(batch,)](u, out, w.norm_weight, w.norm_bias, w.in_proj, w.conv_weight, w.conv_bias, w.x_proj,
                          w.dt_proj, w.dt_bias, w.A, w.D, w.out_proj, conv_state, ssm_state, after_conv, after_ssm,
                          skip_at, skip_out, skip_out.stride(0), skip_in, skip_in.stride(0), K, batch, w.norm_eps,
                          H=H, E=E, N=N, R=R, WIDTH=width, X_PARTS=X_PARTS, Y_PARTS=Y_PARTS, BUFFERS=buffers,
                          PDL=bool(pdl), num_warps=E // 32, **pdl)
    return out


def compile_for_hopper(buffers: int = 2):
    """The kernel compiled for sm_90 (any machine; Triton ships the toolchain), for tests: its
    shared memory is ``metadata.shared`` bytes, its PTX ``asm["ptx"]``."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    bf16 = {"in_w_ptr", "xp_ptr", "dtw_ptr", "out_w_ptr"}
    signature, attrs = {}, {}
    for index, name in enumerate(_stage_step.arg_names):
        if name.endswith("_ptr"):
            signature[name] = "*bf16" if name in bf16 else "*fp32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in SHAPE or name in ("X_PARTS", "Y_PARTS", "BUFFERS", "PDL"):
            signature[name] = "constexpr"
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    constexprs = {**SHAPE, "X_PARTS": X_PARTS, "Y_PARTS": Y_PARTS, "BUFFERS": buffers, "PDL": True}
    source = GluonASTSource(_stage_step, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=SHAPE["E"] // 32))
