"""A stage of Mamba blocks stepped in one kernel, against the block-by-block reference, on fresh
random blocks and inputs. On the GPU when there is one, else under the Triton interpreter.
Tolerance: relative L2 error <= 1e-5 for the output and both states after several steps (fp32
throughout; only the order of the sums differs). The kernels also read projections narrowed to
bf16 where that is exact (``narrow_projections``), to the same tolerance against the reference
on the fp32 weights."""
import pytest
import torch

from audiomamba.checkpoint import round_to_bf16
from audiomamba.config import ModelConfig
from audiomamba.models.sashimi import Stage, make_block
from audiomamba.ops.mamba_stack import (PROJECTIONS, Skip, _block_by_block, mamba_stack_step_ref, narrow_projections,
                                       stack_weights, widen_projections)
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

kernels = pytest.importorskip("audiomamba_kernels.mamba_stack")

SHAPES = [(1, 16, 4, 2), (3, 32, 16, 3), (2, 24, 8, 1)]  # (batch, H, N, K): H = 24 pads the tiles
if torch.cuda.is_available():
    SHAPES += [(256, 64, 16, 8), (16, 128, 16, 8), (256, 128, 16, 4), (5, 256, 16, 8)]  # masks kept at 256 x 128


def random_stage(H, N, K, bf16_values=False):
    """K random Mamba blocks; with ``bf16_values`` their parameters hold bf16 values only, as they
    do when loaded from a bf16 checkpoint."""
    torch.manual_seed(torch.seed() % 2**31)
    stage = Stage(make_block("mamba", H, ModelConfig(mamba_state=N)) for _ in range(K))
    with torch.no_grad():
        for p in stage.parameters():  # away from the initialisation's ones and zeros
            p.add_(torch.randn_like(p) * 0.1)
    if bf16_values:
        round_to_bf16(stage)
    return stage.to(DEVICE).eval()


def kernel_weights(stage, precision):
    """The stacked weights the kernels get: fp32, or with every projection narrowed to bf16."""
    weights = stack_weights(stage)
    if precision == "fp32":
        return widen_projections(weights)
    narrowed = narrow_projections(weights)
    assert all(getattr(narrowed, name).dtype == torch.bfloat16 for name in PROJECTIONS)
    return narrowed


def states_alike(stage, batch):
    """Two equal copies of a random state (as from earlier samples)."""
    got_state, want_state = stage.initial_state(batch, DEVICE), stage.initial_state(batch, DEVICE)
    for got_s in (got_state.conv, got_state.ssm):
        got_s.normal_()
    want_state.conv.copy_(got_state.conv)
    want_state.ssm.copy_(got_state.ssm)
    return got_state, want_state


def assert_steps_match(stage, batch, precision, split=None):
    """Three steps of the kernel from a random state, against the reference on the fp32 weights."""
    weights = kernel_weights(stage, precision)
    reference_weights = kernel_weights(stage, "fp32")
    got_state, want_state = states_alike(stage, batch)
    H = stage[0].norm.weight.shape[0]
    for _ in range(3):
        u = torch.randn(batch, H, device=DEVICE)
        got = kernels.mamba_stack_step(u, weights, got_state.conv, got_state.ssm, split=split)
        want = mamba_stack_step_ref(u, reference_weights, want_state.conv, want_state.ssm)
        assert rel_err(got, want) <= 1e-5
    assert rel_err(got_state.conv, want_state.conv) <= 1e-5
    assert rel_err(got_state.ssm, want_state.ssm) <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # of the projections the kernel reads
@pytest.mark.parametrize("tile", ["default", "small"])  # small: the channels in several chunks
@pytest.mark.parametrize("batch, H, N, K", SHAPES)
def test_one_kernel_for_the_stage_matches_the_block_by_block_reference(batch, H, N, K, tile, precision, monkeypatch):
    if tile == "small":
        monkeypatch.setattr(kernels, "TILE", 16 * H)
    assert_steps_match(random_stage(H, N, K, bf16_values=precision == "bf16"), batch, precision)


def test_a_row_is_split_over_programs_only_on_the_gpu():
    """Split rows wait for each other, which the interpreter (one program after another) cannot run."""
    u = torch.randn(1, 128)
    assert kernels.programs_per_row(u, 256) == 1
    assert not kernels.fused_step_pays(torch.randn(1, 256), 512)  # at width 256 only split rows pay
    stage = random_stage(128, 16, 1)
    states = stage.to("cpu").initial_state(1, "cpu")
    with pytest.raises(ValueError, match="need CUDA"):
        kernels.mamba_stack_step(u, kernel_weights(stage, "fp32"), states.conv, states.ssm, split=2)


def test_every_planned_split_fits_a_row_of_its_width():
    """Each of ``ROW_SPLITS``' plans divides a batch row's inner channels (expand 2) in a power of
    two, within the programs that may run at once, in a power of two of warps; and the plans of a
    width are tried from the most programs down, so a batch gets the most that fit."""
    for width, plans in kernels.ROW_SPLITS.items():
        programs = [p for p, _ in plans]
        assert programs == sorted(programs, reverse=True)
        for split, warps in plans:
            assert kernels.split_fits(1, 2 * width, split) and warps in (1, 2, 4, 8, 16)


def test_only_planned_splits_load_while_they_wait():
    """The splits whose programs issue their next loads between arriving at a barrier and waiting
    there were measured as plans of ``ROW_SPLITS``; the tests below run both kinds."""
    planned = {(width, programs) for width, plans in kernels.ROW_SPLITS.items() for programs, _ in plans}
    assert kernels.LOADS_DURING_WAITS <= planned


@pytest.mark.skipif(DEVICE != "cuda", reason="a split row's programs wait for each other, so they must run at once")
@pytest.mark.parametrize("batch, H, N, K, split, precision", [  # split: programs a row
    (1, 64, 16, 8, 2, "bf16"), (1, 64, 16, 8, 16, "bf16"), (1, 128, 16, 8, 2, "bf16"), (1, 128, 16, 8, 8, "bf16"),
    (1, 128, 16, 8, 32, "bf16"), (1, 128, 16, 8, 16, "bf16"), (3, 256, 16, 4, 8, "bf16"), (3, 256, 16, 4, 16, "fp32"),
    (1, 256, 16, 4, 64, "fp32"), (2, 256, 16, 4, 32, "fp32"), (2, 24, 8, 2, 2, "bf16"), (2, 24, 8, 2, 16, "bf16"),
    (16, 128, 16, 4, 4, "bf16")])  # the last: sc09_mamba's middle stage at batch 16
def test_a_row_split_over_several_programs_matches_the_reference(batch, H, N, K, split, precision):
    """Each program takes a share of the inner channels (in as many warps as ``ROW_SPLITS`` gives
    at that width, one at width 128 in 32 programs); x_proj's and out_proj's sums are gathered
    over the row's programs twice a block. The counters they wait on are back at zero after the
    launches: counts left raised would let the next launch's programs run past its barriers."""
    assert_steps_match(random_stage(H, N, K, bf16_values=precision == "bf16"), batch, precision, split=split)
    torch.cuda.synchronize()
    assert kernels._ROW_COUNTERS[torch.device(DEVICE, torch.cuda.current_device())].eq(0).all()


def test_the_per_block_kernels_read_narrowed_projections_as_the_same_numbers():
    """Where the one kernel does not pay, the stage runs block by block with the per-block kernels,
    on the same (perhaps narrowed) stacked weights."""
    from audiomamba_kernels.causal_conv import in_proj_conv_step
    from audiomamba_kernels.residual_linear import residual_linear
    from audiomamba_kernels.selective_scan import projected_state_update

    batch, H, N, K = 3, 32, 16, 2
    stage = random_stage(H, N, K, bf16_values=True)
    got_state, want_state = states_alike(stage, batch)
    u = torch.randn(batch, H, device=DEVICE)
    got = _block_by_block(u, kernel_weights(stage, "bf16"), got_state.conv, got_state.ssm, in_proj_conv_step,
                          projected_state_update, residual_linear)
    want = mamba_stack_step_ref(u, kernel_weights(stage, "fp32"), want_state.conv, want_state.ssm)
    assert rel_err(got, want) <= 1e-5
    assert rel_err(got_state.ssm, want_state.ssm) <= 1e-5


@pytest.mark.parametrize("precision, split",
                         [("fp32", 1), ("bf16", 1)] + [("bf16", 4), ("bf16", 16)] * (DEVICE == "cuda"))
@pytest.mark.parametrize("batch, H, N, k_down, k_up", [(2, 16, 4, 2, 3), (3, 32, 16, 1, 1), (1, 128, 16, 2, 2)])
def test_a_level_through_its_skip_connection_matches_the_reference(batch, H, N, k_down, k_up, precision, split):
    """A U-Net level's down blocks, skip connection and up blocks in one launch: the down blocks'
    output lands in a strided slot of the pooling window, the upsampled row (strided too) is added,
    and the up blocks step on their own states."""
    stage = random_stage(H, N, k_down + k_up, bf16_values=precision == "bf16")
    weights, reference_weights = kernel_weights(stage, precision), kernel_weights(stage, "fp32")
    down, up = Stage(stage[:k_down]), Stage(stage[k_down:])
    (got_down, want_down), (got_up, want_up) = states_alike(down, batch), states_alike(up, batch)
    upsampled = torch.randn(batch, 4, H, device=DEVICE)
    got_window, want_window = torch.zeros(batch, 4, H, device=DEVICE), torch.zeros(batch, 4, H, device=DEVICE)
    for slot in range(3):
        u = torch.randn(batch, H, device=DEVICE)
        got = kernels.mamba_stack_step(u, weights, got_down.conv, got_down.ssm,
                                       Skip(got_window[:, slot], upsampled[:, slot + 1], got_up.conv, got_up.ssm),
                                       split=split)
        want = mamba_stack_step_ref(u, reference_weights, want_down.conv, want_down.ssm,
                                    Skip(want_window[:, slot], upsampled[:, slot + 1], want_up.conv, want_up.ssm))
        assert rel_err(got, want) <= 1e-5
    assert rel_err(got_window, want_window) <= 1e-5 and got_window[:, 3].eq(0).all()
    for got_s, want_s in ((got_down.conv, want_down.conv), (got_down.ssm, want_down.ssm), (got_up.conv, want_up.conv),
                          (got_up.ssm, want_up.ssm)):
        assert rel_err(got_s, want_s) <= 1e-5
