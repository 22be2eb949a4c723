"""The shipped generator and classifier: they load strictly, make finite audio, and are the defaults."""
import json
import shutil

import pytest
import torch

from audiomamba.checkpoint import load_model
from audiomamba.cli import build_parser
from audiomamba.data.mulaw import mulaw_decode
from audiomamba.eval.classifier import load_classifier, predict
from audiomamba.pretrained import CLASSIFIER_FSDD, CLASSIFIER_WORDS, FSDD_8K, WORDS_16K, classifier_for
from audiomamba.sample import generate


SHIPPED = [(WORDS_16K, CLASSIFIER_WORDS, "yes"), (FSDD_8K, CLASSIFIER_FSDD, "7")]


def test_shipped_files_are_each_under_16_mb():
    for generator, classifier_dir, _ in SHIPPED:
        for path in [*generator.iterdir(), *classifier_dir.iterdir()]:
            assert path.stat().st_size < 16 * 2**20, path


@pytest.mark.parametrize("generator", [generator for generator, _, _ in SHIPPED])
def test_shipped_generator_loads_strictly_and_a_mismatch_names_both_files(generator, tmp_path):
    model, recipe, config = load_model(generator)
    assert recipe.model.n_classes == 10 and len(config["label_names"]) == 10
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 on disk, fp32 in memory
    broken = tmp_path / "broken"
    shutil.copytree(generator, broken)
    config["recipe"]["model"]["d_model"] = 32
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"(?s)model\.safetensors.*config\.json"):
        load_model(broken)


@pytest.mark.parametrize("generator, classifier_dir, word", SHIPPED)
def test_a_short_clip_from_a_shipped_model_is_finite_and_its_shipped_classifier_labels_it(generator, classifier_dir, word):
    model, recipe, config = load_model(generator)
    classifier, meta = load_classifier(classifier_dir)
    assert meta["config"]["labels"] == config["label_names"]
    assert meta["config"]["sample_rate"] == recipe.data.sample_rate and classifier_for(generator) == classifier_dir
    result = generate(model, 2, 800, label=config["label_names"].index(word), guidance=2.0, seed=0)  # 800 samples
    audio = mulaw_decode(result.tokens)
    assert audio.shape == (2, 800) and torch.isfinite(audio).all() and not result.problems
    assert torch.isfinite(result.loglik_bits).all()
    padded = torch.nn.functional.pad(audio.float(), (0, meta["config"]["clip_samples"] - 800))
    probs, features = predict(classifier, padded)
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(-1), torch.ones(2))


@pytest.mark.parametrize("argv", [["sample"], ["nll"], ["demo"]])
def test_sample_nll_and_demo_default_to_the_shipped_model(argv):
    args = build_parser().parse_args(argv)
    assert args.checkpoint == str(WORDS_16K)


def test_eval_defaults_to_the_shipped_classifier():
    args = build_parser().parse_args(["eval", "--samples", "somewhere"])
    assert args.classifier == str(CLASSIFIER_WORDS) and args.data is None


def test_demo_on_the_shipped_digits_model_uses_the_shipped_digits_classifier(monkeypatch):
    """`audiomamba demo --checkpoint audiomamba/pretrained/fsdd_8k`, as the README shows, up to launch."""
    import audiomamba.webdemo as webdemo
    from audiomamba.cli import main
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    built = {}

    class Page:
        def launch(self, **kwargs):
            built["launch"] = kwargs

    def build_demo(models):
        built["models"] = models
        return Page()

    monkeypatch.setattr(webdemo, "build_demo", build_demo)
    main(["demo", "--checkpoint", "audiomamba/pretrained/fsdd_8k", "--device", "cpu"])
    models = built["models"]
    assert models.sample_rate == 8000 and models.label_names == [str(d) for d in range(10)]
    assert models.classifier is not None and "classifier_fsdd" in models.about
    assert built["launch"]["server_port"] == 7860
