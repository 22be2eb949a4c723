"""The SaShiMi multi-scale U-Net (Goel et al. 2022) with configurable blocks per stage.

Stage i runs at 1 / prod(pool[:i]) of the sample rate with width d_model * expand**i:

    stage 0 blocks (down) ----------------------------------(+)--> stage 0 blocks (up) --> out
        |  DownPool(p0)                                       ^ UpPool(p0)
        v                                                     |
      stage 1 blocks (down) ----------------(+)--> stage 1 blocks (up)
          |  DownPool(p1)                     ^ UpPool(p1)
          v                                   |
          center blocks ----------------------+

Causality: DownPool shifts its input right by p-1 samples before grouping p of them, so pooled
step j summarises samples jp-p+1 .. jp; UpPool spreads pooled step j over samples jp .. jp+p-1.
So output t depends on inputs <= t only, and nothing later (tested by perturbation).

In step mode the stage-i blocks run every prod(pool[:i]) samples: at sample t = jp (stage time)
the last p inputs are pooled, the inner stage steps once, and UpPool's p outputs are buffered
and used one per sample, which reproduces the parallel forward exactly. At the other samples a
stage's down blocks, the skip connection and its up blocks run back to back (``Stage.step_after``):
on CUDA, in one kernel where both stages are all Mamba.

A batch-1 step on CPU is bound by Python and per-op overhead (about 70 tiny ops per sample), so
the step paths call submodules' ``forward`` directly: ``nn.Module.__call__`` and its hook checks
cost about 1 us a call, some 8% of a step.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiomamba.config import ModelConfig
from audiomamba.models.attention import AttentionBlock
from audiomamba.models.mamba import MambaBlock
from audiomamba.models.mamba2 import Mamba2Block
from audiomamba.models.mlp import MLPBlock
from audiomamba.models.residual import ResidualBlock
from audiomamba.models.s4d import S4DBlock
from audiomamba.models.step_cache import cached_for_steps
from audiomamba.ops.mamba_stack import Skip, mamba_stack_step, stack_weights


def make_block(kind: str, d_model: int, cfg: ModelConfig) -> ResidualBlock:
    """A residual block of type ``kind`` (one of ``BLOCK_TYPES``) and width ``d_model``."""
    if kind == "s4d":
        block = S4DBlock(d_model, cfg.s4d_state)
    elif kind == "mamba":
        block = MambaBlock(d_model, cfg.mamba_state, cfg.mamba_expand, cfg.mamba_conv)
    elif kind == "mamba2":
        block = Mamba2Block(d_model, cfg.mamba2_state, cfg.mamba2_headdim, cfg.mamba_expand, cfg.mamba_conv)
    elif kind == "attention":
        block = AttentionBlock(d_model, cfg.attention_heads, cfg.attention_window)
    elif kind == "mlp":
        block = MLPBlock(d_model, cfg.mlp_expand)
    else:
        raise ValueError(f"unknown block type {kind!r}")
    return ResidualBlock(block, d_model, cfg.dropout)


class DownPool(nn.Module):
    """(batch, L, H) -> (batch, L/p, H_out): causal shift by p-1, group p samples, Linear(pH, H_out)."""

    def __init__(self, d_in: int, d_out: int, pool: int):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(d_in * pool, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        shifted = F.pad(x, (0, 0, self.pool - 1, 0))[:, :length]
        return self.linear(shifted.reshape(batch, length // self.pool, self.pool * width))

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """window: the last p inputs (batch, p, H), oldest first -> (batch, H_out)."""
        return self.linear.forward(window.flatten(1))


class UpPool(nn.Module):
    """(batch, L/p, H_in) -> (batch, L, H): Linear(H_in, pH), pooled step j -> samples jp..jp+p-1."""

    def __init__(self, d_in: int, d_out: int, pool: int):
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(d_in, d_out * pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return self.linear(x).reshape(batch, length * self.pool, -1)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, H_in) -> the next p outputs (batch, p, H)."""
        return self.linear.forward(x).unflatten(1, (self.pool, -1))


class StackedStates(list):
    """A stage's per-block states (conv buffer, SSM state) when all its blocks are Mamba: views of
    stacked tensors ``conv`` (K, batch, E, width) and ``ssm`` (K, batch, E, N), so that one fused
    step can update every block's state, and the per-block steps still can."""

    def __init__(self, conv: torch.Tensor, ssm: torch.Tensor):
        super().__init__(zip(conv, ssm))
        self.conv, self.ssm = conv, ssm


class Stage(nn.ModuleList):
    """A stage's residual blocks, run in order: (batch, L, H) -> (batch, L, H), or one step
    (batch, H) -> (batch, H). When every block is Mamba, the step on CUDA goes through
    ``mamba_stack_step`` (one kernel for the whole stage where that pays), with the blocks'
    weights stacked once per generation."""

    def __init__(self, blocks):
        super().__init__(blocks)
        self.all_mamba = len(self) > 0 and all(isinstance(b.block, MambaBlock) for b in self)
        self._step_cache = None  # the stacked weights: see cached_for_steps
        self._level_cache = None  # a down stage's and this one's, stacked: see step_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x)
        return x

    def initial_state(self, batch: int, device=None) -> list:
        if not self.all_mamba:
            return [block.initial_state(batch, device) for block in self]
        conv, ssm = zip(*(block.initial_state(batch, device) for block in self))
        return StackedStates(torch.stack(conv), torch.stack(ssm))

    def step(self, x: torch.Tensor, states: list) -> torch.Tensor:
        """The state is updated in place."""
        if x.is_cuda and isinstance(states, StackedStates):
            weights = cached_for_steps(self, lambda: stack_weights(self), list(self.parameters()))
            return mamba_stack_step(x, weights, states.conv, states.ssm)
        for k, block in enumerate(self):
            x, states[k] = block.step(x, states[k])
        return x

    def step_after(self, down: "Stage", x: torch.Tensor, down_states: list, states: list, skip_out: torch.Tensor,
                   skip_in: torch.Tensor) -> torch.Tensor:
        """A U-Net level's step while its inner stages wait: ``down``'s step, the skip connection
        (skip_out <- x, then x + skip_in), and this stage's step. x, skip_out, skip_in: (batch, H).
        On CUDA, when both stages are all Mamba, their blocks step as one stack (one kernel)."""
        if x.is_cuda and isinstance(states, StackedStates) and isinstance(down_states, StackedStates):
            weights = cached_for_steps(self, lambda: stack_weights([*down, *self]),
                                       [*down.parameters(), *self.parameters()], attribute="_level_cache")
            return mamba_stack_step(x, weights, down_states.conv, down_states.ssm,
                                    Skip(skip_out, skip_in, states.conv, states.ssm))
        x = down.step(x, down_states)
        skip_out.copy_(x)
        return self.step(x + skip_in, states)


class SaShiMi(nn.Module):
    """The backbone: (batch, L, d_model) -> (batch, L, d_model), L a multiple of ``stride``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pools = list(cfg.pool)
        widths = [cfg.d_model * cfg.expand**i for i in range(len(self.pools) + 1)]
        self.widths = widths

        def stage(kinds: list[str], width: int) -> Stage:
            return Stage(make_block(kind, width, cfg) for kind in kinds)

        self.down = nn.ModuleList(stage(cfg.outer if cfg.down_layers else [], w) for w in widths[:-1])
        self.down_pool = nn.ModuleList(DownPool(widths[i], widths[i + 1], p) for i, p in enumerate(self.pools))
        self.center = stage(cfg.center, widths[-1])
        self.up_pool = nn.ModuleList(UpPool(widths[i + 1], widths[i], p) for i, p in enumerate(self.pools))
        self.up = nn.ModuleList(stage(cfg.outer, w) for w in widths[:-1])

    @property
    def stride(self) -> int:
        """Input lengths must be a multiple of this (the product of the pooling factors)."""
        return math.prod(self.pools)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.stride:
            raise ValueError(f"length {x.shape[1]} is not a multiple of the total pooling {self.stride}")
        skips = []
        for blocks, pool in zip(self.down, self.down_pool):
            x = blocks(x)
            skips.append(x)
            x = pool(x)
        x = self.center(x)
        for i in reversed(range(len(self.pools))):
            x = self.up[i](self.up_pool[i](x) + skips[i])
        return x

    def initial_state(self, batch: int, device=None) -> dict:
        """Every block's state, the pooling windows and upsampled buffers, and the sample count."""
        return {
            "t": 0,
            "down": [stage.initial_state(batch, device) for stage in self.down],
            "center": self.center.initial_state(batch, device),
            "up": [stage.initial_state(batch, device) for stage in self.up],
            "window": [torch.zeros(batch, p, w, device=device) for p, w in zip(self.pools, self.widths)],
            "upsampled": [torch.zeros(batch, p, w, device=device) for p, w in zip(self.pools, self.widths)],
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One sample: x (batch, d_model) -> (batch, d_model). The state is updated in place."""
        y = self._step_stage(0, x, state, state["t"])
        state["t"] += 1
        return y, state

    def _step_stage(self, i: int, x: torch.Tensor, state: dict, t: int) -> torch.Tensor:
        """Stage i's step at its own time t // prod(pool[:i]); called when that division is exact."""
        if i == len(self.pools):
            return self.center.step(x, state["center"])
        tau, pool = t // math.prod(self.pools[:i]), self.pools[i]
        window, upsampled = state["window"][i], state["upsampled"][i]
        slot = window[:, (tau - 1) % pool]  # a ring buffer that is oldest-first whenever tau % pool == 0
        if tau % pool:  # the inner stages wait for a full window
            return self.up[i].step_after(self.down[i], x, state["down"][i], state["up"][i], slot,
                                         upsampled[:, tau % pool])
        x = self.down[i].step(x, state["down"][i])
        slot.copy_(x)
        inner = self._step_stage(i + 1, self.down_pool[i].step(window), state, t)
        upsampled.copy_(self.up_pool[i].step(inner))
        return self.up[i].step(upsampled[:, 0] + x, state["up"][i])
