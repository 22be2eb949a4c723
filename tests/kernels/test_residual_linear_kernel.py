"""The fused out_proj-and-residual GEMM (with or without the residual, with or without an RMS norm
of its input first) against its PyTorch reference, on fresh random inputs. On
the GPU when there is one, else under the Triton interpreter. Tolerance: relative L2 error <= 1e-5
(3xTF32 on tensor cores is fp32-accurate; only the order of the sums differs)."""
import pytest
import torch

from audiomamba.ops.residual_linear import residual_linear_ref
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.residual_linear")

SHAPES = [(1, 8, 5), (3, 40, 130), (18, 33, 64)]  # (batch, H, K): rows, outputs and K chunks cross blocks
if torch.cuda.is_available():
    SHAPES += [(256, 64, 128), (1024, 256, 512)]


@pytest.mark.parametrize("rms_eps", [None, 1e-5])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("batch, H, K", SHAPES)
def test_fused_linear_matches_the_reference(batch, H, K, residual, rms_eps):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    u, y, w = (torch.randn(*shape, generator=g).to(DEVICE) for shape in ((batch, H), (batch, K), (H, K)))
    y = y * torch.rand(batch, 1, generator=g).to(DEVICE) * 5  # rows of different scales for the norm
    u = u if residual else None
    got, want = kernels.residual_linear(u, y, w, rms_eps), residual_linear_ref(u, y, w, rms_eps)
    assert got.shape == want.shape == (batch, H) and rel_err(got, want) <= 1e-5
