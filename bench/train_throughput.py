"""Training throughput and peak memory of recipes' models on the current device.

    PYTHONPATH=.:kernels python bench/train_throughput.py recipes/sc09_mamba.yaml recipes/sc09_sashimi.yaml [--loop]

Times full optimizer steps (forward, backward, AdamW) on random tokens at the recipe's batch size
and clip length, with bf16 autocast on CUDA as training uses (and torch.compile when the recipe
sets train.compile; warm-up steps include the compilation), and prints a Markdown table.
``--loop`` times the training loop itself, ``audiomamba.train.train`` with everything a step of
it does besides (batches from the dataset, NaN guard, clipping, EMA, logging), on random clips.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from audiomamba.config import load_recipe
from audiomamba.data.clipset import ClipSet, save_packed
from audiomamba.models.lm import WaveformLM
from audiomamba.train import compile_model, make_optimizer, train


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


def measure_loop(recipe_path: str, overrides: list[str], device: torch.device, steps: int) -> dict:
    """train() for 2 x ``steps`` steps on random clips packed into a temporary folder: the samples/s
    that it logs over the last ``steps`` (the first of its two log windows holds the warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(recipe_path, overrides)
        cfg, n_classes = recipe.data, recipe.model.n_classes
        n_clips = 4 * recipe.train.batch_size
        clips = ClipSet(torch.randint(0, 256, (n_clips, cfg.clip_samples), dtype=torch.uint8),
                        torch.arange(n_clips) % max(n_classes, 1), [f"speaker{i % 4}" for i in range(n_clips)],
                        [str(c) for c in range(max(n_classes, 1))], cfg.sample_rate, [])
        for split in ("train", "validation"):
            save_packed(clips, Path(tmp) / "packed" / f"{split}.safetensors")
        recipe = load_recipe(recipe_path, overrides + [
            f"data.packed_dir={tmp}/packed", f"train.out_dir={tmp}/run", f"train.device={device}",
            f"train.max_steps={2 * steps}", f"train.log_every={steps}", "train.val_every=0",
            f"train.ckpt_every={2 * steps}", "train.max_minutes=0"])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with contextlib.redirect_stderr(io.StringIO()):  # train()'s resolved recipe and notices
            train(recipe, progress=False)
        logged = [json.loads(line) for line in open(Path(tmp) / "run" / "metrics.jsonl")]
    rate = [row["samples_per_s"] for row in logged if "samples_per_s" in row][-1]
    batch, length = recipe.train.batch_size, recipe.data.clip_samples
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    n_params = sum(p.numel() for p in WaveformLM(recipe.model).parameters()) / 1e6
    return {"recipe": recipe_path, "params_M": n_params, "batch": batch, "length": length,
            "ms_per_step": batch * length / rate * 1e3, "samples_per_s": rate, "peak_GB": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every recipe, e.g. train.batch_size=4")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (--loop: as many as --steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loop", action="store_true", help="time audiomamba's training loop (on random clips)")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}\n")
    print("| recipe | params | batch x length | ms/step | samples/s | peak GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in args.recipes:
        try:
            r = measure_loop(path, args.set, device, args.steps) if args.loop else \
                measure(path, args.set, device, args.steps, args.warmup)
            print(f"| {path} | {r['params_M']:.2f}M | {r['batch']} x {r['length']} | {r['ms_per_step']:.1f} | "
                  f"{r['samples_per_s']:,.0f} | {r['peak_GB']:.1f} |", flush=True)
        except torch.OutOfMemoryError:
            print(f"| {path} | | | out of memory | | |", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
