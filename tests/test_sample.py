import json

import pytest
import torch

from audiomamba.config import ModelConfig
from audiomamba.data.mulaw import SILENCE
from audiomamba.models.lm import WaveformLM
from audiomamba.sample import OutputWeights, generate, gumbel_, sample_next, sample_tail_ref, write_samples
from audiomamba.train import evaluate_nll


@pytest.fixture
def model():
    torch.manual_seed(1)
    cfg = ModelConfig(d_model=8, pool=[2, 2], outer=["s4d", "mlp"], center=["mamba"], s4d_state=4, mamba_state=4,
                      n_classes=2)
    return WaveformLM(cfg).eval()


def test_same_seed_gives_identical_clips_and_another_seed_does_not(model):
    a = generate(model, 3, 40, batch_size=2, seed=5, label=1)
    b = generate(model, 3, 40, batch_size=2, seed=5, label=1)
    c = generate(model, 3, 40, batch_size=2, seed=6, label=1)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.loglik_bits, b.loglik_bits)
    assert not torch.equal(a.tokens, c.tokens)


def test_results_are_ordinary_tensors_and_sampling_leaves_no_switch_or_mirror_behind(model):
    before = torch.backends.mkldnn.enabled
    gen = generate(model, 2, 20, seed=0, label=1)
    assert torch.backends.mkldnn.enabled == before
    for module in model.modules():  # parameters and submodules are mirrored into __dict__ only while sampling
        assert not (module._parameters.keys() | module._modules.keys()) & vars(module).keys()
    assert not gen.tokens.is_inference() and not gen.loglik_bits.is_inference()
    gen.tokens[0, 0] = 3  # usable anywhere, in place too


def test_generations_overlapping_in_threads_give_the_clips_of_sequential_ones_and_restore_everything(model):
    import threading

    onednn = torch.backends.mkldnn.enabled
    want = [generate(model, 2, 120, seed=s, label=1).tokens for s in range(4)]
    got = [None] * 4

    def run(s):
        got[s] = generate(model, 2, 120, seed=s, label=1).tokens

    threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert torch.backends.mkldnn.enabled == onednn  # the process-wide switch, restored by the last one out
    for module in model.modules():
        assert not (module._parameters.keys() | module._modules.keys()) & vars(module).keys()


def test_prefix_is_returned_unchanged_at_the_start(model):
    prefix = torch.randint(0, 256, (17,), dtype=torch.uint8)
    gen = generate(model, 2, 30, prefix=prefix, seed=0)
    assert torch.equal(gen.tokens[:, :17], prefix.expand(2, 17))


def test_loglik_equals_the_parallel_nll_of_the_same_tokens(model):
    from audiomamba.data.clipset import ClipSet

    gen = generate(model, 4, 48, batch_size=4, seed=3, label=0, temperature=0.8, top_p=0.9)
    clips = ClipSet(gen.tokens, torch.zeros(4, dtype=torch.long), [""] * 4, [], 8000, [])
    for i in range(4):
        one = ClipSet(clips.tokens[i:i + 1], clips.labels[i:i + 1], [""], [], 8000, [])
        nll = evaluate_nll(model, one, 1, "cpu", torch.autocast("cpu", enabled=False))
        assert abs(-gen.loglik_bits[i].item() / 48 - nll) < 1e-4


def test_gumbel_max_draws_follow_the_softmax_and_temperature_sharpens_it():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40000, 4)
    gen = torch.Generator().manual_seed(1)
    freq = torch.bincount(sample_next(logits, 1.0, 1.0, gumbel_(torch.empty(40000, 4), gen)), minlength=4) / 40000
    assert (freq - probs).abs().max() < 0.01
    cold = torch.bincount(sample_next(logits, 0.5, 1.0, gumbel_(torch.empty(40000, 4), gen)), minlength=4) / 40000
    want = probs**2 / (probs**2).sum()  # softmax(logits / 0.5)
    assert (cold - want).abs().max() < 0.01


def test_top_p_keeps_only_the_nucleus_and_zero_temperature_is_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, 0.7, gumbel_(torch.empty(1, 4), gen)).item() for _ in range(300)}
    assert draws == {0, 1}
    assert sample_next(logits, 0.0, 1.0, gumbel_(torch.empty(1, 4), gen)).item() == 0


def test_non_finite_logits_stop_only_that_clip(model, monkeypatch, capsys):
    step = model.backbone.step

    def poisoned(x, state):
        h, state = step(x, state)
        if state["t"] == 10:
            h[1] = float("nan")
        return h, state

    monkeypatch.setattr(model.backbone, "step", poisoned)
    gen = generate(model, 3, 20, batch_size=3)
    assert set(gen.problems) == {1} and "sample 9" in gen.problems[1]
    assert (gen.tokens[1, 9:] == SILENCE).all() and torch.isfinite(gen.loglik_bits).all()
    assert "clip 1" in capsys.readouterr().err


@pytest.mark.parametrize("guidance", [1.0, 2.0])
@pytest.mark.parametrize("logit", [float("nan"), float("inf"), float("-inf"), 50.0])
def test_one_non_finite_logit_of_256_stops_its_clip_and_a_large_finite_one_does_not(logit, guidance):
    rows, width = 2, 4
    model_rows = rows * (2 if guidance != 1.0 else 1)
    bias = torch.zeros(256)
    bias[7] = logit
    weights = OutputWeights(torch.ones(width), torch.zeros(width), 1e-5, torch.randn(256, width), bias,
                            torch.randn(256, width), torch.zeros(model_rows, width))
    alive, failed_at = torch.ones(rows, dtype=torch.bool), torch.full((rows,), -1)
    t, tokens = torch.full((rows,), 3), torch.zeros(rows, 10, dtype=torch.uint8)
    loglik = torch.zeros(rows, dtype=torch.float64)
    sample_tail_ref(torch.randn(model_rows, width), weights, gumbel_(torch.empty(rows, 256), torch.Generator()), alive,
                    failed_at, t, tokens, loglik, torch.empty(model_rows, width), None, 1.0, 1.0, guidance)
    finite = logit == 50.0
    assert alive.tolist() == [finite] * rows and failed_at.tolist() == [-1 if finite else 3] * rows
    assert torch.isfinite(loglik).all() and (tokens[:, 3] == SILENCE).all() != finite


def test_requests_that_cannot_fit_in_memory_are_refused_up_front(model):
    with pytest.raises(MemoryError, match="lower --n"):
        generate(model, 10**7, 10**6)


def test_written_clips_are_ordered_by_likelihood_with_their_metadata(model, tmp_path):
    gen = generate(model, 5, 64, seed=2, label=1)
    records = write_samples(gen, tmp_path, 8000, ["yes", "no"])
    meta = json.loads((tmp_path / "samples.json").read_text())
    logliks = [r["loglik_bits"] for r in meta["samples"]]
    assert logliks == sorted(logliks) and len(records) == 5
    assert meta["sample_rate"] == 8000 and meta["samples"][0]["label_name"] == "no"
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == [f"sample_{i:05d}.wav" for i in range(5)]


def test_each_clip_can_have_its_own_label_and_gets_what_it_would_get_alone(model):
    together = generate(model, 3, 24, batch_size=3, temperature=0, label=[0, 1, None])
    for i, label in enumerate([0, 1, None]):
        alone = generate(model, 1, 24, temperature=0, label=label)
        assert torch.equal(together.tokens[i], alone.tokens[0])
    assert together.labels == [0, 1, None]


def test_guided_sampling_follows_uncond_plus_w_times_cond_minus_uncond(model):
    """Greedy guided clips are the argmax of the guided logits of a parallel forward, at every
    sample; their log-likelihood stays the model's own conditional one."""
    from audiomamba.data.clipset import ClipSet

    w = 3.0
    gen = generate(model, 2, 32, batch_size=2, temperature=0, label=1, guidance=w)
    with torch.no_grad():
        cond = model(gen.tokens, torch.tensor([1, 1]))
        uncond = model(gen.tokens, torch.tensor([2, 2]))  # index n_classes = "no label"
    guided = uncond + w * (cond - uncond)
    assert torch.equal(guided.argmax(-1), gen.tokens.long())
    assert not torch.equal(cond.argmax(-1), gen.tokens.long())  # guidance changed the clips
    one = ClipSet(gen.tokens[:1], torch.ones(1, dtype=torch.long), [""], [], 8000, [])
    nll = evaluate_nll(model, one, 1, "cpu", torch.autocast("cpu", enabled=False))
    assert abs(-gen.loglik_bits[0].item() / 32 - nll) < 1e-4


def test_guidance_needs_a_label_for_every_clip(model):
    with pytest.raises(ValueError, match="guidance needs a label"):
        generate(model, 2, 8, label=[0, None], guidance=2.0)
