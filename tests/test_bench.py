"""The benchmark scripts in bench/ run on the CPU and print their tables."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("mode", [[], ["--loop"]], ids=["steps", "training_loop"])
def test_train_throughput_prints_a_row_per_recipe(mode):
    """Plain optimizer steps, or audiomamba's own training loop on random clips (``--loop``)."""
    command = [sys.executable, "bench/train_throughput.py", "recipes/tiny_cpu.yaml", "--device", "cpu", "--steps", "2",
               *mode, "--set", "model.outer=[mlp]", "model.center=[mamba]"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'kernels'}"})
    assert out.returncode == 0, out.stderr
    row = re.search(r"\| recipes/tiny_cpu.yaml \| ([\d.]+)M \| 8 x 4000 \| ([\d.]+) \| ([\d,]+) \|", out.stdout)
    assert row, out.stdout
    ms, rate = float(row[2]), float(row[3].replace(",", ""))
    assert ms > 0 and rate == pytest.approx(8 * 4000 / ms * 1e3, rel=0.01)
