"""Compare two folders of chapter results tables cell by cell, ignoring the timing columns.

Usage::

    python scripts/compare_results.py BEFORE_DIR AFTER_DIR [--rtol 0] [--pattern '*.results.csv']

Every ``{chapter}-{run}.results.csv`` of ``BEFORE_DIR`` is read with the one of the same name in
``AFTER_DIR``; the columns that measure the run rather than its results (``run_wall_s``,
``peak_gpu_mib``, ``wall_time_s``, ``total_time_s``) are dropped. The rest must have the same
columns, the same rows in the same order and equal cells: numbers equal within ``--rtol``
(default 0: bit for bit as written), everything else equal as text. Prints one line per table
and the differing cells (at most ``--show`` of them); exits 1 if any table differs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

TIMING = ("run_wall_s", "peak_gpu_mib", "wall_time_s", "total_time_s")
"""Columns that measure the run, not its results."""


def _equal(a: object, b: object, rtol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))
    return a == b


def compare(before: Path, after: Path, rtol: float = 0.0) -> list[str]:
    """The differences between two results tables (empty if they match)."""
    a = pd.read_csv(before).drop(columns=list(TIMING), errors="ignore")
    b = pd.read_csv(after).drop(columns=list(TIMING), errors="ignore")
    if list(a.columns) != list(b.columns):
        return [f"columns differ: {sorted(set(a.columns) ^ set(b.columns))} "
                f"(before {list(a.columns)}, after {list(b.columns)})"]
    if len(a) != len(b):
        return [f"{len(a)} rows before, {len(b)} after"]
    out = []
    for column in a.columns:
        for i, (x, y) in enumerate(zip(a[column].tolist(), b[column].tolist(), strict=True)):
            if not _equal(x, y, rtol):
                out.append(f"row {i} column {column!r}: {x!r} → {y!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Compare every table; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance of numbers")
    p.add_argument("--pattern", default="*.results.csv")
    p.add_argument("--show", type=int, default=10, help="differing cells shown per table")
    args = p.parse_args(argv)
    tables = sorted(args.before.glob(args.pattern))
    if not tables:
        print(f"no {args.pattern} in {args.before}")
        return 1
    failed = 0
    for table in tables:
        other = args.after / table.name
        if not other.exists():
            print(f"{table.name}: MISSING in {args.after}")
            failed += 1
            continue
        diffs = compare(table, other, args.rtol)
        rows = len(pd.read_csv(table))
        if diffs:
            failed += 1
            print(f"{table.name}: {len(diffs)} differing cells of {rows} rows")
            for line in diffs[: args.show]:
                print(f"    {line}")
        else:
            print(f"{table.name}: identical ({rows} rows, timing columns ignored)")
    print(f"{len(tables) - failed} of {len(tables)} tables identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
