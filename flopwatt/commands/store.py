"""``flopwatt store``: look into a collector's store, either engine (read-only).

``check`` gives each (agent, epoch)'s ledger — gaps, duplicates, conflicts, rejected and
tombstoned counts — and integrity findings, and exits 1 when a sequence is missing below a
stored one or progress disagrees with what is stored. ``stats`` gives rows, bytes and samples
per table and per retention tier (raw, 10s, 1m, results) and bytes per stored sample.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from flopwatt.commands.output import emit_json, fmt, stdout_console
from flopwatt.store import DB_ENV, describe_db, is_postgres
from flopwatt.store.inspect import StoreCheck, StoreStats, check_store, store_stats
from flopwatt.store.readonly import StoreUnreadableError, connect_read_only

DEFAULT_DB = "flopwatt-data/flopwatt.db"

_db_option = click.option(
    "--db",
    "db",
    envvar=DB_ENV,
    default=DEFAULT_DB,
    show_default=True,
    help="The store: a SQLite file or a PostgreSQL DSN (postgresql://…); also FLOPWATT_DB.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, not tables.")


def _open(db: str) -> Any:
    try:
        return connect_read_only(db)
    except (FileNotFoundError, StoreUnreadableError) as exc:
        raise click.ClickException(str(exc)) from None


def _utc(ns: int | None) -> str:
    if ns is None:
        return "—"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("store")
def store() -> None:
    """Look into a collector's store (SQLite file or PostgreSQL), read-only."""


@store.command("check")
@_db_option
@_json_option
def check(db: str, as_json: bool) -> None:
    """Integrity and a per-agent ledger: per (agent, epoch) the messages stored, gaps,
    duplicates, conflicts, rejected and tombstoned counts. Exit 1 on a gap (a sequence missing
    below a stored one), progress that disagrees with what is stored, or an integrity finding.
    """
    conn = _open(db)
    try:
        result = check_store(
            conn, engine="postgresql" if is_postgres(db) else "sqlite", database=describe_db(db)
        )
    finally:
        conn.close()
    if as_json:
        doc = dataclasses.asdict(result)
        doc["gaps"] = result.gaps
        doc["ok"] = result.ok
        emit_json(doc)
    else:
        _print_check(result)
    if not result.ok:
        sys.exit(1)


def _print_check(result: StoreCheck) -> None:
    out = stdout_console()
    table = Table(title=f"Store ledger: {result.database}", title_justify="left")
    for header in (
        "agent",
        "epoch",
        "messages",
        "highest seq",
        "gaps",
        "progress",
        "duplicates",
        "conflicts",
        "rejected msgs",
        "rejected samples",
        "tombstones",
        "tombstoned samples",
    ):
        table.add_column(header, justify="left" if header == "agent" else "right")
    for e in result.epochs:
        progress = str(e.committed_through) + ("" if e.progress_consistent else " (!)")
        table.add_row(
            e.agent_id,
            f"{e.epoch:#x}",
            str(e.messages),
            str(e.highest_sequence),
            str(e.gaps) + (f" {list(e.first_gaps)}" if e.gaps else ""),
            progress,
            str(e.duplicates),
            str(e.conflicts),
            str(e.rejected_messages),
            str(e.rejected_samples),
            str(e.tombstones),
            str(e.tombstoned_samples),
            style="bold red" if e.gaps or not e.progress_consistent else None,
        )
    out.print(table)
    for finding in result.integrity:
        out.print(f"[red]integrity: {finding}[/red]")
    if result.orphan_chunks:
        out.print(f"[red]{result.orphan_chunks} telemetry chunks without their message[/red]")
    verdict = "OK" if result.ok else "PROBLEMS FOUND"
    out.print(
        f"{len(result.epochs)} epochs, {result.gaps} missing sequences: {verdict}",
        style="bold green" if result.ok else "bold red",
    )


@store.command("stats")
@_db_option
@_json_option
def stats(db: str, as_json: bool) -> None:
    """Rows, bytes and samples per table, the oldest and newest sample, bytes per stored
    sample."""
    conn = _open(db)
    try:
        result = store_stats(
            conn,
            engine="postgresql" if is_postgres(db) else "sqlite",
            database=describe_db(db),
            now_unix_ns=time.time_ns(),
        )
    finally:
        conn.close()
    if as_json:
        doc = dataclasses.asdict(result)
        doc["tiers"] = {
            name: tier.as_json(result.measured_unix_ns) for name, tier in result.tiers.items()
        }
        doc["bytes_per_sample"] = result.bytes_per_sample
        doc["telemetry_bytes_per_sample"] = result.telemetry_bytes_per_sample
        emit_json(doc)
        return
    _print_stats(result)


def _print_stats(result: StoreStats) -> None:
    out = stdout_console()
    table = Table(title=f"Store: {result.database} ({result.engine})", title_justify="left")
    for header in ("table", "rows", "MiB", "samples"):
        table.add_column(header, justify="left" if header == "table" else "right")
    for t in result.tables:
        mib = None if t.bytes is None else t.bytes / 2**20
        table.add_row(t.table, f"{t.rows:,}", fmt(mib, ".2f"), fmt(t.samples, ",d"))
    out.print(table)
    total = None if result.total_bytes is None else result.total_bytes / 2**20
    out.print(f"database: {fmt(total, '.2f')} MiB, {result.telemetry_samples:,} telemetry samples")
    out.print(
        f"bytes per stored sample: {fmt(result.bytes_per_sample, '.1f')} (all), "
        f"{fmt(result.telemetry_bytes_per_sample, '.1f')} (telemetry table)"
    )
    out.print(
        f"samples from {_utc(result.oldest_sample_unix_ns)} to {_utc(result.newest_sample_unix_ns)}"
    )
    tiers = Table(title="Retention tiers", title_justify="left")
    for header in ("tier", "rows", "MiB", "samples", "B/sample", "oldest", "newest"):
        tiers.add_column(header, justify="left" if header == "tier" else "right")
    for name, tier in result.tiers.items():
        doc = tier.as_json(result.measured_unix_ns)
        tiers.add_row(
            name,
            f"{tier.rows:,}",
            fmt(tier.bytes / 2**20, ".2f"),
            f"{tier.samples:,}" if name != "results" else "—",
            fmt(doc["bytes_per_sample"], ".2f"),
            _age(doc["oldest_age_s"]),
            _age(doc["newest_age_s"]),
        )
    out.print(tiers)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"
