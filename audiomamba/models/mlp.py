"""The position-wise MLP block: Linear(H, eH) -> GELU -> Linear(eH, H). It has no state."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiomamba.models.residual import step_norm
from audiomamba.ops.residual_linear import residual_linear


class MLPBlock(nn.Module):
    """(batch, length, H) -> (batch, length, H), each position independently."""

    def __init__(self, d_model: int, expand: int = 2):
        super().__init__()
        self.fc_in = nn.Linear(d_model, expand * d_model)
        self.fc_out = nn.Linear(expand * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out.forward(F.gelu(self.fc_in.forward(x)))

    def initial_state(self, batch: int, device=None) -> None:
        return None

    def step(self, u: torch.Tensor, state: None, norm: nn.LayerNorm | None = None) -> tuple[torch.Tensor, None]:
        """u: (batch, H) -> (batch, H); with ``norm``, u is the residual stream and the step returns
        u + block(norm(u)), as every block's does: on CUDA the norm, then two kernels (fc_in with
        GELU; fc_out with the residual add)."""
        x = step_norm(u, norm)
        hidden = residual_linear(None, x, self.fc_in.weight, bias=self.fc_in.bias, activation="gelu")
        return residual_linear(None if norm is None else u, hidden, self.fc_out.weight, bias=self.fc_out.bias), state
