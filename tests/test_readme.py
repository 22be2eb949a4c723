"""The README's commands, run as a user would run them."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = bash_blocks()[1].strip()
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


def test_every_verb_the_readme_shows_is_exercised_by_a_test():
    verbs = r"audiomamba (train|sample|nll|model-info|data pack|classifier train|classifier predict|eval|demo)\b"
    shown = {verb for block in bash_blocks() for verb in re.findall(verbs, block)}
    assert len(shown) == 9
    test_sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py"))
    for verb in shown:
        argv = ", ".join(f'"{word}"' for word in verb.split())  # how the tests spell the command line
        assert argv in test_sources, f"no test runs `audiomamba {verb}`"


@pytest.mark.slow
def test_main_command_trains_and_writes_clips(tmp_path):
    """The quick-start command, verbatim after its set-up steps, in a fresh copy of the project."""
    if not SHARED_DATA.is_dir():
        pytest.skip("no ../shared/data")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(REPO / "recipes", project / "recipes")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    main_command = bash_blocks()[0].strip()
    steps = [s.strip() for s in main_command.split("&&")]
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -e ."]
    for step in steps[2:]:
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
