import pytest

from audiomamba.config import load_recipe


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  d_model: 32\n  outer: [mamba]\ntrain:\n  lr: 2e-3\n")
    recipe = load_recipe(path, ["train.lr=1e-4", "model.pool=[2, 2]", "--data.root=/x", "train.bf16=false"])
    assert recipe.model.d_model == 32 and recipe.model.outer == ["mamba"]  # from YAML
    assert recipe.train.lr == 1e-4 and isinstance(recipe.train.lr, float)  # override beats YAML
    assert recipe.model.pool == [2, 2] and recipe.data.root == "/x" and recipe.train.bf16 is False
    assert recipe.train.batch_size == 16  # default
    assert load_recipe(path).train.lr == 2e-3  # "2e-3" in YAML is a float, not a string


def test_mistakes_are_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  d_modle: 32\n")
    with pytest.raises(ValueError, match="d_modle"):
        load_recipe(path)
    with pytest.raises(ValueError, match="transformer"):
        load_recipe(None, ["model.center=[transformer]"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_recipe(None, ["lr=3"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_shipped_recipe_loads_and_builds_its_model():
    from tests.conftest import REPO

    from audiomamba.models.lm import WaveformLM

    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert len(recipes) >= 7
    for path in recipes:
        WaveformLM(load_recipe(path).model)  # and builds: every block fits its stage's width
