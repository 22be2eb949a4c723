"""The reference selective scan against a direct transcription of the Mamba recurrence."""
import pytest
import torch
import torch.nn.functional as F

from audiomamba.ops.selective_scan import selective_scan_ref, selective_state_update_ref


def direct(u, delta, A, B, C, D, z, delta_bias, softplus, h0=None):
    """The recurrence exactly as written in the paper, one step at a time, float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if softplus:
        delta = F.softplus(delta)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def random_inputs(batch=2, d=4, n=16, length=37, dtype=torch.float32):
    u = torch.randn(batch, d, length, dtype=dtype)
    delta = torch.randn(batch, d, length, dtype=dtype) * 0.5 - 1
    A = -torch.rand(d, n) * 4 - 0.1
    B, C = torch.randn(batch, n, length, dtype=dtype), torch.randn(batch, n, length, dtype=dtype)
    return u, delta, A, B, C, torch.randn(d), torch.randn(batch, d, length, dtype=dtype), torch.randn(d) * 0.1


@pytest.mark.parametrize("length", [1, 16, 37])
@pytest.mark.parametrize("n", [4, 16])
@pytest.mark.parametrize("with_options", [True, False])
def test_reference_equals_the_direct_recurrence(length, n, with_options):
    u, delta, A, B, C, D, z, bias = random_inputs(n=n, length=length)
    if not with_options:  # no softplus: delta must already be positive
        D, z, bias, delta = None, None, None, delta.abs()
    y, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, with_options, return_last_state=True)
    y_want, last_want = direct(u, delta, A, B, C, D, z, bias, with_options)
    assert ((y.double() - y_want).norm() / y_want.norm()).item() < 1e-5
    assert ((last.double() - last_want).norm() / last_want.norm()).item() < 1e-5


def test_initial_state_continues_a_scan():
    u, delta, A, B, C, D, z, bias = random_inputs(length=40)
    full = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    first, state = selective_scan_ref(u[..., :25], delta[..., :25], A, B[..., :25], C[..., :25], D, z[..., :25], bias,
                                      True, return_last_state=True)
    second = selective_scan_ref(u[..., 25:], delta[..., 25:], A, B[..., 25:], C[..., 25:], D, z[..., 25:], bias, True,
                                initial_state=state)
    torch.testing.assert_close(torch.cat([first, second], -1), full, rtol=1e-5, atol=1e-5)


def test_gradients_match_autograd_through_the_direct_recurrence():
    inputs = [t.double().requires_grad_() for t in random_inputs(length=19)]
    weight = torch.randn(2, 4, 19, dtype=torch.float64)
    got = torch.autograd.grad((selective_scan_ref(*inputs, True).double() * weight).sum(), inputs)
    want = torch.autograd.grad((direct(*inputs, True)[0] * weight).sum(), inputs)
    for g, w in zip(got, want):
        assert ((g - w).norm() / w.norm()).item() < 1e-5


def test_bf16_inputs_keep_an_fp32_state():
    u, delta, A, B, C, D, z, bias = random_inputs(length=64, dtype=torch.bfloat16)
    y, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    y_want, _ = direct(u, delta, A, B, C, D, z, bias, True)
    assert ((y.double() - y_want).norm() / y_want.norm()).item() < 1e-2


def test_state_update_steps_through_the_same_recurrence():
    u, delta, A, B, C, D, z, bias = random_inputs(length=12)
    want = selective_scan_ref(u, delta, A, B, C, D, z, bias, True)
    state = torch.zeros(2, 4, 16)
    steps = [selective_state_update_ref(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t], bias, True)
             for t in range(12)]
    torch.testing.assert_close(torch.stack(steps, -1), want, rtol=1e-5, atol=1e-5)
