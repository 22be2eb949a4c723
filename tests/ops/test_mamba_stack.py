"""Stacked Mamba weights: which projections are kept in bf16, and that the reference step reads
them as the same numbers."""
import torch

from audiomamba.config import ModelConfig
from audiomamba.models.sashimi import Stage, make_block
from audiomamba.ops.mamba_stack import PROJECTIONS, mamba_stack_step_ref, narrow_projections, stack_weights


def stage_with_bf16_values(exact: set[str]) -> Stage:
    """Three random Mamba blocks whose projections named in ``exact`` hold bf16 values only."""
    stage = Stage(make_block("mamba", 16, ModelConfig(mamba_state=4)) for _ in range(3)).eval()
    with torch.no_grad():
        for block in stage:
            for name in PROJECTIONS:
                weight = getattr(block.block, name).weight
                weight.normal_()
                if name in exact:
                    weight.copy_(weight.to(torch.bfloat16).float())
    return stage


def test_a_projection_is_narrowed_to_bf16_only_where_bf16_holds_every_value():
    stage = stage_with_bf16_values({"in_proj", "out_proj"})
    weights = stack_weights(stage)  # on the CPU the stack stays fp32
    assert all(getattr(weights, name).dtype == torch.float32 for name in PROJECTIONS)
    narrowed = narrow_projections(weights)
    assert narrowed.in_proj.dtype == narrowed.out_proj.dtype == torch.bfloat16
    assert narrowed.x_proj.dtype == narrowed.dt_proj.dtype == torch.float32
    assert torch.equal(narrowed.in_proj.float(), weights.in_proj)


def test_the_reference_step_gives_the_same_numbers_with_narrowed_weights():
    stage = stage_with_bf16_values(set(PROJECTIONS))
    weights = stack_weights(stage)
    narrowed = narrow_projections(weights)
    assert all(getattr(narrowed, name).dtype == torch.bfloat16 for name in PROJECTIONS)
    states = [stage.initial_state(2) for _ in range(2)]
    for _ in range(3):
        u = torch.randn(2, 16)
        out = [mamba_stack_step_ref(u, w, s.conv, s.ssm) for w, s in zip((weights, narrowed), states)]
        assert torch.equal(out[0], out[1])
    assert torch.equal(states[0].ssm, states[1].ssm) and torch.equal(states[0].conv, states[1].conv)
