"""Checkpoints: safetensors tensors plus JSON, no pickles, each written atomically.

A checkpoint is a directory::

    model.safetensors    the weights (what sampling and evaluation load)
    ema.safetensors      EMA weights, when training keeps them (preferred for sampling)
    config.json          the resolved recipe, the step, library versions
    train_state.safetensors + train_state.json
                         optimizer moments and scheduler (training reseeds its RNG from the step)

It is written under a temporary name and renamed into place, and a run directory's
``latest.json`` (itself replaced atomically) names the newest complete one, so a run killed at
any moment leaves the previous checkpoint intact.

``export_checkpoint`` makes a release copy: model.safetensors (the EMA weights when kept), in bf16
by default, and config.json, as the shipped models are stored.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from audiomamba.config import Recipe

KEEP_LAST = 2
EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _versions() -> dict:
    import audiomamba

    return {"audiomamba": audiomamba.__version__, "torch": torch.__version__}


def _state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state -> (tensors for safetensors, the rest as JSON)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"opt.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


@contextmanager
def _directory_written_atomically(final: Path):
    """Yields a temporary sibling of ``final`` to fill; once the block completes, it replaces
    ``final`` (a failure leaves ``final`` as it was)."""
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def save_checkpoint(run_dir: str | Path, *, model, recipe: Recipe, step: int, optimizer=None, scheduler=None,
                    ema=None, extra: dict | None = None) -> Path:
    """Write ``run_dir/checkpoints/step_<step>`` atomically and point ``latest.json`` at it."""
    run_dir = Path(run_dir)
    final = run_dir / "checkpoints" / f"step_{step:08d}"
    with _directory_written_atomically(final) as tmp:
        save_file(_state_tensors(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_state_tensors(ema), str(tmp / "ema.safetensors"))
        config = {"recipe": recipe.to_dict(), "step": step, "versions": _versions(), "saved_at": time.time()}
        config.update(extra or {})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            meta["scheduler"] = scheduler.state_dict() if scheduler is not None else None
            save_file(tensors, str(tmp / "train_state.safetensors"))
            (tmp / "train_state.json").write_text(json.dumps(meta))
    _write_json(run_dir / "latest.json", {"step": step, "path": final.name})
    old = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))[:-KEEP_LAST]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself or from a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if (path / "latest.json").is_file():
        return path / "checkpoints" / json.loads((path / "latest.json").read_text())["path"]
    raise FileNotFoundError(f"no checkpoint at {path} (expected model.safetensors or a run's latest.json)")


def read_config(path: str | Path) -> dict:
    return json.loads((resolve_checkpoint(path) / "config.json").read_text())


def load_model(path: str | Path, device="cpu", prefer_ema: bool = True):
    """(WaveformLM in eval mode, Recipe, config dict) from a checkpoint or run directory.

    Loads strictly: a key or shape mismatch between the weights and the config is an error that
    names both.
    """
    from audiomamba.models.lm import WaveformLM

    ckpt = resolve_checkpoint(path)
    config = json.loads((ckpt / "config.json").read_text())
    recipe = Recipe.from_dict(config["recipe"])
    model = WaveformLM(recipe.model)
    load_weights(model, ckpt, prefer_ema, described_by=ckpt / "config.json")
    return model.to(device).eval(), recipe, config


def load_weights(model: torch.nn.Module, path: str | Path, prefer_ema: bool = True, described_by: str | Path = "") -> Path:
    """Load a checkpoint's weights (its EMA weights when present and preferred) into ``model``,
    strictly: a key or shape mismatch is an error naming the weights and ``described_by`` (the
    config the model was built from). Returns the weights file."""
    weights_file = _weights_file(resolve_checkpoint(path), prefer_ema)
    weights = load_file(str(weights_file))
    try:
        model.load_state_dict(weights, strict=True)  # copies cast bf16 weights to the model's dtype
    except RuntimeError as err:
        raise ValueError(f"weights {weights_file} do not match the model in {described_by}: {err}") from err
    return weights_file


def _weights_file(ckpt: Path, prefer_ema: bool) -> Path:
    """The checkpoint's EMA weights when it has them and they are preferred, else its model weights."""
    ema = ckpt / "ema.safetensors"
    return ema if prefer_ema and ema.is_file() else ckpt / "model.safetensors"


def export_checkpoint(path: str | Path, out: str | Path, dtype: str = "bf16") -> tuple[Path, dict]:
    """A release copy of a checkpoint (or a run's latest) in directory ``out``, written atomically:
    its weights (the EMA weights when it kept them) with every floating tensor in ``dtype`` (a key
    of ``EXPORT_DTYPES``), and its config.json with ``exported_from`` added. No optimizer state,
    so it cannot resume a run. Loading it gives fp32 weights holding ``dtype`` values; for bf16,
    the generation kernels of narrow stages then read their projections in bf16
    (``audiomamba.ops.mamba_stack``), which is faster on GPU. Returns (the weights file read, the
    weights written)."""
    ckpt, out = resolve_checkpoint(path), Path(out)
    if out.exists() and (not out.is_dir() or {p.name for p in out.iterdir()} - {"model.safetensors", "config.json"}):
        raise FileExistsError(f"{out} exists and is not an exported checkpoint; choose a new directory")
    weights_file = _weights_file(ckpt, prefer_ema=True)
    weights = {k: v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v
               for k, v in load_file(str(weights_file)).items()}
    config = json.loads((ckpt / "config.json").read_text())
    config.update(versions=_versions(), saved_at=time.time(),
                  exported_from={"checkpoint": str(ckpt), "weights": weights_file.name, "dtype": dtype})
    with _directory_written_atomically(out) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return weights_file, weights


def round_to_bf16(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter of ``module`` rounded in place to its nearest bf16 value, as storing the
    weights in bf16 and loading them does (the shipped models). Returns the module."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return module


def load_train_state(ckpt: Path, *, model, optimizer, scheduler=None, ema=None, device="cpu") -> int:
    """Restore weights, optimizer, scheduler and EMA from a checkpoint; returns its step."""
    config = json.loads((ckpt / "config.json").read_text())
    model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(device)))
    if ema is not None:
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors"), device=str(device)))
    tensors = load_file(str(ckpt / "train_state.safetensors"))
    meta = json.loads((ckpt / "train_state.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return int(config["step"])
