"""Speed of the causal depthwise conv + silu over sequences (the Mamba block's conv in training):
Triton kernels against PyTorch's conv1d, forward and forward+backward, bf16 inputs, fp32 weights.

    PYTHONPATH=.:kernels python kernels/bench_conv.py

GPU time: each variant is captured in a CUDA graph and its replays timed (triton.testing.do_bench,
median), so Python and launch overheads, which exceed these kernels' own time, are left out. At
the U-Net stages of the SC09 recipes (batch 16, width 4); effective bandwidth = x read and y
written once (bf16) over the forward time.
"""
from __future__ import annotations

import torch
import triton.testing

from audiomamba.ops.causal_conv import causal_conv_silu_ref
from audiomamba_kernels.causal_conv import causal_conv_silu

SHAPES = [("audio outer", 16, 128, 16000), ("audio middle", 16, 256, 4000), ("audio center", 16, 512, 1000)]
WIDTH = 4


def time_ms(fn, backward: bool, batch: int, channels: int, length: int) -> float:
    x = torch.randn(batch, channels, length, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    weight = torch.randn(channels, WIDTH, device="cuda", requires_grad=backward)
    bias = torch.randn(channels, device="cuda", requires_grad=backward)

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):  # as in training (the reference's conv1d casts)
            y = fn(x, weight, bias)
        if backward:
            y.backward(torch.ones_like(y))

    side = torch.cuda.Stream()  # warm up off the default stream before capture, as CUDA graphs require
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}\n")
    print("| shape | impl | forward ms | fwd+bwd ms | forward GB/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, batch, channels, length in SHAPES:
        for impl, fn in (("triton", causal_conv_silu), ("torch conv1d", causal_conv_silu_ref)):
            fwd = time_ms(fn, False, batch, channels, length)
            both = time_ms(fn, True, batch, channels, length)
            print(f"| {name} (B={batch}, D={channels}, L={length}) | {impl} | {fwd:.3f} | {both:.3f} | "
                  f"{4 * batch * channels * length / fwd / 1e6:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
