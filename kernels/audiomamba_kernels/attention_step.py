"""One position of sliding-window attention with RoPE, for generation, in one Triton kernel.

Same contract as ``audiomamba.ops.attention.attention_step_ref`` (the test oracle). One program per
(batch row, head): it rotates the head's query and key by the position p (each as its two halves,
the pairs RoPE rotates), loads the head's window of keys and values with the new key and value in
place of slot p mod window (read from registers, not memory, so no barrier is needed before the
write), stores those two, and takes the softmax over the slots written so far (slot s holds a
position once s <= p) against the values. Everything is fp32. Its PyTorch reference is about
twenty kernels; the position is advanced by the caller, after every program has read it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs


@triton.jit
def _rotated(ptr, j, j_ok, cos, sin, HALF):
    """The pairs (j, j + HALF) of a vector at ptr, rotated: its two halves (HALF_PAD,) each."""
    first = tl.load(ptr + j, mask=j_ok, other=0.0).to(tl.float32)
    second = tl.load(ptr + HALF + j, mask=j_ok, other=0.0).to(tl.float32)
    return first * cos - second * sin, first * sin + second * cos


@triton.jit
def _attention_step(keys_ptr, values_ptr, position_ptr, qkv_ptr, inv_freq_ptr, out_ptr, heads, window, HALF,
                    scale, W_PAD: tl.constexpr, HALF_PAD: tl.constexpr, PDL: tl.constexpr):
    b, head = tl.program_id(0), tl.program_id(1)
    d = 2 * HALF
    j, s = tl.arange(0, HALF_PAD), tl.arange(0, W_PAD)
    j_ok, s_ok = j < HALF, s < window
    inv_freq = tl.load(inv_freq_ptr + j, mask=j_ok, other=0.0)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    p = tl.load(position_ptr)
    angles = p.to(tl.float32) * inv_freq
    cos, sin = tl.cos(angles), tl.sin(angles)
    row = qkv_ptr + b * 3 * heads * d + head * d
    q1, q2 = _rotated(row, j, j_ok, cos, sin, HALF)
    k1, k2 = _rotated(row + heads * d, j, j_ok, cos, sin, HALF)
    v1 = tl.load(row + 2 * heads * d + j, mask=j_ok, other=0.0).to(tl.float32)
    v2 = tl.load(row + 2 * heads * d + HALF + j, mask=j_ok, other=0.0).to(tl.float32)

    cache = (b * heads + head) * window * d + s[:, None] * d + j[None, :]  # (W_PAD, HALF_PAD), first halves
    ok = s_ok[:, None] & j_ok[None, :]
    new = (s == p % window)[:, None]
    K1 = tl.where(new, k1[None, :], tl.load(keys_ptr + cache, mask=ok, other=0.0))
    K2 = tl.where(new, k2[None, :], tl.load(keys_ptr + cache + HALF, mask=ok, other=0.0))
    V1 = tl.where(new, v1[None, :], tl.load(values_ptr + cache, mask=ok, other=0.0))
    V2 = tl.where(new, v2[None, :], tl.load(values_ptr + cache + HALF, mask=ok, other=0.0))
    slot = (b * heads + head) * window * d + (p % window) * d + j
    tl.store(keys_ptr + slot, k1, mask=j_ok)
    tl.store(keys_ptr + slot + HALF, k2, mask=j_ok)
    tl.store(values_ptr + slot, v1, mask=j_ok)
    tl.store(values_ptr + slot + HALF, v2, mask=j_ok)

    scores = (tl.sum(K1 * q1[None, :], 1) + tl.sum(K2 * q2[None, :], 1)) * scale
    scores = tl.where(s_ok & (s <= p), scores, float("-inf"))
    weights = tl.exp(scores - tl.max(scores, 0))
    weights = weights / tl.sum(weights, 0)
    out = out_ptr + b * heads * d + head * d + j
    tl.store(out, tl.sum(weights[:, None] * V1, 0), mask=j_ok)
    tl.store(out + HALF, tl.sum(weights[:, None] * V2, 0), mask=j_ok)


def attention_step(keys, values, position, qkv, inv_freq):
    """One fused step; arguments and result as ``attention_step_ref``."""
    for name, cache in (("keys", keys), ("values", values)):
        if cache.dtype != torch.float32 or not cache.is_contiguous():
            raise ValueError(f"the {name} must be a contiguous fp32 tensor (they are updated in place)")
    batch, heads, window, d = keys.shape
    out = torch.empty(batch, heads * d, device=keys.device, dtype=torch.float32)
    w_pad, half_pad = triton.next_power_of_2(window), triton.next_power_of_2(d // 2)
    pdl = launch_options(keys)
    _attention_step[(batch, heads)](keys, values, position, qkv.contiguous(), inv_freq, out, heads, window, d // 2,
                                    d**-0.5, W_PAD=w_pad, HALF_PAD=half_pad, PDL=bool(pdl),
                                    num_warps=8 if w_pad * half_pad > 2048 else 4, **pdl)
    return out
