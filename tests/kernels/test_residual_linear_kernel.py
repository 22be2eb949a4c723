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


# (residual, rms_eps, bias, activation) of every block's layers: Mamba's out_proj (residual),
# Mamba-2's (RMS norm), S4D's (bias and GLU), the MLP's two (bias and GELU; bias), and the rest
VARIANTS = {"mamba": (True, None, False, None), "mamba2": (True, 1e-5, False, None),
            "s4d": (True, None, True, "glu"), "mlp_in": (False, None, True, "gelu"), "mlp_out": (True, None, True, None),
            "bare": (False, None, False, None), "all_glu": (False, 1e-5, True, "glu"), "all_gelu": (True, 1e-5, True, "gelu")}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch, H, K", SHAPES)
def test_fused_linear_matches_the_reference(batch, H, K, variant):
    residual, rms_eps, with_bias, activation = VARIANTS[variant]
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    outputs = 2 * H if activation == "glu" else H
    u, y, w, bias = rand(batch, H), rand(batch, K), rand(outputs, K), rand(outputs)
    y = y * torch.rand(batch, 1, generator=g).to(DEVICE) * 5  # rows of different scales for the norm
    args = (u if residual else None, y, w, rms_eps, bias if with_bias else None, activation)
    got, want = kernels.residual_linear(*args), residual_linear_ref(*args)
    assert got.shape == want.shape == (batch, H) and rel_err(got, want) <= 1e-5
