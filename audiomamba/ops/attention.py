"""Causal attention over a sliding window, with rotary position embeddings: over a whole sequence
(training) and one position at a time against a ring buffer of keys and values (generation).

Query t attends to keys t - window + 1 .. t. RoPE rotates queries and keys by their absolute
position, so that their dot products depend on the offset only. ``windowed_attention`` computes
the window in blocks of ``window`` queries, each against the keys of its own block and the one
before, so memory grows with length x window, not length^2. ``attention_step`` is one position:
one Triton kernel on CUDA when the kernels are importable, its reference here otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from audiomamba.ops import triton_kernels


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


def attention_step_ref(keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor, qkv: torch.Tensor,
                       inv_freq: torch.Tensor) -> torch.Tensor:
    """One position p. keys, values: (batch, heads, window, d) fp32, slot p mod window holding
    position p's (written here, in place); position: (1,) int64, p (not advanced here); qkv:
    (batch, 3 x heads x d), the query, key and value of position p before RoPE; inv_freq: (d/2,).
    Returns the attention output (batch, heads x d) fp32."""
    batch, heads, window, d = keys.shape
    qkv = qkv.float().view(batch, 3, heads, 1, d)
    q, k = rotate(qkv[:, :2], position, inv_freq).unbind(1)  # each (batch, heads, 1, d)
    slot = position % window
    keys.index_copy_(2, slot, k)
    values.index_copy_(2, slot, qkv[:, 2])
    scores = (keys @ q.transpose(-1, -2)).squeeze(-1) / math.sqrt(d)  # (batch, heads, window)
    written = torch.arange(window, device=keys.device) <= position  # every slot once the window is full
    weights = torch.softmax(scores.masked_fill(~written, float("-inf")), dim=-1)
    return (weights[:, :, None] @ values).flatten(1)


def attention_step(keys, values, position, qkv, inv_freq):
    """One kernel on CUDA when available; see :func:`attention_step_ref`."""
    kernels = triton_kernels.load("attention_step") if keys.is_cuda else None
    return (kernels.attention_step if kernels else attention_step_ref)(keys, values, position, qkv, inv_freq)
