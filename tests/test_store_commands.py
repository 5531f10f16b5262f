"""``flopwatt store check`` and ``flopwatt store stats`` on both engines: the ledger per
(agent, epoch) — gaps, duplicates, conflicts, rejected, tombstones — with exit 1 on a gap, and
sizes per table with bytes per stored sample."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from flopwatt.cli import cli
from flopwatt.store import is_postgres, open_store
from flopwatt.store.base import MessageWrite
from flopwatt.store.schema import epoch_to_db
from tests.postgres_server import PostgresServer
from tests.test_store_contract import AGENT, EPOCH, heartbeat, telemetry


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"commands_{len(str(tmp_path))}_{tmp_path.name[-8:]}")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _fill(db: str) -> None:
    store = open_store(db)
    try:
        store.apply([telemetry(1), heartbeat(2), heartbeat(3)])
        store.apply([heartbeat(2), heartbeat(3, digest=b"\xee" * 16)])  # a dup, a conflict
        store.apply(
            [
                MessageWrite(AGENT, EPOCH, 4, "dropped", b"d" * 16, 1, dropped_samples=80),
                MessageWrite(AGENT, EPOCH, 5, "telemetry", b"r" * 16, 1, rejected_detail="bad"),
            ]
        )
        store.apply([heartbeat(1, agent="node-b")])
    finally:
        store.close()


def _punch_gap(db: str) -> None:
    """What a broken store would hold: sequence 9 stored while 6–8 are not."""
    sql = (
        "INSERT INTO messages (agent_id, epoch, sequence, kind, digest, received_unix_ns, "
        "status, detail, samples) VALUES (?,?,?,?,?,?,?,?,?)"
    )
    row = (AGENT, epoch_to_db(EPOCH), 9, "heartbeat", b"g" * 16, 1, "stored", "", 0)
    if is_postgres(db):
        with psycopg.connect(db) as con:
            con.execute(sql.replace("?", "%s"), row)
    else:
        with sqlite3.connect(db) as con:
            con.execute(sql, row)


def test_check_gives_each_epochs_ledger_and_fails_on_a_gap(db: str) -> None:
    _fill(db)
    ok = invoke("store", "check", "--db", db, "--json")
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["gaps"] == 0 and doc["orphan_chunks"] == 0
    ledger = {e["agent_id"]: e for e in doc["epochs"]}
    a = ledger[AGENT]
    assert a["epoch"] == EPOCH
    assert (a["messages"], a["highest_sequence"], a["committed_through"]) == (5, 5, 5)
    assert (a["duplicates"], a["conflicts"]) == (1, 1)
    assert (a["rejected_messages"], a["rejected_samples"]) == (1, 2)
    assert (a["tombstones"], a["tombstoned_samples"]) == (1, 80)
    assert ledger["node-b"]["messages"] == 1

    _punch_gap(db)
    bad = invoke("store", "check", "--db", db, "--json")
    assert bad.exit_code == 1
    a = {e["agent_id"]: e for e in json.loads(bad.stdout)["epochs"]}[AGENT]
    assert a["gaps"] == 3 and a["first_gaps"] == [6, 7, 8]
    assert a["progress_consistent"] is True  # progress 5 = highest contiguous
    table = invoke("store", "check", "--db", db)
    assert table.exit_code == 1 and "3 missing sequences: PROBLEMS FOUND" in table.stdout


def test_stats_gives_rows_bytes_and_samples_per_table(db: str) -> None:
    _fill(db)
    res = invoke("store", "stats", "--db", db, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    tables = {t["table"]: t for t in doc["tables"]}
    assert tables["messages"]["rows"] == 6
    assert tables["telemetry_chunks"]["rows"] == 1 and tables["telemetry_chunks"]["samples"] == 3
    assert tables["rejected_samples"]["samples"] == 2
    # On PostgreSQL the compact and rollup tables are partitioned: no rows, no partition yet,
    # no bytes (a partitioned table has no storage of its own).
    partitioned = {"telemetry_packed", "telemetry_rollups"} if "postgresql" in db else set()
    assert [
        t["table"] for t in doc["tables"] if t["bytes"] == 0 and t["table"] not in partitioned
    ] == []
    assert doc["telemetry_samples"] == 3
    assert doc["oldest_sample_unix_ns"] == 1_700_000_000_000_000_000
    assert doc["newest_sample_unix_ns"] == 1_700_000_000_200_000_000
    assert doc["bytes_per_sample"] == doc["total_bytes"] / 3
    people = invoke("store", "stats", "--db", db)
    assert "bytes per stored sample" in people.stdout


def test_a_missing_store_is_a_one_line_error(tmp_path: Path) -> None:
    res = invoke("store", "check", "--db", str(tmp_path / "none.db"))
    assert res.exit_code == 1 and "no flopwatt database" in res.output
