#!/usr/bin/env python3
"""Fault suite: the real collector (its CLI) and real agents under faults, with a delivery
ledger checked per (agent, epoch, sequence) after every case.

Cases: collector SIGKILL ×2, store-writer SIGKILL, database write lock held, slow fsync with a
registration storm, RST cut, black hole, disk full, agent spool full, SIGTERM of collector and
agents, 2× overload. Each prints a table and appends one JSON line to ``--json-out``; the exit
status is 1 when any case fails.

Usage:
    .venv/bin/python bench/faults.py --list
    .venv/bin/python bench/faults.py --fast                 # writer, lock, kill, spool (small)
    .venv/bin/python bench/faults.py --all                  # every case, full size (~20 min)
    .venv/bin/python bench/faults.py --case blackhole [--case rst-cut] [--fast] [--keep]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from bench.faultlib.cases import CASES, FAST_SUBSET, run_case
from bench.faultlib.processes import cleanup_all
from bench.faultlib.report import CaseResult, append_json, print_result, print_summary

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "faults.jsonl"


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every case's cleanup (finally) runs.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases; returns the exit status."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="run this case")
    ap.add_argument("--all", action="store_true", help="run every case")
    ap.add_argument(
        "--fast",
        action="store_true",
        help=f"small agent counts and short faults; alone, runs {', '.join(FAST_SUBSET)}",
    )
    ap.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="JSON lines appended here")
    ap.add_argument("--keep", action="store_true", help="keep each case's directory (logs, dbs)")
    ap.add_argument("--work-root", type=Path, default=None, help="parent of the case directories")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and pipes: do not wrap tables at 80 columns
    if args.list:
        for case in CASES.values():
            console.print(f"{case.name:16} {case.description}", highlight=False)
        return 0
    if args.all:
        names = list(CASES)
    elif args.case:
        names = args.case
    elif args.fast:
        names = list(FAST_SUBSET)
    else:
        ap.error("say --all, --fast or --case NAME")
    signal.signal(signal.SIGTERM, _terminate)
    results: list[CaseResult] = []
    try:
        for name in names:
            result = run_case(
                name,
                fast=args.fast,
                root=args.work_root,
                keep=args.keep,
                say=lambda text: console.print(text, markup=False, highlight=False),
            )
            print_result(result, console)
            append_json(args.json_out, result)
            results.append(result)
    finally:
        cleanup_all()
    print_summary(results, console)
    console.print(f"JSON lines appended to {args.json_out}", highlight=False)
    return 1 if any(r.passed is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
