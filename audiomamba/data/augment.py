"""Waveform augmentation for training on few speakers: the generator's and the classifier's.

``read_at`` and ``change_speed`` take their random factors as arguments (the classifier draws them
from its own generator). ``augment_tokens``, the generator's, draws from the global torch RNG,
which the training loop seeds at every step, so a resumed run draws the same.
"""
from __future__ import annotations

import torch

from audiomamba.data.mulaw import mulaw_decode, mulaw_encode


def read_at(audio: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Audio (batch, length) at integer positions ``index`` (batch, n) -> (batch, n), zero outside the clip."""
    length = audio.shape[1]
    return torch.where((index >= 0) & (index < length), audio.gather(1, index.clamp(0, length - 1)), 0.0)


def change_speed(audio: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
    """Play (batch, length) audio at ``speed`` (batch, 1) times its rate, keeping the length: output
    sample j is input time j * speed (linear interpolation), zero past the clip's end. This shifts
    pitch, formants and tempo together, a cheap stand-in for another speaker."""
    position = torch.arange(audio.shape[1], device=audio.device) * speed
    left = position.long()
    frac = position - left
    return read_at(audio, left) * (1 - frac) + read_at(audio, left + 1) * frac


def augment_tokens(tokens: torch.Tensor, speed_change: float, gain_db: float) -> torch.Tensor:
    """Mu-law tokens (batch, length) -> int64 tokens of the same shape, each clip played at a speed
    drawn in 1 +- ``speed_change`` and scaled by a gain drawn in +-``gain_db`` dB (clipped to
    [-1, 1]). Draws from the global torch RNG on the tokens' device."""
    if speed_change == 0 and gain_db == 0:
        return tokens.long()
    batch = tokens.shape[0]
    audio = mulaw_decode(tokens)
    speed = 1 + (torch.rand(batch, 1, device=tokens.device) * 2 - 1) * speed_change
    gain = 10 ** ((torch.rand(batch, 1, device=tokens.device) * 2 - 1) * gain_db / 20)
    return mulaw_encode(change_speed(audio, speed) * gain).long()
