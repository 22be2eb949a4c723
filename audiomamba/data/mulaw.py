"""8-bit mu-law companding: float audio in [-1, 1] <-> 256 integer classes (tokens)."""
from __future__ import annotations

import math

import torch

MU = 255
N_CLASSES = MU + 1
SILENCE = 128  # the token that decodes closest to 0.0


def mulaw_encode(audio: torch.Tensor) -> torch.Tensor:
    """Float audio of any shape (clipped to [-1, 1]) -> uint8 tokens of the same shape."""
    x = audio.float().clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(MU * x.abs()) / math.log1p(MU)
    return ((y + 1) / 2 * MU + 0.5).floor().clamp(0, MU).to(torch.uint8)


def mulaw_decode(tokens: torch.Tensor) -> torch.Tensor:
    """Integer tokens in [0, 255] of any shape -> float32 audio in [-1, 1]."""
    y = tokens.float() / MU * 2 - 1
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(MU)) / MU
