import torch

from audiomamba.data.augment import augment_tokens, change_speed, read_at
from audiomamba.data.mulaw import mulaw_decode, mulaw_encode


def test_read_at_gives_zero_outside_the_clip():
    audio = torch.tensor([[1.0, 2.0, 3.0]])
    assert read_at(audio, torch.tensor([[-1, 0, 2, 3]])).tolist() == [[0.0, 1.0, 3.0, 0.0]]


def test_change_speed_plays_time_j_times_speed_with_linear_interpolation():
    audio = torch.arange(8.0)[None].repeat(3, 1)
    out = change_speed(audio, torch.tensor([[1.0], [2.0], [0.5]]))
    assert torch.equal(out[0], audio[0])  # speed 1 is the identity
    assert out[1].tolist() == [0, 2, 4, 6, 0, 0, 0, 0]  # twice as fast: past the clip's end is silence
    assert out[2].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]  # half speed: halfway samples interpolated


def test_augment_tokens_is_the_identity_when_off():
    tokens = torch.randint(0, 256, (2, 100), dtype=torch.uint8)
    out = augment_tokens(tokens, speed_change=0.0, gain_db=0.0)
    assert out.dtype == torch.int64 and torch.equal(out, tokens.long())


def test_gain_scales_each_clip_within_the_range_in_db():
    torch.manual_seed(0)
    audio = 0.1 * torch.sin(torch.linspace(0, 300, 4000))[None].repeat(16, 1)
    out = mulaw_decode(augment_tokens(mulaw_encode(audio), speed_change=0.0, gain_db=6.0))
    ratio_db = 20 * torch.log10(out.abs().amax(1) / audio.abs().amax(1))
    assert ratio_db.abs().max() <= 6.0 + 0.3  # mu-law rounding: 0.06 dB at this level
    assert ratio_db.max() - ratio_db.min() > 3.0  # drawn per clip


def test_speed_change_moves_a_tones_pitch_per_clip_within_the_range():
    torch.manual_seed(0)
    t = torch.arange(8000) / 8000
    audio = (0.5 * torch.sin(2 * torch.pi * 500 * t))[None].repeat(8, 1)  # 500 Hz, 1 s at 8 kHz
    out = mulaw_decode(augment_tokens(mulaw_encode(audio), speed_change=0.2, gain_db=0.0))
    peaks = torch.fft.rfft(out).abs().argmax(-1).float()  # 1 Hz bins
    assert peaks.min() >= 500 * 0.8 - 1 and peaks.max() <= 500 * 1.2 + 1
    assert len(peaks.unique()) >= 6
