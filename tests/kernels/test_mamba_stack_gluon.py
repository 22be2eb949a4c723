"""The outer and middle stages' Gluon kernel (``audiomamba_kernels.mamba_stack_gluon``).

Gluon kernels do not run under the Triton interpreter. So on any machine the kernel is compiled
for sm_90, for both stages' plans. On a Hopper GPU its steps are checked against the block-by-block
reference: output and both states after three steps from a random state, relative L2 error
<= 1e-5, as for the plain-Triton kernel. The checks run with and without the level's skip
connection, at batches where ``mamba_stack_step`` picks it, and for the middle stage with each
row in a cluster of CTAs.
"""
import os
import subprocess
import sys

import pytest
import torch

from audiomamba.ops.mamba_stack import Skip, mamba_stack_step_ref
from tests.conftest import REPO
from tests.kernels.test_mamba_stack_kernel import kernel_weights, random_stage, states_alike
from tests.kernels.test_selective_scan_kernels import DEVICE, rel_err

gluon = pytest.importorskip("audiomamba_kernels.mamba_stack_gluon")
kernels = pytest.importorskip("audiomamba_kernels.mamba_stack")
gluon_dispatch = pytest.importorskip("audiomamba_kernels.gluon_dispatch")

SHAPE = gluon.PLANS[64]["shape"]


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


on_hopper = pytest.mark.skipif(not _hopper(), reason="the Gluon kernel runs on Hopper GPUs only")


@pytest.mark.parametrize("width, buffers", [(64, 2), (64, 1), (128, 2), (128, 1)])
def test_it_compiles_for_hopper_on_any_machine_with_the_shared_memory_its_rule_assumes(width, buffers):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # it compiles, never runs
    script = (f"from audiomamba_kernels import mamba_stack_gluon as g; c = g.compile_for_hopper({buffers}, {width}); "
              "ptx = c.asm['ptx']; print(c.metadata.shared, 'cp.async' in ptx, 'griddepcontrol.wait' in ptx, "
              "'barrier.cluster' in ptx)")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    shared, copies, waits_for_the_kernel_before, cluster_barriers = out.stdout.split()
    assert int(shared) == gluon.SHARED_BYTES[width, buffers] and copies == waits_for_the_kernel_before == "True"
    assert cluster_barriers == str(gluon.PLANS[width]["ctas"] > 1)  # a cluster's CTAs wait for each other


def test_it_takes_up_to_a_row_an_sm_with_two_buffers_and_from_one_and_a_half_to_two_with_one():
    sms = 132
    assert [gluon.buffers_for(batch, sms) for batch in (1, 64, 132)] == [2, 2, 2]
    assert [gluon.buffers_for(batch, sms) for batch in (133, 160, 198)] == [None, None, None]
    assert [gluon.buffers_for(batch, sms) for batch in (199, 256, 264)] == [1, 1, 1]
    assert [gluon.buffers_for(batch, sms) for batch in (265, 1024)] == [None, None]


def test_the_middle_stage_takes_up_to_two_ctas_an_sm_with_two_buffers_and_up_to_three_with_one():
    sms, ctas = 132, gluon.PLANS[128]["ctas"]
    assert ctas == 8
    assert [gluon.buffers_for(batch, sms, 128) for batch in (1, 16, 33)] == [2, 2, 2]
    assert [gluon.buffers_for(batch, sms, 128) for batch in (34, 49)] == [1, 1]
    assert [gluon.buffers_for(batch, sms, 128) for batch in (50, 256)] == [None, None]


def test_the_plain_kernel_keeps_every_step_off_a_gpu_and_where_the_shape_differs():
    stage = random_stage(SHAPE["H"], SHAPE["N"], 2, bf16_values=True)
    weights = kernel_weights(stage, "bf16")
    state = stage.initial_state(1, DEVICE)
    u = torch.randn(1, SHAPE["H"], device=DEVICE)
    assert kernels.gluon_fits(u, weights, state.conv, state.ssm) == (DEVICE == "cuda" and _hopper())
    assert not kernels.gluon_fits(u, kernel_weights(stage, "fp32"), state.conv, state.ssm)  # fp32 projections
    if DEVICE == "cuda":  # between one and one and a half rows an SM
        between = torch.cuda.get_device_properties(0).multi_processor_count + 1
        many = stage.initial_state(between, DEVICE)
        assert not kernels.gluon_fits(torch.randn(between, SHAPE["H"], device=DEVICE), weights, many.conv, many.ssm)
    other = random_stage(32, SHAPE["N"], 2, bf16_values=True)
    narrow_state = other.initial_state(1, DEVICE)
    assert not kernels.gluon_fits(torch.randn(1, 32, device=DEVICE), kernel_weights(other, "bf16"), narrow_state.conv,
                                  narrow_state.ssm)


def test_without_gluon_the_triton_kernel_takes_every_step_after_a_one_line_notice(monkeypatch, capsys):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "audiomamba_kernels.mamba_stack_gluon", None)  # as if it cannot import
        gluon_dispatch.kernel_module.cache_clear()
        assert kernels.gluon_kernel() is None
        assert "Gluon stage kernel is unavailable" in capsys.readouterr().err
    gluon_dispatch.kernel_module.cache_clear()
    assert kernels.gluon_kernel() is gluon


@on_hopper
@pytest.mark.parametrize("width, batch, buffers", [(64, 1, 2), (64, 3, 2), (64, 64, 2), (64, 128, 2), (64, 3, 1),
                                                   (64, 200, 1), (128, 1, 2), (128, 3, 2), (128, 16, 2),
                                                   (128, 40, 1)])
def test_its_steps_match_the_block_by_block_reference(width, batch, buffers):
    """With each block's weights copied one block ahead (2 buffers) or as it starts (1)."""
    stage = random_stage(width, SHAPE["N"], 4, bf16_values=True)
    weights, reference_weights = kernel_weights(stage, "bf16"), kernel_weights(stage, "fp32")
    got_state, want_state = states_alike(stage, batch)
    for _ in range(3):
        u = torch.randn(batch, width, device=DEVICE)
        got = gluon.stage_step(u, weights, got_state.conv, got_state.ssm, buffers=buffers)
        want = mamba_stack_step_ref(u, reference_weights, want_state.conv, want_state.ssm)
        assert rel_err(got, want) <= 1e-5
    assert rel_err(got_state.conv, want_state.conv) <= 1e-5
    assert rel_err(got_state.ssm, want_state.ssm) <= 1e-5


@on_hopper
@pytest.mark.parametrize("width, batch, k_down, k_up", [(64, 1, 2, 2), (64, 5, 3, 1), (64, 200, 2, 2), (128, 1, 2, 2),
                                                        (128, 5, 3, 1)])  # 200: one buffer
def test_a_level_through_its_skip_connection_takes_it_and_matches_the_reference(width, batch, k_down, k_up,
                                                                                monkeypatch):
    stage = random_stage(width, SHAPE["N"], k_down + k_up, bf16_values=True)
    weights, reference_weights = kernel_weights(stage, "bf16"), kernel_weights(stage, "fp32")
    got_state, want_state = states_alike(stage, batch)
    calls = []
    monkeypatch.setattr(gluon, "stage_step", lambda *args, step=gluon.stage_step: calls.append(1) or step(*args))
    # The skip's rows are strided, as the U-Net passes them: a column of the pooling window.
    got_window, want_window = (torch.zeros(batch, 4, width, device=DEVICE) for _ in range(2))
    for _ in range(3):
        u, add = torch.randn(batch, width, device=DEVICE), torch.randn(batch, width, device=DEVICE)
        got = kernels.mamba_stack_step(u, weights, got_state.conv[:k_down], got_state.ssm[:k_down],
                                       Skip(got_window[:, 3], add, got_state.conv[k_down:], got_state.ssm[k_down:]))
        want = mamba_stack_step_ref(u, reference_weights, want_state.conv[:k_down], want_state.ssm[:k_down],
                                    Skip(want_window[:, 3], add, want_state.conv[k_down:], want_state.ssm[k_down:]))
        assert rel_err(got, want) <= 1e-5 and rel_err(got_window, want_window) <= 1e-5
    assert len(calls) == 3
    assert rel_err(got_state.conv, want_state.conv) <= 1e-5
    assert rel_err(got_state.ssm, want_state.ssm) <= 1e-5
