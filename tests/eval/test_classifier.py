import pytest
import torch

from audiomamba.eval.classifier import (ClassifierConfig, SpeechClassifier, accuracy, augment, load_classifier,
                                        save_classifier, spec_augment, train_classifier)


def test_classifier_maps_waveforms_to_logits_and_features_at_8_and_16_khz():
    for rate in (8000, 16000):
        model = SpeechClassifier(ClassifierConfig(sample_rate=rate, clip_samples=rate, labels=list("abc"), width=16))
        logits, feats = model(torch.randn(2, rate))
        assert logits.shape == (2, 3) and feats.shape == (2, 64)


def test_augmentation_keeps_shape_and_range_and_changes_the_audio():
    audio = torch.sin(torch.linspace(0, 200, 8000))[None].repeat(4, 1) * 0.5
    out = augment(audio, 8000, torch.Generator().manual_seed(0))
    assert out.shape == audio.shape and out.abs().max() <= 1 and not torch.allclose(out, audio)


def test_speed_perturbation_draws_one_speed_per_clip_within_the_range():
    t = torch.arange(8000) / 8000
    audio = (0.5 * torch.sin(2 * torch.pi * 500 * t))[None].repeat(8, 1)  # 500 Hz, 1 s at 8 kHz

    def peak_hz(speed_change):  # the tone's frequency in each augmented clip (1 Hz bins)
        out = augment(audio, 8000, torch.Generator().manual_seed(0), speed_change)
        return torch.fft.rfft(out).abs().argmax(-1).float()

    assert (peak_hz(0.0) == 500).all()
    peaks = peak_hz(0.2)
    assert peaks.min() >= 500 * 0.8 - 1 and peaks.max() <= 500 * 1.2 + 1
    assert len(peaks.unique()) >= 6 and peaks.max() - peaks.min() > 50  # per clip, not one speed per batch


def test_spec_augment_zeroes_at_most_the_requested_bands_and_spans():
    torch.manual_seed(0)
    features = torch.randn(64, 1, 40, 101).abs() + 1  # nothing is zero before masking
    out = spec_augment(features, freq_masks=2, max_freq=5, time_masks=2, max_time=10)
    zero = out == 0
    masked_mels = zero.all(dim=3).sum(dim=(1, 2))  # mels zeroed over every frame, per example
    masked_frames = zero.all(dim=2).sum(dim=(1, 2))
    assert out.shape == features.shape
    assert masked_mels.max() <= 10 and masked_frames.max() <= 20
    assert masked_mels.float().mean() > 1 and masked_frames.float().mean() > 2
    assert torch.equal(out[~zero], features[~zero])  # everything else is untouched


def test_spec_augment_applies_in_training_only():
    model = SpeechClassifier(ClassifierConfig(sample_rate=8000, clip_samples=8000, labels=["x", "y"], width=16))
    audio = torch.randn(2, 8000)
    model.eval()
    torch.testing.assert_close(model(audio)[0], model(audio)[0])
    model.train()
    torch.manual_seed(0)
    first = model(audio)[1]
    torch.manual_seed(1)
    assert not torch.allclose(first, model(audio)[1])


def test_utterance_norm_makes_the_classifier_deaf_to_a_clip_s_loudness():
    audio = torch.randn(2, 8000) * 0.1
    for utterance_norm in (True, False):
        model = SpeechClassifier(ClassifierConfig(sample_rate=8000, clip_samples=8000, labels=["x", "y"], width=16,
                                                  utterance_norm=utterance_norm)).eval()
        quiet, loud = model(audio)[1], model(audio * 4)[1]
        assert torch.allclose(quiet, loud, atol=1e-4) == utterance_norm


def test_training_with_mixup_still_separates_easy_classes():
    """Three tones, each its own class: mixed batches must not stop the classifier from learning them."""
    time = torch.arange(2000) / 8000
    audio = torch.stack([0.3 * torch.sin(2 * torch.pi * f * time) for f in (300, 900, 2400) for _ in range(16)])
    labels = torch.arange(3).repeat_interleave(16)
    cfg = ClassifierConfig(sample_rate=8000, clip_samples=2000, labels=["a", "b", "c"], width=16, n_mels=16)
    model, log = train_classifier(cfg, audio, labels, audio, labels, epochs=20, batch_size=16, mixup=0.4,
                                  progress=False)
    assert accuracy(model, audio, labels) == 1.0 and len(log) == 20


def test_save_and_load_round_trip_strictly(tmp_path):
    model = SpeechClassifier(ClassifierConfig(sample_rate=8000, clip_samples=8000, labels=["x", "y"], width=16)).eval()
    save_classifier(model, tmp_path, {"test_accuracy": 0.5})
    loaded, meta = load_classifier(tmp_path)
    audio = torch.randn(3, 8000)
    torch.testing.assert_close(loaded(audio)[0], model(audio)[0])
    assert meta["test_accuracy"] == 0.5
    meta_path = tmp_path / "classifier.json"
    meta_path.write_text(meta_path.read_text().replace('"width": 16', '"width": 32'))
    with pytest.raises(ValueError, match="does not match"):
        load_classifier(tmp_path)
