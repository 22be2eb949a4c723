"""The fused front of Mamba's step (pre-norm, in_proj, causal-conv step, silu) against its PyTorch
reference, on fresh random inputs, over more steps than the conv is wide. On the GPU when there
is one, else under the Triton interpreter. Tolerance: relative L2 error <= 1e-5 for the outputs
and the conv buffer (fp32; only the order of the sums differs)."""
import pytest
import torch

from audiomamba.ops.causal_conv import in_proj_conv_step_ref
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.causal_conv")

SHAPES = [(1, 8, 5, 4), (3, 12, 40, 4), (18, 20, 33, 2)]  # (batch, H, E, width): rows and channels cross programs
if torch.cuda.is_available():
    SHAPES += [(256, 64, 128, 4), (17, 256, 512, 4)]


@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize("batch, H, E, width", SHAPES)
def test_fused_front_matches_the_reference_and_shifts_the_buffer_alike(batch, H, E, width, with_norm):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    in_w, conv_w, conv_b = rand(2 * E, H) / H**0.5, rand(E, width), rand(E)
    norm = (rand(H), rand(H), 1e-5) if with_norm else (None, None, 1e-5)
    buf = rand(batch, E, width)
    ref_buf = buf.clone()
    for _ in range(width + 2):
        u = rand(batch, H) * 3 + 1  # a mean and a scale for the norm to remove
        x, z = kernels.in_proj_conv_step(u, buf, in_w, conv_w, conv_b, *norm)
        x_ref, z_ref = in_proj_conv_step_ref(u, ref_buf, in_w, conv_w, conv_b, *norm)
        assert rel_err(x, x_ref) <= 1e-5 and rel_err(z, z_ref) <= 1e-5 and rel_err(buf, ref_buf) <= 1e-5
