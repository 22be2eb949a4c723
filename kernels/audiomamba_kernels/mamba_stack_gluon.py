"""The Mamba blocks of the outer and middle stages in one Gluon kernel for Hopper GPUs, one thread
(or two) per inner channel.

Same contract as ``mamba_stack.mamba_stack_step`` (its ``skip`` included), and so as
``audiomamba.ops.mamba_stack.mamba_stack_step_ref``, the test oracle. It covers the shapes of this
project's Mamba recipes of d_model 64 (``PLANS``): 16 states, conv width 4, bf16 projections, and
- the outer stage: width H = 64, E = 128 inner channels, dt rank 4, one CTA of four warps a row;
- the middle stage: H = 128, E = 256, dt rank 8, a row in a cluster of 8 CTAs, each with 32 of
  its inner channels, two threads to a channel (two warps), each holding half of its values.
``fits`` says where it runs, ``buffers_for`` at which batches.

Gluon, Triton's dialect with explicit layouts, puts each value on the thread that uses it. Plain
Triton picks its layouts itself, and for this kernel that cost 34 CTA barriers and 17 layout
conversions a block (BENCHMARKS.md, "Generation, sessions 24 and 25"). Here:
- Thread e holds inner channel e: its rows of in_proj, its conv buffer and taps, its row of dt_proj,
  its state and A. LayerNorm runs on u, which every thread holds whole (half of it, and shuffles
  add the halves, with two threads a channel).
- x_proj and out_proj sum over the channels. The channel vector goes to every thread through
  shared memory, swizzled so that a warp's reads of its different parts do not share banks. Each
  thread then sums a part of one or two rows, as two levels of 8 products, and shuffles add the
  parts.
- In a cluster, each CTA sums its own channels; the CTAs exchange those partial sums through
  global memory around a cluster barrier (``_share``, ``_cluster_barrier``, ``_gather``), and every
  CTA adds them in the same order, so all keep the same stream u. That barrier takes about 0.17 us,
  against 0.5-0.75 for the counters in global memory that the plain-Triton kernel's split rows
  wait on (BENCHMARKS.md, "Generation, session 32").
- A block's weights and the row's states are copied into shared memory (cp.async). With two
  buffers (167 KB at width 64, one program an SM) each block's copies go one block ahead, so that
  no block waits for L2. With one buffer they go as the block starts, and two programs share each
  SM, one computing while the other waits (``buffers_for``).

Measured on an H200 (BENCHMARKS.md, "Generation, sessions 27 and 32"): at width 64, 2.20 us a block
at batch 1 against 2.81 for the plain-Triton kernel, 2.29 against 3.04 at batch 128, and 4.04 (one
buffer) against 4.46 at batch 256; at width 128, 3.0 us against 5.0 for the plain kernel's split
rows at batch 1, and 3.5 against 7.0 at batch 16.

Gluon kernels do not run under the Triton interpreter. So CI compiles this one for sm_90
(``compile_for_hopper``), and the GPU tests check its numbers against the reference.
"""
from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

from audiomamba_kernels import gluon_dispatch
from audiomamba_kernels.mamba_stack import level_arguments
from audiomamba_kernels.pdl import launch_options

# The stages it is written for, by width H: their shapes, the CTAs that share a row (a cluster),
# the threads a channel, and the parts that x_proj's and out_proj's rows are summed in (measured
# fastest, BENCHMARKS.md, "Generation, sessions 27 and 32")
PLANS = {64: dict(shape=dict(H=64, E=128, N=16, R=4, WIDTH=4), ctas=1, threads=1, X_PARTS=8, Y_PARTS=2),
         128: dict(shape=dict(H=128, E=256, N=16, R=8, WIDTH=4), ctas=8, threads=2, X_PARTS=4, Y_PARTS=1)}
# A CTA's shared memory, by width and buffers (compile_for_hopper reports it)
SHARED_BYTES = {(64, 2): 166_800, (64, 1): 84_368, (128, 2): 69_792, (128, 1): 35_488}


def buffers_for(batch: int, sms: int, width: int = 64) -> int | None:
    """The buffers this kernel runs with for ``batch`` rows of a stage of ``width`` on a GPU of ``sms``
    SMs, or None where the plain-Triton kernel is faster (measured on an H200, BENCHMARKS.md,
    "Generation, sessions 27 and 32"). At width 64, one CTA a row:
    - 2 while every row has an SM to itself (2.2-2.3 us a block against 2.8-3.0);
    - 1 from 1.5 to 2 rows an SM, so that two programs share each SM (4.0 us against 4.45);
    - None between (3.4-3.6 us against 3.9-4.0) and past 2 rows an SM.
    At width 128, 8 CTAs a row: 2 up to 2 CTAs an SM (3.0-4.6 us against 5.0-7.5), 1 up to 3 (5.9
    against 7.5), and None past that (8.4 against 7.5 at batch 64)."""
    if width == 128:
        ctas = PLANS[width]["ctas"] * batch
        return 2 if ctas <= 2 * sms else 1 if ctas <= 3 * sms else None
    if batch <= sms:
        return 2
    if 3 * sms < 2 * batch <= 4 * sms:
        return 1
    return None


def fits(u: torch.Tensor, weights, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> bool:
    """Whether this kernel takes rows u (batch, H) of a stage with these weights and states: a shape
    of ``PLANS``, bf16 projections, a batch that ``buffers_for`` gives to it, and a device with room
    for its shared memory. The caller (``mamba_stack.gluon_fits``) has already checked for CUDA
    outside the interpreter."""
    batch, H = u.shape
    E, width, N, R = conv_state.shape[2], conv_state.shape[3], ssm_state.shape[3], weights.dt_proj.shape[2]
    projections = (weights.in_proj, weights.x_proj, weights.dt_proj, weights.out_proj)
    if H not in PLANS or dict(H=H, E=E, N=N, R=R, WIDTH=width) != PLANS[H]["shape"]:
        return False
    if any(p.dtype != torch.bfloat16 for p in projections):
        return False
    buffers = buffers_for(batch, _sm_count(u.device.index), H)
    return buffers is not None and _room_for_it(u.device.index, H, buffers)


@functools.cache
def _sm_count(device_index: int | None) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _room_for_it(device_index: int | None, width: int, buffers: int) -> bool:
    """A Hopper GPU whose SMs hold one of its CTAs (2 buffers) or two (1 buffer), each with 1 KB
    more, what the system keeps a block."""
    props = torch.cuda.get_device_properties(device_index)
    ctas = 1 if buffers == 2 else 2
    return props.major >= 9 and props.shared_memory_per_multiprocessor >= ctas * (SHARED_BYTES[width, buffers] + 1024)


@gluon.constexpr_function
def _cluster(rank, C):
    """The CTA bases of a tensor of ``rank`` dimensions that every CTA of a cluster of C holds whole."""
    return [[0] * rank] * (C.bit_length() - 1)


@gluon.constexpr_function
def _blocked(size_per_thread, threads, warps, C):
    """A blocked layout, dimensions in row-major order, held whole by every CTA of the cluster."""
    rank = len(size_per_thread)
    return gl.BlockedLayout(size_per_thread, threads, warps, list(range(rank - 1, -1, -1)), _cluster(rank, C))


@gluon.constexpr_function
def _rows(K, T, NW, C):
    """[EC, K] tiles with the CTA's inner channel e's K values in T threads, each a 1/T of them
    (EC = 32 NW / T)."""
    return _blocked([1, max(1, K // T)], [32 // T, T], [NW, 1], C)


@gluon.constexpr_function
def _sums(OUTPUTS, PARTS, CHANNELS, NW, C):
    """[OUTPUTS, PARTS, CHANNELS] tiles of sums over the CTA's channels in PARTS parts: a thread holds
    one part's CHANNELS of OUTPUTS * PARTS / (32 NW) outputs."""
    return _blocked([max(1, OUTPUTS * PARTS // (32 * NW)), 1, CHANNELS], [32 // PARTS, PARTS, 1], [NW, 1, 1], C)


@gluon.constexpr_function
def _copy_layout(COLS, VEC, NW, C):
    """[rows, COLS] tiles copied VEC elements (16 bytes, or a short row) a thread, coalesced."""
    lanes = min(COLS // VEC, 32)
    return _blocked([1, VEC], [32 // lanes, lanes], [NW, 1], C)


@gluon.constexpr_function
def _buffers(COLS, BYTES, C):
    """Buffers of [rows, COLS] BYTES-byte values. Their 16-byte pieces are XOR-swizzled along each
    128 bytes, so that threads reading a row each do not share banks."""
    row, cga = COLS * BYTES, _cluster(2, C)
    if row >= 128:
        return gl.SwizzledSharedLayout(16 // BYTES, 1, 8, [1, 0], cga)
    if row >= 32:
        return gl.SwizzledSharedLayout(16 // BYTES, 128 // row, row // 16, [1, 0], cga)
    return gl.SwizzledSharedLayout(1, 1, 1, [1, 0], cga)


@gluon.constexpr_function
def _vector_buffers(C):
    """Buffers of vectors, unswizzled."""
    return gl.SwizzledSharedLayout(1, 1, 1, [0], _cluster(1, C))


@gluon.jit
def _pdl(PDL: gl.constexpr):
    """Wait for the kernel before this one, then let the next one launch (``pdl.py``)."""
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)


@gluon.jit
def _cta_rank(C: gl.constexpr):
    """This CTA's place in its row's cluster."""
    if C == 1:
        return 0
    return gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r", [], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _cluster_barrier():
    """Every CTA of the cluster waits for all to arrive; what each stored before arriving is then
    visible to all (release and acquire at cluster scope)."""
    gl.inline_asm_elementwise("barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned; // $0",
                              "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _store(ptr, value, C: gl.constexpr, mask=None):
    """Store (where ``mask`` holds) in every CTA. With a cluster, ``gl.store`` would store CTA 0's
    values only, as it takes the cluster's CTAs for copies of one tensor."""
    if C == 1:
        gl.store(ptr, value, mask=mask)
    elif mask is None:
        gl.inline_asm_elementwise("st.global.f32 [$1], $2; // $0", "=r,l,f", [ptr.to(gl.int64), value],
                                  dtype=gl.int32, is_pure=False, pack=1)
    else:
        gl.inline_asm_elementwise("{ .reg .pred p; setp.ne.s32 p, $3, 0; @p st.global.f32 [$1], $2; } // $0",
                                  "=r,l,f,r", [ptr.to(gl.int64), value, mask.to(gl.int32)], dtype=gl.int32,
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
def _copy(smem, src, ROWS: gl.constexpr, PARTS: gl.constexpr, COLS: gl.constexpr, STRIDE: gl.constexpr,
          VEC: gl.constexpr, NW: gl.constexpr, C: gl.constexpr):
    """Start copying the [ROWS, PARTS * COLS] tile at src, whose rows are STRIDE apart, into smem as
    [ROWS * PARTS, COLS]: each row in PARTS parts."""
    L: gl.constexpr = _copy_layout(COLS, VEC, NW, C)
    r = gl.arange(0, ROWS * PARTS, layout=gl.SliceLayout(1, L))
    c = gl.arange(0, COLS, layout=gl.SliceLayout(0, L))
    if STRIDE == PARTS * COLS:  # one contiguous tile
        rows = r * COLS
    else:
        rows = (r // PARTS) * STRIDE + (r % PARTS) * COLS
    cp.async_copy_global_to_shared(smem, src + rows[:, None] + c[None, :])


@gluon.jit
def _copy_vector(smem, src, SIZE: gl.constexpr, STRIDE: gl.constexpr, NW: gl.constexpr, C: gl.constexpr):
    """Start copying SIZE values STRIDE apart from src into smem."""
    L: gl.constexpr = _blocked([1], [32], [NW], C)
    cp.async_copy_global_to_shared(smem, src + gl.arange(0, SIZE, layout=L) * STRIDE)


@gluon.jit
def _copy_taps(smem, conv_w, EC: gl.constexpr, WIDTH: gl.constexpr, NW: gl.constexpr, C: gl.constexpr):
    """Start copying the conv taps (EC, WIDTH) aligned to the buffer: slot j meets tap j - 1, and
    slot 0, the sample that drops out, is zero-filled."""
    L: gl.constexpr = _copy_layout(WIDTH, 1, NW, C)
    e = gl.arange(0, EC, layout=gl.SliceLayout(1, L))
    j = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, L))
    cp.async_copy_global_to_shared(smem, conv_w + e[:, None] * WIDTH + j[None, :] - 1,
                                   mask=(j[None, :] >= 1) & (e[:, None] >= 0))


@gluon.jit
def _state_rows(k, b, e0, batch, skip_at, states, E: gl.constexpr, N: gl.constexpr, WIDTH: gl.constexpr):
    """Block k's conv buffer (E, WIDTH) and SSM state (E, N) of row b, from channel e0: the down
    stage's states before the skip connection, the up stage's after it."""
    conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr = states
    if k < skip_at:
        return conv_ptr + ((k * batch + b) * E + e0) * WIDTH, ssm_ptr + ((k * batch + b) * E + e0) * N
    return (conv_after_ptr + (((k - skip_at) * batch + b) * E + e0) * WIDTH,
            ssm_after_ptr + (((k - skip_at) * batch + b) * E + e0) * N)


@gluon.jit
def _prefetch(k, slot, b, e0, batch, skip_at, weights, states, bufs, H: gl.constexpr, E: gl.constexpr,
              N: gl.constexpr, R: gl.constexpr, WIDTH: gl.constexpr, X_PARTS: gl.constexpr, Y_PARTS: gl.constexpr,
              NW: gl.constexpr, C: gl.constexpr):
    """Start copying block k's weights for the CTA's channels e0 .. e0 + EC - 1 and row b's states of
    them into buffer ``slot``, as one group."""
    EC: gl.constexpr = E // C
    in_w, x_proj, dt_w, A, conv_w, conv_b, D, dt_b, norm_w, norm_b, out_w = weights
    in_x_s, in_z_s, bc_s, dt_s, dtw_s, A_s, taps_s, newest_s, conv_s, ssm_s, cb_s, D_s, dtb_s, nw_s, nb_s, out_s = bufs
    conv_row, ssm_row = _state_rows(k, b, e0, batch, skip_at, states, E, N, WIDTH)
    xp = x_proj + k * (R + 2 * N) * E + e0
    _copy(in_x_s.index(slot), in_w + (k * 2 * E + e0) * H, EC, 1, H, H, 8, NW, C)  # its x rows
    _copy(in_z_s.index(slot), in_w + (k * 2 * E + E + e0) * H, EC, 1, H, H, 8, NW, C)  # its z rows
    _copy(bc_s.index(slot), xp + R * E, 2 * N, X_PARTS, EC // X_PARTS, E, 8, NW, C)  # B's and C's rows, in parts
    _copy(dt_s.index(slot), xp, R, EC // 4, 4, E, 4, NW, C)  # dt_low's rows, in pieces of 4
    _copy(dtw_s.index(slot), dt_w + (k * E + e0) * R, EC, 1, R, R, R, NW, C)
    _copy(A_s.index(slot), A + (k * E + e0) * N, EC, 1, N, N, 4, NW, C)
    _copy_taps(taps_s.index(slot), conv_w + (k * E + e0) * WIDTH, EC, WIDTH, NW, C)
    _copy_vector(newest_s.index(slot), conv_w + (k * E + e0) * WIDTH + WIDTH - 1, EC, WIDTH, NW, C)
    _copy(conv_s.index(slot), conv_row, EC, 1, WIDTH, WIDTH, WIDTH, NW, C)
    _copy(ssm_s.index(slot), ssm_row, EC, 1, N, N, 4, NW, C)
    _copy_vector(cb_s.index(slot), conv_b + k * E + e0, EC, 1, NW, C)
    _copy_vector(D_s.index(slot), D + k * E + e0, EC, 1, NW, C)
    _copy_vector(dtb_s.index(slot), dt_b + k * E + e0, EC, 1, NW, C)
    _copy_vector(nw_s.index(slot), norm_w + k * H, H, 1, NW, C)
    _copy_vector(nb_s.index(slot), norm_b + k * H, H, 1, NW, C)
    # out_proj's rows, in parts
    _copy(out_s.index(slot), out_w + k * H * E + e0, H, Y_PARTS, EC // Y_PARTS, E, 8, NW, C)
    cp.commit_group()


@gluon.jit
def _share(sums, shares, COUNT: gl.constexpr, NW: gl.constexpr, C: gl.constexpr):
    """Store this CTA's COUNT partial sums (shared memory) in its slot of ``shares`` (C, COUNT), in
    global memory, for the cluster's other CTAs (after ``_cluster_barrier``). One set of slots
    serves every block: each CTA reads an exchange's slots before it arrives at the next barrier,
    and no CTA stores into them again until it has passed that barrier."""
    L: gl.constexpr = _blocked([1], [32], [NW], C)
    i = gl.arange(0, COUNT, layout=L)
    _store(shares + _cta_rank(C) * COUNT + i, sums.load(L), C)


@gluon.jit
def _gather(sums, shares, COUNT: gl.constexpr, STRIDE: gl.constexpr, NW: gl.constexpr, C: gl.constexpr):
    """Write to ``sums`` (shared memory) the totals over the cluster's slots of ``shares`` (C slots
    STRIDE apart, COUNT values each), added in the same order in every CTA, so that all hold the
    same totals."""
    L: gl.constexpr = _blocked([C, 1], [1, 32], [1, NW], C)
    i = gl.arange(0, COUNT, layout=gl.SliceLayout(0, L))
    cta = gl.arange(0, C, layout=gl.SliceLayout(1, L))
    totals = gl.sum(gl.load(shares + cta[:, None] * STRIDE + i[None, :], cache_modifier=".cg"), 0)
    sums.store(totals)


@gluon.jit
def _stage_step(u_ptr, out_ptr, norm_w_ptr, norm_b_ptr, in_w_ptr, conv_w_ptr, conv_b_ptr, xp_ptr, dtw_ptr,
                dtb_ptr, A_ptr, D_ptr, out_w_ptr, conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr, skip_at,
                skip_out_ptr, skip_out_stride, skip_in_ptr, skip_in_stride, shares_ptr, n_blocks, batch, eps,
                H: gl.constexpr, E: gl.constexpr, N: gl.constexpr, R: gl.constexpr, WIDTH: gl.constexpr,
                X_PARTS: gl.constexpr, Y_PARTS: gl.constexpr, BUFFERS: gl.constexpr, PDL: gl.constexpr):
    NW: gl.constexpr = gl.num_warps()
    C: gl.constexpr = gl.num_ctas()  # CTAs a row (a cluster), each with EC of its inner channels
    EC: gl.constexpr = E // C
    T: gl.constexpr = 32 * NW // EC  # threads a channel
    L_H: gl.constexpr = _rows(H, T, NW, C)
    L_N: gl.constexpr = _rows(N, T, NW, C)
    L_R: gl.constexpr = _rows(R, T, NW, C)
    L_W: gl.constexpr = _rows(WIDTH, T, NW, C)
    L_BC: gl.constexpr = _sums(2 * N, X_PARTS, EC // X_PARTS, NW, C)  # x_proj's B and C rows
    L_OUT: gl.constexpr = _sums(H, Y_PARTS, EC // Y_PARTS, NW, C)  # out_proj's rows
    # x_proj's dt rows as [R, EC/4, 4]: each lane sums 4 channels of a row
    L_DT: gl.constexpr = _blocked([1, 1, 4], [32 // (EC // 4), EC // 4, 1], [NW, 1, 1], C)
    VEC: gl.constexpr = _vector_buffers(C)  # vectors, and BUFFERS copies of a vector
    b = gl.program_id(0)
    e0 = _cta_rank(C) * EC
    e_w = gl.arange(0, EC, layout=gl.SliceLayout(1, L_W))
    w = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, L_W))
    e_n = gl.arange(0, EC, layout=gl.SliceLayout(1, L_N))
    n = gl.arange(0, N, layout=gl.SliceLayout(0, L_N))
    h = gl.arange(0, H, layout=gl.SliceLayout(0, L_H))
    bufs = (gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, EC, H], _buffers(H, 2, C)),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, EC, H], _buffers(H, 2, C)),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, 2 * N * X_PARTS, EC // X_PARTS],
                                      _buffers(EC // X_PARTS, 2, C)),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, R * EC // 4, 4], _buffers(4, 2, C)),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, EC, R], _buffers(R, 2, C)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC, N], _buffers(N, 4, C)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC, WIDTH], _buffers(WIDTH, 4, C)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC, WIDTH], _buffers(WIDTH, 4, C)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC, N], _buffers(N, 4, C)),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, EC], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, H], VEC),
            gl.allocate_shared_memory(gl.float32, [BUFFERS, H], VEC),
            gl.allocate_shared_memory(gl.bfloat16, [BUFFERS, Y_PARTS * H, EC // Y_PARTS],
                                      _buffers(EC // Y_PARTS, 2, C)))
    in_x_s, in_z_s, bc_s, dt_s, dtw_s, A_s, taps_s, newest_s, conv_s, ssm_s, cb_s, D_s, dtb_s, nw_s, nb_s, out_s = bufs
    # The channel vectors that every thread reads: x for dt_low in fours, x and y for B, C and out_proj
    # in parts, swizzled so that a warp's reads of different parts do not share banks
    x_all = gl.allocate_shared_memory(gl.float32, [EC], VEC)
    x_by_part = gl.allocate_shared_memory(gl.float32, [X_PARTS, EC // X_PARTS], _buffers(EC // X_PARTS, 4, C))
    y_by_part = gl.allocate_shared_memory(gl.float32, [Y_PARTS, EC // Y_PARTS], _buffers(EC // Y_PARTS, 4, C))
    bc_sum = gl.allocate_shared_memory(gl.float32, [2 * N], VEC)  # x_proj's sums: B and C
    dt_sum = gl.allocate_shared_memory(gl.float32, [R], VEC)  # and dt_low
    b_total = gl.allocate_shared_memory(gl.float32, [N], VEC)  # with a cluster, B's and C's totals
    c_total = gl.allocate_shared_memory(gl.float32, [N], VEC)
    out_sum = gl.allocate_shared_memory(gl.float32, [H], VEC)
    weights = (in_w_ptr, xp_ptr, dtw_ptr, A_ptr, conv_w_ptr, conv_b_ptr, D_ptr, dtb_ptr, norm_w_ptr, norm_b_ptr,
               out_w_ptr)
    states = (conv_ptr, ssm_ptr, conv_after_ptr, ssm_after_ptr)
    bc_shares = shares_ptr + b * C * (2 * N + R + H)  # a cluster's partial sums: x_proj's, then out_proj's
    dt_shares = bc_shares + C * 2 * N
    out_shares = dt_shares + C * R
    _pdl(PDL)
    u = gl.load(u_ptr + b * H + h).to(gl.float32)  # (H,) in every thread
    shifted = (w[None, :] >= 1) & (e_w[:, None] >= 0)  # the second term only gives the mask the tile's shape
    if BUFFERS == 2:
        _prefetch(0, 0, b, e0, batch, skip_at, weights, states, bufs, H, E, N, R, WIDTH, X_PARTS, Y_PARTS, NW, C)
    for k in range(n_blocks):
        slot = k % BUFFERS
        if BUFFERS == 2:
            # The next block's copies go into the buffer every thread finished reading last block.
            # The last block copies itself again, unused, so that every block waits for the same
            # group count.
            _prefetch(gl.minimum(k + 1, n_blocks - 1), 1 - slot, b, e0, batch, skip_at, weights, states, bufs,
                      H, E, N, R, WIDTH, X_PARTS, Y_PARTS, NW, C)
            cp.wait_group(1)
        else:  # this block's copies, while another program on the SM computes
            _prefetch(k, 0, b, e0, batch, skip_at, weights, states, bufs, H, E, N, R, WIDTH, X_PARTS, Y_PARTS, NW, C)
            cp.wait_group(0)
        gl.thread_barrier()  # every thread's copies of this block have landed
        if k == skip_at:  # the U-Net's skip connection: the stream goes out, the upsampled row comes in
            gl.store(skip_out_ptr + b * skip_out_stride + h, u)
            u += gl.load(skip_in_ptr + b * skip_in_stride + h)
        conv_row, ssm_row = _state_rows(k, b, e0, batch, skip_at, states, E, N, WIDTH)
        # LayerNorm, in_proj, the conv step with silu
        centred = u - _total(u, H) / H
        un = (centred / gl.sqrt(_total(centred * centred, H) / H + eps) * nw_s.index(slot).load(gl.SliceLayout(0, L_H))
              + nb_s.index(slot).load(gl.SliceLayout(0, L_H)))
        x = _row_sums(in_x_s.index(slot).load(L_H).to(gl.float32) * un[None, :], [EC, H // 8, 8])
        z = _row_sums(in_z_s.index(slot).load(L_H).to(gl.float32) * un[None, :], [EC, H // 8, 8])
        buf = conv_s.index(slot).load(L_W)
        x_w = gl.convert_layout(x, gl.SliceLayout(1, L_W), assert_trivial=True)
        acc = (cb_s.index(slot).load(gl.SliceLayout(1, L_W)) + x_w * newest_s.index(slot).load(gl.SliceLayout(1, L_W))
               + gl.sum(buf * taps_s.index(slot).load(L_W), 1))
        _store(conv_row + e_w[:, None] * WIDTH + w[None, :] - 1, buf, C, shifted)
        _store(conv_row + e_w * WIDTH + WIDTH - 1, x_w, C)
        xs = acc * _sigmoid(acc)
        # x_proj: dt_low, B and C, each summed over the channels (of the cluster)
        x_all.store(xs)
        x_by_part.store(gl.reshape(xs, [X_PARTS, EC // X_PARTS]))
        gl.thread_barrier()
        x_parts = x_by_part.load(gl.SliceLayout(0, L_BC))
        bc = bc_s.index(slot).reshape([2 * N, X_PARTS, EC // X_PARTS]).load(L_BC).to(gl.float32)
        bc_sum.store(gl.sum(_row_sums(bc * x_parts[None, :, :], [2 * N, X_PARTS, EC // X_PARTS // 8, 8]), 1))
        x_fours = x_all.reshape([EC // 4, 4]).load(gl.SliceLayout(0, L_DT))
        dt_rows = dt_s.index(slot).reshape([R, EC // 4, 4]).load(L_DT).to(gl.float32)
        dt_sum.store(gl.sum(gl.sum(dt_rows * x_fours[None, :, :], 2), 1))
        if C > 1:
            gl.thread_barrier()  # the CTA's partial sums are in place
            _share(bc_sum, bc_shares, 2 * N, NW, C)
            _share(dt_sum, dt_shares, R, NW, C)
            _cluster_barrier()
            _gather(b_total, bc_shares, N, 2 * N, NW, C)  # the shares' first halves
            _gather(c_total, bc_shares + N, N, 2 * N, NW, C)
            _gather(dt_sum, dt_shares, R, R, NW, C)
        gl.thread_barrier()
        # dt_proj and softplus, the state update, D and the silu(z) gate
        dt_low = dt_sum.load(gl.SliceLayout(0, L_R))
        dt = (gl.sum(dtw_s.index(slot).load(L_R).to(gl.float32) * dt_low[None, :], 1)
              + dtb_s.index(slot).load(gl.SliceLayout(1, L_R)))
        dt = gl.convert_layout(gl.where(dt > 20.0, dt, gl.log(1.0 + gl.exp(dt))), gl.SliceLayout(1, L_N),
                               assert_trivial=True)
        x_n = gl.convert_layout(xs, gl.SliceLayout(1, L_N), assert_trivial=True)
        z_n = gl.convert_layout(z, gl.SliceLayout(1, L_N), assert_trivial=True)
        if C == 1:
            Bv = bc_sum.slice(0, N).load(gl.SliceLayout(0, L_N))
            Cv = bc_sum.slice(N, N).load(gl.SliceLayout(0, L_N))
        else:  # slices of a cluster's shared memory do not compile (Triton 3.6)
            Bv = b_total.load(gl.SliceLayout(0, L_N))
            Cv = c_total.load(gl.SliceLayout(0, L_N))
        s = (gl.exp(dt[:, None] * A_s.index(slot).load(L_N)) * ssm_s.index(slot).load(L_N)
             + (dt * x_n)[:, None] * Bv[None, :])
        _store(ssm_row + e_n[:, None] * N + n[None, :], s, C)
        y = (gl.sum(s * Cv[None, :], 1) + D_s.index(slot).load(gl.SliceLayout(1, L_N)) * x_n) * z_n * _sigmoid(z_n)
        # out_proj, summed over the channels (of the cluster), added to the stream in every thread
        y_by_part.store(gl.reshape(y, [Y_PARTS, EC // Y_PARTS]))
        gl.thread_barrier()
        y_parts = y_by_part.load(gl.SliceLayout(0, L_OUT))
        rows = out_s.index(slot).reshape([H, Y_PARTS, EC // Y_PARTS]).load(L_OUT).to(gl.float32)
        out_sum.store(gl.sum(_row_sums(rows * y_parts[None, :, :], [H, Y_PARTS, EC // Y_PARTS // 8, 8]), 1))
        if C > 1:
            gl.thread_barrier()
            _share(out_sum, out_shares, H, NW, C)
            _cluster_barrier()
            _gather(out_sum, out_shares, H, H, NW, C)
        gl.thread_barrier()
        u += out_sum.load(gl.SliceLayout(0, L_H))
    cp.wait_group(0)
    gl.store(out_ptr + b * H + h, u.to(out_ptr.dtype.element_ty))


def stage_step(u, weights, conv_state, ssm_state, skip=None, buffers=None):
    """All the blocks' step in one launch, where ``fits``; arguments and result as
    ``mamba_stack.mamba_stack_step`` with one program (a cluster of CTAs) a row (the states are
    checked there). ``buffers``: 2 copies each block's weights one block ahead, 1 copies them as the
    block starts, in half the shared memory, so that two programs share an SM; by default as
    ``buffers_for`` gives, and 1 past its range."""
    w = weights
    K, batch, E, width = w.in_proj.shape[0], *conv_state.shape[1:]
    H, N, R = u.shape[1], ssm_state.shape[3], w.dt_proj.shape[2]
    plan = PLANS[H]
    u = u.contiguous()
    out = torch.empty_like(u)
    skip_at, after_conv, after_ssm, skip_out, skip_in = level_arguments(u, out, conv_state, ssm_state, skip)
    ctas = plan["ctas"]  # a cluster's partial sums, x_proj's and out_proj's (unread with one CTA a row):
    shares = torch.empty(batch, ctas, 2 * N + R + H, device=u.device, dtype=torch.float32) if ctas > 1 else u
    pdl = launch_options(u)
    if buffers is None:
        buffers = buffers_for(batch, _sm_count(u.device.index), H) or 1
    _stage_step[(batch,)](u, out, w.norm_weight, w.norm_bias, w.in_proj, w.conv_weight, w.conv_bias, w.x_proj,
                          w.dt_proj, w.dt_bias, w.A, w.D, w.out_proj, conv_state, ssm_state, after_conv, after_ssm,
                          skip_at, skip_out, skip_out.stride(0), skip_in, skip_in.stride(0), shares, K, batch,
                          w.norm_eps, H=H, E=E, N=N, R=R, WIDTH=width, X_PARTS=plan["X_PARTS"],
                          Y_PARTS=plan["Y_PARTS"], BUFFERS=buffers, PDL=bool(pdl), **_launch(plan), **pdl)
    return out


def _launch(plan) -> dict:
    """A row's warps and CTAs (a cluster): E / ctas channels a CTA, ``threads`` threads a channel."""
    return dict(num_warps=plan["shape"]["E"] // plan["ctas"] * plan["threads"] // 32, num_ctas=plan["ctas"])


def compile_for_hopper(buffers: int = 2, width: int = 64):
    """The kernel compiled for sm_90 (any machine; Triton ships the toolchain), for tests: its
    shared memory is ``metadata.shared`` bytes, its PTX ``asm["ptx"]``."""
    plan = PLANS[width]
    constexprs = {**plan["shape"], "X_PARTS": plan["X_PARTS"], "Y_PARTS": plan["Y_PARTS"], "BUFFERS": buffers,
                  "PDL": True}
    return gluon_dispatch.compile_for_sm90(_stage_step, constexprs, {"in_w_ptr", "xp_ptr", "dtw_ptr", "out_w_ptr"},
                                           _launch(plan))
