"""Training throughput and peak memory of recipes' models on the current device.

    PYTHONPATH=.:kernels python bench/train_throughput.py recipes/sc09_mamba.yaml recipes/sc09_sashimi.yaml

Times full optimizer steps (forward, backward, AdamW) on random tokens at the recipe's batch size
and clip length, with bf16 autocast on CUDA as training uses (and torch.compile when the recipe
sets train.compile; warm-up steps include the compilation), and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from audiomamba.config import load_recipe
from audiomamba.models.lm import WaveformLM
from audiomamba.train import compile_model, make_optimizer


def measure(recipe_path: str, overrides: list[str], device: torch.device, steps: int, warmup: int) -> dict:
    recipe = load_recipe(recipe_path, overrides)
    model = WaveformLM(recipe.model).to(device)
    forward = compile_model(model, recipe.train.cuda_graphs) if recipe.train.compile else model  # as train() does
    optimizer = make_optimizer(model, recipe.train)  # as train() makes it
    batch, length = recipe.train.batch_size, recipe.data.clip_samples
    tokens = torch.randint(0, 256, (batch, length), device=device)
    labels = torch.randint(0, recipe.model.n_classes, (batch,), device=device) if recipe.model.n_classes else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step():
        with autocast:
            logits = forward(tokens, labels)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    return {"recipe": recipe_path, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "batch": batch, "length": length, "ms_per_step": seconds * 1e3,
            "samples_per_s": batch * length / seconds, "peak_GB": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every recipe, e.g. train.batch_size=4")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}\n")
    print("| recipe | params | batch x length | ms/step | samples/s | peak GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in args.recipes:
        try:
            r = measure(path, args.set, device, args.steps, args.warmup)
            print(f"| {path} | {r['params_M']:.2f}M | {r['batch']} x {r['length']} | {r['ms_per_step']:.1f} | "
                  f"{r['samples_per_s']:,.0f} | {r['peak_GB']:.1f} |", flush=True)
        except torch.OutOfMemoryError:
            print(f"| {path} | | | out of memory | | |", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
