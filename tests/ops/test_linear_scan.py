import pytest
import torch

from audiomamba.ops.linear_scan import _scan, linear_scan


def sequential(a, b, h0=None):
    h = torch.zeros_like(b[..., 0]) if h0 is None else h0
    out = []
    for t in range(a.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, -1)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 100, 257])
def test_chunked_scan_equals_the_sequential_recurrence(length):
    a = torch.rand(2, 3, length, dtype=torch.float64)
    b = torch.randn(2, 3, length, dtype=torch.float64)
    h0 = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, b), sequential(a, b), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear_scan(a, b, h0), sequential(a, b, h0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length", [1, 7, 100, 257])
def test_step_major_memory_gives_bitwise_the_same_scan(length):
    """CUDA runs the scan on step-major copies of its operands, the CPU on their own layout."""
    a = torch.rand(2, 3, length)
    b = torch.randn(2, 3, length)
    h0 = torch.randn(2, 3)
    for start in (None, h0):
        assert torch.equal(_scan(a, b, start, steps_contiguous=True), _scan(a, b, start, steps_contiguous=False))


def test_strong_decay_over_long_sequences_stays_finite():
    a = torch.full((1, 5000), 1e-30)  # products underflow to 0: must not produce inf or nan
    b = torch.randn(1, 5000)
    h = linear_scan(a, b)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 5, 64])
def test_gradients_match_autograd_through_the_sequential_loop(length):
    a = torch.rand(2, 3, length, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, length, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, length, dtype=torch.float64)
    got = torch.autograd.grad((linear_scan(a, b, h0) * weight).sum(), (a, b, h0))
    want = torch.autograd.grad((sequential(a, b, h0) * weight).sum(), (a, b, h0))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
