"""A sampling step's tail, after the model, in one Triton kernel: guidance, the non-finite guard,
Gumbel-max sampling with temperature, prefix forcing, the log-likelihood and the token stores.

Same contract as ``audiomamba.sample.sample_tail_ref`` (the test oracle), for top_p = 1 (a
nucleus needs a sort; the caller uses the reference then). One program per clip holds its 256
logits. PyTorch's version is about twenty small kernels; at batch 1 they took a fifth of a step.
"""
from __future__ import annotations

import triton
import triton.language as tl

from audiomamba.data.mulaw import SILENCE
from audiomamba_kernels.pdl import launch_options, release_dependents, wait_for_inputs


@triton.jit
def _all_finite(v):
    return tl.min(((v - v) == 0.0).to(tl.int32), axis=0) == 1  # x - x is NaN for +-inf and NaN


@triton.jit
def _sample_tail(logits_ptr, gumbel_ptr, alive_ptr, failed_ptr, t_ptr, tokens_ptr, loglik_ptr, input_ptr,
                 prefix_ptr, rows, length, prefix_len, temperature, guidance, GUIDED: tl.constexpr,
                 GREEDY: tl.constexpr, HAS_PREFIX: tl.constexpr, SILENCE: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0)
    k = tl.arange(0, 256)
    wait_for_inputs(PDL)
    release_dependents(PDL)
    t = tl.load(t_ptr)
    logits = tl.load(logits_ptr + row * 256 + k)
    if GUIDED:
        uncond = tl.load(logits_ptr + (rows + row) * 256 + k)
        sampling = uncond + guidance * (logits - uncond)
        finite = _all_finite(logits) & _all_finite(sampling)
    else:
        sampling = logits
        finite = _all_finite(logits)
    was_alive = tl.load(alive_ptr + row) != 0
    failed = tl.load(failed_ptr + row)
    tl.store(failed_ptr + row, tl.where(was_alive & (finite == 0), t, failed))
    alive = was_alive & finite
    tl.store(alive_ptr + row, alive.to(tl.int1))
    logits = tl.where(alive, logits, 0.0)
    sampling = tl.where(alive, sampling, 0.0)
    if GREEDY:
        nxt = tl.argmax(sampling, axis=0)
    else:
        nxt = tl.argmax(sampling / temperature + tl.load(gumbel_ptr + row * 256 + k), axis=0)
    if HAS_PREFIX:
        forced = tl.load(prefix_ptr + tl.minimum(t, prefix_len - 1))
        nxt = tl.where(t < prefix_len, forced, nxt)
    nxt = tl.where(alive, nxt, SILENCE)
    top = tl.max(logits, axis=0)
    chosen = tl.sum(tl.where(k == nxt, logits, 0.0), axis=0)
    logp = (chosen - top) - tl.log(tl.sum(tl.exp(logits - top), axis=0))
    loglik = tl.load(loglik_ptr + row)
    tl.store(loglik_ptr + row, loglik + tl.where(alive, logp.to(tl.float64), 0.0))
    tl.store(tokens_ptr + row * length + t, nxt.to(tl.uint8))
    tl.store(input_ptr + row, nxt.to(tl.int64))
    if GUIDED:
        tl.store(input_ptr + rows + row, nxt.to(tl.int64))


def sample_tail(logits, gumbel, alive, failed_at, t, tokens, loglik, model_input, prefix, temperature, top_p,
                guidance):
    """One kernel; arguments and effects as ``sample_tail_ref`` (top_p must be 1)."""
    if top_p != 1.0:
        raise ValueError("the fused sampling tail has no nucleus (top-p) sampling; use sample_tail_ref")
    rows, length = tokens.shape
    logits, gumbel = logits.contiguous(), gumbel.contiguous()
    pdl = launch_options(logits)
    _sample_tail[(rows,)](logits, gumbel, alive, failed_at, t, tokens, loglik, model_input,
                          prefix if prefix is not None else t, rows, length,
                          len(prefix) if prefix is not None else 0, temperature, guidance,
                          GUIDED=guidance != 1.0, GREEDY=temperature <= 0, HAS_PREFIX=prefix is not None,
                          SILENCE=SILENCE, PDL=bool(pdl), **pdl)
