"""Shared fixtures: the real recordings in ../shared/data and tiny datasets made on the fly."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():  # kernel tests run on CPU under the Triton interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def write_tone(path: Path, freq: float, rate: int, seconds: float, channels: int = 1) -> None:
    import soundfile

    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * math.pi * freq * t).astype(np.float32)
    soundfile.write(str(path), np.stack([wave] * channels, 1) if channels > 1 else wave, rate, subtype="PCM_16")


@pytest.fixture
def tiny_fsdd(tmp_path) -> Path:
    """An FSDD-layout folder: 3 digits x 2 speakers x 12 takes of tones at 8 kHz, 0.1 s each."""
    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for digit in range(3):
        for speaker in ("ann", "bob"):
            for take in range(12):
                write_tone(folder / f"{digit}_{speaker}_{take}.wav", 300 + 200 * digit + 7 * take, 8000, 0.1)
    return folder.parent


TINY_RECIPE = """
data:
  dataset: fsdd
  root: {root}
  sample_rate: 8000
  clip_samples: 128
model:
  d_model: 8
  pool: [2, 2]
  expand: 2
  outer: [s4d, mlp]
  center: [mamba]
  s4d_state: 4
  mamba_state: 4
  n_classes: 10
train:
  out_dir: {out}
  batch_size: 4
  max_steps: 30
  lr: 0.01
  warmup_steps: 2
  label_dropout: 0.0
  log_every: 5
  val_every: 0
  ckpt_every: 10
  device: cpu
"""


@pytest.fixture
def tiny_recipe(tmp_path, tiny_fsdd) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(root=tiny_fsdd, out=tmp_path / "run"))
    return path
