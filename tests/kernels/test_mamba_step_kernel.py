"""The fused Mamba block step (one Triton kernel) against the block's PyTorch step, on fresh random
weights, states and inputs. Runs on the GPU when there is one, else under the Triton interpreter.
Tolerance: relative L2 error <= 1e-5 on the output and on both updated states (fp32 throughout)."""
import pytest
import torch

from audiomamba.models.mamba import MambaBlock
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.mamba_step")


def random_block(d_model: int, d_state: int) -> MambaBlock:
    """A block whose every parameter is random (not its structured initialisation)."""
    block = MambaBlock(d_model, d_state).to(DEVICE)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * p.detach().std().clamp(min=0.1))
        block.A_log.copy_(torch.rand_like(block.A_log) * 3 - 1)
    return block


# (batch, d_model, d_state): one row; rows across two programs (ROWS = 16) with channels not a
# multiple of the chunk; the SC09 outer and middle widths.
SHAPES = [(1, 16, 8), (19, 40, 16), (3, 64, 16)]
if torch.cuda.is_available():
    SHAPES += [(256, 64, 16), (37, 128, 16), (5, 256, 64)]


@pytest.mark.parametrize("batch, d_model, d_state", SHAPES)
def test_fused_step_matches_the_pytorch_step_over_several_steps(batch, d_model, d_state):
    torch.manual_seed(torch.seed() % 2**31)  # fresh inputs on every run
    block = random_block(d_model, d_state)
    conv_buf, ssm_state = (torch.randn_like(s) for s in block.initial_state(batch, DEVICE))
    ref_state = (conv_buf.clone(), ssm_state.clone())
    with torch.no_grad():
        for _ in range(5):  # the conv buffer shifts a full window and more
            u = torch.randn(batch, d_model, device=DEVICE)
            got = kernels.mamba_step(block, u, conv_buf, ssm_state)
            want, _ = block.step_reference(u, ref_state)
            assert rel_err(got, want) <= 1e-5
            assert rel_err(conv_buf, ref_state[0]) <= 1e-6 and rel_err(ssm_state, ref_state[1]) <= 1e-5


def test_fused_step_refuses_a_state_it_cannot_update_in_place():
    block = random_block(16, 8)
    conv_buf, ssm_state = block.initial_state(2, DEVICE)
    with pytest.raises(ValueError, match="contiguous fp32 SSM state"):
        kernels.mamba_step(block, torch.randn(2, 16, device=DEVICE), conv_buf, ssm_state.double())
