"""A sampling step's tail, after the backbone, in one Triton kernel: the final LayerNorm and the
head, guidance, the non-finite guard, Gumbel-max sampling with temperature, prefix forcing, the
log-likelihood, the token stores and the next input's embedding.

Same contract as ``audiomamba.sample.sample_tail_ref`` (the test oracle), for top_p = 1 (a
nucleus needs a sort; the caller uses the reference then). One program per clip makes its 256
logits (and its unconditioned twin's, when guided) from the backbone's output in fp32 FMAs.
PyTorch's version is about twenty small kernels for the sampling alone; with the norm, the head,
the embedding and the U-Net's copies, the kernels outside the blocks took 13.5 us of sc09_mamba's
110 us step at batch 1 (BENCHMARKS.md, "Generation, session 15").
"""
from __future__ import annotations

import triton
import triton.language as tl

from audiomamba.data.mulaw import SILENCE
from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs

# Warps a program: enough that the head's (256, H) weights, held in registers, take at most 64 a
# thread (8 warps at H = 64), up to 32 warps.
MIN_WARPS, MAX_WARPS = 8, 32


@triton.jit
def _finite(v):
    return ((v - v) == 0.0).to(tl.int32)  # x - x is NaN for +-inf and NaN


@triton.jit
def _draw(ok1, top1, score1, at1, ok2, top2, score2, at2):
    """One reduction for four results: all finite (min), the top logit (max), and the top score
    with its first index (argmax)."""
    first = (score1 > score2) | ((score1 == score2) & (at1 < at2))
    return tl.minimum(ok1, ok2), tl.maximum(top1, top2), tl.where(first, score1, score2), tl.where(first, at1, at2)


@triton.jit
def _add_pairs(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.jit
def _logits(h_ptr, norm_w, norm_b, head_w, head_b, H, eps, H_PAD: tl.constexpr):
    """(256,) logits of one backbone output row h (H,): head(LayerNorm(h)), from the norm's and
    the head's weights already loaded (H_PAD,) and (256, H_PAD)."""
    c = tl.arange(0, H_PAD)
    h = tl.load(h_ptr + c, mask=c < H, other=0.0).to(tl.float32)
    mean = tl.sum(h, 0) / H
    centred = tl.where(c < H, h - mean, 0.0)
    normed = centred / tl.sqrt(tl.sum(centred * centred, 0) / H + eps) * norm_w + norm_b
    return head_b + tl.sum(head_w * normed[None, :], 1)


@triton.jit
def _sample_tail(h_ptr, norm_w_ptr, norm_b_ptr, head_w_ptr, head_b_ptr, embed_ptr, label_ptr, gumbel_ptr,
                 alive_ptr, failed_ptr, t_ptr, tokens_ptr, loglik_ptr, input_ptr, prefix_ptr, rows, length,
                 prefix_len, temperature, guidance, H, eps, H_PAD: tl.constexpr,
                 GUIDED: tl.constexpr, GREEDY: tl.constexpr, HAS_PREFIX: tl.constexpr, SILENCE: tl.constexpr,
                 PDL: tl.constexpr):
    row = tl.program_id(0)
    k = tl.arange(0, 256)
    c = tl.arange(0, H_PAD)
    c_ok = c < H
    # What the kernel before this one does not write is loaded before waiting for it: with PDL
    # these loads overlap that kernel's end (the noise was drawn before the step began).
    norm_w = tl.load(norm_w_ptr + c, mask=c_ok, other=0.0)
    norm_b = tl.load(norm_b_ptr + c, mask=c_ok, other=0.0)
    head_w = tl.load(head_w_ptr + k[:, None] * H + c[None, :], mask=c_ok[None, :], other=0.0)
    head_b = tl.load(head_b_ptr + k)
    label = tl.load(label_ptr + row * H + c, mask=c_ok, other=0.0)
    if not GREEDY:
        gumbel = tl.load(gumbel_ptr + row * 256 + k)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    t = tl.load(t_ptr + row)
    logits = _logits(h_ptr + row * H, norm_w, norm_b, head_w, head_b, H, eps, H_PAD)
    if GUIDED:
        uncond = _logits(h_ptr + (rows + row) * H, norm_w, norm_b, head_w, head_b, H, eps, H_PAD)
        sampling = uncond + guidance * (logits - uncond)
        ok = _finite(logits) & _finite(sampling)
    else:
        sampling = logits
        ok = _finite(logits)
    score = sampling if GREEDY else sampling / temperature + gumbel
    # (In a row with a non-finite logit, top and nxt are garbage; the row stops and they go unused.)
    finite, top, _, nxt = tl.reduce((ok, logits, score, k), 0, _draw)
    was_alive = tl.load(alive_ptr + row) != 0
    failed = tl.load(failed_ptr + row)
    tl.store(failed_ptr + row, tl.where(was_alive & (finite == 0), t, failed))
    alive = was_alive & (finite == 1)
    tl.store(alive_ptr + row, alive.to(tl.int1))
    if HAS_PREFIX:
        forced = tl.load(prefix_ptr + tl.minimum(t, prefix_len - 1))
        nxt = tl.where(t < prefix_len, forced, nxt)
    nxt = tl.where(alive, nxt, SILENCE)
    total, chosen = tl.reduce((tl.exp(logits - top), tl.where(k == nxt, logits, 0.0)), 0, _add_pairs)
    logp = (chosen - top) - tl.log(total)
    loglik = tl.load(loglik_ptr + row)
    tl.store(loglik_ptr + row, loglik + tl.where(alive, logp.to(tl.float64), 0.0))
    tl.store(tokens_ptr + row * length + t, nxt.to(tl.uint8))
    tl.store(t_ptr + row, t + 1)
    embedded = tl.load(embed_ptr + nxt * H + c, mask=c_ok, other=0.0)
    tl.store(input_ptr + row * H + c, embedded + label, mask=c_ok)
    if GUIDED:
        twin = (rows + row) * H + c
        tl.store(input_ptr + twin, embedded + tl.load(label_ptr + twin, mask=c_ok, other=0.0), mask=c_ok)


def sample_tail(h, weights, gumbel, alive, failed_at, t, tokens, loglik, next_input, prefix, temperature, top_p,
                guidance):
    """One kernel; arguments and effects as ``sample_tail_ref`` (top_p must be 1)."""
    if top_p != 1.0:
        raise ValueError("the fused sampling tail has no nucleus (top-p) sampling; use sample_tail_ref")
    w = weights
    rows, length = tokens.shape
    H = h.shape[1]
    if not (next_input.is_contiguous() and next_input.dtype == w.embed.dtype == w.label_vectors.dtype):
        raise ValueError("next_input must be contiguous, of the embeddings' dtype (it is written in place)")
    h, gumbel = h.contiguous(), gumbel.contiguous()
    H_PAD = triton.next_power_of_2(H)
    pdl = launch_options(h)
    _sample_tail[(rows,)](h, w.norm_weight, w.norm_bias, w.head_weight, w.head_bias, w.embed, w.label_vectors,
                          gumbel, alive, failed_at, t, tokens, loglik, next_input,
                          prefix if prefix is not None else t, rows, length,
                          len(prefix) if prefix is not None else 0, temperature, guidance, H, w.norm_eps,
                          H_PAD=H_PAD, GUIDED=guidance != 1.0, GREEDY=temperature <= 0,
                          HAS_PREFIX=prefix is not None, SILENCE=SILENCE, PDL=bool(pdl),
                          num_warps=min(MAX_WARPS, max(MIN_WARPS, 256 * H_PAD // (64 * 32))), **pdl)
