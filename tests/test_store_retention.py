"""Retention on both engines: compaction keeps every sample bit for bit and exactly-once
bookkeeping intact, each tier is pruned at its horizon (the clock injected), a resend of a
pruned message is a duplicate (never stored again), the ledger tells pruned messages from gaps,
and the size cap prunes the oldest data early.

Uses the ``db`` and ``store`` fixtures (conftest): a fresh SQLite file and a fresh database on
a real PostgreSQL server."""

from __future__ import annotations

from contextlib import closing
from typing import Any

import numpy as np
import pytest

from flopwatt.records import DeviceInfo, NodeInfo, SeriesBlock
from flopwatt.store import rollup
from flopwatt.store.base import MessageWrite, Outcome, Registration, Store
from flopwatt.store.inspect import check_store, store_stats, table_bytes
from flopwatt.store.maintenance import Maintainer, MaintenanceConfig
from flopwatt.store.packing import unpack_compact
from flopwatt.store.readonly import connect_read_only
from flopwatt.store.retention import Retention, partition_span_s

S = 1_000_000_000
T0 = 1_764_997_200 * S  # a whole hour
AGENT, EPOCH = "node-r", 2**64 - 9
GPUS = ("GPU-a", "GPU-b")
PER_MESSAGE = 10  # samples per device per message (1 s at 10 Hz)


def _register(store: Store) -> None:
    node = NodeInfo(hostname=AGENT, agent_version="t", device_backend="sim")
    devices = tuple(
        DeviceInfo(uuid=u, index=i, name="NVIDIA H100 80GB HBM3", simulated=True)
        for i, u in enumerate(GPUS)
    )
    store.register_agents([Registration(node, devices, EPOCH, {}, T0)])


def _samples(sequence: int) -> tuple[np.ndarray[Any, Any], dict[str, np.ndarray[Any, Any]]]:
    """Message ``sequence``'s samples of one device: second ``sequence − 1`` after T0."""
    k = np.arange(PER_MESSAGE)
    ts = T0 + (sequence - 1) * S + k * (S // PER_MESSAGE)
    step = (sequence - 1) * PER_MESSAGE + k
    power = np.round(300.0 + 10 * np.sin(step / 7.0), 3)
    return ts.astype(np.int64), {
        "power_instant_w": power,
        "energy_j": np.round(1e5 + 30.0 * step, 3),
        "throttle_reasons": np.where(step % 50 < 5, 4, 0).astype(np.uint64),
    }


def telemetry(sequence: int, received_unix_ns: int) -> MessageWrite:
    ts, cols = _samples(sequence)
    n = len(GPUS)
    block = SeriesBlock(
        GPUS,
        np.arange(n + 1, dtype=np.int64) * PER_MESSAGE,
        np.tile(ts, n),
        {k: np.tile(v, n) for k, v in cols.items()},
    )
    return MessageWrite(
        AGENT,
        EPOCH,
        sequence,
        "telemetry",
        bytes([sequence % 256]) * 16,
        received_unix_ns,
        blocks=(block,),
        rejected_samples={("GPU-a", "power_negative"): 1},
    )


def _store_seconds(store: Store, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        outcome = store.apply([telemetry(seq, T0 + seq * S)])[0]
        assert outcome.outcome is Outcome.STORED


def _maintainer(db: str, now: list[int], spec: str = "", rows_per_step: int = 7) -> Maintainer:
    """Steps of 7 rows: messages (2 chunks each) are split across the limit, and kept whole."""
    config = MaintenanceConfig(
        retention=Retention.parse(spec), settle_s=60, rows_per_step=rows_per_step
    )
    return Maintainer(db, config, clock_ns=lambda: now[0], busy_timeout_s=5.0)


def _raw_samples(store: Store, device: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Every stored sample of ``device`` (compact chunks and fresh ones): times, power."""
    from flopwatt.store.chunks import unpack_chunk

    parts = [
        unpack_compact(bytes(r["data"]))
        for r in store.query(
            "SELECT data FROM telemetry_packed WHERE device_uuid = ? ORDER BY t_first_unix_ns",
            (device,),
        )
    ]
    parts += [
        unpack_chunk(bytes(r["data"]))
        for r in store.query(
            "SELECT data FROM telemetry_chunks WHERE device_uuid = ? ORDER BY t_first_unix_ns",
            (device,),
        )
    ]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0)
    ts = np.concatenate([p[0] for p in parts])
    power = np.concatenate([p[1]["power_instant_w"] for p in parts])
    return ts, power


def _n(store: Store, table: str, where: str = "1=1", *params: Any) -> int:
    rows = store.query(f"SELECT COUNT(*) AS n FROM {table} WHERE {where}", params)
    return int(rows[0]["n"])


def _check(db: str) -> Any:
    with closing(connect_read_only(db)) as conn:
        engine = "postgresql" if db.startswith("postgresql") else "sqlite"
        return check_store(conn, engine=engine, database=db)


def test_compaction_keeps_every_sample_and_exactly_once(
    db: str,
    store: Store,
) -> None:
    """300 s of two devices in 300 messages; maintenance at T0 + 5 min (settle 60 s) packs the
    settled ones per device: every sample comes back bit for bit (compact + fresh), a resend of
    a compacted message is a duplicate and the next one is stored; the ledger has no gap."""
    _register(store)
    _store_seconds(store, 1, 300)
    before = {g: _raw_samples(store, g) for g in GPUS}
    now = [T0 + 300 * S]
    m = _maintainer(db, now)
    try:
        m.run_pass()
        # Chunks whose newest sample is older than now − 60 s: the first 240 messages.
        assert _n(store, "telemetry_chunks") == 2 * 60
        assert _n(store, "telemetry_packed") >= 2
        assert m.totals.compacted_messages == 240
        assert m.totals.compacted_samples == 2 * 240 * PER_MESSAGE
        for g in GPUS:
            ts, power = _raw_samples(store, g)
            assert ts.tobytes() == before[g][0].tobytes()
            assert power.tobytes() == before[g][1].tobytes()
        assert store.apply([telemetry(7, T0)])[0].outcome is Outcome.DUPLICATE
        assert store.apply([telemetry(301, T0)])[0].outcome is Outcome.STORED
        now[0] += 120 * S
        m.run_pass()
        assert _n(store, "telemetry_chunks") == 0
    finally:
        m.close()
    report = _check(db)
    assert report.ok and report.gaps == 0
    (epoch,) = report.epochs
    assert (epoch.messages, epoch.duplicates, epoch.pruned) == (301, 1, 0)


def test_stored_rollups_equal_the_rollup_of_all_raw_samples(
    db: str,
    store: Store,
) -> None:
    """Three passes, each compacting what settled since the last: the stored 10 s and 1 min
    windows equal rollups computed from all raw samples at once (energy deltas exact, means
    sample-weighted), the energy pairs across passes included. Steps of one row: every message
    (two chunks) is larger than a step, and compacted whole."""
    _register(store)
    now = [T0]
    m = _maintainer(db, now, rows_per_step=1)
    try:
        for first, last in ((1, 200), (201, 555), (556, 900)):
            _store_seconds(store, first, last)
            now[0] = T0 + (last + 61) * S
            m.run_pass()
    finally:
        m.close()
    assert _n(store, "telemetry_chunks") == 0
    ts, cols = zip(*(_samples(s) for s in range(1, 901)), strict=True)
    all_ts = np.concatenate(ts)
    all_cols = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
    for tier in rollup.TIERS:
        expected = rollup.rollup(tier, rollup.sample_entries(all_ts, all_cols, None))
        for g in GPUS:
            rows = store.query(
                "SELECT window_start_unix_ns, n_samples, data FROM telemetry_rollups "
                "WHERE tier = ? AND device_uuid = ? ORDER BY window_start_unix_ns",
                (tier.name, g),
            )
            assert [int(r["window_start_unix_ns"]) for r in rows] == sorted(expected)
            for r in rows:
                got = rollup.decode(bytes(r["data"]))
                want = expected[int(r["window_start_unix_ns"])]
                assert int(r["n_samples"]) == int(want["samples"].sum())
                assert got.keys() == want.keys()
                for name in want:
                    np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)
        total = sum(
            float(rollup.decode(bytes(r["data"]))["energy_j:delta"].sum())
            for r in store.query(
                "SELECT data FROM telemetry_rollups WHERE tier = ? AND device_uuid = ?",
                (tier.name, "GPU-a"),
            )
        )
        assert total == pytest.approx(all_cols["energy_j"][-1] - all_cols["energy_j"][0])


def test_each_tier_is_pruned_at_its_horizon(db: str, store: Store) -> None:
    """raw=1h, 10s=2h, 1m=4h (results: the longest, 4h), the clock moved forward: raw data and
    its messages go first (the stream counts them pruned: no gap, and a resend of one is a
    duplicate that is not stored again), then the 10 s windows, then the 1 min windows,
    results and rejected-sample counts. PostgreSQL drops whole time partitions: a rollup
    window stays until all of its partition is past the horizon (one span later)."""
    postgres = db.startswith("postgresql")
    _register(store)
    _store_seconds(store, 1, 120)
    now = [T0 + 10 * 60 * S]
    m = _maintainer(db, now, "raw=1h,10s=2h,1m=4h")
    try:
        m.run_pass()
        assert _n(store, "telemetry_packed") > 0 and _n(store, "messages") == 120
        now[0] = T0 + 3600 * S + 121 * S  # every sample and message is past the raw horizon
        m.run_pass()
        assert _n(store, "telemetry_packed") == 0 and _n(store, "messages") == 0
        assert _n(store, "telemetry_rollups", "tier = '10s'") > 0
        assert _n(store, "rejected_samples") == 120  # results horizon: 4 h
        assert m.totals.pruned_rows["raw"] >= 120
        report = _check(db)
        assert report.ok, report
        (epoch,) = report.epochs
        assert (epoch.messages, epoch.pruned, epoch.gaps) == (0, 120, 0)
        # A resend of a pruned message: a duplicate, not a second copy.
        assert store.apply([telemetry(5, now[0])])[0].outcome is Outcome.DUPLICATE
        assert _n(store, "messages") == 0 and _n(store, "telemetry_chunks") == 0
        assert store.apply([telemetry(121, now[0])])[0].outcome is Outcome.STORED
        now[0] = T0 + 2 * 3600 * S + 600 * S + 200 * S
        m.run_pass()
        if postgres:
            # Whole partitions of 10 min (2 h / 7, rounded down to a span): the window's
            # partition goes once all of it is past the horizon, one span later.
            assert partition_span_s(2 * 3600) == 600
            assert _n(store, "telemetry_rollups", "tier = '10s'") > 0
            now[0] += 600 * S
            m.run_pass()
        assert _n(store, "telemetry_rollups", "tier = '10s'") == 0
        assert _n(store, "telemetry_rollups", "tier = '1m'") > 0
        now[0] = T0 + 4 * 3600 * S + 3600 * S + 400 * S
        m.run_pass()
        if postgres:
            assert _n(store, "telemetry_rollups", "tier = '1m'") > 0
            now[0] += partition_span_s(4 * 3600) * S
            m.run_pass()
            assert m.totals.dropped_partitions >= 3
        assert _n(store, "telemetry_rollups") == 0
        assert _n(store, "rejected_samples") == 0
        assert _n(store, "messages") == 0
    finally:
        m.close()
    report = _check(db)
    assert report.ok and report.epochs[0].pruned == 121


def test_the_size_cap_prunes_the_oldest_raw_data_early(
    db: str,
    store: Store,
) -> None:
    """A cap the store exceeds by about half its raw data: the oldest compact chunks go first
    (one episode, counted), the newest are kept, and the store really shrinks (PostgreSQL:
    whole partitions dropped — deleting rows would leave the database as large); horizons
    alone would have kept everything."""
    _register(store)
    _store_seconds(store, 1, 600)
    now = [T0 + 700 * S]
    m = _maintainer(db, now, "raw=1h")  # PostgreSQL: 1-minute raw partitions
    try:
        m.run_pass()
        assert _n(store, "telemetry_packed") > 0
        newest = store.query("SELECT MAX(t_last_unix_ns) AS t FROM telemetry_packed")[0]["t"]
        size = m.totals.store_bytes
        assert size is not None
        with closing(connect_read_only(db)) as conn:
            sizes = table_bytes(conn, postgres=db.startswith("postgresql"))
        assert sizes is not None
        packed = sizes["telemetry_packed"]
        assert packed > 0
        # Over 90 % of the cap now; under 80 % once about half the chunks are gone.
        cap = int(min(size / 0.9, (size - packed / 2) / 0.8))
        m.config = MaintenanceConfig(
            retention=m.config.retention, max_db_bytes=cap, settle_s=60, rows_per_step=1
        )
        m.run_pass()
        assert m.totals.early_prune_episodes == 1
        assert m.totals.early_pruned_rows > 0
        left = store.query(
            "SELECT MIN(t_first_unix_ns) AS lo, MAX(t_last_unix_ns) AS hi FROM telemetry_packed"
        )[0]
        assert int(left["lo"]) > T0 and int(left["hi"]) == int(newest)
        assert m.totals.store_bytes is not None and m.totals.store_bytes < size
        if db.startswith("postgresql"):
            assert m.totals.dropped_partitions > 0
        m.run_pass()
        assert m.totals.early_prune_episodes == 1  # still the same episode
    finally:
        m.close()
    assert _check(db).ok


def test_store_stats_give_each_tier(db: str, store: Store) -> None:
    _register(store)
    _store_seconds(store, 1, 300)
    now = [T0 + 300 * S]
    m = _maintainer(db, now)
    try:
        m.run_pass(measure_tiers=True)
    finally:
        m.close()
    with closing(connect_read_only(db)) as conn:
        engine = "postgresql" if db.startswith("postgresql") else "sqlite"
        stats = store_stats(conn, engine=engine, database=db, now_unix_ns=now[0])
    tiers = {k: v.as_json(now[0]) for k, v in stats.tiers.items()}
    assert set(tiers) == {"raw", "10s", "1m", "results"}
    assert tiers["raw"]["samples"] == 2 * 300 * PER_MESSAGE
    assert tiers["10s"]["samples"] == 2 * 240 * PER_MESSAGE  # what has been rolled up
    assert tiers["raw"]["oldest_age_s"] == pytest.approx(300.0)
    assert tiers["raw"]["newest_age_s"] == pytest.approx(0.1)
    for name in ("raw", "10s", "1m"):
        assert tiers[name]["rows"] > 0
        if engine == "sqlite" and tiers[name]["bytes"]:
            assert 0 < tiers[name]["bytes_per_sample"] < 200


def test_attribution_messages_go_at_the_raw_horizon_and_spans_at_the_results_one(
    db: str, store: Store
) -> None:
    """An attribution's message is ledger only (its content lives in its span): pruned with
    the raw tier like telemetry, counted in the stream; the span stays until the results
    horizon, so the report can still say who held the GPU."""
    from flopwatt.records import Attribution, DeviceAttribution, GpuProcess

    _register(store)
    for seq in (1, 2):
        a = Attribution(T0 + seq * S, (DeviceAttribution("GPU-a", (GpuProcess(9, "w"),), True),))
        write = MessageWrite(
            AGENT, EPOCH, seq, "attribution", bytes([seq]) * 16, T0 + seq * S, attribution=a
        )
        assert store.apply([write])[0].outcome is Outcome.STORED
    now = [T0 + 3600 * S + 10 * S]
    m = _maintainer(db, now, "raw=1h,10s=2h,1m=4h")
    try:
        m.run_pass()
        assert _n(store, "messages") == 0
        assert _n(store, "gpu_attribution") == 1
        (epoch,) = _check(db).epochs
        assert (epoch.pruned, epoch.gaps) == (2, 0)
        now[0] = T0 + 4 * 3600 * S + 10 * S
        m.run_pass()
        assert _n(store, "gpu_attribution") == 0
    finally:
        m.close()
