"""The training loop: teacher-forced next-sample prediction on mu-law tokens.

One process, or one per GPU under ``torchrun`` (DistributedDataParallel; gloo on CPU). Each step
takes a global batch whose order is a pure function of (seed, step), so a resumed run sees the
same batches it would have seen without the interruption, and the global batch is the same for
any number of processes (each rank takes its slice). Random draws (dropout, label dropout) are
seeded from (seed, step, rank) at every step, so resuming needs no stored RNG state.

Between log points the host does not wait for the GPU: batches go to it from pinned memory, and the
losses of the steps since the last check are checked for NaN and Inf together, at each log point,
validation and checkpoint (naming the first bad step; nothing after it is saved). The exception is
DDP with ``train.max_minutes``, where the ranks agree at every step on whether to stop.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from audiomamba.checkpoint import load_train_state, load_weights, resolve_checkpoint, save_checkpoint
from audiomamba.config import Recipe, TrainConfig
from audiomamba.data.augment import augment_tokens
from audiomamba.data.clipset import ClipSet, load_split
from audiomamba.models.lm import WaveformLM
from audiomamba.ops import triton_kernels

LN2 = math.log(2.0)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; nothing was saved from that step."""


def _to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on ``device`` without waiting: a copy from pageable memory, or one that is not
    non_blocking, makes the host wait for the GPU's queued work."""
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def global_batch_indices(n_clips: int, global_batch: int, step: int, seed: int) -> torch.Tensor:
    """Clip indices of ``step``'s global batch: epochs are seeded permutations, the tail dropped."""
    if n_clips < global_batch:
        raise ValueError(f"the training split has {n_clips} clips, fewer than the global batch {global_batch}")
    steps_per_epoch = n_clips // global_batch
    epoch, k = divmod(step, steps_per_epoch)
    order = torch.randperm(n_clips, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[k * global_batch:(k + 1) * global_batch]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on projection and embedding matrices only (not SSM parameters); on
    CUDA its fused kernel (the default multi-tensor one made a compiled sc09_mamba step 1.38x
    slower on an H100, BENCHMARKS.md)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if name.endswith("weight") and param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=next(model.parameters()).is_cuda)


def compile_model(model: torch.nn.Module, cuda_graphs: bool = False) -> torch.nn.Module:
    """torch.compile(model), with the kernels of a training step imported first when the model is on
    CUDA: an import inside the traced code is a graph break, which cut a compiled sc09_mamba
    training step into 110 graphs (BENCHMARKS.md). ``cuda_graphs`` compiles in mode
    "reduce-overhead": each step's forward and backward kernels are replayed as CUDA graphs, which
    takes the host's launch time out of steps that are bound by it (small recipes)."""
    if next(model.parameters()).is_cuda:
        for name in ("selective_scan", "causal_conv"):
            triton_kernels.load(name)
    return torch.compile(model, mode="reduce-overhead" if cuda_graphs else None)


class _Logger:
    """metrics.jsonl always; TensorBoard scalars too when tensorboard is installed."""

    def __init__(self, run_dir: Path):
        self.file = open(run_dir / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def log(self, step: int, **scalars) -> None:
        self.file.write(json.dumps({"step": step, **scalars}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _check_labels(recipe: Recipe, clips: ClipSet) -> None:
    n = recipe.model.n_classes
    if n and n != len(clips.label_names):
        raise ValueError(f"model.n_classes is {n} but the data has {len(clips.label_names)} labels "
                         f"({clips.label_names}); set model.n_classes={len(clips.label_names)} or 0")
    if n and len(clips.labels) and not 0 <= int(clips.labels.min()) <= int(clips.labels.max()) < n:
        raise ValueError(f"the data's labels must lie in [0, {n}), not [{int(clips.labels.min())}, "
                         f"{int(clips.labels.max())}]")


@torch.no_grad()
def evaluate_nll(model: WaveformLM, clips: ClipSet, batch_size: int, device, autocast, max_batches: int | None = None,
                 progress: bool = False) -> float:
    """Mean NLL in bits per sample over ``clips`` (the first ``max_batches`` batches if given)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = list(range(0, len(clips), batch_size))[:max_batches]
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="nll", unit="batch")
    for start in starts:
        tokens = clips.tokens[start:start + batch_size].to(device).long()
        labels = clips.labels[start:start + batch_size].to(device) if model.cfg.n_classes else None
        with autocast:
            logits = model(tokens, labels)
        total += F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="sum").item()
        count += tokens.numel()
    model.train(was_training)
    return total / count / LN2


def train(recipe: Recipe, resume: bool = False, progress: bool = True) -> Path:
    """Train ``recipe``; returns the final checkpoint directory. Resumes from the run's latest
    checkpoint when ``resume``."""
    cfg = recipe.train
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = pick_device(cfg.device)
    if distributed:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.cuda_graphs and not cfg.compile:
        raise ValueError("train.cuda_graphs needs train.compile=true")
    if cfg.batch_size % world:
        raise ValueError(f"train.batch_size {cfg.batch_size} must divide evenly over {world} processes")
    local_batch = cfg.batch_size // world
    run_dir = Path(cfg.out_dir)
    is_main = rank == 0

    torch.manual_seed(cfg.seed)
    train_set = load_split(recipe.data, "train", progress=progress and is_main)
    val_set = load_split(recipe.data, "validation", progress=progress and is_main)
    _check_labels(recipe, train_set)

    model = WaveformLM(recipe.model).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    step = 0
    if resume and (run_dir / "latest.json").is_file():
        ckpt = resolve_checkpoint(run_dir)
        step = load_train_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, device=device)
        if is_main:
            print(f"resumed from {ckpt} at step {step}", file=sys.stderr)
    else:
        if cfg.init_from:  # fine-tuning: new optimizer, schedule and step count; EMA starts from these weights
            source = load_weights(model, cfg.init_from, described_by=f"this run's recipe ({run_dir})")
            if ema is not None:
                ema.load_state_dict(model.state_dict())
            if is_main:
                print(f"initialised from {source}", file=sys.stderr)
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
    if is_main:
        (run_dir / "recipe.json").write_text(recipe.to_json())
        print(recipe.to_json(), file=sys.stderr)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{n_params / 1e6:.3f}M parameters; {len(train_set)} train / {len(val_set)} validation clips; "
              f"device {device}, {world} process(es)", file=sys.stderr)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if distributed else model
    if cfg.compile:  # training steps only: checkpoints, EMA and validation keep the plain model
        if cfg.cuda_graphs and distributed and is_main:
            print("train.cuda_graphs is for one process (not measured under DDP): compiling without CUDA graphs",
                  file=sys.stderr)
        graphs = cfg.cuda_graphs and device.type == "cuda" and not distributed
        if is_main:
            what = "compile the training step" + (" and record its CUDA graphs" if graphs else "")
            print(f"train.compile: the first steps {what} (about a minute)", file=sys.stderr)
        net = compile_model(net, cuda_graphs=graphs)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    logger = _Logger(run_dir) if is_main else None
    bar = None
    if progress and is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True)

    def checkpoint(at_step: int) -> Path | None:
        if not is_main:
            return None
        return save_checkpoint(run_dir, model=model, recipe=recipe, step=at_step, optimizer=optimizer,
                               scheduler=scheduler, ema=ema, extra={"label_names": train_set.label_names})

    unchecked = []  # the losses of the steps since the last check, on the device

    def check_losses() -> None:
        """Raise TrainingDiverged naming the first unchecked step whose loss is NaN or Inf."""
        if not unchecked:
            return
        losses = torch.stack(unchecked)
        bad = (~torch.isfinite(losses)).nonzero()  # the one wait for the GPU
        if len(bad):
            first = int(bad[0])
            raise TrainingDiverged(f"loss became {losses[first].item()} at step {step - len(unchecked) + first}; "
                                   f"the last good checkpoint is {run_dir / 'latest.json'} (lower train.lr or set "
                                   "train.grad_clip)")
        unchecked.clear()

    started, last_ckpt, window_start, window_samples = time.time(), None, time.time(), 0
    model.train()
    while step < cfg.max_steps:
        torch.manual_seed(cfg.seed + 7919 * (step + 1) + 104729 * rank)  # this step's dropout, augmentation, labels
        index = global_batch_indices(len(train_set), cfg.batch_size, step, cfg.seed)
        index = index[rank * local_batch:(rank + 1) * local_batch]
        tokens = augment_tokens(_to_device(train_set.tokens[index], device), cfg.speed_change, cfg.gain_db)
        labels = None
        if recipe.model.n_classes:
            labels = _to_device(train_set.labels[index], device)
            drop = torch.rand(labels.shape, device=device) < cfg.label_dropout
            labels = torch.where(drop, torch.full_like(labels, recipe.model.n_classes), labels)
        with autocast:
            logits = net(tokens, labels, labels_checked=True)  # _check_labels checked the data once
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        unchecked.append(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        if ema is not None:  # the decay ramps up from 0.1 so that early averages do not keep the initial weights
            decay = min(cfg.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        step += 1
        window_samples += tokens.numel() * world
        log_point = step % cfg.log_every == 0 or step == cfg.max_steps
        if log_point:
            check_losses()
        if is_main and log_point:
            elapsed = time.time() - window_start
            bits = loss.item() / LN2
            rate = window_samples / max(elapsed, 1e-9)
            logger.log(step, loss=loss.item(), bits=bits, lr=scheduler.get_last_lr()[0],
                       grad_norm=float(grad_norm), samples_per_s=rate)
            if bar is not None:
                bar.set_postfix(bits=f"{bits:.3f}", samples_s=f"{rate:,.0f}")
            window_start, window_samples = time.time(), 0
        if bar is not None:
            bar.update(1)
        if is_main and cfg.val_every and step % cfg.val_every == 0:
            check_losses()
            val = evaluate_nll(ema or model, val_set, local_batch, device, autocast, cfg.val_batches)
            logger.log(step, val_bits=val)
            if bar is not None:
                bar.write(f"step {step}: validation NLL {val:.4f} bits")
        out_of_time = cfg.max_minutes > 0 and (time.time() - started) / 60 >= cfg.max_minutes
        if distributed and cfg.max_minutes > 0:  # every rank must stop at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps or out_of_time:
            check_losses()
            last_ckpt = checkpoint(step) or last_ckpt
        if out_of_time:
            if is_main:
                print(f"stopping after {cfg.max_minutes} minutes at step {step}", file=sys.stderr)
            break
    if last_ckpt is None:
        check_losses()
        last_ckpt = checkpoint(step)
    if bar is not None:
        bar.close()
    if logger is not None:
        logger.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return last_ckpt if is_main else resolve_checkpoint(run_dir)
