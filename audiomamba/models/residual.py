"""Pre-norm residual wrapper: x + dropout(block(LayerNorm(x))), in parallel and step modes."""
from __future__ import annotations

import torch
import torch.nn as nn

from audiomamba.models.attention import AttentionBlock
from audiomamba.models.mamba import MambaBlock
from audiomamba.models.mamba2 import Mamba2Block


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
        block = self.block
        if isinstance(block, (MambaBlock, Mamba2Block, AttentionBlock)):  # they fuse the norm and the residual add
            return block.step(x, state, norm=self.norm)
        y, state = block.step(self.norm.forward(x), state)
        return x + y, state
