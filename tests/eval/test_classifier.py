import pytest
import torch

from audiomamba.eval.classifier import (ClassifierConfig, SpeechClassifier, augment, load_classifier,
                                        save_classifier)


def test_classifier_maps_waveforms_to_logits_and_features_at_8_and_16_khz():
    for rate in (8000, 16000):
        model = SpeechClassifier(ClassifierConfig(sample_rate=rate, clip_samples=rate, labels=list("abc"), width=16))
        logits, feats = model(torch.randn(2, rate))
        assert logits.shape == (2, 3) and feats.shape == (2, 64)


def test_augmentation_keeps_shape_and_range_and_changes_the_audio():
    audio = torch.sin(torch.linspace(0, 200, 8000))[None].repeat(4, 1) * 0.5
    out = augment(audio, 8000, torch.Generator().manual_seed(0))
    assert out.shape == audio.shape and out.abs().max() <= 1 and not torch.allclose(out, audio)


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
