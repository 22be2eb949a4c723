"""Causal self-attention over a sliding window, for hybrids of attention and state-space blocks.

Each position attends to the last ``window`` positions, itself included, with rotary position
embeddings (``audiomamba.ops.attention``). A sliding window keeps generation O(window) per sample
in fixed memory, as a recurrent block's state is: ``step`` keeps the window's keys and values in a
ring buffer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiomamba.models.residual import step_norm
from audiomamba.ops.attention import attention_step, rotate, windowed_attention
from audiomamba.ops.residual_linear import residual_linear


class AttentionBlock(nn.Module):
    """(batch, length, H) -> (batch, length, H): multi-head attention over a causal sliding window."""

    def __init__(self, d_model: int, heads: int = 4, window: int = 256):
        super().__init__()
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"attention at width {d_model}: model.attention_heads={heads} must divide it "
                             f"into heads of an even size (RoPE rotates pairs)")
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        head_dim = d_model // heads
        self.register_buffer("inv_freq", 10000.0 ** (-torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (batch, heads, L, d)
        q, k = rotate(qkv[:2], torch.arange(length, device=x.device), self.inv_freq)
        y = windowed_attention(q, k, qkv[2], self.window)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, width))

    def initial_state(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values (batch, heads, window, d) fp32, zeros; the next position (1,), 0). Slot
        p mod window holds position p's key and value."""
        head_dim = self.inv_freq.shape[0] * 2
        cache = (batch, self.heads, self.window, head_dim)
        return (torch.zeros(cache, device=device), torch.zeros(cache, device=device),
                torch.zeros(1, dtype=torch.long, device=device))

    def step(self, u: torch.Tensor, state, norm: nn.LayerNorm | None = None) -> tuple[torch.Tensor, tuple]:
        """u: (batch, H) -> (batch, H); the state tensors are updated in place and returned. The
        position lives on the device, so a CUDA graph of the step replays at any position. With
        ``norm``, u is the residual stream and the step returns u + block(norm(u)), the add fused
        into out_proj's kernel on CUDA."""
        keys, values, position = state
        x = step_norm(u, norm)
        qkv = F.linear(x, self.qkv.weight)
        y = attention_step(keys, values, position, qkv, self.inv_freq)
        position.add_(1)
        return residual_linear(None if norm is None else u, y.to(u.dtype), self.out_proj.weight), state
