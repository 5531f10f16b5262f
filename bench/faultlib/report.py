"""One case's result: its figures, its PASS/FAIL checks, a table for people and a JSON line for
machines.

The checks every case shares: 0 missing, 0 duplicates, drops only as counted tombstones,
stream progress consistent, recovery ≤ 45 s (where the case measures one), and no collector
restart by hand beyond what the case itself does (the SIGKILL, spool-full and SIGTERM cases
restart it as their fault; none may after disk space returns). Cases add their own checks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.faultlib.ledger import Ledger
from bench.faultlib.recovery import Recovery

RECOVERY_LIMIT_S = 45.0
"""Longest acceptable recovery after a fault ends (s)."""

MAX_JSON_TRANSITIONS = 100
"""/healthz transitions kept in a JSON line (a flapping collector makes hundreds)."""


@dataclass
class CaseResult:
    """Everything a case measured (see module docstring)."""

    case: str
    description: str
    skipped: str | None = None
    farm_agents: int = 0
    raw_agents: int = 0
    duration_s: float = 0.0
    """Wall time of the whole case (s)."""
    fault_s: float | None = None
    """How long the fault lasted (s)."""
    ledger: Ledger | None = None
    recovery: Recovery | None = None
    recovery_limit_s: float = RECOVERY_LIMIT_S
    healthz: list[tuple[float, str]] = field(default_factory=list)
    """(s since the case started, /healthz state) at every change."""
    hand_restarts: int = 0
    expected_hand_restarts: int = 0
    collector_error_lines: list[str] = field(default_factory=list)
    collector_tracebacks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    extra_checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def agents(self) -> int:
        """Farm agents plus raw clients."""
        return self.farm_agents + self.raw_agents

    def checks(self) -> dict[str, bool]:
        """Named PASS/FAIL checks (empty for a skipped case)."""
        if self.skipped is not None:
            return {}
        out: dict[str, bool] = {}
        if self.ledger is not None:
            lg = self.ledger
            out["0 missing"] = lg.missing == 0
            out["0 duplicates"] = lg.duplicate_samples == 0 and lg.conflicts == 0
            out["drops only as counted tombstones"] = lg.drops_match and lg.unexpected == 0
            out["stream progress consistent"] = lg.progress_bad == 0
        if self.recovery is not None:
            secs = self.recovery.seconds
            out[f"recovery ≤ {self.recovery_limit_s:g} s"] = (
                secs is not None and secs <= self.recovery_limit_s
            )
        out["no restart by hand"] = self.hand_restarts == self.expected_hand_restarts
        out.update(self.extra_checks)
        return out

    @property
    def passed(self) -> bool | None:
        """PASS (True) / FAIL (False); None when skipped."""
        if self.skipped is not None:
            return None
        return all(self.checks().values())

    def verdict(self) -> str:
        """``PASS``, ``FAIL`` or ``SKIP``."""
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        """The JSON line (units in the key names)."""
        lg, rc = self.ledger, self.recovery
        return {
            "case": self.case,
            "verdict": self.verdict(),
            "skipped": self.skipped,
            "unix_time_s": round(time.time(), 3),
            "agents": self.agents,
            "farm_agents": self.farm_agents,
            "raw_agents": self.raw_agents,
            "duration_s": round(self.duration_s, 1),
            "fault_s": None if self.fault_s is None else round(self.fault_s, 1),
            "messages_produced": lg.produced if lg else None,
            "messages_stored": lg.stored if lg else None,
            "messages_rejected": lg.rejected if lg else None,
            "missing": lg.missing if lg else None,
            "duplicate_samples": lg.duplicate_samples if lg else None,
            "conflicts": lg.conflicts if lg else None,
            "unexpected_stored": lg.unexpected if lg else None,
            "progress_inconsistent_streams": lg.progress_bad if lg else None,
            "drops_agent_samples": lg.drops_agent_samples if lg else None,
            "drops_collector_samples": lg.drops_collector_samples if lg else None,
            "drops_held_samples": lg.drops_held_samples if lg else None,
            "tombstones": lg.tombstones if lg else None,
            "unacked_left": lg.unacked_left if lg else None,
            "samples_stored": lg.samples_stored if lg else None,
            "recovery_s": _r(rc.seconds) if rc else None,
            "recovery_limit_s": self.recovery_limit_s,
            "recovered_agents": rc.recovered_agents if rc else None,
            "backlog_peak_median_messages": rc.backlog_peak_median if rc else None,
            "backlog_peak_max_messages": rc.backlog_peak_max if rc else None,
            "drain_rate_median_messages_per_s": _r(rc.drain_rate_median) if rc else None,
            "drain_rate_min_messages_per_s": _r(rc.drain_rate_min) if rc else None,
            "drain_realtime_x": _r(rc.drain_realtime_x) if rc else None,
            "healthz_transitions": self.healthz[:MAX_JSON_TRANSITIONS],
            "healthz_transitions_total": len(self.healthz),
            "hand_restarts": self.hand_restarts,
            "expected_hand_restarts": self.expected_hand_restarts,
            "collector_error_lines": len(self.collector_error_lines),
            "collector_error_examples": self.collector_error_lines[:5],
            "collector_tracebacks": self.collector_tracebacks,
            "checks": self.checks(),
            "ledger_examples": lg.examples if lg else [],
            "notes": self.notes,
            "extra": self.extra,
        }


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "—" if value is None else f"{format(value, spec)}{unit}"


def print_result(result: CaseResult, console: Console) -> None:
    """One case as a two-column table, then its failed checks and notes."""
    table = Table(title=f"{result.case}: {result.description}", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    if result.skipped is not None:
        table.add_row("SKIPPED", result.skipped)
        console.print(table)
        return
    lg, rc = result.ledger, result.recovery
    table.add_row(
        "agents", f"{result.agents} ({result.farm_agents} farm + {result.raw_agents} raw)"
    )
    table.add_row(
        "duration / fault", f"{result.duration_s:.0f} s / {_fmt(result.fault_s, '.1f')} s"
    )
    if lg is not None:
        table.add_row(
            "messages produced / stored",
            f"{lg.produced} / {lg.stored} (+{lg.rejected} rejected)",
        )
        table.add_row("missing (acked, not stored)", str(lg.missing))
        table.add_row(
            "duplicates",
            f"{lg.duplicate_samples} samples, {lg.conflicts} conflicts, {lg.unexpected} unexpected",
        )
        table.add_row(
            "drops: agents / store (+held)",
            f"{lg.drops_agent_samples} / {lg.drops_collector_samples} samples "
            f"(+{lg.drops_held_samples} in held tombstones; {lg.tombstones} tombstones)",
        )
        table.add_row("unacked left in spools", str(lg.unacked_left))
        table.add_row("stream progress", f"{lg.progress_bad} of {lg.streams} streams inconsistent")
    if rc is not None:
        table.add_row(
            "recovery",
            f"{_fmt(rc.seconds, '.1f', ' s')} ({rc.recovered_agents}/{rc.agents} agents, "
            f"limit {result.recovery_limit_s:g} s)",
        )
        table.add_row(
            "backlog peak / drain rate",
            f"median {rc.backlog_peak_median:.0f}, max {rc.backlog_peak_max} messages; "
            f"{_fmt(rc.drain_rate_median, '.2f')} msg/s per agent "
            f"(= {_fmt(rc.drain_realtime_x, '.1f')}× real time; min "
            f"{_fmt(rc.drain_rate_min, '.2f')})",
        )
    table.add_row("/healthz", healthz_text(result.healthz))
    table.add_row(
        "restarts by hand", f"{result.hand_restarts} (expected {result.expected_hand_restarts})"
    )
    table.add_row(
        "collector log",
        f"{len(result.collector_error_lines)} ERROR lines, "
        f"{result.collector_tracebacks} tracebacks",
    )
    for key, value in result.extra.items():
        if not key.startswith("harness_"):  # the traceback is in the JSON line
            table.add_row(key, _short(value))
    verdict = result.verdict()
    table.add_row("verdict", f"[{'green' if verdict == 'PASS' else 'red'}]{verdict}[/]")
    console.print(table)
    for name, ok in result.checks().items():
        if not ok:
            console.print(f"  [red]FAIL[/] {name}")
    for line in result.collector_error_lines[:3]:
        console.print(f"  collector: {line.strip()[:200]}", markup=False, highlight=False)
    if lg is not None:
        for example in lg.examples[:5]:
            console.print(f"  ledger: {example}", markup=False, highlight=False)
    for note in result.notes:
        console.print(f"  note: {note}", markup=False, highlight=False)


def healthz_text(transitions: list[tuple[float, str]], most: int = 12) -> str:
    """``200@0.7s → 503@11.2s …``; a long flapping history is elided in the middle."""
    cells = [f"{state}@{t:g}s" for t, state in transitions]
    if len(cells) > most:
        cells = [*cells[: most - 4], f"… {len(cells) - most + 1} more …", *cells[-3:]]
    return " → ".join(cells)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 160 else text[:157] + "…"


def print_summary(results: list[CaseResult], console: Console) -> None:
    """One row per case."""
    table = Table(title="fault suite")
    for col in (
        "case",
        "agents",
        "produced",
        "stored",
        "missing",
        "dups",
        "drops a/c",
        "unacked",
        "recovery s",
        "drain ×rt",
        "healthz",
        "restarts",
        "ERRORs",
        "verdict",
    ):
        table.add_column(col)
    for r in results:
        lg, rc = r.ledger, r.recovery
        table.add_row(
            r.case,
            str(r.agents),
            str(lg.produced) if lg else "—",
            str(lg.stored) if lg else "—",
            str(lg.missing) if lg else "—",
            str(lg.duplicate_samples + lg.conflicts) if lg else "—",
            f"{lg.drops_agent_samples}/{lg.drops_collector_samples}" if lg else "—",
            str(lg.unacked_left) if lg else "—",
            _fmt(rc.seconds if rc else None),
            _fmt(rc.drain_realtime_x if rc else None),
            _healthz_states(r.healthz),
            f"{r.hand_restarts}/{r.expected_hand_restarts}",
            str(len(r.collector_error_lines)),
            r.verdict(),
        )
    console.print(table)


def _healthz_states(transitions: list[tuple[float, str]]) -> str:
    states = [s for _, s in transitions]
    if len(states) > 5:
        return "→".join(states[:3]) + f"…({len(states)})"
    return "→".join(states) if states else "—"


def append_json(path: Path, result: CaseResult) -> None:
    """Append the case's JSON line to ``path`` (created with its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(result.to_json()) + "\n")
