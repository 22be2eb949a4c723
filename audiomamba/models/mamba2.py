"""Mamba-2: a selective SSM block whose decay is a scalar per head (Dao & Gu 2024), computed by SSD.

    z, xBC, dt = in_proj(u)                      z: E, xBC: E + 2N, dt: one per head (E = expand * H)
    x, B, C = silu(causal depthwise conv(xBC))   x: heads x P channels; B, C: N states shared by the heads
    dt = softplus(dt + dt_bias)                  bias initialised so dt starts in [dt_min, dt_max]
    y = ssd(x, dt, A, B, C) + D x                A = -exp(A_log), one per head
    out = out_proj(RMSNorm(y * silu(z)))

Next to Mamba (``mamba.py``): B and C come from the input projection, not from x, so one matmul
makes every input of the scan, and the decay is shared by a head's P channels, which lets the scan
run as matrix products; the paper uses that to afford larger states (N = 64 here, Mamba's 16).
The recurrent state is the conv buffer (batch, E + 2N, d_conv) and the SSM state (batch, heads,
P, N), fp32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiomamba.models.mamba import initial_dt_bias
from audiomamba.models.step_cache import cached_for_steps
from audiomamba.ops.causal_conv import causal_conv_silu, in_proj_conv_step
from audiomamba.ops.residual_linear import residual_linear
from audiomamba.ops.ssd import ssd_gated_step, ssd_scan


def _gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(y * silu(z)) over the last dimension, in fp32; returned in z's dtype."""
    gated = y.float() * F.silu(z.float())
    return F.rms_norm(gated, gated.shape[-1:], weight.float(), eps).to(z.dtype)


class StepWeights(NamedTuple):
    """What the step reads, derived from the parameters once per generation (``cached_for_steps``)."""
    in_proj: torch.Tensor  # (2E + 2N + heads, H): in_proj's rows as x, B, C (the conv's inputs), z, dt
    dt_bias: torch.Tensor  # (heads,) fp32
    A: torch.Tensor  # (heads,) fp32, -exp(A_log)
    D: torch.Tensor  # (heads,) fp32
    out_proj: torch.Tensor  # (H, E): out_proj's weight with the norm's weight multiplied into its columns


class Mamba2Block(nn.Module):
    """(batch, length, H) -> (batch, length, H)."""

    def __init__(self, d_model: int, d_state: int = 64, headdim: int = 32, expand: int = 2, d_conv: int = 4,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, eps: float = 1e-5):
        super().__init__()
        E, N = expand * d_model, d_state
        if E % headdim:
            raise ValueError(f"Mamba-2 at width {d_model}: its {E} inner channels are not a multiple of "
                             f"model.mamba2_headdim={headdim}")
        self.heads, self.headdim, self.d_state, self.eps = E // headdim, headdim, N, eps
        self.in_proj = nn.Linear(d_model, 2 * E + 2 * N + self.heads, bias=False)  # z, x, B, C, dt
        self.conv = nn.Conv1d(E + 2 * N, E + 2 * N, d_conv, groups=E + 2 * N, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(initial_dt_bias(self.heads, dt_min, dt_max))
        self.A_log = nn.Parameter(torch.empty(self.heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm_weight = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self._step_cache = None  # A = -exp(A_log) while generating: see cached_for_steps

    def _split(self, projected: torch.Tensor):
        """in_proj's output (..., 2E + 2N + heads) -> z (..., E), xBC (..., E + 2N), dt (..., heads)."""
        E = self.heads * self.headdim
        return projected.split([E, E + 2 * self.d_state, self.heads], dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        E, N = self.heads * self.headdim, self.d_state
        z, xBC, dt = self._split(self.in_proj(u))
        xBC = causal_conv_silu(xBC.mT.contiguous(), self.conv.weight[:, 0], self.conv.bias).mT  # (batch, length, E + 2N)
        x, B, C = xBC.split([E, N, N], dim=-1)
        x = x.unflatten(-1, (self.heads, self.headdim))
        with torch.autocast(u.device.type, enabled=False):
            dt = F.softplus(dt.float() + self.dt_bias.float())
            y = ssd_scan(x, dt, -torch.exp(self.A_log.float()), B, C) + self.D.float()[:, None] * x.float()
        return self.out_proj(_gated_rms_norm(y.flatten(-2), z, self.norm_weight, self.eps))

    def initial_state(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv buffer (batch, E + 2N, d_conv), SSM state (batch, heads, P, N) fp32), zeros."""
        channels = self.heads * self.headdim + 2 * self.d_state
        return (torch.zeros(batch, channels, self.conv.kernel_size[0], device=device),
                torch.zeros(batch, self.heads, self.headdim, self.d_state, device=device))

    def _step_weights(self) -> StepWeights:
        z, xBC, dt = self._split(self.in_proj.weight.T)
        return StepWeights(torch.cat([xBC.T, z.T, dt.T]), self.dt_bias.float(), -torch.exp(self.A_log.float()),
                           self.D.float(), self.out_proj.weight * self.norm_weight)

    def step(self, u: torch.Tensor, state, norm: nn.LayerNorm | None = None):
        """u: (batch, H) -> (batch, H); the state tensors are updated in place and returned.

        With ``norm``, u is the residual stream and the step returns u + block(norm(u)), as Mamba's
        does: three kernels on CUDA (norm, in_proj and conv; the SSM step and gate; the RMS norm,
        out_proj and residual add), each op's reference elsewhere."""
        conv_buf, ssm_state = state
        w = cached_for_steps(self, self._step_weights,  # what _step_weights reads
                             [self.in_proj.weight, self.out_proj.weight, *self._parameters.values()])
        fused_norm = (norm.weight, norm.bias, norm.eps) if norm is not None else (None, None, 0.0)
        xBC, zdt = in_proj_conv_step(u, conv_buf, w.in_proj, self.conv.weight[:, 0], self.conv.bias, *fused_norm)
        y = ssd_gated_step(ssm_state, xBC, zdt, w.dt_bias, w.A, w.D)
        return residual_linear(u if norm is not None else None, y.to(w.out_proj.dtype), w.out_proj, self.eps), state
