"""A split held in memory as mu-law tokens, read from WAVs or from one packed file.

A packed file is a safetensors file with ``tokens`` (uint8, (n_clips, clip_samples)) and
``labels`` (int64, (n_clips,)), and metadata (label names, speakers, sample rate) in its header;
the whole SC09 training split packs to about 500 MB, the shared data's splits to a few tens of MB.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from audiomamba.config import DataConfig
from audiomamba.data.audio import AudioFileError, read_clip
from audiomamba.data.datasets import fsdd_clips, speech_commands_clips
from audiomamba.data.mulaw import mulaw_encode


@dataclass
class ClipSet:
    """Clips of one split: tokens (n, L) uint8, labels (n,) int64, one speaker id per clip."""

    tokens: torch.Tensor
    labels: torch.Tensor
    speakers: list[str]
    label_names: list[str]
    sample_rate: int
    skipped: list[str]  # files that could not be read (only with skip_bad)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def list_clips(cfg: DataConfig, split: str):
    """The ClipRefs and label names of ``split`` under ``cfg.root``."""
    if cfg.dataset == "fsdd":
        return fsdd_clips(cfg.root, split)
    return speech_commands_clips(cfg.root, split, cfg.words, cfg.split_salt)


def read_split(cfg: DataConfig, split: str, progress: bool = False) -> ClipSet:
    """Decode every WAV of a split into tokens (mono, resampled, padded/cropped)."""
    refs, label_names = list_clips(cfg, split)
    tokens, labels, speakers, skipped = [], [], [], []
    iterator = refs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(refs, desc=f"reading {split}", unit="clip")
    for ref in iterator:
        try:
            audio = read_clip(ref.path, cfg.sample_rate, cfg.clip_samples)
        except AudioFileError:
            if not cfg.skip_bad:
                raise
            skipped.append(str(ref.path))
            continue
        tokens.append(mulaw_encode(audio))
        labels.append(ref.label)
        speakers.append(ref.speaker)
    if not tokens:
        raise ValueError(f"split {split!r} of {cfg.root} has no usable clips")
    return ClipSet(torch.stack(tokens), torch.tensor(labels, dtype=torch.int64), speakers,
                   label_names, cfg.sample_rate, skipped)


def save_packed(clips: ClipSet, path: str | Path) -> None:
    """Write a ClipSet as one safetensors file, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"label_names": json.dumps(clips.label_names), "speakers": json.dumps(clips.speakers),
            "sample_rate": str(clips.sample_rate)}
    tmp = path.with_name(path.name + ".tmp")
    save_file({"tokens": clips.tokens.contiguous(), "labels": clips.labels.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_packed(path: str | Path) -> ClipSet:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"packed split not found: {path} (make it with `audiomamba data pack`)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tokens, labels = f.get_tensor("tokens"), f.get_tensor("labels")
    return ClipSet(tokens, labels, json.loads(meta["speakers"]), json.loads(meta["label_names"]),
                   int(meta["sample_rate"]), [])


def load_split(cfg: DataConfig, split: str, progress: bool = False) -> ClipSet:
    """A split from ``cfg.packed_dir/<split>.safetensors`` when set, else decoded from WAVs."""
    if cfg.packed_dir:
        clips = load_packed(Path(cfg.packed_dir) / f"{split}.safetensors")
        if clips.sample_rate != cfg.sample_rate or clips.tokens.shape[1] != cfg.clip_samples:
            raise ValueError(
                f"packed split {cfg.packed_dir}/{split} holds {clips.tokens.shape[1]}-sample clips at "
                f"{clips.sample_rate} Hz, but the recipe asks for {cfg.clip_samples} at {cfg.sample_rate} Hz")
        return clips
    return read_split(cfg, split, progress)
