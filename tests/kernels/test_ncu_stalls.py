"""kernels/ncu_stalls.py reads Nsight Compute's per-instruction CSV: it cuts the kernel at its
barriers, shares out executions and stall samples, and names the bank-conflicted loads."""
import csv
import subprocess
import sys

from tests.conftest import REPO

HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)", "Instructions Executed", "L1 Wavefronts Shared",
          "L1 Wavefronts Shared Ideal", "stall_mio", "stall_wait", "stall_wait (Not Issued)"]
ROWS = [  # two stretches: a conflicted load and an FMA, the barrier; then an add
    ["0x10", "LDS.128 R4, [R2]", "30", "100", "1600", "400", "25", "5", "5"],
    ["0x20", "FFMA R1, R4, R5, R1", "10", "100", "0", "0", "0", "10", "10"],
    ["0x30", "BAR.SYNC.DEFER_BLOCKING 0x0", "0", "100", "0", "0", "0", "0", "0"],
    ["0x40", "@P0   FADD R1, R1, R6", "60", "200", "-", "-", "0", "60", "60"],
]


def write(path):
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Kernel Name", "_stage_step"])
        out.writerow(HEADER)
        out.writerows(ROWS)


def test_it_cuts_at_barriers_and_names_the_conflicted_load(tmp_path):
    write(tmp_path / "prof.csv")
    out = subprocess.run([sys.executable, "kernels/ncu_stalls.py", str(tmp_path / "prof.csv")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "500 executed (warp-level), 100 stall samples" in out.stdout
    assert "stall reasons: wait 75%, mio 25%" in out.stdout  # the not-issued columns are not counted twice
    first, second = [line for line in out.stdout.splitlines() if line.startswith(("| 0 ", "| 1 "))]
    assert "`LDS.128 R4, [R2]` | 60.0% | 40.0% | LDS 33%, FFMA 33%, BAR 33%" in first and "mio 62%, wait 38%" in first
    assert "`@P0   FADD R1, R1, R6` | 40.0% | 60.0% | FADD 100%" in second and "wait 100%" in second
    assert "0x10  LDS.128 R4, [R2]" in out.stdout and "1600 / 400" in out.stdout
    assert "0x20" not in out.stdout.split("bank conflicts")[1]


def test_top_lists_the_most_stalled_instructions_with_their_reasons(tmp_path):
    write(tmp_path / "prof.csv")
    out = subprocess.run([sys.executable, "kernels/ncu_stalls.py", str(tmp_path / "prof.csv"), "--top", "2"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split("most stall samples")[1].split("\n\n")[0].splitlines()[1:]
    assert len(listed) == 2
    assert listed[0].split()[:2] == ["0x40", "@P0"] and "60.0%  wait 100%" in listed[0]
    assert listed[1].split()[:2] == ["0x10", "LDS.128"] and "30.0%  mio 83%, wait 17%" in listed[1]
