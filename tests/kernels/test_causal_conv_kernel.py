"""The fused front of Mamba's and Mamba-2's steps (pre-norm, in_proj, causal-conv step, silu) against
its PyTorch reference, on fresh random inputs, over more steps than the conv is wide. On the GPU when there
is one, else under the Triton interpreter. Tolerance: relative L2 error <= 1e-5 for the outputs
and the conv buffer (fp32; only the order of the sums differs)."""
import pytest
import torch

from audiomamba.ops.causal_conv import causal_conv_silu_ref, in_proj_conv_step_ref
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.causal_conv")

# (batch, H, E conv channels, F other outputs, width): rows and channels cross programs; Mamba has
# F = E, Mamba-2 more conv channels (x, B, C) than others (z, dt), and F > E is allowed too
SHAPES = [(1, 8, 5, 5, 4), (3, 12, 40, 40, 4), (18, 20, 33, 33, 2), (2, 16, 72, 37, 4), (3, 8, 6, 45, 4)]
if torch.cuda.is_available():
    SHAPES += [(256, 64, 128, 128, 4), (17, 256, 512, 512, 4), (5, 64, 256, 132, 4)]


@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize("batch, H, E, F, width", SHAPES)
def test_fused_front_matches_the_reference_and_shifts_the_buffer_alike(batch, H, E, F, width, with_norm):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    in_w, conv_w, conv_b = rand(E + F, H) / H**0.5, rand(E, width), rand(E)
    norm = (rand(H), rand(H), 1e-5) if with_norm else (None, None, 1e-5)
    buf = rand(batch, E, width)
    ref_buf = buf.clone()
    for _ in range(width + 2):
        u = rand(batch, H) * 3 + 1  # a mean and a scale for the norm to remove
        x, z = kernels.in_proj_conv_step(u, buf, in_w, conv_w, conv_b, *norm)
        x_ref, z_ref = in_proj_conv_step_ref(u, ref_buf, in_w, conv_w, conv_b, *norm)
        assert x.shape == (batch, E) and z.shape == (batch, F)
        assert rel_err(x, x_ref) <= 1e-5 and rel_err(z, z_ref) <= 1e-5 and rel_err(buf, ref_buf) <= 1e-5


@pytest.fixture
def _short_blocks_under_the_interpreter(monkeypatch):
    """Short sequence blocks under the interpreter, so that a row crosses several programs."""
    if DEVICE == "cpu":
        monkeypatch.setattr(kernels, "SEQ_BLOCK", 16)


SEQUENCE_SHAPES = [(2, 5, 37, 4), (1, 3, 1, 4), (2, 4, 20, 2)]  # (batch, E, L, width): L = 1, L across blocks
if torch.cuda.is_available():
    SEQUENCE_SHAPES += [(2, 128, 4001, 4), (3, 512, 1000, 4)]


@pytest.mark.usefixtures("_short_blocks_under_the_interpreter")
@pytest.mark.parametrize("batch, E, length, width", SEQUENCE_SHAPES)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_sequence_conv_and_its_gradients_match_the_reference(batch, E, length, width, dtype, tolerance):
    """silu(causal depthwise conv) over whole rows, and the gradients of x, weight and bias (fp32
    weights; the reference runs in fp32 on the same bf16-rounded x and output gradient: a bf16 y
    gets its gradient in bf16, and rounding it alone moved a 4-channel bias gradient by 2%)."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    x = torch.randn(batch, E, length, generator=g).to(DEVICE, dtype).requires_grad_()
    weight = (torch.randn(E, width, generator=g) / width**0.5).to(DEVICE).requires_grad_()
    bias = torch.randn(E, generator=g).to(DEVICE).requires_grad_()
    ref = [v.detach().float().requires_grad_() for v in (x, weight, bias)]
    y, y_ref = kernels.causal_conv_silu(x, weight, bias), causal_conv_silu_ref(*ref)
    assert y.dtype == dtype and rel_err(y.float(), y_ref) <= tolerance
    weights = torch.randn(y.shape, generator=g).to(DEVICE, dtype)
    (y * weights).sum().backward()
    (y_ref * weights.float()).sum().backward()
    for got, want in zip((x, weight, bias), ref):
        assert rel_err(got.grad.float(), want.grad) <= tolerance


@pytest.mark.usefixtures("_short_blocks_under_the_interpreter")
def test_sequence_conv_is_a_custom_operator_with_consistent_registrations():
    x, weight, bias = (torch.randn(*shape, device=DEVICE, requires_grad=True) for shape in ((2, 3, 40), (3, 4), (3,)))
    result = torch.library.opcheck(kernels._conv, (x, weight, bias))
    assert all(outcome == "SUCCESS" for outcome in result.values()), result


@pytest.mark.usefixtures("_short_blocks_under_the_interpreter")
def test_eager_code_and_the_custom_operator_give_the_same_results():
    """Eager code calls the conv as a plain autograd Function, torch.compile as the custom operator:
    the same kernels, so the same output and gradients to the bit."""
    inputs = [torch.randn(*shape, device=DEVICE) for shape in ((2, 3, 40), (3, 4), (3,))]
    results = []
    for run in (kernels._conv, kernels._eager_conv):
        leaves = [v.clone().requires_grad_() for v in inputs]
        y = run(*leaves)
        (y * torch.linspace(-1, 1, 40, device=DEVICE)).sum().backward()
        results.append([y] + [v.grad for v in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
