"""Pre-norm residual wrapper: x + dropout(block(LayerNorm(x))), in parallel and step modes."""
from __future__ import annotations

import torch
import torch.nn as nn


def step_norm(u: torch.Tensor, norm: nn.LayerNorm | None) -> torch.Tensor:
    """norm(u) for a block's step, or u without a norm: the functional call, without the module's
    and ``F.layer_norm``'s per-call overhead (a batch-1 CPU step is bound by it)."""
    return u if norm is None else torch.layer_norm(u, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class ResidualBlock(nn.Module):
    """Wraps any block with ``forward``, ``initial_state`` and ``step``; shapes are the block's."""

    def __init__(self, block: nn.Module, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.block = block
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.block(self.norm(x)))

    def initial_state(self, batch: int, device=None):
        return self.block.initial_state(batch, device)

    def step(self, x: torch.Tensor, state):
        """Every block's step takes the norm and returns x + block(norm(x)), so that on CUDA it can
        fuse the norm into its first kernel and the add into its last."""
        return self.block.step(x, state, norm=self.norm)
