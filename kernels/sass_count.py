"""Instruction counts of the selective-scan chunk kernels, compiled for a Hopper GPU on any machine.

Triton compiles for a target GPU without one being present (ptxas and cuobjdump come with it), so
this runs on a CPU-only machine. For each pass of the forward (those ``_forward`` runs at the
shape's state size) and the backward it prints the registers per thread, the stack that spilled
registers go to, and the SASS instructions in the pass's loop: one iteration scans one channel
over one chunk, an (n, T) tile (in the sequential forward, one chunk of two channels).
From those it gives an issue bound for a shape: the time if every SM scheduler issued one
instruction every cycle, with no stall. No kernel that executes these loops can be faster.

``early_load_waits`` (for tests) reads the scoreboards in a loop's control bits and lists where
the loop waits for a global load it issued a few instructions before.

``--stack WIDTH`` does the same for generation's stage kernel (``mamba_stack._mamba_stack_step``)
at a stage width: its loop runs one Mamba block for one batch row, and the bound is that loop's
issue time on an SM to itself.

    python kernels/sass_count.py                     # the outer stage, B=16 D=128 L=16000, N=16 and 64
    python kernels/sass_count.py --shape 16 512 1000 16 --sms 132 --ghz 1.98
    python kernels/sass_count.py --stack 64 128      # sc09_mamba's Mamba stages, d_state 16
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).parent))
from audiomamba_kernels import mamba_stack  # noqa: E402
from audiomamba_kernels import selective_scan as ss  # noqa: E402
from audiomamba_kernels import selective_scan_gluon as ssg  # noqa: E402

BF16_ARGS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "gy_ptr", "y_ptr", "pre_ptr", "gu_ptr", "gdelta_ptr",
             "gz_ptr"}
FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)  # the Mamba block's call
PASSES = [  # (name, kernel, the constexprs that pick the pass, backward?); the forward as in training
    ("forward: chunk end states", ss._scan_chunks, dict(OUTPUT=False, SAVE_PRE=False), False),
    ("forward: output", ss._scan_chunks, dict(OUTPUT=True, SAVE_PRE=True), False),
    ("backward: adjoint handed back", ss._scan_chunks_bwd, dict(GRADS=False), True),
    ("backward: gradients", ss._scan_chunks_bwd, dict(GRADS=True), True),
]
SEQUENTIAL = ("forward: sequential, 2 channels", ss._scan_sequential, dict(SAVE_PRE=True, HAS_INIT=False), False)
SCHEDULERS_PER_SM = 4  # warp schedulers per SM, each issuing at most one instruction a cycle


def compile_pass(kernel, constexprs: dict, ints: dict, num_warps: int, arch: int, bf16_args=BF16_ARGS):
    """The kernel compiled for ``sm_<arch>``: ``bf16_args`` in bf16 (the scan's activations), the
    other pointers fp32, every pointer 16-byte aligned, each integer argument marked divisible by 16
    where it is (as Triton does at a launch), and ``eps`` an fp32 scalar."""
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name.endswith("_ptr"):
            signature[name] = "*bf16" if name in bf16_args else "*fp32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in constexprs:
            signature[name] = "constexpr"
        elif name == "eps":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _disassemble(cubin: bytes) -> tuple[str, list[tuple[int, str, int]]]:
    """A cubin's resource usage line, and its instructions: (address, text, control bits). The
    control bits are bits 105-127 of each 128-bit instruction: stall cycles (4 bits), yield (1),
    the scoreboard its result sets (3: 7 for none), the one its operands' reads set (3), and the
    scoreboards it waits for (6, a mask)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    code = [(int(m.group(1), 16), m.group(2).strip(), int(m.group(3), 16) >> 41) for m in re.finditer(
        r"/\*([0-9a-f]{4,})\*/\s+([^;]*);\s*/\* 0x[0-9a-f]+ \*/\s*/\* 0x([0-9a-f]+) \*/", sass)]
    return usage, code


def _main_loop(code: list) -> tuple[int, int, list]:
    """The first and last index of the main loop in ``code``: from the target of the widest
    backward branch to that branch; and the (first, last) of the loops inside it."""
    addresses = [c[0] for c in code]
    loops = []  # (first, last) index of each backward branch's body
    for i, (address, text, _) in enumerate(code):
        target = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            loops.append((addresses.index(int(target.group(1), 16)), i))
    # the largest: the main loop (an mbarrier's wait retries out of line, in loops that branch back into it)
    first, last = max(loops, key=lambda span: span[1] - span[0]) if loops else (0, -1)
    return first, last, [(a, b) for a, b in loops if first < a and b < last]


def _opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def loop_profile(cubin: bytes, inner_iterations: int = 1) -> dict:
    """Registers and stack bytes (where registers spill) per thread of a cubin, and the opcodes of
    its loop's body (``_main_loop``), those of the loops inside it counted ``inner_iterations``
    times (``inner_loops``: how many)."""
    usage, code = _disassemble(cubin)
    first, last, inner = _main_loop(code)
    opcodes = Counter()
    for i in range(first, last + 1):
        opcodes[_opcode(code[i][1])] += inner_iterations if any(a <= i <= b for a, b in inner) else 1
    usage_match = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return dict(registers=int(usage_match.group(1)), stack=int(usage_match.group(2)), opcodes=opcodes,
                inner_loops=len(inner))


def early_load_waits(cubin: bytes, within: int = 200) -> list[tuple[str, str]]:
    """The main loop's waits for a global load (``LDG``) issued fewer than ``within`` instructions
    before, in the same pass through the loop: (the load, the instruction that waits), from the
    scoreboards in the control bits. A load meant a pass ahead of its use shows up here when it is
    used at once (bf16 pairs unpacked right after the load), or when ptxas gives its scoreboard to
    another instruction's result as well (a pointer reloaded from the constant bank) and the
    other's user then waits for the load too (BENCHMARKS.md, "Selective-scan kernels, session 36")."""
    code = _disassemble(cubin)[1]
    first, last, _ = _main_loop(code)
    pending = {board: [] for board in range(6)}  # per scoreboard: its writers since the last wait for it
    waits = []
    for i in range(first, last + 1):
        text, control = code[i][1], code[i][2]
        for board in range(6):
            if control >> 11 & 1 << board:
                waits += [(load, text) for at, load in pending[board]
                          if _opcode(load) == "LDG" and i - at < within]
                pending[board] = []
        if control >> 5 & 7 != 7:
            pending[control >> 5 & 7].append((i, text))
    return waits


def print_stack(widths: list[int], arch: int, ghz: float) -> None:
    """The stage kernel's block loop at each stage width (expand 2, d_state 16, conv width 4), with
    the warps it launches with for a few rows and for many, and fp32 or bf16 projections."""
    print(f"\nGeneration's stage kernel: one loop iteration is one Mamba block for one batch row; issue time "
          f"of one iteration on an SM to itself ({SCHEDULERS_PER_SM} schedulers x {ghz} GHz)\n")
    print("| stage width | rows | projections | warps | registers | stack bytes | chunk loops x iterations "
          "| instructions per block (spill loads and stores) | issue time per block and row, us |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for width in widths:
        E, N, R = 2 * width, 16, -(-width // 16)
        h_pad = triton.next_power_of_2(width)
        ce = mamba_stack.chunk_channels(E, h_pad)
        r_pad = max(2, triton.next_power_of_2(R))
        for rows in (1, 256):
            num_warps = mamba_stack._num_warps(rows, ce * h_pad, width, 1)
            for projections in ("fp32", "bf16"):
                exact = mamba_stack._masks_exact((width, R, E % ce), (h_pad, r_pad, 0), projections == "bf16",
                                                 num_warps, ce * h_pad)  # as mamba_stack_step decides
                constexprs = dict(H_PAD=h_pad, CE=ce, N_PAD=N, R_PAD=r_pad, WIDTH=4, W_PAD=4, SPLIT=1, AHEAD=False,
                                  EXACT=exact, PDL=False)
                bf16_args = {"in_w_ptr", "xp_ptr", "dtw_ptr", "out_w_ptr"} if projections == "bf16" else set()
                compiled = compile_pass(mamba_stack._mamba_stack_step, constexprs,
                                        dict(n_blocks=8, batch=rows, H=width, E=E, N=N, R=R, skip_at=8,
                                             skip_out_stride=width, skip_in_stride=width),  # no skip
                                        num_warps, arch, bf16_args)
                chunks = -(-E // ce)  # each block's front and back loop over its channels in chunks of CE
                profile = loop_profile(compiled.asm["cubin"], inner_iterations=chunks)
                ops, count = profile["opcodes"], sum(profile["opcodes"].values())
                us = count * num_warps / SCHEDULERS_PER_SM / (ghz * 1e3)  # warps spread over the schedulers
                print(f"| {width} | {rows} | {projections} | {num_warps} | {profile['registers']} | {profile['stack']} "
                      f"| {profile['inner_loops']} x {chunks} | {count} ({ops['LDL'] + ops['STL']}) | {us:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, action="append", metavar=("B", "D", "L", "N"),
                        help="default: 16 128 16000 16 and 16 128 16000 64")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    parser.add_argument("--sms", type=int, default=132, help="SMs of the GPU (H100 SXM: 132)")
    parser.add_argument("--ghz", type=float, default=1.98, help="SM clock (H100 SXM boost: 1.98)")
    parser.add_argument("--stack", type=int, nargs="+", metavar="WIDTH",
                        help="instead: generation's stage kernel at these stage widths")
    args = parser.parse_args()
    if args.stack:
        print_stack(args.stack, args.arch, args.ghz)
        return
    issue_rate = args.sms * SCHEDULERS_PER_SM * args.ghz * 1e9  # warp instructions a second

    for batch, n_ch, L, N in args.shape or [(16, 128, 16000, 16), (16, 128, 16000, 64)]:
        meta_tensor = torch.empty(batch, n_ch, L, device="meta")
        _, m = ss._prepare(meta_tensor, meta_tensor, torch.empty(n_ch, N, device="meta"), *[None] * 5)
        ints = dict(n_ch=n_ch, L_UNITS=m["L_UNITS"], N=N, n_chunks=m["n_chunks"], n_saved=m["n_chunks"])
        print(f"\nB={batch} D={n_ch} L={L} N={N}: chunks of T={m['T']}, state padded to {m['N_PAD']}, "
              f"{ss._tiles(m, True)['N_PAD']} states per backward program; "
              f"issue bound at {args.sms} SMs x {SCHEDULERS_PER_SM} schedulers x {args.ghz} GHz\n")
        print("| pass | warps | registers | stack bytes | loop instructions (spill loads and stores) "
              "| per element of the tile | FMUL / FFMA / MUFU per element | issue bound, ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        total = {False: 0.0, True: 0.0}
        sequential = m["N_PAD"] <= ss.SEQUENTIAL_MAX_STATES  # the forward that ss._forward runs
        passes = [SEQUENTIAL] + [p for p in PASSES if p[3]] if sequential else PASSES
        for name, kernel, switches, backward in passes:
            if kernel is ss._scan_sequential:  # one loop iteration: one chunk of 2 channels, bf16 B and C as pairs
                tiles = dict(L_ALIGN=m["L_ALIGN"], T=m["T"], SPLIT=1, N_PAD=m["N_PAD"], PAIRS=L % 2 == 0, num_warps=1)
                channels, programs = 2, batch * -(-n_ch // 2)
            else:
                tiles = ss._tiles(m, backward)
                channels, programs = 1, batch * n_ch * tiles.get("GROUPS", 1)  # per (channel, state group)
            num_warps = tiles.pop("num_warps")
            compiled = compile_pass(kernel, dict(tiles, **FLAGS, **switches), ints, num_warps, args.arch)
            profile = loop_profile(compiled.asm["cubin"])
            ops, count = profile["opcodes"], sum(profile["opcodes"].values())
            per_thread = channels * m["T"] * tiles["N_PAD"] / (32 * num_warps)  # tile elements each thread holds
            iterations = m["n_chunks"] * programs
            bound_ms = count * num_warps * iterations / issue_rate * 1e3
            total[backward] += bound_ms
            print(f"| {name} | {num_warps} | {profile['registers']} | {profile['stack']} "
                  f"| {count} ({ops['LDL'] + ops['STL']}) "
                  f"| {count / per_thread:.1f} | {ops['FMUL'] / per_thread:.1f} / {ops['FFMA'] / per_thread:.1f} / "
                  f"{ops['MUFU'] / per_thread:.1f} | {bound_ms:.3f} |")
        print(f"\nthe passes' issue bound: forward {total[False]:.3f} ms, "
              f"forward + backward {total[False] + total[True]:.3f} ms")
        if N == ssg.N_STATES:
            print_gluon(batch, n_ch, L, issue_rate, args.arch, ss._tiles(m, backward=True)["BLOCK"])


def print_gluon(batch: int, n_ch: int, L: int, issue_rate: float, arch: int, block: int) -> None:
    """The Gluon passes that replace the Triton ones on Hopper GPUs at 16 states
    (``selective_scan_gluon``): a warp a channel pair (``FORWARD_WARPS`` of them a forward program,
    one a backward program); one iteration of a warp's loop in the backward's passes is its pair
    over one chunk of 32, in the forward over two chunks; the backward's programs take ``block`` channels."""
    if arch != 90:
        return
    print("\n| pass | warps | registers | stack bytes | loop instructions (spill loads and stores) "
          "| per element of the tile | FMUL / FFMA / MUFU per element | issue bound, ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    at_chunks = f"chunks of {ssg.CHUNK}"
    for name, kernel, chunks, warps in [("forward, Gluon, one pass", "forward", 2, ssg.FORWARD_WARPS),
                                        (f"backward: adjoint handed back, Gluon, {at_chunks}", "handed", 1, 1),
                                        (f"backward: gradients, Gluon, {at_chunks}", "gradients", 1, 1)]:
        profile = loop_profile(ssg.compile_for_hopper(kernel, block=block).asm["cubin"])
        ops, count = profile["opcodes"], sum(profile["opcodes"].values())
        per_thread = chunks * 2 * ssg.CHUNK * ssg.N_STATES / 32
        bound_ms = count / chunks * batch * (n_ch // 2) * -(-L // ssg.CHUNK) / issue_rate * 1e3
        print(f"| {name} | {warps} | {profile['registers']} | {profile['stack']} | {count} ({ops['LDL'] + ops['STL']}) "
              f"| {count / per_thread:.1f} | {ops['FMUL'] / per_thread:.1f} / {ops['FFMA'] / per_thread:.1f} / "
              f"{ops['MUFU'] / per_thread:.1f} | {bound_ms:.3f} |")


if __name__ == "__main__":
    main()
