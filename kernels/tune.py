"""Sweep the scan kernels' tile settings (chunk length, channels per program, warps) on one shape.

    PYTHONPATH=.:kernels python kernels/tune.py

Prints forward and forward+backward median times for the audio outer stage (B=16, D=128,
L=16000, N=16, bf16), one row per setting, to choose the module defaults.
"""
import itertools

import triton.testing

import audiomamba_kernels.selective_scan as kernels
from bench import inputs  # kernels/bench.py: a script's own folder comes first on sys.path


def main() -> None:
    print("| MAX_CHUNK | BLOCK_D | NUM_WARPS | forward ms | fwd+bwd ms |")
    print("| --- | --- | --- | --- | --- |")
    for chunk, block, warps in itertools.product([64, 128, 256], [16, 32], [1, 2, 4]):
        kernels.MAX_CHUNK, kernels.BLOCK_D, kernels.NUM_WARPS = chunk, block, warps
        kernels.TILE = 16 * chunk  # let the chunk reach MAX_CHUNK at N = 16
        x = inputs(16, 128, 16000, 16, False)
        fwd = triton.testing.do_bench(lambda: kernels.selective_scan(**x, delta_softplus=True), return_mode="median")
        xg = inputs(16, 128, 16000, 16, True)

        def both():
            y = kernels.selective_scan(**xg, delta_softplus=True)
            y.backward(y)
        total = triton.testing.do_bench(both, return_mode="median")
        print(f"| {chunk} | {block} | {warps} | {fwd:.3f} | {total:.3f} |", flush=True)


if __name__ == "__main__":
    main()
