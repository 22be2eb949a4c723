"""Mamba-2's chunked scan (SSD) computes its recurrence: against the step-by-step state update,
in fp32, within 1e-5 relative error, for lengths that are and are not multiples of the chunk."""
import pytest
import torch

from audiomamba.ops.ssd import ssd_scan, ssd_step


def random_inputs(batch=2, length=13, heads=3, P=4, N=5):
    torch.manual_seed(torch.seed() % 2**31)
    x = torch.randn(batch, length, heads, P)
    dt = torch.rand(batch, length, heads) * 0.5 + 0.01
    A = -torch.rand(heads) * 4 - 0.1
    B, C = torch.randn(batch, length, N), torch.randn(batch, length, N)
    return x, dt, A, B, C


def stepped(x, dt, A, B, C):
    """Generation's path: ``ssd_step`` once per sample, its state updated in place."""
    state = torch.zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])
    return torch.stack([ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t]) for t in range(x.shape[1])], 1)


def stepped_double(x, dt, A, B, C):
    """The recurrence written out of place, in float64, so that autograd can follow it."""
    state = torch.zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1], dtype=torch.float64)
    out = []
    for t in range(x.shape[1]):
        drive = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        state = state * torch.exp(dt[:, t] * A)[..., None, None] + drive
        out.append((state @ C[:, t, None, :, None]).squeeze(-1))
    return torch.stack(out, 1)


@pytest.mark.parametrize("length, chunk", [(1, 4), (4, 4), (13, 4), (13, 64), (40, 8)])
def test_the_chunked_scan_equals_the_recurrence(length, chunk):
    inputs = random_inputs(length=length)
    want = stepped(*inputs)
    got = ssd_scan(*inputs, chunk=chunk)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_long_sequences_with_strong_decay_stay_finite():
    """The decay matrices' entries above the diagonal (s > t) must come out 0, not inf * 0 = nan."""
    x, dt, A, B, C = random_inputs(length=300)
    y = ssd_scan(x, dt * 40, A * 10, B, C, chunk=64)
    assert torch.isfinite(y).all()
    want = stepped(x, dt * 40, A * 10, B, C)
    assert ((y - want).norm() / want.norm()).item() < 1e-5


def test_the_chunked_scans_gradients_equal_the_recurrences():
    """The chunked form is differentiated by autograd; so is the recurrence, step by step. Every
    input's gradient agrees within 1e-4 relative, in float64 to leave only the forms' difference."""
    inputs = [t.double().requires_grad_() for t in random_inputs(length=11)]
    weights = torch.randn(2, 11, 3, 4, dtype=torch.float64)  # a random loss direction

    def grads(scan):
        return torch.autograd.grad((scan(*inputs) * weights).sum(), inputs)

    chunked = grads(lambda *t: ssd_scan(*t, chunk=4).double())
    recurrence = grads(stepped_double)
    for name, got, want in zip("x dt A B C".split(), chunked, recurrence):
        assert ((got - want).norm() / want.norm()).item() < 1e-4, name


def test_weak_decay_after_a_long_strong_one_keeps_its_precision():
    """After 1024 steps of strong decay (log-decay -5 a step), the running sum of log-decays is
    about -5000, where fp32 resolves only 5e-4: decays taken as differences of such sums would
    err by that much in the weak-decay half that follows. Against the float64 recurrence: 1e-5."""
    torch.manual_seed(0)
    x, dt, A, B, C = random_inputs(batch=1, length=2048, heads=2, P=4, N=8)
    dt[:, :1024], dt[:, 1024:] = 5.0, 1e-4
    A = -torch.ones(2)
    want = stepped_double(x.double(), dt.double(), A.double(), B.double(), C.double())
    got = ssd_scan(x, dt, A, B, C, chunk=16)
    late = slice(1100, None)
    assert ((got[:, late] - want[:, late]).norm() / want[:, late].norm()).item() < 1e-5
