"""Sweep the scan kernels' tile settings on one shape, to choose the module defaults.

    PYTHONPATH=.:kernels python kernels/tune.py [--shape 16 128 16000] [--n-state 16] [--chunks 64]
        [--blocks 64 128] [--forward-blocks 64 128] [--warps 1] [--backward-tiles 1024 2048] [--stages 1 2 3]
        [--unroll 1 2 4]

Prints forward and forward+backward median times for one shape (batch, channels, length; by default
the audio outer stage, B=16, D=128, L=16000), bf16, one row per setting (chunk length, channels per
backward program and per program of the chunked forward, warps of every chunk kernel, (states, time)
elements per backward program, pipelining stages and unroll factor of the loop over a program's
channels), with the registers per thread and the local memory spilled to (in 4-byte words, as Triton
reports it) of the forward "output" pass (up to 16 states, the sequential forward) and the backward
"gradients" pass.
"""
import argparse
import itertools

import triton.testing

import audiomamba_kernels.selective_scan as kernels
from bench import inputs  # kernels/bench.py: a script's own folder comes first on sys.path


class _Recorder:
    """Stands in for a jitted kernel and keeps the compiled kernel of its last launch."""

    def __init__(self, kernel):
        self.kernel, self.last = kernel, None

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.last = self.kernel[grid](*args, **kwargs)
            return self.last
        return launch


def resources(recorder: _Recorder) -> str:
    compiled = recorder.last
    return f"{compiled.n_regs} / {compiled.n_spills}" if compiled is not None else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 128, 16000],
                        metavar=("BATCH", "CHANNELS", "LENGTH"))
    parser.add_argument("--n-state", type=int, default=16)
    parser.add_argument("--chunks", type=int, nargs="+", help="chunk lengths (default: the module's for --n-state)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[kernels.BLOCK_D])
    parser.add_argument("--forward-blocks", type=int, nargs="+", default=[kernels.FORWARD_BLOCK_D])
    parser.add_argument("--warps", type=int, nargs="+", default=[kernels.NUM_WARPS])
    parser.add_argument("--backward-tiles", type=int, nargs="+", default=[kernels.BACKWARD_TILE])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--unroll", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    args.chunks = args.chunks or [kernels._chunk_len(args.n_state)]
    # The forward's recorded kernel is the output pass, or up to SEQUENTIAL_MAX_STATES states the
    # sequential forward, which takes none of these settings but the chunk length.
    sequential = args.n_state <= kernels.SEQUENTIAL_MAX_STATES
    forward = _Recorder(kernels._scan_sequential if sequential else kernels._scan_chunks)
    backward = _Recorder(kernels._scan_chunks_bwd)
    if sequential:
        kernels._scan_sequential = forward
    else:
        kernels._scan_chunks = forward
    kernels._scan_chunks_bwd = backward
    print(f"(B, D, L) = {tuple(args.shape)}, N = {args.n_state}")
    print("| chunk | BLOCK_D | FORWARD_BLOCK_D | warps | backward tile | stages | unroll | forward ms | fwd+bwd ms "
          "| regs / spills fwd | bwd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for chunk, block, forward_block, warps, tile, stages, unroll in itertools.product(
            args.chunks, args.blocks, args.forward_blocks, args.warps, args.backward_tiles, args.stages, args.unroll):
        kernels.MAX_CHUNK, kernels.BLOCK_D, kernels.NUM_WARPS, kernels.BACKWARD_TILE = chunk, block, warps, tile
        kernels.FORWARD_BLOCK_D = forward_block
        kernels.LOOP_STAGES, kernels.LOOP_UNROLL = stages, unroll
        kernels.TILE = args.n_state * chunk  # let the chunk reach MAX_CHUNK
        try:
            x = inputs(*args.shape, args.n_state, False)
            fwd = triton.testing.do_bench(lambda: kernels.selective_scan(**x, delta_softplus=True),
                                          return_mode="median")
            fwd_resources = resources(forward)
            xg = inputs(*args.shape, args.n_state, True)

            def both():
                y = kernels.selective_scan(**xg, delta_softplus=True)
                y.backward(y)
            total = triton.testing.do_bench(both, return_mode="median")
        except Exception as error:  # a setting the compiler rejects (out of shared memory, ...) is a row, not the end
            print(f"| {chunk} | {block} | {forward_block} | {warps} | {tile} | {stages} | {unroll} "
                  f"| {type(error).__name__} | | | |", flush=True)
            continue
        print(f"| {chunk} | {block} | {forward_block} | {warps} | {tile} | {stages} | {unroll} "
              f"| {fwd:.3f} | {total:.3f} "
              f"| {fwd_resources} | {resources(backward)} |", flush=True)


if __name__ == "__main__":
    main()
