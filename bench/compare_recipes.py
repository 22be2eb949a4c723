"""Train several recipes for the same wall-clock minutes on this device, then compare their NLL.

    PYTHONPATH=.:kernels python bench/compare_recipes.py recipes/words_16k.yaml \
        recipes/words_16k_sashimi.yaml recipes/words_16k_mixed.yaml --minutes 2.0 \
        --set data.packed_dir=packed/words_16k train.max_steps=8000 --out-root runs/compare

This is the Mamba paper's Table 5 question (which block in which stage?) asked at equal GPU-minutes
rather than equal steps. The recipes run one after another, each alone on the device, each for
``--minutes`` (``train.max_minutes``), after one untimed forward and backward pass of each model
(so that kernel compilation and FFT planning are not charged to any recipe), into
``OUT_ROOT/<recipe name>``; a run already there is resumed, not restarted. Each row gives the steps reached and the validation and test NLL of the
EMA weights and of the raw weights in bits per sample over the full splits. Prints a Markdown table
and writes it as JSON to ``OUT_ROOT/compare.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from audiomamba.checkpoint import load_model, read_config
from audiomamba.config import load_recipe
from audiomamba.data.clipset import load_split
from audiomamba.models.lm import WaveformLM
from audiomamba.train import evaluate_nll, pick_device, train


def warm_up(recipe, device: torch.device) -> None:
    """One forward and backward pass at the training shape, discarded."""
    model = WaveformLM(recipe.model).to(device)
    tokens = torch.randint(0, 256, (recipe.train.batch_size, recipe.data.clip_samples), device=device)
    labels = torch.zeros(len(tokens), dtype=torch.long, device=device) if recipe.model.n_classes else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and recipe.train.bf16 else nullcontext()
    with autocast:
        model(tokens, labels).float().logsumexp(-1).mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--minutes", type=float, required=True, help="training minutes per recipe")
    parser.add_argument("--set", nargs="*", default=[], help="overrides applied to every recipe")
    parser.add_argument("--out-root", default="runs/compare")
    args = parser.parse_args()
    out_root = Path(args.out_root)
    recipes = {Path(path).stem: load_recipe(path, [*args.set, f"train.out_dir={out_root / Path(path).stem}",
                                                     f"train.max_minutes={args.minutes}"]) for path in args.recipes}
    for recipe in recipes.values():
        warm_up(recipe, pick_device(recipe.train.device))
    rows = []
    for name, recipe in recipes.items():
        started = time.time()
        ckpt = train(recipe, resume=True, progress=False)
        minutes = (time.time() - started) / 60
        device = pick_device(recipe.train.device)
        row = {"recipe": name, "blocks": f"outer {recipe.model.outer}, center {recipe.model.center}",
               "steps": read_config(ckpt)["step"], "train_minutes": round(minutes, 2)}
        splits = {split: load_split(recipe.data, split, progress=False) for split in ("validation", "test")}
        for weights, prefer_ema in (("ema", True), ("raw", False)):
            model, _, _ = load_model(ckpt, device, prefer_ema=prefer_ema)
            row["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
            for split, clips in splits.items():
                row[f"{split}_bits_{weights}"] = round(evaluate_nll(model, clips, 16, device, nullcontext()), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\n{args.minutes} minutes per recipe on {device_name}; NLL in bits per sample over the full splits\n")
    print("| recipe | params | steps | validation NLL, EMA / raw weights | test NLL, EMA / raw weights |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['recipe']} | {r['params_M']}M | {r['steps']} | {r['validation_bits_ema']:.3f} / "
              f"{r['validation_bits_raw']:.3f} | {r['test_bits_ema']:.3f} / {r['test_bits_raw']:.3f} |")
    (out_root / "compare.json").write_text(json.dumps({"minutes": args.minutes, "device": device_name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
