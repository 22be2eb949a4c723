"""Causal self-attention over a sliding window, for hybrids of attention and state-space blocks.

Each position attends to the last ``window`` positions, itself included, with rotary position
embeddings (RoPE: queries and keys rotated by their absolute position, so that their dot products
depend on the offset only). A sliding window keeps generation O(window) per sample in fixed
memory, as a recurrent block's state is: ``step`` keeps the window's keys and values in a ring
buffer. Training computes the window in blocks of ``window`` queries, each against the keys of its
own block and the one before, so memory grows with length x window, not length^2.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE: x (..., T, d) rotated pairwise (i, i + d/2) by positions (T,) times inv_freq (d/2,)."""
    angles = positions.float()[:, None] * inv_freq  # (T, d/2), the same arithmetic in forward and step
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """q, k, v: (batch, heads, L, d) -> (batch, heads, L, d): query t attends to keys t - window + 1 .. t."""
    length = q.shape[2]
    if length <= window:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    W = window
    blocks = math.ceil(length / W)
    pad = blocks * W - length  # padded queries come last and are dropped; padded keys only they can see
    q = F.pad(q, (0, 0, 0, pad)).unflatten(2, (blocks, W))  # (batch, heads, blocks, W, d)
    k, v = (F.pad(t, (0, 0, W, pad)).unfold(2, 2 * W, W).transpose(-1, -2) for t in (k, v))  # (.., blocks, 2W, d)
    # Query i of block b is position bW + i; key j of its 2W keys is position bW - W + j.
    i, j = torch.arange(W, device=q.device)[:, None], torch.arange(2 * W, device=q.device)
    in_window = (j > i) & (j <= i + W)  # 0 <= query - key < W
    mask = in_window.repeat(blocks, 1, 1)
    mask[0] &= j >= W  # block 0's first W keys are padding before position 0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).flatten(2, 3)[:, :, :length]


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
        self.register_buffer("slots", torch.arange(window), persistent=False)  # the ring buffer's slots

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

    def step(self, x: torch.Tensor, state) -> tuple[torch.Tensor, tuple]:
        """x: (batch, H) -> (batch, H); the state tensors are updated in place and returned. The
        position lives on the device, so a CUDA graph of the step replays at any position."""
        keys, values, position = state
        qkv = F.linear(x, self.qkv.weight).view(x.shape[0], 3, self.heads, 1, -1)  # (batch, 3, heads, 1, d)
        q, k = rotate(qkv[:, :2], position, self.inv_freq).unbind(1)  # (batch, heads, 1, d)
        slot = position % self.window
        keys.index_copy_(2, slot, k.float())
        values.index_copy_(2, slot, qkv[:, 2].float())
        scores = (keys @ q.float().transpose(-1, -2)).squeeze(-1) / math.sqrt(keys.shape[-1])  # (batch, heads, window)
        written = self.slots <= position  # every slot once the window is full
        weights = torch.softmax(scores.masked_fill(~written, float("-inf")), dim=-1)
        y = (weights[:, :, None] @ values).squeeze(-2)  # (batch, heads, d)
        position.add_(1)
        return self.out_proj.forward(y.flatten(1).to(x.dtype)), state
