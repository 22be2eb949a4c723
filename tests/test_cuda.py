"""GPU-only checks (skipped without CUDA; run on the device machine): the same model gives the
same results on CUDA, and CUDA-graph sampling reproduces eager sampling exactly; CUDA-graph
training steps follow eager ones."""
from collections import Counter

import pytest
import torch

from audiomamba.checkpoint import round_to_bf16
from audiomamba.config import ModelConfig
from audiomamba.models.lm import WaveformLM
from audiomamba.models.sashimi import Stage
from audiomamba.ops import triton_kernels
from audiomamba.sample import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


MIXED = dict(outer=["s4d", "mamba", "mlp"], center=["mamba", "s4d"])
ALL_MAMBA = dict(outer=["mamba"] * 3, center=["mamba"] * 2)  # every stage's step is one fused kernel
HYBRID = dict(outer=["mamba2", "attention", "mlp"], center=["attention", "mamba2"], mamba2_headdim=8,
              attention_window=8)  # the window wraps at the outer stage


def model(n_classes=2, blocks=MIXED, bf16_values=False, d_model=16):
    """A random model; with ``bf16_values`` every parameter holds a bf16 value, as when loaded from
    a bf16 checkpoint (the stages then read their Mamba projections in bf16)."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d_model, pool=[4, 4], s4d_state=8, mamba_state=8, n_classes=n_classes, **blocks)
    m = WaveformLM(cfg).cuda().eval()
    return round_to_bf16(m) if bf16_values else m


@pytest.mark.parametrize("blocks, fused, bf16_values",
                         [(MIXED, True, False), (ALL_MAMBA, True, False), (ALL_MAMBA, False, False),
                          (ALL_MAMBA, True, True), (ALL_MAMBA, False, True), (HYBRID, True, False)],
                         ids=["mixed", "all_mamba", "all_mamba_block_by_block", "all_mamba_bf16_values",
                              "all_mamba_block_by_block_bf16_values", "hybrid"])
def test_cuda_stepping_matches_the_parallel_forward_in_fp32(blocks, fused, bf16_values, monkeypatch):
    if not fused:  # where the stage kernel does not pay, the stages run their per-block kernels
        monkeypatch.setattr(triton_kernels.load("mamba_stack"), "MAX_WIDTH", 0)
    m = model(blocks=blocks, bf16_values=bf16_values)
    tokens = torch.randint(0, 256, (3, 53), device="cuda")
    labels = torch.tensor([0, 1, 2], device="cuda")
    with torch.no_grad():
        want = m(tokens, labels)
        state, prev, got = m.initial_state(3, "cuda"), torch.full((3,), 128, device="cuda"), []
        for t in range(53):
            logits, state = m.step(prev, state, labels)
            got.append(logits)
            prev = tokens[:, t]
    assert ((torch.stack(got, 1) - want).norm() / want.norm()).item() < 1e-4
    if bf16_values:  # the stages did read their projections in bf16
        stacks = [module._step_cache[1] for module in m.modules() if isinstance(module, Stage) and module.all_mamba]
        assert stacks and all(w.in_proj.dtype == w.out_proj.dtype == torch.bfloat16 for w in stacks)


@pytest.mark.parametrize("blocks", [MIXED, ALL_MAMBA, HYBRID], ids=["mixed", "all_mamba", "hybrid"])
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_cuda_graph_sampling_reproduces_eager_sampling(guidance, blocks):
    m = model(blocks=blocks)
    prefix = torch.randint(0, 256, (9,), dtype=torch.uint8)
    graphed = generate(m, 5, 70, batch_size=5, seed=3, label=1, guidance=guidance, prefix=prefix, cuda_graphs=True)
    eager = generate(m, 5, 70, batch_size=5, seed=3, label=1, guidance=guidance, prefix=prefix, cuda_graphs=False)
    assert torch.equal(graphed.tokens, eager.tokens)
    torch.testing.assert_close(graphed.loglik_bits, eager.loglik_bits, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("d_model", [32, 64])  # centers of width 128 and 256
def test_cuda_graph_sampling_through_split_rows_matches_eager_sampling_without_them(d_model, monkeypatch):
    """At batch 2 the center's rows are split over several programs (``programs_per_row``), which
    wait for each other on counters that every launch sets back to zero. Replayed from CUDA
    graphs, they sample what the center samples eagerly without them (in one program a row at
    width 128, in the per-block kernels at width 256)."""
    kernels = triton_kernels.load("mamba_stack")
    m = model(blocks=ALL_MAMBA, d_model=d_model)
    center = 4 * d_model
    assert kernels.programs_per_row(torch.empty(2, center, device="cuda"), 2 * center) > 1
    split = generate(m, 2, 70, batch_size=2, seed=3, label=1, cuda_graphs=True)
    monkeypatch.setattr(kernels, "ROW_SPLITS", {})
    whole = generate(m, 2, 70, batch_size=2, seed=3, label=1, cuda_graphs=False)
    assert torch.equal(split.tokens, whole.tokens)
    torch.testing.assert_close(split.loglik_bits, whole.loglik_bits, rtol=1e-5, atol=1e-3)


def test_stacked_stage_weights_follow_an_in_place_change_between_generations():
    """A stage's stacked Mamba weights, and a level's (its down and up stages' together), are cached
    once per generation; an in-place change of either stage's parameters must show in the next."""
    m = model(blocks=ALL_MAMBA)
    generate(m, 2, 40, batch_size=2, seed=1, label=1)  # fills the caches
    with torch.no_grad():
        m.backbone.down[0][0].block.out_proj.weight.mul_(1.5)  # the outer level's down stage
        m.backbone.up[1][1].block.in_proj.weight.mul_(0.5)  # the middle level's up stage
    got = generate(m, 2, 40, batch_size=2, seed=1, label=1)
    fresh = model(blocks=ALL_MAMBA)
    fresh.load_state_dict(m.state_dict())
    want = generate(fresh, 2, 40, batch_size=2, seed=1, label=1)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.loglik_bits, want.loglik_bits, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("blocks", [MIXED, HYBRID], ids=["mixed", "hybrid"])
def test_bf16_training_forward_stays_close_to_fp32(blocks):
    m = model(blocks=blocks).train()
    tokens = torch.randint(0, 256, (2, 64), device="cuda")
    want = m(tokens)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = m(tokens)
    assert ((got.float() - want).norm() / want.norm()).item() < 3e-2


@pytest.mark.parametrize("blocks", [MIXED, HYBRID], ids=["mixed", "hybrid"])
def test_a_compiled_model_is_one_graph_with_its_scans_inside(blocks):
    """compile_model imports the kernels of a training step (the scan's, the conv's) before
    torch.compile traces the model: an import traced inside a block would break the graph there,
    at every Mamba block."""
    from audiomamba.ops import triton_kernels
    from audiomamba.train import compile_model

    for name in ("selective_scan", "causal_conv"):  # as in a fresh process (earlier tests loaded them)
        triton_kernels._modules.pop(name, None)
    m = model(blocks=blocks).train()
    compile_model(m)
    tokens, labels = torch.randint(0, 256, (2, 64), device="cuda"), torch.tensor([0, 1], device="cuda")
    explained = torch._dynamo.explain(m)(tokens, labels)
    assert explained.graph_break_count == 0, explained.break_reasons


def _training_steps(net, optimizer, tokens, labels, seeds):
    """One optimizer step per seed (each step seeded as train() seeds it); returns each step's loss."""
    losses = []
    for seed in seeds:
        torch.manual_seed(seed)
        logits = net(tokens, labels)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().clone())
    return torch.stack(losses)


def test_cuda_graph_training_steps_follow_eager_steps():
    """train.cuda_graphs replays each compiled step's forward and backward as CUDA graphs; every
    replay must read the weights the optimizer has just updated in place."""
    from audiomamba.train import compile_model

    torch._dynamo.reset()
    tokens, labels = torch.randint(0, 256, (2, 64), device="cuda"), torch.tensor([0, 1], device="cuda")
    runs = []
    for graphs in (False, True):
        m = model(blocks=ALL_MAMBA).train()
        net = compile_model(m, cuda_graphs=True) if graphs else m
        optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
        losses = _training_steps(net, optimizer, tokens, labels, seeds=range(6))
        runs.append((losses, torch.cat([p.detach().flatten() for p in m.parameters()])))
    (eager_losses, eager_weights), (graph_losses, graph_weights) = runs
    assert graph_losses[0] > graph_losses[-1]  # it learned: the replays saw the updates
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(graph_weights, eager_weights, rtol=1e-3, atol=1e-4)


def test_cuda_graph_steps_draw_dropout_from_each_steps_seed():
    """Under CUDA graphs dropout must still follow the generator that train() seeds every step:
    the same seed gives the same masks, another seed other masks (the weights stay fixed here)."""
    from audiomamba.train import compile_model

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = WaveformLM(ModelConfig(d_model=16, pool=[4, 4], mamba_state=8, dropout=0.5, **ALL_MAMBA)).cuda().train()
    net = compile_model(m, cuda_graphs=True)
    tokens = torch.randint(0, 256, (2, 64), device="cuda")
    seeds = (1, 2, 1, 2, 1, 2)  # the first steps warm up and record; the rest are replays
    losses = _training_steps(net, torch.optim.SGD(m.parameters(), lr=0.0), tokens, None, seeds)
    assert losses[4] == losses[2] and losses[5] == losses[3]
    assert losses[4] != losses[5]


def _sync_warnings_of_training(tmp_path, steps: int) -> Counter:
    """Where train() makes synchronizing CUDA operations in ``steps`` steps of a tiny model, with
    one log point and one checkpoint, both at the end: a count for each calling line."""
    import warnings

    from audiomamba.config import DataConfig, Recipe, TrainConfig
    from audiomamba.data.clipset import ClipSet, save_packed
    from audiomamba.train import train

    packed = tmp_path / "packed"
    for split in ("train", "validation"):
        clips = ClipSet(torch.randint(0, 256, (8, 256), dtype=torch.uint8), torch.arange(8) % 2, ["a", "b"] * 4,
                        ["zero", "one"], 8000, [])
        save_packed(clips, packed / f"{split}.safetensors")
    recipe = Recipe(DataConfig(dataset="fsdd", packed_dir=str(packed), sample_rate=8000, clip_samples=256),
                    ModelConfig(d_model=16, pool=[4, 4], s4d_state=8, mamba_state=8, n_classes=2, **MIXED),
                    TrainConfig(out_dir=str(tmp_path / f"run_{steps}"), batch_size=4, max_steps=steps, ema=0.99,
                                log_every=1000, val_every=0, ckpt_every=1000, device="cuda"))
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(recipe, progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def test_training_steps_between_log_points_never_wait_for_the_gpu(tmp_path):
    """train() keeps the GPU's queue full: batches go over from pinned memory and the NaN guard
    checks the losses at log points, so its host syncs do not grow with the steps between them."""
    _sync_warnings_of_training(tmp_path, steps=2)  # first launches, loaded kernels, allocator
    few, many = (_sync_warnings_of_training(tmp_path, steps) for steps in (3, 9))
    assert few and few == many, f"syncs that grow with the steps: {many - few}"
