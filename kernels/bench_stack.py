"""Speed of a stage's Mamba blocks in generation: one step of 8 residual Mamba blocks (d_state 16)
as one fused kernel (``audiomamba_kernels.mamba_stack``) against the three per-block kernels each
block otherwise runs (front, SSM step, out_proj), per block, at the U-Net's stage widths. Each
with fp32 projections, and with projections that hold bf16 values (as loaded from a bf16
checkpoint), which the stage reads in bf16 (``narrow_projections``). At small batches, also the
fused kernel with each row's channels split over several programs (with the projections the
model reads at that width, ``bf16_projections_pay``, and the warps ``ROW_SPLITS`` gives); and
where it fits (widths 64 and 128, the batches of ``buffers_for``, a Hopper GPU), the Gluon kernel with bf16
projections.

    PYTHONPATH=.:kernels python kernels/bench_stack.py

GPU time of CUDA-graph replays (triton.testing.do_bench_cudagraph, median), so Python and launch
overheads are left out, as in graphed sampling. The last column says which of the two
``mamba_stack_step`` picks at that width and batch (``fused_step_pays``, ``programs_per_row``).
"""
from __future__ import annotations

import torch
from triton.testing import do_bench_cudagraph

from audiomamba.checkpoint import round_to_bf16
from audiomamba.config import ModelConfig
from audiomamba.models.sashimi import Stage, make_block
from audiomamba.ops.causal_conv import in_proj_conv_step
from audiomamba.ops.mamba_stack import _block_by_block, narrow_projections, stack_weights, widen_projections
from audiomamba.ops.residual_linear import residual_linear
from audiomamba.ops.selective_scan import projected_state_update
from audiomamba_kernels.mamba_stack import (bf16_projections_pay, fused_step_pays, gluon_fits, mamba_stack_step,
                                           programs_per_row, split_fits)

BLOCKS = 8
WIDTHS = [64, 128, 256]  # the outer, middle and center stages of the SC09 recipes
BATCHES = [1, 2, 4, 16, 64, 256, 1024]
SPLITS = [4, 8, 16, 32, 64]  # programs a row


def per_block_us(width: int, batch: int) -> list[float | None]:
    """Microseconds per block: three kernels, fused; each with fp32, then bf16 projections; then
    fused with each row split over SPLITS programs; then the Gluon kernel (None where one cannot run)."""
    stage = round_to_bf16(Stage(make_block("mamba", width, ModelConfig(mamba_state=16))
                                for _ in range(BLOCKS)).cuda().eval())
    bf16 = narrow_projections(stack_weights(stage))
    fp32 = widen_projections(bf16)
    states = stage.initial_state(batch, "cuda")
    u = torch.randn(batch, width, device="cuda")

    def three(weights):
        return lambda: _block_by_block(u, weights, states.conv, states.ssm, in_proj_conv_step,
                                       projected_state_update, residual_linear)

    def fused(weights, split=1):
        return lambda: mamba_stack_step(u, weights, states.conv, states.ssm, split=split)

    runs = [three(fp32), three(bf16), fused(fp32), fused(bf16)]
    model_reads = bf16 if bf16_projections_pay(width) else fp32
    runs += [fused(model_reads, s) if split_fits(batch, 2 * width, s) else None for s in SPLITS]
    runs.append(fused(bf16, None) if gluon_fits(u, bf16, states.conv, states.ssm) else None)  # split None: its rule
    with torch.inference_mode():  # as in sampling (the model itself is made outside it, as there)
        for run in filter(None, runs[4:]):
            run()  # the split rows' counters, made before any capture
        return [do_bench_cudagraph(fn, rep=100) * 1000 / BLOCKS if fn else None for fn in runs]


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}\n")
    print("| stage width | batch | three kernels, us per block: fp32 / bf16 projections | fused: fp32 / bf16 | "
          f"fused, {' / '.join(map(str, SPLITS))} programs a row | Gluon, bf16 | used |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for width in WIDTHS:
        for batch in BATCHES:
            three32, three16, fused32, fused16, *split, gluon = per_block_us(width, batch)
            used = "three kernels"
            rows = torch.empty(batch, width, device="cuda")
            if fused_step_pays(rows, 2 * width):
                programs = programs_per_row(rows, 2 * width)
                used = f"fused, {programs} program{'s' if programs > 1 else ''} a row"
                if gluon is not None:
                    used = "Gluon (bf16 projections)"
            print(f"| {width} | {batch} | {three32:.2f} / {three16:.2f} | {fused32:.2f} / {fused16:.2f} | "
                  f"{' / '.join('-' if t is None else f'{t:.2f}' for t in split)} | "
                  f"{'-' if gluon is None else f'{gluon:.2f}'} | {used} |", flush=True)


if __name__ == "__main__":
    main()
