"""Mamba: a selective state-space block (Gu & Dao 2023), whose step size and B, C depend on the input.

    x, z = in_proj(u)                          x, z: (batch, E, length), E = expand * H
    x = silu(causal depthwise conv(x))         width ``d_conv``
    dt_low, B, C = x_proj(x)                   ranks R = ceil(H / 16), N, N
    delta = softplus(dt_proj(dt_low))          bias initialised so delta starts in [dt_min, dt_max]
    y = selective_scan(x, delta, A, B, C, D) * silu(z)       A = -exp(A_log), S4D-Real init
    out = out_proj(y)

The recurrent state is the conv buffer (batch, E, d_conv) and the SSM state (batch, E, N), fp32.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from audiomamba.models.step_cache import cached_for_steps
from audiomamba.ops.causal_conv import causal_conv_silu, in_proj_conv_step
from audiomamba.ops.residual_linear import residual_linear
from audiomamba.ops.selective_scan import projected_state_update, selective_scan


def _project(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (out, in) times channel-first x (batch, in, length) -> (batch, out, length), contiguous
    (the layout the conv and the scan read): a batched matmul with the weight on the left. x may be
    a transposed view (in_proj's input); the matmul reads it as it is."""
    return torch.bmm(weight.expand(x.shape[0], *weight.shape), x)


def initial_dt_bias(channels: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """A bias b with softplus(b) = dt, dt drawn log-uniformly in [dt_min, dt_max] per channel
    (Mamba's initialisation of the step, through the inverse of softplus)."""
    dt = torch.exp(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt + torch.log(-torch.expm1(-dt))


class MambaBlock(nn.Module):
    """(batch, length, H) -> (batch, length, H)."""

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        E, N = expand * d_model, d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(initial_dt_bias(E, dt_min, dt_max))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self._step_cache = None  # A = -exp(A_log) while generating: see cached_for_steps

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Every activation between in_proj and out_proj is channel-first, (batch, channels, length):
        the layout the conv and the scan read and write. Each projection multiplies it by its
        weight from the left (``_project``), so no transposed copy is made, forward or backward."""
        E, N = self.A_log.shape
        u = u.mT  # (batch, H, length), a view
        w_x, w_z = self.in_proj.weight.split(E)
        x = causal_conv_silu(_project(w_x, u), self.conv.weight[:, 0], self.conv.bias)  # (batch, E, length)
        dt_low, B, C = _project(self.x_proj.weight, x).split([self.dt_rank, N, N], dim=1)
        delta = _project(self.dt_proj.weight, dt_low)  # bias goes in as delta_bias, in fp32
        y = selective_scan(x, delta, -torch.exp(self.A_log.float()), B, C, self.D.float(), _project(w_z, u),
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return _project(self.out_proj.weight, y).mT

    def initial_state(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(conv buffer (batch, E, d_conv), SSM state (batch, E, N) fp32), zeros."""
        E, N = self.A_log.shape
        return (torch.zeros(batch, E, self.conv.kernel_size[0], device=device),
                torch.zeros(batch, E, N, device=device))

    def step(self, u: torch.Tensor, state, norm: nn.LayerNorm | None = None):
        """u: (batch, H) -> (batch, H); the state tensors are updated in place and returned.

        With ``norm``, u is the residual stream and the step returns u + block(norm(u)): the
        residual block's step, with the norm fused into its first kernel on CUDA and the add into its last."""
        conv_buf, ssm_state = state
        fused_norm = (norm.weight, norm.bias, norm.eps) if norm is not None else (None, None, 0.0)
        x, z = in_proj_conv_step(u, conv_buf, self.in_proj.weight, self.conv.weight[:, 0], self.conv.bias, *fused_norm)
        A = cached_for_steps(self, lambda: -torch.exp(self.A_log.float()))
        y = projected_state_update(ssm_state, x, z, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias.float(),
                                   A, self.D.float())
        if norm is None:
            return self.out_proj(y), state
        return residual_linear(u, y, self.out_proj.weight), state
