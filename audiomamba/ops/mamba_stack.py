"""A run of residual Mamba blocks stepped as one: the generation step of a U-Net stage whose
blocks are all Mamba.

    for k in 0 .. K-1:   u <- u + out_proj_k(ssm_step_k(conv_step_k(in_proj_k(LayerNorm_k(u)))))

which is ``ResidualBlock.step`` of each block in turn (``MambaBlock.step`` with its norm). The
blocks' weights are stacked along a first axis of length K (``StackedMambaWeights``) and so are
their states: conv buffers (K, batch, E, width) and SSM states (K, batch, E, N), fp32. On CUDA,
in stages where that pays (``bf16_projections_pay``: the narrow ones), the four projection stacks
are kept in bf16 where bf16 holds them exactly, as it does the weights of a bf16 checkpoint (the
shipped models): the kernels read half the bytes and compute in fp32 as before, so their results
do not change.

A U-Net level whose inner stages do not run this sample (three samples in four at the outer
level) steps its down stage, the skip connection and its up stage back to back: the two stages'
blocks stacked together, with a ``Skip`` between them.

For CUDA tensors, when the kernels are importable, ``mamba_stack_step`` is one Triton kernel for
all K blocks (``audiomamba_kernels.mamba_stack``): each program keeps its batch row's residual
stream in registers from block to block, so a stage's step is one launch instead of 3K (at
batches of a few rows, several programs share a row's channels). That pays for narrow stages at
moderate batches, and for wider ones at batches of one or a few rows (``fused_step_pays``);
elsewhere the stage runs block by block with the per-block kernels. Without the kernels it runs
block by block with the per-block references.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from audiomamba.ops import triton_kernels
from audiomamba.ops.causal_conv import in_proj_conv_step, in_proj_conv_step_ref
from audiomamba.ops.residual_linear import residual_linear, residual_linear_ref
from audiomamba.ops.selective_scan import projected_state_update, projected_state_update_ref


PROJECTIONS = ("in_proj", "x_proj", "dt_proj", "out_proj")  # the weights that narrow_projections may keep in bf16


class StackedMambaWeights(NamedTuple):
    """K blocks' weights, contiguous, fp32 (the projections perhaps bf16: ``narrow_projections``);
    H = model width, E = inner width, N = state size, R = dt rank, W = conv width."""
    norm_weight: torch.Tensor  # (K, H)   the residual block's LayerNorm
    norm_bias: torch.Tensor  # (K, H)
    in_proj: torch.Tensor  # (K, 2E, H)
    conv_weight: torch.Tensor  # (K, E, W)
    conv_bias: torch.Tensor  # (K, E)
    x_proj: torch.Tensor  # (K, R + 2N, E)
    dt_proj: torch.Tensor  # (K, E, R)
    dt_bias: torch.Tensor  # (K, E)
    A: torch.Tensor  # (K, E, N)  = -exp(A_log)
    D: torch.Tensor  # (K, E)
    out_proj: torch.Tensor  # (K, H, E)
    norm_eps: float


def stack_weights(blocks) -> StackedMambaWeights:
    """From residual blocks (``ResidualBlock`` around ``MambaBlock``) of one width; on CUDA, where
    the kernels' ``bf16_projections_pay``, with ``narrow_projections``."""
    def stack(get):
        return torch.stack([get(b).detach().float() for b in blocks]).contiguous()

    weights = StackedMambaWeights(
        stack(lambda b: b.norm.weight), stack(lambda b: b.norm.bias), stack(lambda b: b.block.in_proj.weight),
        stack(lambda b: b.block.conv.weight[:, 0]), stack(lambda b: b.block.conv.bias),
        stack(lambda b: b.block.x_proj.weight), stack(lambda b: b.block.dt_proj.weight),
        stack(lambda b: b.block.dt_proj.bias), stack(lambda b: -torch.exp(b.block.A_log.float())),
        stack(lambda b: b.block.D), stack(lambda b: b.block.out_proj.weight), blocks[0].norm.eps)
    kernels = triton_kernels.load("mamba_stack") if weights.in_proj.is_cuda else None
    width = weights.in_proj.shape[2]
    return narrow_projections(weights) if kernels and kernels.bf16_projections_pay(width) else weights


def narrow_projections(weights: StackedMambaWeights) -> StackedMambaWeights:
    """The weights with each projection stack (``PROJECTIONS``) in bf16 where every one of its
    values is a bf16 value, the others as they are."""
    def narrowed(w):
        w16 = w.to(torch.bfloat16)
        return w16 if torch.equal(w16.float(), w) else w

    return weights._replace(**{name: narrowed(getattr(weights, name)) for name in PROJECTIONS})


def widen_projections(weights: StackedMambaWeights) -> StackedMambaWeights:
    """The weights with every projection stack in fp32 (the same tensors where they are fp32)."""
    return weights._replace(**{name: getattr(weights, name).float() for name in PROJECTIONS})


def _block_by_block(u, weights, conv_state, ssm_state, front, ssm_step, back):
    """The K blocks in turn, each as three calls: ``front`` (norm, in_proj, conv), ``ssm_step``
    (x_proj, dt_proj, the state update, gate) and ``back`` (out_proj and the residual add)."""
    w = weights
    for k in range(len(w.in_proj)):
        x, z = front(u, conv_state[k], w.in_proj[k], w.conv_weight[k], w.conv_bias[k], w.norm_weight[k],
                     w.norm_bias[k], w.norm_eps)
        y = ssm_step(ssm_state[k], x, z, w.x_proj[k], w.dt_proj[k], w.dt_bias[k], w.A[k], w.D[k])
        u = back(u, y, w.out_proj[k])
    return u


class Skip(NamedTuple):
    """A U-Net level's skip connection, between its down stage's blocks and its up stage's."""
    out: torch.Tensor  # (batch, H) receives the stream after the down blocks; rows may be strided
    add: torch.Tensor  # (batch, H) added to the stream before the up blocks (the upsampled row)
    conv_state: torch.Tensor  # (K_up, batch, E, W) the up blocks' conv buffers
    ssm_state: torch.Tensor  # (K_up, batch, E, N) and SSM states


_STACKED = [f for f in StackedMambaWeights._fields if f != "norm_eps"]  # the stacked tensors


def _through_skip(step, u, weights, conv_state, ssm_state, skip: Skip):
    """The down blocks (the first len(conv_state) of ``weights``), the skip connection, the up
    blocks, each stage by ``step``."""
    k = len(conv_state)
    u = step(u, weights._replace(**{f: getattr(weights, f)[:k] for f in _STACKED}), conv_state, ssm_state)
    skip.out.copy_(u)
    return step(u + skip.add, weights._replace(**{f: getattr(weights, f)[k:] for f in _STACKED}), skip.conv_state,
                skip.ssm_state)


def mamba_stack_step_ref(u: torch.Tensor, weights: StackedMambaWeights, conv_state: torch.Tensor,
                         ssm_state: torch.Tensor, skip: Skip | None = None) -> torch.Tensor:
    """u: (batch, H) the residual stream; conv_state: (K, batch, E, W) and ssm_state (K, batch, E, N)
    fp32, both updated in place. Returns u after the K blocks, (batch, H). With ``skip``, the
    weights hold more blocks than the states: the first K (a down stage's) run, then the skip
    connection (skip.out <- u; u <- u + skip.add), then the rest (the up stage's, on skip's states)."""
    if skip is not None:
        return _through_skip(mamba_stack_step_ref, u, weights, conv_state, ssm_state, skip)
    return _block_by_block(u, widen_projections(weights), conv_state, ssm_state, in_proj_conv_step_ref,
                           projected_state_update_ref, residual_linear_ref)


def mamba_stack_step(u, weights, conv_state, ssm_state, skip=None):
    """The blocks' step: one kernel on CUDA where it pays, else block by block with the per-block
    kernels (or references); see :func:`mamba_stack_step_ref`."""
    kernels = triton_kernels.load("mamba_stack") if u.is_cuda else None
    if kernels and kernels.fused_step_pays(u, weights.in_proj.shape[1] // 2):
        return kernels.mamba_stack_step(u, weights, conv_state, ssm_state, skip)
    if not kernels:
        return mamba_stack_step_ref(u, weights, conv_state, ssm_state, skip)
    if skip is not None:
        return _through_skip(mamba_stack_step, u, weights, conv_state, ssm_state, skip)
    return _block_by_block(u, weights, conv_state, ssm_state, in_proj_conv_step, projected_state_update,
                           residual_linear)
