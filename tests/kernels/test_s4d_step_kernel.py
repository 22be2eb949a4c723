"""S4D's fused step (pre-norm, complex recurrence, readout with the D mode, GELU) against its
PyTorch reference, on fresh random inputs over several steps, so that the state carries. On the
GPU when there is one, else under the Triton interpreter. Tolerance: relative L2 error <= 1e-5 for
the output and the state (fp32; only the order of the sums differs)."""
import pytest
import torch

from audiomamba.ops.s4d_step import s4d_step_ref
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.s4d_step")

SHAPES = [(1, 8, 5), (3, 40, 17), (2, 32, 33)]  # (batch, H, modes): channel blocks, modes below and at padding
if torch.cuda.is_available():
    SHAPES += [(256, 256, 33), (1, 64, 33), (17, 100, 9)]


def _complex(*shape, generator, scale=1.0):
    return torch.complex(torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)) * scale


@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize("batch, H, M", SHAPES)
def test_fused_s4d_step_matches_the_reference_and_updates_the_state_alike(batch, H, M, with_norm):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    dA = (_complex(H, M, generator=g) * 0.5).to(DEVICE)  # |dA| mostly below 1, as a stable S4D's
    readout = _complex(H, M, generator=g).to(DEVICE)
    state = _complex(batch, H, M, generator=g).to(DEVICE)
    ref_state = state.clone()
    norm = (torch.randn(H, generator=g).to(DEVICE), torch.randn(H, generator=g).to(DEVICE), 1e-5) if with_norm \
        else (None, None, 1e-5)
    for _ in range(3):
        u = (torch.randn(batch, H, generator=g) * 3 + 1).to(DEVICE)  # a mean and a scale for the norm to remove
        got = kernels.s4d_step(state, u, dA, readout, *norm)
        want = s4d_step_ref(ref_state, u, dA, readout, *norm)
        assert got.shape == (batch, H) and rel_err(got, want) <= 1e-5
        assert rel_err(torch.view_as_real(state), torch.view_as_real(ref_state)) <= 1e-5
