"""The shipped generator and classifier: they load strictly, make finite audio, and are the defaults."""
import json
import shutil

import pytest
import torch

from audiomamba.checkpoint import load_model
from audiomamba.cli import build_parser
from audiomamba.data.mulaw import mulaw_decode
from audiomamba.eval.classifier import load_classifier, predict
from audiomamba.pretrained import CLASSIFIER_WORDS, WORDS_16K
from audiomamba.sample import generate


def test_shipped_files_are_each_under_16_mb():
    for path in [*WORDS_16K.iterdir(), *CLASSIFIER_WORDS.iterdir()]:
        assert path.stat().st_size < 16 * 2**20, path


def test_shipped_generator_loads_strictly_and_a_mismatch_names_both_files(tmp_path):
    model, recipe, config = load_model(WORDS_16K)
    assert recipe.model.n_classes == 10 and len(config["label_names"]) == 10
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 on disk, fp32 in memory
    broken = tmp_path / "broken"
    shutil.copytree(WORDS_16K, broken)
    config["recipe"]["model"]["d_model"] = 32
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"(?s)model\.safetensors.*config\.json"):
        load_model(broken)


def test_a_short_clip_from_the_shipped_model_is_finite_and_the_shipped_classifier_labels_it():
    model, recipe, config = load_model(WORDS_16K)
    classifier, meta = load_classifier(CLASSIFIER_WORDS)
    assert meta["config"]["labels"] == config["label_names"]
    result = generate(model, 2, 800, label=config["label_names"].index("yes"), seed=0)  # 50 ms of "yes"
    audio = mulaw_decode(result.tokens)
    assert audio.shape == (2, 800) and torch.isfinite(audio).all() and not result.problems
    assert torch.isfinite(result.loglik_bits).all()
    padded = torch.nn.functional.pad(audio.float(), (0, 16000 - 800))
    probs, features = predict(classifier, padded)
    assert probs.shape == (2, 10) and torch.allclose(probs.sum(-1), torch.ones(2))


@pytest.mark.parametrize("argv", [["sample"], ["nll"], ["demo"]])
def test_sample_nll_and_demo_default_to_the_shipped_model(argv):
    args = build_parser().parse_args(argv)
    assert args.checkpoint == str(WORDS_16K)


def test_eval_defaults_to_the_shipped_classifier():
    args = build_parser().parse_args(["eval", "--samples", "somewhere"])
    assert args.classifier == str(CLASSIFIER_WORDS) and args.data is None
