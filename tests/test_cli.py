"""Each verb of the command line on tiny data, as the README shows it."""
import json

import pytest

from audiomamba.cli import main


def run(*args):
    main([str(a) for a in args])


@pytest.fixture
def trained(tiny_recipe, tmp_path):
    run("train", tiny_recipe, "--quiet", "train.max_steps=3")
    return tmp_path / "run"


def test_model_info_prints_parameters_per_stage_and_block_type(capsys):
    from tests.conftest import REPO

    run("model-info", REPO / "recipes" / "sc09_mamba.yaml")
    out = capsys.readouterr().out
    assert "6,260,224 parameters" in out and "MambaBlock" in out and "center (width 256)" in out


def test_data_pack_then_train_from_the_packed_files(tiny_recipe, tmp_path, capsys):
    run("data", "pack", tiny_recipe, "--out", tmp_path / "packed")
    assert "train: 12 clips" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == [
        "test.safetensors", "train.safetensors", "validation.safetensors"]
    run("train", tiny_recipe, "--quiet", f"data.packed_dir={tmp_path / 'packed'}", "data.root=/nonexistent",
        "train.max_steps=2")
    assert (tmp_path / "run" / "latest.json").is_file()


def test_train_resume_continues_to_the_new_max_steps(trained):
    run("train", trained.parent / "tiny.yaml", "--quiet", "--resume", "train.max_steps=5")
    assert json.loads((trained / "latest.json").read_text())["step"] == 5


def test_sample_writes_wavs_and_likelihoods_that_nll_reproduces(trained, tmp_path, capsys):
    out = tmp_path / "samples"
    run("sample", trained, "--n", 3, "--seconds", 0.02, "--label", "2", "--temperature", 0.9, "--top-p", 0.95,
        "--seed", 4, "--out", out, "--quiet")
    meta = json.loads((out / "samples.json").read_text())
    assert len(meta["samples"]) == 3 and meta["length"] == 160
    capsys.readouterr()
    first = meta["samples"][0]
    run("nll", trained, "--wavs", out / first["file"], "--label", "2", "--quiet")
    nll = json.loads(capsys.readouterr().out)["nll_bits_per_sample"]
    assert abs(nll - first["bits_per_sample"]) < 1e-3


def test_sample_label_all_makes_n_guided_clips_of_every_label(trained, tmp_path):
    out = tmp_path / "all"
    run("sample", trained, "--n", 2, "--seconds", 0.01, "--label", "all", "--guidance", 2, "--out", out, "--quiet")
    labels = [record["label"] for record in json.loads((out / "samples.json").read_text())["samples"]]
    assert sorted(labels) == sorted(list(range(10)) * 2)
    run("sample", trained, "--n", 1, "--seconds", 0.01, "--label", "3,7", "--out", tmp_path / "two", "--quiet")
    labels = [record["label"] for record in json.loads((tmp_path / "two" / "samples.json").read_text())["samples"]]
    assert sorted(labels) == [3, 7]


def test_sample_continues_a_prefix_wav(trained, tmp_path):
    from tests.conftest import write_tone

    write_tone(tmp_path / "prefix.wav", 500, 16000, 0.01)  # resampled to the model's 8 kHz
    run("sample", trained, "--n", 1, "--seconds", 0.02, "--prefix", tmp_path / "prefix.wav", "--out",
        tmp_path / "cont", "--quiet")
    import soundfile

    audio, rate = soundfile.read(str(tmp_path / "cont" / "sample_00000.wav"))
    assert rate == 8000 and len(audio) == 160


def test_nll_of_a_split(trained, capsys):
    run("nll", trained, "--split", "test", "--quiet")
    result = json.loads(capsys.readouterr().out)
    assert result["clips"] == 30 and 0 < result["nll_bits_per_sample"] < 9


def test_export_writes_bf16_weights_that_sample_and_nll_load(trained, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from audiomamba.checkpoint import load_model

    release = tmp_path / "release"
    run("export", trained, "--out", release)
    assert "weights in bf16" in capsys.readouterr().out
    assert sorted(p.name for p in release.iterdir()) == ["config.json", "model.safetensors"]
    assert {t.dtype for t in load_file(release / "model.safetensors").values()} == {torch.bfloat16}
    source, _, source_config = load_model(trained)
    exported, _, config = load_model(release)
    assert config["label_names"] == source_config["label_names"] and config["exported_from"]["dtype"] == "bf16"
    for (name, want), got in zip(source.state_dict().items(), exported.state_dict().values()):
        assert got.dtype == torch.float32 and torch.equal(got, want.to(torch.bfloat16).float()), name

    run("nll", trained, "--split", "test", "--quiet")
    run("nll", release, "--split", "test", "--quiet")
    before, after = (json.loads(line)["nll_bits_per_sample"] for line in capsys.readouterr().out.splitlines())
    assert abs(after - before) < 0.01  # rounding to bf16 moves the likelihood a little, not much
    run("sample", release, "--n", 1, "--seconds", 0.01, "--label", "1", "--out", tmp_path / "s", "--quiet")
    assert (tmp_path / "s" / "samples.json").is_file()
    run("export", trained, "--out", release)  # exporting again replaces the copy
    with pytest.raises(SystemExit, match="is not an exported checkpoint"):
        run("export", trained, "--out", tmp_path)  # a directory holding other things is left alone


def test_bad_requests_exit_with_one_clear_line(trained, capsys):
    with pytest.raises(SystemExit, match="unknown label 'eleven'"):
        run("sample", trained, "--label", "eleven", "--out", trained / "x")
    with pytest.raises(SystemExit):
        run("sample", trained / "nowhere")
    assert "no checkpoint at" in capsys.readouterr().err


def test_demo_serves_the_page_for_a_checkpoint(trained):
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("gradio")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["demo", "--checkpoint", str(trained), "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "audiomamba", *args], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.time() + 90, ""
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert "audiomamba" in page, proc.stderr.read() if proc.poll() is not None else "no page"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
