import pytest
import torch

from audiomamba.data.audio import AudioFileError, fit_length, read_clip, write_wav
from tests.conftest import write_tone


def test_stereo_is_mixed_and_other_rates_are_resampled(tmp_path):
    path = tmp_path / "stereo_44k.wav"
    write_tone(path, 440, 44100, 0.5, channels=2)
    audio = read_clip(path, 16000)
    assert audio.shape == (8000,)  # 0.5 s at the requested rate
    spectrum = torch.fft.rfft(audio).abs()
    assert abs(spectrum.argmax().item() * 16000 / 8000 - 440) < 4  # still a 440 Hz tone


def test_clips_are_padded_with_silence_or_cropped(tmp_path):
    path = tmp_path / "short.wav"
    write_tone(path, 300, 8000, 0.1)
    padded = read_clip(path, 8000, 2000)
    assert padded.shape == (2000,) and padded[800:].abs().max() == 0 and padded[:800].abs().max() > 0.4
    assert read_clip(path, 8000, 100).shape == (100,)
    assert torch.equal(fit_length(torch.ones(3), 5), torch.tensor([1.0, 1, 1, 0, 0]))


def test_corrupt_and_empty_files_are_named_in_the_error(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        read_clip(corrupt, 16000)
    import numpy as np
    import soundfile

    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioFileError, match="empty.wav.*empty"):
        read_clip(empty, 16000)


def test_written_wavs_are_16_bit_and_not_normalised(tmp_path):
    import soundfile

    path = tmp_path / "out.wav"
    write_wav(path, torch.full((100,), 0.25), 8000)
    info = soundfile.info(str(path))
    assert (info.samplerate, info.subtype) == (8000, "PCM_16")
    data, _ = soundfile.read(str(path))
    assert abs(data.max() - 0.25) < 1e-4


def test_without_soundfile_pcm_wavs_still_read_the_same(tmp_path, monkeypatch):
    """The GPU image has no soundfile: sampling writes and prefixes read through ``wave``."""
    import sys

    path = tmp_path / "stereo.wav"
    write_tone(path, 440, 16000, 0.1, channels=2)
    with_soundfile = read_clip(path, 8000)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile now raises ImportError
    without = read_clip(path, 8000)
    torch.testing.assert_close(without, with_soundfile, rtol=0, atol=1e-4)
    write_wav(tmp_path / "out.wav", without, 8000)
    torch.testing.assert_close(read_clip(tmp_path / "out.wav", 8000), without, rtol=0, atol=1e-4)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....nope")
    with pytest.raises(AudioFileError, match="bad.wav"):
        read_clip(tmp_path / "bad.wav", 8000)
