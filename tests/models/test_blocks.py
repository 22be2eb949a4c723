"""Every block: causal in parallel mode, and its one-step recurrence reproduces the parallel forward."""
import pytest
import torch

from audiomamba.config import ModelConfig
from audiomamba.models.sashimi import make_block

CFG = ModelConfig(s4d_state=8, mamba_state=4, mamba2_state=8, mamba2_headdim=6, attention_heads=2,
                  attention_window=10)  # a window shorter than the test sequences, which then wrap around it
KINDS = ["s4d", "mamba", "mamba2", "attention", "mlp"]


@pytest.mark.parametrize("kind", KINDS)
def test_changing_inputs_from_t_on_leaves_earlier_outputs_unchanged(kind):
    block = make_block(kind, 12, CFG).eval()
    x = torch.randn(2, 40, 12)
    t = 23
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    y, y2 = block(x), block(x2)
    torch.testing.assert_close(y[:, :t], y2[:, :t], rtol=1e-5, atol=1e-6)
    assert (y[:, t] - y2[:, t]).abs().max() > 1e-3  # the perturbation is seen from t on


@pytest.mark.parametrize("kind", KINDS)
def test_stepping_equals_the_parallel_forward(kind):
    block = make_block(kind, 12, CFG).eval()
    x = torch.randn(3, 29, 12)
    with torch.no_grad():
        want = block(x)
        state = block.initial_state(3)
        got = []
        for t in range(29):
            y, state = block.step(x[:, t], state)
            got.append(y)
    got = torch.stack(got, 1)
    assert ((got - want).norm() / want.norm()).item() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_given_the_norm_is_the_whole_residual_step(kind):
    block = make_block(kind, 12, CFG).eval()  # the residual wrapper's norm and add, fused in the block
    x = torch.randn(3, 12)
    with torch.no_grad():
        fused = block.block.step(x, block.initial_state(3), norm=block.norm)[0]
        plain = x + block.block.step(block.norm(x), block.initial_state(3))[0]
    torch.testing.assert_close(fused, plain)


def test_s4d_keeps_its_eigenvalues_in_the_left_half_plane_whatever_the_parameters():
    block = make_block("s4d", 4, CFG).block
    with torch.no_grad():
        block.log_neg_A_real.normal_(0, 5)  # any real value of the parameter
    dA, _, _ = block._discretize()
    assert (dA.abs() < 1).all()  # |exp(dt A)| < 1: the recurrence cannot blow up


@pytest.mark.parametrize("length", [1, 2, 7, 64, 1000, 1001])
def test_s4d_kernel_is_its_impulse_response_summed_in_float64(length):
    """K[l] = 2 Re(sum_n C_n dB_n dA_n^l), which the block computes in blocks of about sqrt(length)
    samples (dA^l = dA^(c J) dA^j), within 1e-5 of the direct sum in float64, for lengths that
    are 1, prime, square and neither, with parameters moved off their initialisation."""
    block = make_block("s4d", 6, ModelConfig(s4d_state=16)).block
    with torch.no_grad():
        for p in (block.log_neg_A_real, block.A_imag, block.log_dt):
            p.add_(torch.randn_like(p) * 0.5)
    A = torch.complex(-torch.exp(block.log_neg_A_real.double()), block.A_imag.double())
    dtA = torch.exp(block.log_dt.double())[:, None] * A
    CdB = torch.view_as_complex(block.C.double().contiguous()) * (torch.exp(dtA) - 1) / A
    powers = torch.exp(dtA[:, :, None] * torch.arange(length, dtype=torch.float64))  # dA^l
    want = 2 * (CdB[:, :, None] * powers).sum(1).real
    got = block.kernel(length)
    assert got.shape == (6, length) and got.dtype == torch.float32
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-5


def test_mamba_initialises_delta_within_its_range():
    block = make_block("mamba", 32, CFG).block
    delta = torch.nn.functional.softplus(block.dt_proj.bias)
    assert delta.min() >= 1e-3 * 0.999 and delta.max() <= 1e-1 * 1.001
    torch.testing.assert_close(-torch.exp(block.A_log[0]), -torch.arange(1.0, 5.0))  # S4D-Real


@pytest.mark.parametrize("kind, param", [("s4d", "log_dt"), ("mamba", "A_log"), ("mamba2", "A_log")])
def test_step_caches_follow_parameter_updates(kind, param):
    block = make_block(kind, 6, CFG).eval()
    x = torch.randn(2, 6)

    def two_steps():  # the second step sees the decay of the first one's state
        state = block.initial_state(2)
        block.step(x, state)
        return block.step(x, state)[0]

    with torch.no_grad():
        before = two_steps()
        getattr(block.block, param).add_(2.0)  # an in-place update, as an optimizer makes
        after = two_steps()
        want = two_steps()
    with torch.enable_grad():
        fresh = two_steps()  # grad mode never uses the cache
    torch.testing.assert_close(after, fresh)
    torch.testing.assert_close(after, want)
    assert (after - before).abs().max() > 1e-6


def test_a_stage_of_mamba_blocks_steps_as_its_blocks_do_one_by_one():
    """The stacked weights and states that the fused stage step (one kernel on CUDA) works on
    hold the same computation as the blocks' own steps."""
    from audiomamba.models.sashimi import Stage, StackedStates
    from audiomamba.ops.mamba_stack import mamba_stack_step_ref, stack_weights

    stage = Stage(make_block("mamba", 12, CFG) for _ in range(3)).eval()
    by_block, stacked = stage.initial_state(2), stage.initial_state(2)
    assert isinstance(stacked, StackedStates)
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(2, 12)
            want = stage.step(x, by_block)
            got = mamba_stack_step_ref(x, stack_weights(stage), stacked.conv, stacked.ssm)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stacked.ssm, by_block.ssm)
    assert not isinstance(Stage([make_block("mamba", 12, CFG), make_block("mlp", 12, CFG)]).initial_state(2),
                          StackedStates)


@pytest.mark.parametrize("kind", ["s4d", "mamba", "mamba2"])
def test_a_block_made_under_inference_mode_steps_and_sees_its_parameters_change(kind):
    """Such parameters have no version counter for the step cache to watch: the step must still
    run, and an in-place change must still show in the next step."""
    x = torch.randn(2, 6)
    with torch.inference_mode():
        block = make_block(kind, 6, CFG).eval()
        before = block.step(x, block.initial_state(2))[0]
        for p in block.parameters():
            p.mul_(1.5)
        after = block.step(x, block.initial_state(2))[0]
        fresh = make_block(kind, 6, CFG).eval()
        fresh.load_state_dict(block.state_dict())
        want = fresh.step(x, fresh.initial_state(2))[0]
    torch.testing.assert_close(after, want)
    assert (after - before).abs().max() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_sees_each_parameter_change_in_place_between_steps(kind):
    """What a step derives from parameters once per generation (``cached_for_steps``) follows an
    in-place change of any one of them, its submodules' included, as an optimizer step makes."""
    x = torch.randn(2, 12)
    with torch.no_grad():
        block = make_block(kind, 12, CFG).eval()
        for name, p in block.named_parameters():
            block.step(x, block.initial_state(2))
            p.mul_(1.5)
            after = block.step(x, block.initial_state(2))[0]
            fresh = make_block(kind, 12, CFG).eval()
            fresh.load_state_dict(block.state_dict())
            torch.testing.assert_close(after, fresh.step(x, fresh.initial_state(2))[0], msg=name)


def test_attention_sees_exactly_its_window():
    """Output t changes when input t - window + 1 does, and not when t - window does."""
    block = make_block("attention", 12, CFG).eval()  # window 10
    x = torch.randn(2, 40, 12)
    t, window = 30, CFG.attention_window
    for source, seen in ((t - window + 1, True), (t - window, False)):
        x2 = x.clone()
        x2[:, source] += torch.randn(2, 12)
        change = (block(x2)[:, t] - block(x)[:, t]).abs().max().item()
        assert (change > 1e-4) == seen, (source, change)


@pytest.mark.parametrize("kind, setting", [("mamba2", "mamba2_headdim=5"), ("attention", "attention_heads=5")])
def test_a_width_its_heads_do_not_divide_is_refused_naming_the_setting(kind, setting):
    name, value = setting.split("=")
    with pytest.raises(ValueError, match=f"model.{name}={value}"):
        make_block(kind, 12, ModelConfig(**{name: int(value)}))


def test_mamba2_initialises_dt_within_its_range_and_a_negative_decay_per_head():
    block = make_block("mamba2", 32, ModelConfig(mamba2_headdim=16)).block
    dt = torch.nn.functional.softplus(block.dt_bias)
    assert block.heads == 4 and dt.shape == (4,)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert (-torch.exp(block.A_log) <= -1).all() and (-torch.exp(block.A_log) >= -16).all()
