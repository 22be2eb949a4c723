"""`audiomamba eval`: the SC09 metrics of a folder of generated clips, beside the real test split.

Rows of the report:
- "real test split": the ceiling a model aims at (the test split against the train split).
- "samples": every readable clip in the folder.
- With a ``samples.json`` that gives log-likelihoods, SaShiMi's procedure: tune a lower and an
  upper likelihood threshold on a random half of the clips, then report the other half after
  filtering, beside the same half unfiltered.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from audiomamba.config import DataConfig
from audiomamba.data.audio import AudioFileError, read_clip
from audiomamba.data.clipset import load_split
from audiomamba.data.mulaw import mulaw_decode
from audiomamba.eval import metrics
from audiomamba.eval.classifier import SpeechClassifier, predict

# Quantiles tried for the lower and upper likelihood thresholds (share of clips rejected at each end).
LOW_REJECT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
HIGH_REJECT = (0.0, 0.05, 0.1, 0.2)


def read_wav_folder(folder: str | Path, sample_rate: int, clip_samples: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """Every WAV in ``folder`` as (n, clip_samples) audio, their names, and the files skipped
    (unreadable, with the reason)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"samples folder not found: {folder}")
    audio, names, skipped = [], [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".wav", ".flac", ".ogg") or not path.is_file():
            continue
        try:
            audio.append(read_clip(path, sample_rate, clip_samples))
            names.append(path.name)
        except AudioFileError as err:
            skipped.append(str(err))
    if not audio:
        raise ValueError(f"no readable audio files in {folder}")
    return torch.stack(audio), names, skipped


def real_split_audio(data: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A real split as float audio (n, samples) decoded from mu-law, as the generator sees it, and labels."""
    clips = load_split(data, split)
    return mulaw_decode(clips.tokens), clips.labels


def tune_thresholds(loglik: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Likelihood bounds (low, high) that maximise IS over this set of clips (half of them at least kept)."""
    best, bounds = -np.inf, (-np.inf, np.inf)
    for low_q in LOW_REJECT:
        for high_q in HIGH_REJECT:
            low, high = np.quantile(loglik, low_q), np.quantile(loglik, 1 - high_q) if high_q else np.inf
            keep = (loglik >= low) & (loglik <= high)
            if keep.sum() < max(2, len(loglik) // 2):
                continue
            score = metrics.inception_score(probs[keep])
            if score > best:
                best, bounds = score, (float(low) if low_q else -np.inf, float(high))
    return bounds


def evaluate(samples_dir: str | Path, classifier: SpeechClassifier, data: DataConfig, ndb_bins: int = 50,
             seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Metrics of the samples folder and of the real test split against the real train split.

    Returns the report and the samples' audio (n, samples) as the classifier saw it.
    """
    cfg = classifier.cfg
    data = DataConfig(**{**data.__dict__, "sample_rate": cfg.sample_rate, "clip_samples": cfg.clip_samples})
    audio, names, skipped = read_wav_folder(samples_dir, cfg.sample_rate, cfg.clip_samples)
    train_audio, _ = real_split_audio(data, "train")
    test_audio, test_labels = real_split_audio(data, "test")
    train_probs, train_feats = (t.numpy().astype(np.float64) for t in predict(classifier, train_audio))
    test_probs, test_feats = (t.numpy().astype(np.float64) for t in predict(classifier, test_audio))
    probs, feats = (t.numpy().astype(np.float64) for t in predict(classifier, audio))
    bins = min(ndb_bins, len(train_feats) // 2)
    rows = {
        "real test split": metrics.all_metrics(train_feats, train_probs, test_feats, test_probs, bins),
        "samples": metrics.all_metrics(train_feats, train_probs, feats, probs, bins),
    }
    report = {"samples_dir": str(samples_dir), "n_samples": len(names), "skipped": skipped, "ndb_bins": bins,
              "real_test_accuracy": float((test_probs.argmax(1) == test_labels.numpy()).mean()), "rows": rows,
              "predicted": [cfg.labels[i] for i in probs.argmax(1)], "files": names}
    meta_path = Path(samples_dir) / "samples.json"
    if meta_path.is_file():
        records = {r["file"]: r for r in json.loads(meta_path.read_text())["samples"]}
        _add_requested_label_accuracy(report, records, probs, cfg.labels)
        _add_threshold_rows(report, records, names, train_feats, train_probs, feats, probs, bins, seed)
    return report, audio


def _add_requested_label_accuracy(report, records, probs, labels) -> None:
    """When clips were generated for a label: how often the classifier hears that label."""
    asked = [records.get(name, {}).get("label_name") for name in report["files"]]
    pairs = [(a, labels[p]) for a, p in zip(asked, probs.argmax(1)) if a is not None]
    if pairs:
        report["requested_label_accuracy"] = float(np.mean([a == p for a, p in pairs]))


def _add_threshold_rows(report, records, names, train_feats, train_probs, feats, probs, bins, seed) -> None:
    loglik = np.array([records.get(n, {}).get("loglik_bits", np.nan) for n in names], dtype=np.float64)
    if np.isnan(loglik).any() or len(names) < 8:
        return
    order = np.random.default_rng(seed).permutation(len(names))
    tune, held = order[: len(names) // 2], order[len(names) // 2:]
    low, high = tune_thresholds(loglik[tune], probs[tune])
    kept = held[(loglik[held] >= low) & (loglik[held] <= high)]
    report["thresholds"] = {"low_loglik_bits": low, "high_loglik_bits": high, "tuned_on": len(tune),
                            "held_out": len(held), "kept": len(kept)}
    report["rows"]["held-out half, unfiltered"] = metrics.all_metrics(train_feats, train_probs, feats[held],
                                                                      probs[held], bins)
    report["rows"]["held-out half, likelihood-filtered"] = metrics.all_metrics(train_feats, train_probs, feats[kept],
                                                                               probs[kept], bins)


def markdown_table(report: dict) -> str:
    lines = ["| | n | FID (lower) | IS (higher) | mIS (higher) | AM (lower) | NDB (lower) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['n']} | {row['FID']:.3f} | {row['IS']:.3f} | {row['mIS']:.3f} | "
                     f"{row['AM']:.3f} | {row['NDB']} |")
    lines.append(f"\nNDB uses {report['ndb_bins']} k-means bins. The classifier is {100 * report['real_test_accuracy']:.1f}% "
                 f"accurate on the real test split.")
    if "requested_label_accuracy" in report:
        lines.append(f"The classifier hears the requested label in {100 * report['requested_label_accuracy']:.1f}% of the samples.")
    if report["skipped"]:
        lines.append(f"Skipped {len(report['skipped'])} unreadable file(s): " + "; ".join(report["skipped"]))
    return "\n".join(lines)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) uint8 array as a PNG (zlib only; no imaging library needed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    color_type = 2 if image.ndim == 3 else 0
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
                           + chunk(b"IEND", b""))


def spectrogram_sheet(classifier: SpeechClassifier, audio: torch.Tensor, predicted: list[str], per_class: int = 3,
                      ) -> np.ndarray:
    """A grayscale image: one row per predicted class, up to ``per_class`` log-mel spectrograms each,
    low frequencies at the bottom."""
    device = next(classifier.parameters()).device
    with torch.no_grad():
        mels = classifier.features_in(audio.to(device))[:, 0].cpu().numpy()  # (n, mels, frames)
    lo, hi = np.percentile(mels, 1), np.percentile(mels, 99)
    tiles = np.clip((mels - lo) / max(hi - lo, 1e-6) * 255, 0, 255)[:, ::-1].repeat(2, axis=1)
    h, w = tiles.shape[1:]
    rows = []
    for label in sorted(set(predicted)):
        chosen = [tiles[i] for i, p in enumerate(predicted) if p == label][:per_class]
        chosen += [np.zeros((h, w))] * (per_class - len(chosen))
        rows.append(np.concatenate([np.pad(t, 2, constant_values=255) for t in chosen], axis=1))
    return np.concatenate(rows, axis=0).astype(np.uint8)
