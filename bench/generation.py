"""Generation speed (real-time factor) of a recipe's model with the recurrent sampler.

    PYTHONPATH=.:kernels python bench/generation.py recipes/sc09_mamba.yaml --batch 1 16 256

Uses a randomly initialised model and the same ``generate`` that ``audiomamba sample`` runs.
Speed depends on the weights only through their precision: with ``--weights bf16`` every
parameter is rounded to a bf16 value first, as a checkpoint stored in bf16 (the shipped models)
loads, and a stage of Mamba blocks then reads its projections in bf16 on CUDA. On CUDA, with
and without CUDA graphs. The time per sample step is the steady state: ``generate`` reports
progress every 256 samples, and the bench (synchronising the GPU there) takes the median time of
those 256-sample stretches, the first one left out. The first stretch also holds the set-up of
a call (state allocation, warm-up, graph capture), printed apart as its excess over the median.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from audiomamba.checkpoint import round_to_bf16
from audiomamba.config import load_recipe
from audiomamba.models.lm import WaveformLM
from audiomamba.sample import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--samples", type=int, default=2048, help="samples per clip while timing (>= 768)")
    parser.add_argument("--modes", nargs="+", choices=["graphs", "eager"], default=["graphs", "eager"],
                        help="on CUDA: with CUDA graphs, eager, or both")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: parameters rounded to bf16 values, as a bf16 checkpoint loads")
    args = parser.parse_args()
    device = torch.device(args.device)
    recipe = load_recipe(args.recipe, args.set)
    model = WaveformLM(recipe.model).to(device).eval()
    if args.weights == "bf16":
        round_to_bf16(model)
    rate = recipe.data.sample_rate
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.recipe} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {rate} Hz, "
          f"{args.weights} weights)\n")
    print("| batch | mode | us per sample step | generated samples/s | real-time factor | set-up s |")
    print("| --- | --- | --- | --- | --- | --- |")
    modes = [("cuda graphs", True)] * ("graphs" in args.modes) + [("eager", False)] * ("eager" in args.modes)
    if device.type != "cuda":
        modes = [("eager", False)]

    def stretch_seconds(batch: int, graphs: bool) -> list[float]:
        """Wall seconds of each 256-sample stretch of one generate call."""
        marks = [time.perf_counter()]

        def mark(*_):
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        generate(model, batch, args.samples, batch_size=batch, cuda_graphs=graphs, on_progress=mark)
        return [b - a for a, b in zip(marks, marks[1:])]

    for batch in args.batch:
        for mode, graphs in modes:
            generate(model, batch, 2 * model.backbone.stride, batch_size=batch, cuda_graphs=graphs)  # warm-up
            stretches = stretch_seconds(batch, graphs)
            per_step = statistics.median(stretches[1:-1]) / 256  # the last stretch may be short
            setup = stretches[0] - 256 * per_step
            print(f"| {batch} | {mode} | {per_step * 1e6:,.0f} | {batch / per_step:,.0f} | "
                  f"{batch / per_step / rate:.3f}x | {setup:.2f} |", flush=True)


if __name__ == "__main__":
    main()
