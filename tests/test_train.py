import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from audiomamba.checkpoint import load_model, resolve_checkpoint
from audiomamba.config import load_recipe
from audiomamba.train import TrainingDiverged, global_batch_indices, train


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


HYBRID = ["model.outer=[mamba2,attention]", "model.center=[attention,mamba2]", "model.mamba2_headdim=4",
          "model.attention_heads=2", "model.attention_window=16"]  # the window is shorter than the clips


@pytest.mark.parametrize("blocks", [[], HYBRID], ids=["s4d_mamba", "mamba2_attention"])
def test_a_few_steps_lower_the_loss_and_leave_a_loadable_checkpoint(tiny_recipe, tmp_path, blocks):
    ckpt = train(load_recipe(tiny_recipe, ["train.max_steps=40", *blocks]), progress=False)
    bits = [m["bits"] for m in read_metrics(tmp_path / "run") if "bits" in m]
    assert bits[-1] < bits[0] - 1.0  # 8 bits (uniform) falls quickly on tones
    model, recipe, config = load_model(ckpt)
    assert config["step"] == 40 and config["label_names"] == [str(d) for d in range(10)]
    assert recipe.model.n_classes == 10


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(tiny_recipe, tmp_path, capsys):
    steps = ["train.max_steps=3", "train.ckpt_every=1000", "model.outer=[mlp]"]  # a small graph: compiling is slow
    train(load_recipe(tiny_recipe, steps + [f"train.out_dir={tmp_path / 'eager'}"]), progress=False)
    torch._dynamo.reset()
    train(load_recipe(tiny_recipe, steps + [f"train.out_dir={tmp_path / 'compiled'}", "train.compile=true"]),
          progress=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it did compile
    assert "the first steps compile the training step (about a minute)" in capsys.readouterr().err  # not stuck
    eager, compiled = (load_file(str(resolve_checkpoint(tmp_path / run) / "model.safetensors"))
                       for run in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()  # saved from the plain model: no "_orig_mod." prefixes
    for name in eager:  # three AdamW steps from the same start; only the order of float sums differs
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-3, atol=1e-4)


def test_cuda_graphs_without_compile_is_refused(tiny_recipe):
    with pytest.raises(ValueError, match="train.cuda_graphs needs train.compile=true"):
        train(load_recipe(tiny_recipe, ["train.cuda_graphs=true"]), progress=False)


def test_batches_are_a_function_of_seed_and_step_and_cover_each_epoch():
    first = torch.cat([global_batch_indices(10, 3, s, seed=1) for s in range(3)])
    assert len(set(first.tolist())) == 9  # one epoch: no repeats, the tail dropped
    assert torch.equal(global_batch_indices(10, 3, 4, seed=1), global_batch_indices(10, 3, 4, seed=1))
    assert not torch.equal(global_batch_indices(10, 3, 0, seed=1), global_batch_indices(10, 3, 3, seed=1))


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "audiomamba", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_the_weights_of_an_uninterrupted_run(tiny_recipe, tmp_path):
    steps = ["train.max_steps=120", "train.ckpt_every=15", "model.dropout=0.1", "train.label_dropout=0.2",
             "train.speed_change=0.1", "train.gain_db=6"]  # every random draw is seeded by the step
    straight = _run_cli(["train", str(tiny_recipe), "--quiet", *steps, f"train.out_dir={tmp_path / 'straight'}"])
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    run_dir = tmp_path / "killed"
    proc = _run_cli(["train", str(tiny_recipe), "--quiet", *steps, f"train.out_dir={run_dir}"])
    deadline = time.time() + 120
    while not (run_dir / "latest.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # lands somewhere in the middle of a later step
    proc.wait()
    killed_at = json.loads((run_dir / "latest.json").read_text())["step"]
    assert killed_at < 120, "the run finished before it could be killed"
    resumed = _run_cli(["train", str(tiny_recipe), "--quiet", "--resume", *steps, f"train.out_dir={run_dir}"])
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert f"resumed from" in out
    want = load_file(str(resolve_checkpoint(tmp_path / "straight") / "model.safetensors"))
    got = load_file(str(resolve_checkpoint(run_dir) / "model.safetensors"))
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_two_gloo_processes_train_like_one_process_on_the_same_global_batch(tiny_recipe, tmp_path, compiled):
    common = ["train", str(tiny_recipe), "--quiet", "train.max_steps=4", "train.ckpt_every=100"]
    single = _run_cli([*common, f"train.out_dir={tmp_path / 'single'}"])
    assert single.wait(timeout=300) == 0, single.stdout.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"TORCH_LOGS": "dynamo"} if compiled else {})}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "-m", "audiomamba", *common, f"train.out_dir={tmp_path / 'ddp'}",
                          *(["train.compile=true"] if compiled else [])],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    if compiled:  # both ranks traced the model
        traced = [line for line in ddp.stderr.splitlines() if "torchdynamo start tracing" in line]
        assert any("[rank0]" in line for line in traced) and any("[rank1]" in line for line in traced)
    want = load_file(str(resolve_checkpoint(tmp_path / "single") / "model.safetensors"))
    got = load_file(str(resolve_checkpoint(tmp_path / "ddp") / "model.safetensors"))
    tolerance = dict(rtol=1e-3, atol=1e-4) if compiled else dict(rtol=1e-4, atol=1e-5)  # as in the compile test
    for key in want:
        torch.testing.assert_close(got[key], want[key], **tolerance)


def _poison_forward_call(monkeypatch, call: int) -> None:
    """The model's ``call``-th forward returns NaN logits (0-based training step call - 1)."""
    import audiomamba.train as train_module

    calls = {"n": 0}

    class PoisonedLM(train_module.WaveformLM):
        def forward(self, tokens, labels=None, **kwargs):
            calls["n"] += 1
            logits = super().forward(tokens, labels, **kwargs)
            return logits * float("nan") if calls["n"] == call else logits

    monkeypatch.setattr(train_module, "WaveformLM", PoisonedLM)


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    _poison_forward_call(monkeypatch, 13)
    with pytest.raises(TrainingDiverged, match="step 12"):  # found at the log point of step 15
        train(load_recipe(tiny_recipe), progress=False)
    model, _, config = load_model(tmp_path / "run")
    assert config["step"] == 10
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_losses_are_checked_before_a_checkpoint_between_log_points(tiny_recipe, tmp_path, monkeypatch):
    _poison_forward_call(monkeypatch, 10)
    with pytest.raises(TrainingDiverged, match="step 9"):
        train(load_recipe(tiny_recipe, ["train.log_every=1000"]), progress=False)
    assert not (tmp_path / "run" / "latest.json").exists()  # the checkpoint of step 10 was never written


def test_max_minutes_stops_cleanly_with_a_checkpoint(tiny_recipe, tmp_path):
    ckpt = train(load_recipe(tiny_recipe, ["train.max_minutes=0.0001", "train.max_steps=1000"]), progress=False)
    step = json.loads((ckpt / "config.json").read_text())["step"]
    assert 1 <= step < 1000


def test_ema_decay_ramps_up_so_one_step_keeps_a_tenth_of_the_initial_weights(tiny_recipe, tmp_path):
    """After step 0 the EMA is 0.1 * initial + 0.9 * trained, not 0.999 * initial (decay ramp)."""
    from audiomamba.models.lm import WaveformLM

    recipe = load_recipe(tiny_recipe, ["train.max_steps=1", "train.ema=0.999"])
    ckpt = resolve_checkpoint(train(recipe, progress=False))
    torch.manual_seed(recipe.train.seed)  # train() builds its model right after this seeding and the data load
    initial = WaveformLM(recipe.model).state_dict()
    trained, ema = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors"))
    for name, value in trained.items():
        if value.is_floating_point():
            torch.testing.assert_close(ema[name], 0.1 * initial[name] + 0.9 * value, rtol=1e-5, atol=1e-6)


def test_init_from_starts_a_new_run_at_step_0_from_a_checkpoints_ema_weights(tiny_recipe, tmp_path):
    first = train(load_recipe(tiny_recipe, ["train.max_steps=3", "train.ema=0.9"]), progress=False)
    source = load_file(str(first / "ema.safetensors"))
    second = load_recipe(tiny_recipe, ["train.max_steps=1", "train.lr=0", "train.warmup_steps=1",
                                       f"train.init_from={first}", f"train.out_dir={tmp_path / 'tuned'}"])
    tuned = train(second, progress=False)
    assert json.loads((tuned / "config.json").read_text())["step"] == 1
    for name, value in load_file(str(tuned / "model.safetensors")).items():  # lr 0: the weights are the source's
        torch.testing.assert_close(value, source[name])


def test_init_from_a_checkpoint_of_another_architecture_names_both(tiny_recipe, tmp_path):
    first = train(load_recipe(tiny_recipe, ["train.max_steps=1"]), progress=False)
    other = load_recipe(tiny_recipe, ["train.max_steps=1", "model.d_model=24", f"train.init_from={first}",
                                      f"train.out_dir={tmp_path / 'other'}"])
    with pytest.raises(ValueError, match=f"(?s){first}.*other"):
        train(other, progress=False)


def test_labels_outside_the_models_classes_are_refused_before_the_first_step(tmp_path):
    from audiomamba.config import DataConfig, ModelConfig, Recipe, TrainConfig
    from audiomamba.data.clipset import ClipSet, save_packed

    for split in ("train", "validation"):
        clips = ClipSet(torch.randint(0, 256, (4, 64), dtype=torch.uint8), torch.tensor([0, 1, 2, 1]), ["a"] * 4,
                        ["zero", "one"], 8000, [])
        save_packed(clips, tmp_path / "packed" / f"{split}.safetensors")
    recipe = Recipe(DataConfig(dataset="fsdd", packed_dir=str(tmp_path / "packed"), sample_rate=8000, clip_samples=64),
                    ModelConfig(d_model=8, pool=[4, 4], outer=["mlp"], center=["mlp"], n_classes=2),
                    TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, max_steps=1))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), not \[0, 2\]"):
        train(recipe, progress=False)
    assert not (tmp_path / "run" / "latest.json").exists()
