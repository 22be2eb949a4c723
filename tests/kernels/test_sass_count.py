"""kernels/sass_count.py compiles the chunk kernels for a Hopper GPU on any machine and finds their
loops: each pass gets a non-empty loop, and the issue bound grows with the work."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytest.importorskip("triton")


def test_each_pass_has_a_loop_and_the_bound_doubles_with_the_batch():
    """16 states: the sequential forward, the two backward passes and their Gluon forms; 64 states:
    the forward's two chunk passes and the two backward passes."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # it compiles, never runs
    out = subprocess.run([sys.executable, "kernels/sass_count.py", "--shape", "16", "128", "16000", "16",
                          "--shape", "32", "128", "16000", "16", "--shape", "16", "128", "4000", "64"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^\| ((?:forward|backward)[^|]*) \| (\d) \| (\d+) \| (\d+) \| (\d+) \((\d+)\) \|.*\| ([\d.]+) \|$",
                      out.stdout, flags=re.M)
    names = [r[0] for r in rows]
    backward = ["backward: adjoint handed back", "backward: gradients"]
    gluon = ["forward, Gluon, one pass", "backward: adjoint handed back, Gluon, chunks of 32",
             "backward: gradients, Gluon, chunks of 32"]  # on Hopper GPUs, at 16 states
    assert names == 2 * (["forward: sequential, 2 channels"] + backward + gluon) + [
        "forward: chunk end states", "forward: output"] + backward, out.stdout
    for _, warps, registers, _, loop, spills, _ in rows:
        assert 1 <= int(warps) and 0 < int(registers) <= 255 and int(loop) > 50 and int(spills) < int(loop)
    small, large = (float(r[-1]) for r in rows[:6]), (float(r[-1]) for r in rows[6:12])
    for a, b in zip(small, large):  # the same code, twice the (chunk, channel) iterations
        assert a > 0.05 and b == pytest.approx(2 * a, rel=0.01)


def test_the_stage_kernel_loops_over_blocks_and_its_chunk_loops_repeat_with_the_width():
    """--stack: one loop iteration is one Mamba block for one row; inside it the front and back
    loops over the channels run once per chunk of CE channels (1 chunk at width 64, 2 at 128)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "kernels/sass_count.py", "--stack", "64", "128"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (fp32|bf16) \| (\d) \| (\d+) \| (\d+) \| 2 x (\d) \| (\d+) \((\d+)\) "
                      r"\| ([\d.]+) \|$", out.stdout, flags=re.M)
    assert len(rows) == 8, out.stdout  # 2 widths x (1 row, 256 rows) x (fp32, bf16 projections)
    times = {}
    for width, n_rows, projections, _, registers, _, chunks, count, spills, us in rows:
        assert int(chunks) == {"64": 1, "128": 2}[width] and 0 < int(registers) <= 255
        assert int(count) > 500 and int(spills) < int(count)
        times[width, n_rows, projections] = float(us)
    for key, us in times.items():
        if key[0] == "64":
            assert times[("128",) + key[1:]] > us  # twice the channels, four times the weights
