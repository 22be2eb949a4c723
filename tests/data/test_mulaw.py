import torch

from audiomamba.data.mulaw import SILENCE, mulaw_decode, mulaw_encode


def test_encoding_is_monotonic_and_covers_all_256_classes():
    x = torch.linspace(-1, 1, 100_001)
    tokens = mulaw_encode(x).long()
    assert tokens.dtype == torch.long and tokens.min() == 0 and tokens.max() == 255
    assert (tokens.diff() >= 0).all()
    assert len(tokens.unique()) == 256


def test_decoding_is_monotonic_and_inverts_encoding():
    levels = mulaw_decode(torch.arange(256))
    assert (levels.diff() > 0).all() and levels.abs().max() <= 1
    assert torch.equal(mulaw_encode(levels).long(), torch.arange(256))


def test_round_trip_error_is_small_and_relative_to_amplitude():
    x = torch.rand(50_000) * 2 - 1
    err = (mulaw_decode(mulaw_encode(x)) - x).abs()
    # Mu-law quantisation: coarse at loud samples, fine near zero.
    assert err.max() < 0.035
    quiet = x.abs() < 0.01
    assert err[quiet].max() < 5e-4


def test_silence_token_decodes_near_zero_and_out_of_range_is_clipped():
    assert mulaw_encode(torch.zeros(3)).tolist() == [SILENCE] * 3
    assert abs(mulaw_decode(torch.tensor(SILENCE)).item()) < 1e-4
    assert mulaw_encode(torch.tensor([-5.0, 5.0])).tolist() == [0, 255]
