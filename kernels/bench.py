"""Selective-scan speed on audio shapes: Triton kernels vs the PyTorch reference (vs mamba_ssm's
CUDA kernel when it is importable), forward and forward+backward, bf16 inputs.

    PYTHONPATH=.:kernels python kernels/bench.py [--reference]

Median times from triton.testing.do_bench, gradients cleared between runs; effective bandwidth =
the minimum bytes (inputs read once, output written once, in bf16) over the time, next to a
measured device-to-device copy.
"""
from __future__ import annotations

import argparse

import torch
import triton.testing

from audiomamba.ops.selective_scan import selective_scan_ref
from audiomamba_kernels.selective_scan import selective_scan

SHAPES = [  # name, batch, channels, length, state
    ("audio outer", 16, 128, 16000, 16),
    ("audio outer N=64", 16, 128, 16000, 64),
    ("audio middle", 16, 256, 4000, 16),
    ("audio center", 16, 512, 1000, 16),
    ("LM-like", 8, 1536, 2048, 16),
]


def inputs(batch, d, length, n, grad):
    g = dict(device="cuda", dtype=torch.bfloat16)
    x = dict(u=torch.randn(batch, d, length, **g), delta=torch.randn(batch, d, length, **g) - 1,
             A=-torch.rand(d, n, device="cuda") * 4 - 0.1, B=torch.randn(batch, n, length, **g),
             C=torch.randn(batch, n, length, **g), D=torch.randn(d, device="cuda"),
             z=torch.randn(batch, d, length, **g), delta_bias=torch.randn(d, device="cuda") * 0.1)
    if grad:
        for v in x.values():
            v.requires_grad_()
    return x


def time_ms(fn, x, backward: bool) -> float:
    def run():
        y = fn(**x, delta_softplus=True)
        if backward:
            y.backward(torch.ones_like(y))
    # Leaves' gradients are cleared between runs, as training's zero_grad(set_to_none=True) does:
    # accumulating into them would add 8 elementwise kernels that are not the scan's.
    leaves = [v for v in x.values() if v.requires_grad]
    return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median", grad_to_none=leaves or None)


def copy_bandwidth() -> float:
    src = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() / ms / 1e9  # TB/s, bytes read plus written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", action="store_true", help="also time the PyTorch reference (slow, big)")
    args = parser.parse_args()
    impls = {"triton": selective_scan}
    if args.reference:
        impls["reference"] = selective_scan_ref
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        impls["mamba_ssm CUDA"] = selective_scan_fn
    except ImportError:
        pass
    copy = copy_bandwidth()
    print(f"device: {torch.cuda.get_device_name()}; measured copy {copy:.2f} TB/s\n")
    print("| shape | impl | forward ms | fwd+bwd ms | forward GB/s (min bytes) |")
    print("| --- | --- | --- | --- | --- |")
    for name, batch, d, length, n in SHAPES:
        min_bytes = 2 * (4 * batch * d * length + 2 * batch * n * length)  # u, delta, z, y; B, C (bf16)
        for impl, fn in impls.items():
            try:
                fwd = time_ms(fn, inputs(batch, d, length, n, False), False)
                both = time_ms(fn, inputs(batch, d, length, n, True), True)
                print(f"| {name} (B={batch}, D={d}, L={length}, N={n}) | {impl} | {fwd:.3f} | {both:.3f} | "
                      f"{min_bytes / fwd / 1e6:,.0f} |", flush=True)
            except torch.OutOfMemoryError:
                print(f"| {name} | {impl} | out of memory | | |", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
