"""PostgreSQL time partitions (schema 6): a store at schema 5 with compact chunks and rollups
migrates with every row kept (in one "legacy" partition per table), new rows get partitions of
their tier's span after it, and the legacy partition is dropped whole once all of it is past
the horizon. Plus the partition arithmetic, hand-computed."""

from __future__ import annotations

from typing import Any

import psycopg

from flopwatt.store import open_store
from flopwatt.store.maintenance import Maintainer, MaintenanceConfig
from flopwatt.store.partitions import Partition, list_partitions, new_partition
from flopwatt.store.postgres import postgres_ddl
from flopwatt.store.retention import Retention, partition_span_s
from flopwatt.store.schema import MIGRATIONS
from tests.test_store_retention import T0, S, _register, _store_seconds

H = 3600


def test_partition_spans_fit_seven_times_into_the_horizon() -> None:
    """7 d → 1 d, 90 d → 7 d, 400 d → 30 d (the defaults); 1 h → 1 min; never under 1 min."""
    assert partition_span_s(7 * 86400) == 86400
    assert partition_span_s(90 * 86400) == 7 * 86400
    assert partition_span_s(400 * 86400) == 30 * 86400
    assert partition_span_s(H) == 60
    assert partition_span_s(2 * H) == 600
    assert partition_span_s(30) == 60


def test_a_new_partition_is_aligned_and_clipped_to_its_neighbours() -> None:
    """A day partition for noon: midnight to midnight; after a legacy partition ending at
    06:00 it starts there; before one starting at 18:00 it ends there."""
    day = 86400 * S
    noon = T0 - T0 % day + 12 * H * S
    midnight = noon - 12 * H * S
    p = new_partition([], "t", noon, 86400)
    assert (p.lo, p.hi) == (midnight, midnight + day)
    legacy = Partition("legacy", None, midnight + 6 * H * S)
    later = Partition("later", midnight + 18 * H * S, midnight + day)
    p = new_partition([legacy, later], "t", noon, 86400)
    assert (p.lo, p.hi) == (midnight + 6 * H * S, midnight + 18 * H * S)
    assert p.name == "t_p" + "20251206t0600"


def _migrate_to(dsn: str, version: int) -> None:
    """Apply the migrations up to ``version`` by hand (an older flopwatt's database)."""
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
        for v, statements in MIGRATIONS:
            if v > version:
                break
            for statement in statements:
                con.execute(postgres_ddl(statement))
            con.execute("INSERT INTO schema_version VALUES (%s)", (v,))


def _maintain(dsn: str, now_ns: int) -> Maintainer:
    config = MaintenanceConfig(retention=Retention.parse("raw=1h"), settle_s=60)
    m = Maintainer(dsn, config, clock_ns=lambda: now_ns, busy_timeout_s=5.0)
    try:
        m.run_pass()
    finally:
        m.close()
    return m


_TABLES = {
    "telemetry_packed": "device_uuid, t_first_unix_ns, t_last_unix_ns, n_samples, data",
    "telemetry_rollups": "tier, device_uuid, window_start_unix_ns, t_first_unix_ns, "
    "t_last_unix_ns, n_samples, data",
    "telemetry_tails": "device_uuid, t_unix_ns, energy_j",
}


def _digest(con: Any, table: str) -> tuple[int, int]:
    row = con.execute(f"SELECT COUNT(*), COALESCE(SUM(n_samples), 0) FROM {table}").fetchone()
    n, samples = row.values() if isinstance(row, dict) else row
    return int(n), int(samples)


def test_schema_5_migrates_into_partitions_and_keeps_every_row(postgres: Any) -> None:
    """Rows of a schema-5 database (made by this version's maintainer, copied over) survive
    the migration in legacy partitions; new data gets partitions after them; at the horizon
    the legacy partitions are dropped whole."""
    source = postgres.create_database("partition_source")
    store = open_store(source, busy_timeout_s=5.0)
    try:
        _register(store)
        _store_seconds(store, 1, 300)
    finally:
        store.close()
    _maintain(source, T0 + 300 * S)

    old = postgres.create_database("partition_v5")
    _migrate_to(old, 5)
    with psycopg.connect(source) as src, psycopg.connect(old, autocommit=True) as dst:
        for table, cols in _TABLES.items():
            rows = src.execute(f"SELECT {cols} FROM {table}").fetchall()
            assert rows, table
            marks = ", ".join(["%s"] * len(rows[0]))
            dst.cursor().executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
        before = {t: _digest(dst, t) for t in ("telemetry_packed", "telemetry_rollups")}

    store = open_store(old, busy_timeout_s=5.0)  # migrates to schema 6
    try:
        version = store.query("SELECT MAX(version) AS v FROM schema_version")[0]["v"]
        assert version == MIGRATIONS[-1][0]
        with psycopg.connect(old, row_factory=psycopg.rows.dict_row) as con:
            after = {t: _digest(con, t) for t in before}
            packed = list_partitions(con, "telemetry_packed")
            tens = list_partitions(con, "telemetry_rollups_10s")
        assert after == before
        (legacy,) = packed
        assert legacy.name == "telemetry_packed_legacy" and legacy.lo is None
        assert legacy.hi is not None and legacy.hi % (60 * S) == 0
        assert [p.name for p in tens] == ["telemetry_rollups_10s_legacy"]

        # New data: seconds 300–399 go to 1-minute partitions after the legacy one.
        _register(store)
        _store_seconds(store, 1, 400)
    finally:
        store.close()
    _maintain(old, T0 + 460 * S)
    with psycopg.connect(old, row_factory=psycopg.rows.dict_row) as con:
        packed = list_partitions(con, "telemetry_packed")
    assert packed[0] == legacy
    assert len(packed) > 1
    assert packed[1].lo == legacy.hi  # clipped to the legacy partition's end
    assert all(p.hi is not None and p.hi - (p.lo or 0) <= 60 * S for p in packed[1:])

    # Past the raw horizon: everything goes, partitions dropped whole.
    m = _maintain(old, T0 + (400 + H + 120) * S)
    with psycopg.connect(old, row_factory=psycopg.rows.dict_row) as con:
        assert list_partitions(con, "telemetry_packed") == []
        assert _digest(con, "telemetry_packed") == (0, 0)
    assert m.totals.dropped_partitions == len(packed)
    assert m.totals.pruned_rows["raw"] >= before["telemetry_packed"][0]
