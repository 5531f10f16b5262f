"""The report's newest-telemetry lookup and the schema migration that made it walk the primary
key: each device's newest chunk must be found whether the device is live, was lost before its
agent restarted (only an older epoch holds it) or moved to another host."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from flopwatt.records import DeviceInfo, DeviceSeries, NodeInfo, SeriesBlock
from flopwatt.report.loading import load_report_inputs
from flopwatt.store.base import MessageWrite
from flopwatt.store.schema import MIGRATIONS, SCHEMA_VERSION
from flopwatt.store.sqlite import SQLiteStore

NOW = 1_800_000_000 * 10**9
S = 10**9


def _register(store: SQLiteStore, host: str, epoch: int, uuids: list[str]) -> None:
    devices = [
        DeviceInfo(uuid=u, index=i, name="NVIDIA H100 80GB HBM3") for i, u in enumerate(uuids)
    ]
    store.register_agent(
        NodeInfo(hostname=host, agent_version="test"),
        devices,
        epoch,
        {u: ("H100-SXM5-80GB", "name") for u in uuids},
        NOW - 3600 * S,
    )


def _telemetry(host: str, epoch: int, seq: int, t_s: int, power: dict[str, float]) -> MessageWrite:
    series = [
        DeviceSeries(
            uuid, np.array([NOW + t_s * S], dtype=np.int64), {"power_instant_w": np.array([w])}
        )
        for uuid, w in power.items()
    ]
    digest = hashlib.sha256(f"{host}/{epoch}/{seq}".encode()).digest()
    return MessageWrite(
        host, epoch, seq, "telemetry", digest, NOW, blocks=(SeriesBlock.concat(series),)
    )


def _last_power(path: Path) -> dict[str, float]:
    frame = load_report_inputs(path).telemetry
    return dict(zip(frame["device_uuid"], frame["last_power_w"], strict=True))


def test_newest_chunk_per_device_across_epochs_and_hosts(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    _register(store, "n1", 1, ["GPU-a", "GPU-b", "GPU-c"])
    store.apply(
        [
            _telemetry("n1", 1, 1, 0, {"GPU-a": 100.0, "GPU-b": 200.0, "GPU-c": 300.0}),
            _telemetry("n1", 1, 2, 1, {"GPU-a": 110.0, "GPU-b": 210.0, "GPU-c": 310.0}),
        ]
    )
    # n1 restarts without GPU-b (lost); GPU-c moves to n2.
    _register(store, "n1", 2, ["GPU-a"])
    _register(store, "n2", 7, ["GPU-c"])
    _register(store, "n3", 1, ["GPU-quiet"])  # registered, never sent telemetry
    store.apply(
        [
            _telemetry("n1", 2, 1, 5, {"GPU-a": 120.0}),
            _telemetry("n1", 2, 2, 6, {"GPU-a": 130.0}),
            _telemetry("n2", 7, 1, 7, {"GPU-c": 330.0}),
        ]
    )
    store.close()
    assert _last_power(path) == {"GPU-a": 130.0, "GPU-b": 210.0, "GPU-c": 330.0}
    frame = load_report_inputs(path).telemetry.set_index("device_uuid")
    assert frame.loc["GPU-b", "last_sample_unix_ns"] == NOW + 1 * S


def test_migration_from_v1_drops_the_per_device_index_and_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    version, statements = MIGRATIONS[0]
    assert version == 1
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in statements:
        db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    _register(store, "n1", 1, ["GPU-a"])
    store.apply([_telemetry("n1", 1, 1, 0, {"GPU-a": 100.0})])
    assert store.schema_version() == SCHEMA_VERSION == 8
    indexes = {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "telemetry_by_device" not in indexes
    store.close()
    assert _last_power(path) == {"GPU-a": pytest.approx(100.0)}


def test_report_still_reads_a_v1_file(tmp_path: Path) -> None:
    """A file last written by the first release (with the old index) reads the same."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    _register(store, "n1", 1, ["GPU-a"])
    store.apply([_telemetry("n1", 1, 1, 0, {"GPU-a": 100.0})])
    store.close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM schema_version WHERE version > 1")
    db.execute(
        "CREATE INDEX telemetry_by_device ON telemetry_chunks (device_uuid, t_first_unix_ns)"
    )
    db.commit()
    db.close()
    assert _last_power(path) == {"GPU-a": 100.0}


def test_device_silent_for_longer_than_the_walk_is_found_by_the_fallback(tmp_path: Path) -> None:
    """GPU-y last reported 200 batches ago in the current epoch, beyond the newest-first walk
    (64 chunks per device): the scan by time still finds its last chunk."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    _register(store, "n1", 1, ["GPU-x", "GPU-y"])
    writes = [_telemetry("n1", 1, 1, 0, {"GPU-x": 100.0, "GPU-y": 250.0})]
    writes += [_telemetry("n1", 1, s, s, {"GPU-x": 100.0 + s}) for s in range(2, 202)]
    store.apply(writes)
    store.close()
    assert _last_power(path) == {"GPU-x": 301.0, "GPU-y": 250.0}
