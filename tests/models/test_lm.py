"""The whole U-Net language model: causal, and exact in recurrent (generation) mode."""
import pytest
import torch

from audiomamba.config import ModelConfig, load_recipe
from audiomamba.models.lm import WaveformLM

CONFIGS = {
    "s4d": dict(outer=["s4d", "mlp"], center=["s4d", "mlp"]),
    "mamba": dict(outer=["mamba"], center=["mamba", "mamba"]),
    "mixed": dict(outer=["s4d", "mamba", "mlp"], center=["mamba", "s4d"]),
    "hybrid": dict(outer=["mamba2", "attention"], center=["attention", "mamba2", "mlp"], mamba2_state=4,
                   mamba2_headdim=4, attention_heads=2, attention_window=6),  # the window wraps at the outer stage
}


def tiny(kind: str, n_classes: int = 0, pool=(4, 4)) -> WaveformLM:
    cfg = ModelConfig(d_model=8, pool=list(pool), s4d_state=8, mamba_state=4, n_classes=n_classes, **CONFIGS[kind])
    return WaveformLM(cfg).eval()


def step_all(model, tokens, labels=None):
    state = model.initial_state(tokens.shape[0])
    prev = torch.full((tokens.shape[0],), 128)
    out = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state = model.step(prev, state, labels)
            out.append(logits)
            prev = tokens[:, t]
    return torch.stack(out, 1)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("length", [37, 50])  # not multiples of 16
@pytest.mark.parametrize("conditional", [False, True])
def test_token_by_token_stepping_matches_parallel_logits(kind, length, conditional):
    model = tiny(kind, n_classes=3 if conditional else 0)
    tokens = torch.randint(0, 256, (2, length))
    labels = torch.tensor([1, 3]) if conditional else None  # 3 = "no label"
    with torch.no_grad():
        want = model(tokens, labels)
    got = step_all(model, tokens, labels)
    assert ((got - want).norm() / want.norm()).item() < 1e-4


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_logits_at_t_depend_only_on_tokens_before_t(kind):
    model = tiny(kind)
    tokens = torch.randint(0, 256, (1, 64))
    for t in (0, 5, 16, 33, 63):
        changed = tokens.clone()
        changed[:, t:] = torch.randint(0, 256, (1, 64 - t))
        with torch.no_grad():
            a, b = model(tokens), model(changed)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=1e-5, atol=1e-5)  # logits t predict token t
        if t < 63:
            assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-4


def test_uneven_pooling_factors_also_step_exactly():
    model = tiny("mixed", pool=(2, 3))
    tokens = torch.randint(0, 256, (2, 31))
    with torch.no_grad():
        want = model(tokens)
    assert ((step_all(model, tokens) - want).norm() / want.norm()).item() < 1e-4


def test_labels_change_the_prediction_and_are_range_checked():
    model = tiny("s4d", n_classes=2)
    tokens = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        assert (model(tokens, torch.tensor([0])) - model(tokens, torch.tensor([1]))).abs().max() > 1e-4
    with pytest.raises(ValueError, match="labels"):
        model(tokens, torch.tensor([5]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny("s4d")(tokens, torch.tensor([0]))


@pytest.mark.parametrize("recipe, paper_millions", [("sc09_sashimi", 5.8), ("sc09_mamba", 6.1)])
def test_sc09_recipes_land_within_10_percent_of_the_papers_parameter_counts(recipe, paper_millions):
    from tests.conftest import REPO

    model = WaveformLM(load_recipe(REPO / "recipes" / f"{recipe}.yaml").model)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - paper_millions) / paper_millions < 0.10
