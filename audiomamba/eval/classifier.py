"""A speech classifier for the SC09-style metrics: a ResNeXt-style CNN on log-mel spectrograms.

Following DiffWave's and SaShiMi's SC09 evaluations, the classifier is trained on the real data.
Its penultimate activations feed FID and NDB, and its softmax feeds IS, mIS and AM. It is also a
check that a generated word is intelligible. Inputs are mono waveforms at the classifier's sample
rate; mel features are computed on the fly, on the GPU when there is one.

Saved as ``classifier.safetensors`` plus ``classifier.json`` (sample rate, clip length, labels,
feature and model settings, test accuracy).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from audiomamba.data.augment import change_speed, read_at


@dataclass
class ClassifierConfig:
    sample_rate: int = 16000
    clip_samples: int = 16000
    labels: list[str] = field(default_factory=list)
    n_mels: int = 40
    width: int = 32  # channels of the first stage; doubled at each of the 3 stages
    cardinality: int = 8  # groups of the ResNeXt 3x3 convolutions
    freq_masks: int = 2  # SpecAugment while training: bands of up to 1/8 of the mels zeroed
    time_masks: int = 2  # and spans of up to 10 frames (100 ms)
    utterance_norm: bool = False  # subtract each clip's mean log-mel per band (cepstral mean normalisation)


class LogMel(nn.Module):
    """(batch, samples) -> (batch, 1, n_mels, frames) log-mel spectrogram, 25 ms windows, 10 ms hop."""

    def __init__(self, sample_rate: int, n_mels: int):
        super().__init__()
        import torchaudio

        n_fft = 2 ** math.ceil(math.log2(0.025 * sample_rate))
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=sample_rate // 100,
                                                        n_mels=n_mels, f_min=20.0, f_max=sample_rate / 2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(audio.float()) + 1e-6).unsqueeze(1)


class ResNeXtBlock(nn.Module):
    """Bottleneck residual block with a grouped 3x3 convolution."""

    def __init__(self, c_in: int, c_out: int, cardinality: int, stride: int):
        super().__init__()
        mid = c_out // 2
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=cardinality, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if c_in == c_out and stride == 1 else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class SpeechClassifier(nn.Module):
    """(batch, samples) waveforms -> (logits (batch, classes), features (batch, 4 * width))."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.features_in = LogMel(cfg.sample_rate, cfg.n_mels)
        self.norm = nn.BatchNorm2d(1)
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(
            ResNeXtBlock(w, w, cfg.cardinality, 1), ResNeXtBlock(w, 2 * w, cfg.cardinality, 2),
            ResNeXtBlock(2 * w, 2 * w, cfg.cardinality, 1), ResNeXtBlock(2 * w, 4 * w, cfg.cardinality, 2),
            ResNeXtBlock(4 * w, 4 * w, cfg.cardinality, 1))
        self.head = nn.Linear(4 * w, len(cfg.labels))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features_in(audio)
        if self.cfg.utterance_norm:  # removes a clip's fixed spectral tilt: its microphone, room, voice
            x = x - x.mean(dim=-1, keepdim=True)
        x = self.norm(x)
        if self.training:
            x = spec_augment(x, self.cfg.freq_masks, max(1, self.cfg.n_mels // 8), self.cfg.time_masks, 10)
        x = self.stages(self.stem(x))
        features = x.mean(dim=(2, 3))
        return self.head(features), features


def spec_augment(features: torch.Tensor, freq_masks: int, max_freq: int, time_masks: int, max_time: int) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) on (batch, 1, mels, frames): each example gets ``freq_masks``
    bands of up to ``max_freq`` mels and ``time_masks`` spans of up to ``max_time`` frames set to 0
    (the normalised mean). Draws from the global torch RNG."""
    batch, _, mels, frames = features.shape
    keep = torch.ones(batch, 1, mels, frames, dtype=torch.bool, device=features.device)
    for count, width, size, axis in ((freq_masks, max_freq, mels, 2), (time_masks, max_time, frames, 3)):
        position = torch.arange(size, device=features.device)
        for _ in range(count):
            span = torch.randint(0, width + 1, (batch,), device=features.device)
            start = (torch.rand(batch, device=features.device) * (size - span + 1)).long()
            inside = (position[None] >= start[:, None]) & (position[None] < (start + span)[:, None])  # (batch, size)
            keep &= ~(inside[:, None, :, None] if axis == 2 else inside[:, None, None, :])
    return features * keep


def augment(audio: torch.Tensor, sample_rate: int, generator: torch.Generator | None = None,
            speed_change: float = 0.1) -> torch.Tensor:
    """(batch, samples) -> the same shape: random speed (one factor per clip in 1 +- speed_change,
    which shifts pitch, formants and tempo together, a cheap stand-in for another speaker), time
    shift (up to 100 ms, zero-filled), gain (+-6 dB) and background noise (SNR 10-40 dB)."""
    batch, length = audio.shape
    device = audio.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device="cpu").to(device)

    speed = 1 + (rand(batch, 1) * 2 - 1) * speed_change
    audio = change_speed(audio, speed)

    max_shift = sample_rate // 10
    shifts = ((rand(batch) * 2 - 1) * max_shift).long()
    shifted = read_at(audio, torch.arange(length, device=device)[None] - shifts[:, None])
    gain = 10 ** ((rand(batch, 1) * 12 - 6) / 20)
    power = shifted.pow(2).mean(1, keepdim=True).clamp(min=1e-8)
    snr = 10 ** ((rand(batch, 1) * 30 + 10) / 10)
    noise = torch.randn(batch, length, generator=generator, device="cpu").to(device) * (power / snr).sqrt()
    return ((shifted + noise) * gain).clamp(-1, 1)


@torch.no_grad()
def predict(model: SpeechClassifier, audio: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (n, classes) and features (n, d) of (n, samples) audio, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    probs, feats = [], []
    for start in range(0, len(audio), batch_size):
        logits, features = model(audio[start:start + batch_size].to(device))
        probs.append(torch.softmax(logits.float(), -1).cpu())
        feats.append(features.float().cpu())
    return torch.cat(probs), torch.cat(feats)


def accuracy(model: SpeechClassifier, audio: torch.Tensor, labels: torch.Tensor) -> float:
    probs, _ = predict(model, audio)
    return float((probs.argmax(-1) == labels).float().mean())


def train_classifier(cfg: ClassifierConfig, train_audio: torch.Tensor, train_labels: torch.Tensor,
                     val_audio: torch.Tensor, val_labels: torch.Tensor, *, epochs: int = 30, batch_size: int = 64,
                     lr: float = 3e-3, mixup: float = 0.0, speed_change: float = 0.1, device="cpu", seed: int = 0,
                     progress: bool = True) -> tuple[SpeechClassifier, list[dict]]:
    """Train with augmentation (``augment``, with ``speed_change``), AdamW and a one-cycle schedule.
    Keeps the weights of the epoch with the best validation accuracy. ``mixup`` > 0 mixes each batch with a shuffled copy of itself,
    waveforms and targets, with a Beta(mixup, mixup) weight (Zhang et al. 2018). Returns (model,
    per-epoch log)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SpeechClassifier(cfg).to(device)
    steps_per_epoch = max(1, len(train_audio) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    best, best_state, log = -1.0, None, []
    epoch_iter = range(epochs)
    if progress:
        from tqdm import tqdm

        epoch_iter = tqdm(epoch_iter, desc="classifier", unit="epoch")
    for epoch in epoch_iter:
        model.train()
        order = torch.randperm(len(train_audio), generator=generator)
        for k in range(steps_per_epoch):
            index = order[k * batch_size:(k + 1) * batch_size]
            audio = augment(train_audio[index].to(device), cfg.sample_rate, generator, speed_change)
            targets = train_labels[index].to(device)
            if mixup > 0:
                weight = float(torch.distributions.Beta(mixup, mixup).sample())
                partner = torch.randperm(len(index), generator=generator).to(device)
                logits = model(weight * audio + (1 - weight) * audio[partner])[0]
                loss = (weight * F.cross_entropy(logits, targets, label_smoothing=0.05)
                        + (1 - weight) * F.cross_entropy(logits, targets[partner], label_smoothing=0.05))
            else:
                loss = F.cross_entropy(model(audio)[0], targets, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        val_acc = accuracy(model, val_audio, val_labels)
        log.append({"epoch": epoch + 1, "loss": loss.item(), "val_accuracy": val_acc})
        if progress:
            epoch_iter.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{val_acc:.3f}")
        if val_acc > best:
            best, best_state = val_acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), log


def save_classifier(model: SpeechClassifier, out_dir: str | Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "classifier.safetensors.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, out_dir / "classifier.safetensors")
    tmp = out_dir / "classifier.json.tmp"
    tmp.write_text(json.dumps({"config": asdict(model.cfg), **(extra or {})}, indent=2))
    os.replace(tmp, out_dir / "classifier.json")
    return out_dir


def load_classifier(path: str | Path, device="cpu") -> tuple[SpeechClassifier, dict]:
    """(classifier in eval mode, its JSON) from a directory written by ``save_classifier``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "classifier.json").is_file():
        raise FileNotFoundError(f"no classifier at {path} (expected classifier.json and classifier.safetensors)")
    meta = json.loads((path / "classifier.json").read_text())
    model = SpeechClassifier(ClassifierConfig(**meta["config"]))
    try:
        model.load_state_dict(load_file(str(path / "classifier.safetensors")), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path / 'classifier.safetensors'} does not match {path / 'classifier.json'}: {err}") from err
    return model.to(device).eval(), meta
