"""The README's commands, run as a user would run them."""
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO, SHARED_DATA


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = bash_blocks()[1].strip()
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_every_verb_the_readme_shows_is_exercised_by_a_test():
    verbs = r"audiomamba (train|sample|nll|export|model-info|data pack|classifier train|classifier predict|eval|demo)\b"
    shown = {verb for block in bash_blocks() for verb in re.findall(verbs, block)}
    assert len(shown) == 10
    test_sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for verb in shown:
        argv = ", ".join(f'"{word}"' for word in verb.split())  # how the tests spell the command line
        assert argv in test_sources, f"no test runs `audiomamba {verb}`"


@pytest.mark.slow
def test_main_command_serves_the_demo_on_the_shipped_model():
    """The first command, verbatim after its set-up steps: the demo answers on its default port
    and makes a clip with the shipped model and classifier."""
    pytest.importorskip("gradio")
    from gradio_client import Client

    steps = [s.strip() for s in bash_blocks()[0].strip().split("&&")]
    assert steps == ["python3 -m venv .venv", '.venv/bin/pip install -e ".[demo]"', ".venv/bin/audiomamba demo"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "audiomamba", *steps[2].split()[1:]], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = "http://127.0.0.1:7860/"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.time() < deadline, "the demo did not answer within 3 minutes"
                time.sleep(1)
        result = Client(url, verbose=False).predict(1, 0, 1.0, 1.0, 0.1, "yes", None, 2.0, api_name="/generate")
        assert result[0].startswith("Done: 1 clip(s)")
        assert "bits per sample" in result[3] and "Classifier hears" in result[3]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_train_your_own_command_trains_and_writes_clips(tmp_path):
    """The tiny CPU training command, verbatim after its set-up steps, in a fresh copy of the project."""
    if not SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO / "recipes", project / "recipes")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    steps = [s.strip() for s in bash_blocks()[2].strip().split("&&")]
    assert steps[0].startswith(".venv/bin/audiomamba train ")
    for step in steps:
        assert step.startswith(".venv/bin/audiomamba ")
        args = step.split()[1:]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        result = subprocess.run([sys.executable, "-m", "audiomamba", *args], cwd=project, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    wavs = sorted((project / "samples" / "tiny_cpu").glob("*.wav"))
    assert len(wavs) == 4
    import soundfile

    audio, rate = soundfile.read(str(wavs[0]))
    assert rate == 8000 and len(audio) == 4000 and abs(audio).max() > 0
