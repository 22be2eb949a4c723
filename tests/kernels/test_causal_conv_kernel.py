"""The fused causal-conv step against its PyTorch reference, on fresh random inputs, over more
steps than the conv is wide. On the GPU when there is one, else under the Triton interpreter.
Tolerance: relative L2 error <= 1e-6 (fp32; only the order of a 4-term sum differs)."""
import pytest
import torch

from audiomamba.ops.causal_conv import causal_conv_step_ref
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.causal_conv")

SHAPES = [(1, 5, 4), (3, 40, 4), (2, 300, 2)]  # (batch, channels, width); 600 pairs cross programs
if torch.cuda.is_available():
    SHAPES += [(256, 128, 4), (17, 512, 4)]


@pytest.mark.parametrize("batch, channels, width", SHAPES)
def test_fused_conv_step_matches_the_reference_and_shifts_the_buffer_alike(batch, channels, width):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    weight, bias = torch.randn(channels, width, generator=g).to(DEVICE), torch.randn(channels, generator=g).to(DEVICE)
    buf = torch.randn(batch, channels, width, generator=g).to(DEVICE)
    ref_buf = buf.clone()
    for _ in range(width + 2):
        xz = torch.randn(batch, 2 * channels, generator=g).to(DEVICE)
        x = xz[:, :channels]  # a strided view, as Mamba's in_proj output gives it
        y = kernels.causal_conv_step(buf, x, weight, bias)
        y_ref = causal_conv_step_ref(ref_buf, x, weight, bias)
        assert rel_err(y, y_ref) <= 1e-6 and torch.equal(buf, ref_buf)
