"""The fast subset of the fault suite (``bench/faults.py --fast``) as tests: the real collector
through its CLI, 3–4 real agents with 2 simulated GPUs each in a farm process, a fault, then
the delivery ledger per (agent, epoch, sequence).

Asserted: nothing missing (acked without a commit), no duplicate sample, stream progress equal to
what is stored contiguously, losses only as counted tombstones, and — for faults the collector
must survive on its own — that it recovered by itself within the functional bound of 45 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.faultlib.cases import run_case
from bench.faultlib.report import RECOVERY_LIMIT_S, CaseResult

pytestmark = pytest.mark.slow


def _run(name: str, tmp_path: Path) -> CaseResult:
    lines: list[str] = []
    result = run_case(name, fast=True, root=tmp_path, say=lines.append)
    print("\n".join(lines))
    return result


def _why(result: CaseResult) -> str:
    data = result.to_json()
    data.pop("extra", None)
    return json.dumps(data, indent=1)[:4000]


def _assert_ledger(result: CaseResult) -> None:
    assert result.skipped is None, result.skipped
    assert result.extra_checks.get("case ran to the end", True), _why(result)
    ledger = result.ledger
    assert ledger is not None, _why(result)
    assert ledger.produced > 0
    assert ledger.missing == 0, f"acked without a commit: {_why(result)}"
    assert ledger.duplicate_samples == 0, _why(result)
    assert ledger.conflicts == 0, _why(result)
    assert ledger.unexpected == 0, _why(result)
    assert ledger.progress_bad == 0, f"stream progress inconsistent: {_why(result)}"
    assert ledger.drops_match, f"drops not counted as tombstones: {_why(result)}"


def _assert_recovered(result: CaseResult) -> None:
    assert result.recovery is not None
    assert result.recovery.seconds is not None, f"never recovered: {_why(result)}"
    assert result.recovery.seconds <= RECOVERY_LIMIT_S, _why(result)
    assert result.extra_checks.get("/healthz 200 at the end", False), _why(result)


def test_store_writer_sigkill_is_recovered_by_the_collector_itself(tmp_path: Path) -> None:
    result = _run("writer-kill", tmp_path)
    assert result.extra_checks["/healthz 503 while no writer"], _why(result)
    assert result.extra_checks["writer restarted by the collector"], _why(result)
    _assert_recovered(result)
    assert result.hand_restarts == 0
    _assert_ledger(result)


def test_write_lock_held_by_another_process_is_ridden_out(tmp_path: Path) -> None:
    result = _run("lock-held", tmp_path)
    _assert_recovered(result)
    assert result.hand_restarts == 0
    _assert_ledger(result)


def test_collector_sigkill_and_restart_loses_nothing(tmp_path: Path) -> None:
    result = _run("collector-kill", tmp_path)
    assert result.hand_restarts == 1
    _assert_recovered(result)
    _assert_ledger(result)


def test_spool_overflow_is_counted_as_tombstones_and_nothing_else_is_lost(
    tmp_path: Path,
) -> None:
    result = _run("spool-full", tmp_path)
    assert result.ledger is not None and result.ledger.tombstones > 0, _why(result)
    assert result.ledger.drops_agent_samples > 0
    _assert_recovered(result)
    _assert_ledger(result)
