"""The first-order linear recurrence h[t] = a[t] * h[t-1] + b[t], in pure PyTorch.

This is the engine of the reference selective scan. It runs as a chunked scan: the time axis is
cut into chunks of ``chunk`` steps; a loop over the steps of a chunk runs every chunk at once
(giving each chunk's scan from a zero state and the running product of its ``a``), then a loop
over chunks passes the carried state along, and a last vectorised pass adds each chunk's
incoming state times the running product. That is about 2*sqrt(L) small Python iterations
instead of L, with only multiplications and additions (no division by decays, so no overflow).

The backward pass is the same recurrence run backwards in time, so autograd stores only ``a``
and ``h`` rather than every intermediate.
"""
from __future__ import annotations

import math

import torch


def _scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, steps_contiguous: bool) -> torch.Tensor:
    """h[..., t] = a[..., t] * h[..., t-1] + b[..., t], h[..., -1] = h0; time is the last axis.

    ``steps_contiguous`` copies a and h step-major, so that each step's slice is contiguous; see
    ``linear_scan`` for when that pays. The arithmetic and its order do not depend on it: the
    results are bitwise equal.
    """
    length = a.shape[-1]
    chunk = max(1, math.isqrt(length))
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:  # a = 1, b = 0 past the end leaves the state unchanged
        a = torch.nn.functional.pad(a, (0, pad), value=1.0)
        b = torch.nn.functional.pad(b, (0, pad))
    # (chunk, ..., n_chunks): step t of every chunk at once is a[t], h[t].
    a = a.unflatten(-1, (n_chunks, chunk)).movedim(-1, 0)
    h = b.unflatten(-1, (n_chunks, chunk)).movedim(-1, 0)
    if steps_contiguous:
        a = a.contiguous()
    h = h.clone(memory_format=torch.contiguous_format if steps_contiguous else torch.preserve_format)  # never b
    for t in range(1, chunk):  # every chunk's scan from a zero state, in place
        h[t].addcmul_(a[t], h[t - 1])
    decay = torch.empty_like(a)  # a's memory layout (cumprod's own output would be step-major)
    torch.cumprod(a, dim=0, out=decay)  # product of a within the chunk, up to and including t
    carry = torch.zeros_like(h[0, ..., 0]) if h0 is None else h0.to(h.dtype)
    chunk_end, chunk_decay = h[-1], decay[-1]  # (..., n_chunks)
    incoming = torch.empty_like(chunk_end)  # the state entering each chunk
    for c in range(n_chunks):
        incoming[..., c] = carry
        carry = chunk_decay[..., c] * carry + chunk_end[..., c]
    h.addcmul_(decay, incoming)
    return h.movedim(0, -1).flatten(-2)[..., :length]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        h = _scan(a, b, h0, steps_contiguous=a.is_cuda)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        # g[t] = dL/dh[t] including the future: g[t] = grad_h[t] + a[t+1] * g[t+1].
        a_next = torch.nn.functional.pad(a[..., 1:], (0, 1))
        g = _scan(a_next.flip(-1), grad_h.flip(-1), None, steps_contiguous=a.is_cuda).flip(-1)
        h_prev = torch.cat([(torch.zeros_like(h[..., :1]) if h0 is None else h0.unsqueeze(-1)), h[..., :-1]], -1)
        grad_h0 = None if h0 is None else a[..., 0] * g[..., 0]
        return g * h_prev, g, grad_h0


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Solve h[t] = a[t] * h[t-1] + b[t] along the last axis.

    a, b: (..., L), same shape and dtype; h0: (...) or None (zeros). Returns h: (..., L).
    Differentiable in a, b and h0. On CUDA the chunked scan copies its operands step-major, so that
    every step reads and writes contiguous slices: 1.6-3.4x faster on an H200. On the CPU it steps
    over strided slices of the operands as they come, 2x faster there than with the copies
    (BENCHMARKS.md, sessions 16 and 17).
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _LinearScan.apply(a, b, h0)
