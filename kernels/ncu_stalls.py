"""Where a kernel's warps wait, from Nsight Compute's per-instruction source page.

The GPU image has Nsight Compute. Profile one launch of a kernel, then export its SASS with every
instruction's executions, shared-memory wavefronts and stall samples:

    ncu --set full --warp-sampling-interval 0 -k regex:_stage_step -s 2 -c 1 -o prof python SCRIPT
    ncu -i prof.ncu-rep --page source --csv --print-source sass > prof.csv
    python kernels/ncu_stalls.py prof.csv [--top 20]

It prints the stall reasons over the whole kernel; then, for each stretch between two CTA
barriers (``BAR.SYNC``), its share of the executed instructions and of the stall samples, its
commonest instructions and its main stall reasons; with ``--top N``, the N instructions where
warps stalled most and why (BENCHMARKS.md, "Selective-scan kernels, session 28", found a
prefetch too short this way); then the shared-memory instructions that take more wavefronts than
they would without bank conflicts. (BENCHMARKS.md, "Generation, session 27",
found the Gluon stage kernel's bank conflicts this way.)
"""
from __future__ import annotations

import argparse
import csv
import re
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stretch:
    """The instructions between two barriers: executions, stall samples, and their breakdowns."""
    first: str = ""
    executed: float = 0.0
    samples: float = 0.0
    ops: Counter = field(default_factory=Counter)
    stalls: Counter = field(default_factory=Counter)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "-" where a column does not apply
        return 0.0


def read(path: str) -> tuple[list[dict], list[str]]:
    """The rows of an ncu source-page CSV (one per SASS instruction) and its stall columns."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    start = next(i for i, row in enumerate(rows) if "Address" in row and "Source" in row)
    header = rows[start]
    stalls = [name for name in header if name.startswith("stall_") and not name.endswith("(Not Issued)")]
    return [dict(zip(header, row)) for row in rows[start + 1:] if len(row) >= len(header)], stalls


def stretches(rows: list[dict], stalls: list[str]) -> list[Stretch]:
    """The rows cut at each barrier (the barrier ends its stretch)."""
    out = [Stretch()]
    for row in rows:
        source = row["Source"].strip()
        stretch = out[-1]
        stretch.first = stretch.first or source
        executed = _number(row["Instructions Executed"])
        stretch.executed += executed
        stretch.samples += _number(row["Warp Stall Sampling (All Samples)"])
        stretch.ops[re.sub(r"^@!?U?P\w+\s+", "", source).split(" ")[0].split(".")[0]] += executed
        for name in stalls:
            stretch.stalls[name[len("stall_"):]] += _number(row[name])
        if source.startswith("BAR.SYNC"):
            out.append(Stretch())
    return [s for s in out if s.executed]


def bank_conflicts(rows: list[dict]) -> list[tuple[str, str, float, float]]:
    """(address, instruction, wavefronts, ideal wavefronts) where the first exceeds the second."""
    return [(row["Address"], row["Source"].strip(), _number(row["L1 Wavefronts Shared"]),
             _number(row["L1 Wavefronts Shared Ideal"]))
            for row in rows if _number(row["L1 Wavefronts Shared"]) > _number(row["L1 Wavefronts Shared Ideal"]) > 0]


def most_stalled(rows: list[dict], stalls: list[str], top: int) -> list[tuple[str, str, float, Counter]]:
    """(address, instruction, stall samples, samples by reason) of the ``top`` instructions with
    the most stall samples, most first."""
    ranked = sorted(rows, key=lambda row: -_number(row["Warp Stall Sampling (All Samples)"]))[:top]
    return [(row["Address"], row["Source"].strip(), _number(row["Warp Stall Sampling (All Samples)"]),
             Counter({name[len("stall_"):]: _number(row[name]) for name in stalls})) for row in ranked]


def _shares(counter: Counter, total: float, top: int) -> str:
    return ", ".join(f"{name} {value / total * 100:.0f}%" for name, value in counter.most_common(top) if value)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="ncu -i REPORT --page source --csv --print-source sass > CSV")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also list the N instructions with the most stall samples")
    args = parser.parse_args(argv)
    rows, stall_names = read(args.csv)
    parts = stretches(rows, stall_names)
    executed, samples = sum(p.executed for p in parts), sum(p.samples for p in parts)
    whole = sum((p.stalls for p in parts), Counter())
    print(f"{len(rows)} instructions, {executed:.0f} executed (warp-level), {samples:.0f} stall samples")
    print(f"stall reasons: {_shares(whole, max(sum(whole.values()), 1), 8)}\n")
    print("| stretch | starts with | executed | samples | commonest instructions | stalls |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i, p in enumerate(parts):
        print(f"| {i} | `{p.first[:40]}` | {p.executed / executed * 100:.1f}% | {p.samples / max(samples, 1) * 100:.1f}% "
              f"| {_shares(p.ops, p.executed, 5)} | {_shares(p.stalls, max(sum(p.stalls.values()), 1), 3)} |")
    if args.top:
        print("\ninstructions with the most stall samples (share of all samples; main reasons):")
        for address, source, count, reasons in most_stalled(rows, stall_names, args.top):
            print(f"  {address}  {source[:60]:60s} {count / max(samples, 1) * 100:5.1f}%  "
                  f"{_shares(reasons, max(sum(reasons.values()), 1), 2)}")
    conflicts = bank_conflicts(rows)
    if conflicts:
        print("\nshared-memory instructions with bank conflicts (wavefronts / ideal):")
        for address, source, got, ideal in conflicts:
            print(f"  {address}  {source[:60]:60s} {got:.0f} / {ideal:.0f}")


if __name__ == "__main__":
    main()
