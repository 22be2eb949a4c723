"""Reading and writing WAV files as fixed-length mono clips at a chosen sample rate.

soundfile does the file I/O (torchaudio 2.9+ moved its loaders to torchcodec); it is imported
when a file is first read, so training from packed data needs neither it nor any WAV.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class AudioFileError(ValueError):
    """A file could not be used as audio; the message names the file."""


def read_clip(path: str | Path, sample_rate: int, clip_samples: int | None = None) -> torch.Tensor:
    """Read an audio file as a float32 mono waveform of shape (clip_samples,) in [-1, 1].

    Channels are averaged, other sample rates are resampled, and the result is cropped or padded
    with silence at the end to ``clip_samples`` (kept as read when None).
    """
    import soundfile

    path = Path(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for bad files
        raise AudioFileError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise AudioFileError(f"audio file {path} is empty (0 samples)")
    audio = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if not torch.isfinite(audio).all():
        raise AudioFileError(f"audio file {path} contains NaN or Inf samples")
    audio = resample(audio, rate, sample_rate)
    if clip_samples is not None:
        audio = fit_length(audio, clip_samples)
    return audio.clamp(-1.0, 1.0)


def resample(audio: torch.Tensor, rate: int, target_rate: int) -> torch.Tensor:
    """Resample (..., time) audio from ``rate`` to ``target_rate`` (band-limited, torchaudio)."""
    if rate == target_rate:
        return audio
    import torchaudio.functional

    return torchaudio.functional.resample(audio, rate, target_rate)


def fit_length(audio: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last dimension of ``audio`` to exactly ``length`` samples."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int) -> None:
    """Write a (time,) float waveform in [-1, 1] as 16-bit PCM, without normalising it."""
    import soundfile

    pcm = (audio.detach().float().clamp(-1, 1).cpu().numpy() * 32767).round().astype(np.int16)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16")
