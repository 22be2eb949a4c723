"""Generation speed (real-time factor) of a recipe's model with the recurrent sampler.

    PYTHONPATH=.:kernels python bench/generation.py recipes/sc09_mamba.yaml --batch 1 16 256

Uses a randomly initialised model (speed does not depend on the weights) and the same
``generate`` that ``audiomamba sample`` runs; on CUDA, with and without CUDA graphs. The time per
sample step is the steady state: the difference between generating ``2 * samples`` and
``samples`` per clip, divided by ``samples``. That leaves out the fixed set-up of a call (state
allocation, warm-up, graph capture), which is printed on its own.
"""
from __future__ import annotations

import argparse
import time

import torch

from audiomamba.config import load_recipe
from audiomamba.models.lm import WaveformLM
from audiomamba.sample import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--samples", type=int, default=512, help="samples generated per clip while timing")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    recipe = load_recipe(args.recipe, args.set)
    model = WaveformLM(recipe.model).to(device).eval()
    rate = recipe.data.sample_rate
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.recipe} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {rate} Hz)\n")
    print("| batch | mode | us per sample step | generated samples/s | real-time factor | set-up s |")
    print("| --- | --- | --- | --- | --- | --- |")
    modes = [("cuda graphs", True), ("eager", False)] if device.type == "cuda" else [("eager", False)]

    def seconds(batch: int, length: int, graphs: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate(model, batch, length, batch_size=batch, cuda_graphs=graphs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for batch in args.batch:
        for mode, graphs in modes:
            seconds(batch, 2 * model.backbone.stride, graphs)  # warm-up (autotuning, allocator)
            short, long = seconds(batch, args.samples, graphs), seconds(batch, 2 * args.samples, graphs)
            per_step = (long - short) / args.samples
            setup = short - per_step * args.samples
            print(f"| {batch} | {mode} | {per_step * 1e6:,.0f} | {batch / per_step:,.0f} | "
                  f"{batch / per_step / rate:.3f}x | {setup:.2f} |", flush=True)

if __name__ == "__main__":
    main()
