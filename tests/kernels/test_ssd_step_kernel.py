"""Mamba-2's fused SSM step (softplus, state update, readout, D and the silu gate) against its
PyTorch reference, on fresh random inputs over several steps, so that the state carries. On the
GPU when there is one, else under the Triton interpreter. Tolerance: relative L2 error <= 1e-5 for
the output and the state (fp32 throughout; only the order of the sums differs)."""
import pytest
import torch

from audiomamba.ops.ssd import ssd_gated_step_ref
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.ssd_step")

SHAPES = [(1, 1, 4, 8), (3, 2, 6, 5), (2, 4, 8, 16)]  # (batch, heads, P, N): sizes below and at their padding
if torch.cuda.is_available():
    SHAPES += [(256, 4, 32, 64), (1, 16, 32, 64), (17, 3, 24, 48)]


@pytest.mark.parametrize("batch, heads, P, N", SHAPES)
def test_fused_ssd_step_matches_the_reference_and_updates_the_state_alike(batch, heads, P, N):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    E = heads * P
    dt_bias, A, D = rand(heads), -torch.rand(heads, generator=g).to(DEVICE) * 4, rand(heads)
    state = rand(batch, heads, P, N)
    ref_state = state.clone()
    for _ in range(3):
        xBC, zdt = rand(batch, E + 2 * N), rand(batch, E + heads) * 2
        got = kernels.ssd_gated_step(state, xBC, zdt, dt_bias, A, D)
        want = ssd_gated_step_ref(ref_state, xBC, zdt, dt_bias, A, D)
        assert got.shape == (batch, E) and got.dtype == torch.float32
        assert rel_err(got, want) <= 1e-5 and rel_err(state, ref_state) <= 1e-5


def test_the_state_must_be_fp32_and_contiguous():
    state = torch.zeros(1, 2, 4, 3, device=DEVICE, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="contiguous fp32"):
        kernels.ssd_gated_step(state, torch.zeros(1, 14, device=DEVICE), torch.zeros(1, 10, device=DEVICE),
                               *(torch.zeros(2, device=DEVICE) for _ in range(3)))
