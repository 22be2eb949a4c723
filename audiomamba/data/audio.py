"""Reading and writing WAV files as fixed-length mono clips at a chosen sample rate.

Reading uses soundfile (WAV, FLAC, OGG; torchaudio 2.9+ moved its loaders to torchcodec). Where
soundfile is not installed, as on the GPU image, PCM WAV files are read with the standard
library's ``wave``. Writing is always 16-bit PCM through ``wave``, so training, sampling and
packed data need no audio library.
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
    path = Path(path)
    try:
        data, rate = _decode(path)
    except Exception as err:  # the decoders raise several types for bad files
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


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 samples and the sample rate."""
    try:
        import soundfile
    except ImportError:
        return _decode_pcm_wav(path)
    return soundfile.read(str(path), dtype="float32", always_2d=True)


def _decode_pcm_wav(path: Path) -> tuple[np.ndarray, int]:
    """8/16/32-bit PCM WAV with the standard library (the fallback without soundfile)."""
    import wave

    with wave.open(str(path), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    if width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        data = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(np.iinfo(dtype).max + 1)
    else:
        raise ValueError(f"{8 * width}-bit PCM needs soundfile (pip install soundfile)")
    return data.reshape(-1, channels), rate


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
    """Write a (time,) float waveform in [-1, 1] as mono 16-bit PCM, without normalising it."""
    import wave

    pcm = (audio.detach().float().clamp(-1, 1).cpu().numpy() * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
