"""Speed of a stage's Mamba blocks in generation: one step of 8 residual Mamba blocks (d_state 16)
as one fused kernel (``audiomamba_kernels.mamba_stack``) against the three per-block kernels each
block otherwise runs (front, SSM step, out_proj), per block, at the U-Net's stage widths.

    PYTHONPATH=.:kernels python kernels/bench_stack.py

GPU time of CUDA-graph replays (triton.testing.do_bench_cudagraph, median), so Python and launch
overheads are left out, as in graphed sampling. The last column says which of the two
``mamba_stack_step`` picks at that width and batch (``fused_step_pays``).
"""
from __future__ import annotations

import torch
from triton.testing import do_bench_cudagraph

from audiomamba.config import ModelConfig
from audiomamba.models.sashimi import Stage, make_block
from audiomamba.ops.mamba_stack import stack_weights
from audiomamba_kernels.mamba_stack import fused_step_pays, mamba_stack_step

BLOCKS = 8
WIDTHS = [64, 128, 256]  # the outer, middle and center stages of the SC09 recipes
BATCHES = [1, 16, 64, 256, 1024]


def per_block_us(width: int, batch: int) -> tuple[float, float]:
    """(three kernels, fused) microseconds per block."""
    stage = Stage(make_block("mamba", width, ModelConfig(mamba_state=16)) for _ in range(BLOCKS)).cuda().eval()
    weights = stack_weights(stage)
    states = stage.initial_state(batch, "cuda")
    u = torch.randn(batch, width, device="cuda")

    def block_by_block():
        x = u
        for block, state in zip(stage, states):
            x = block.step(x, state)[0]

    def fused():
        mamba_stack_step(u, weights, states.conv, states.ssm)

    with torch.inference_mode():  # as in sampling (the model itself is made outside it, as there)
        return tuple(do_bench_cudagraph(fn, rep=100) * 1000 / BLOCKS for fn in (block_by_block, fused))


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}\n")
    print("| stage width | batch | three kernels, us per block | fused, us per block | used |")
    print("| --- | --- | --- | --- | --- |")
    for width in WIDTHS:
        for batch in BATCHES:
            three, fused = per_block_us(width, batch)
            print(f"| {width} | {batch} | {three:.2f} | {fused:.2f} | "
                  f"{'fused' if fused_step_pays(batch, width) else 'three kernels'} |", flush=True)


if __name__ == "__main__":
    main()
