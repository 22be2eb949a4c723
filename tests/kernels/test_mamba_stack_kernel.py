"""A stage of Mamba blocks stepped in one kernel, against the block-by-block reference, on fresh
random blocks and inputs. On the GPU when there is one, else under the Triton interpreter.
Tolerance: relative L2 error <= 1e-5 for the output and both states after several steps (fp32
throughout; only the order of the sums differs)."""
import pytest
import torch

from audiomamba.config import ModelConfig
from audiomamba.models.sashimi import Stage, make_block
from audiomamba.ops.mamba_stack import mamba_stack_step_ref, stack_weights
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.mamba_stack")

SHAPES = [(1, 16, 4, 2), (3, 32, 16, 3), (2, 24, 8, 1)]  # (batch, H, N, K): H = 24 pads the tiles
if torch.cuda.is_available():
    SHAPES += [(256, 64, 16, 8), (16, 128, 16, 8), (5, 256, 16, 8)]


def random_stage(H, N, K):
    torch.manual_seed(torch.seed() % 2**31)
    stage = Stage(make_block("mamba", H, ModelConfig(mamba_state=N)) for _ in range(K))
    with torch.no_grad():
        for p in stage.parameters():  # away from the initialisation's ones and zeros
            p.add_(torch.randn_like(p) * 0.1)
    return stage.to(DEVICE).eval()


@pytest.mark.parametrize("tile", ["default", "small"])  # small: the channels in several chunks
@pytest.mark.parametrize("batch, H, N, K", SHAPES)
def test_one_kernel_for_the_stage_matches_the_block_by_block_reference(batch, H, N, K, tile, monkeypatch):
    if tile == "small":
        monkeypatch.setattr(kernels, "TILE", 16 * H)
    stage = random_stage(H, N, K)
    weights = stack_weights(stage)
    got_state, want_state = stage.initial_state(batch, DEVICE), stage.initial_state(batch, DEVICE)
    for got_s in (got_state.conv, got_state.ssm):
        got_s.normal_()  # a state from earlier samples
    want_state.conv.copy_(got_state.conv)
    want_state.ssm.copy_(got_state.ssm)
    for _ in range(3):
        u = torch.randn(batch, H, device=DEVICE)
        got = kernels.mamba_stack_step(u, weights, got_state.conv, got_state.ssm)
        want = mamba_stack_step_ref(u, weights, want_state.conv, want_state.ssm)
        assert rel_err(got, want) <= 1e-5
    assert rel_err(got_state.conv, want_state.conv) <= 1e-5
    assert rel_err(got_state.ssm, want_state.ssm) <= 1e-5
