"""The writer's batch preparation of telemetry must store exactly what preparing each message on
its own stores: same outcomes, same chunks byte for byte, same rejection counts, same newest
values. The batch path packs chunks straight from the wire bytes and checks a whole commit's
lengths at once; the one-by-one path decodes into arrays and packs from them, so agreement
between the two checks the byte layout as well as the bookkeeping."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flopwatt.collector.latest import latest_block
from flopwatt.collector.store import MessageWrite, SQLiteStore, unpack_chunk
from flopwatt.collector.telemetry_prep import REJECT_INVALID, TelemetryPreparer
from flopwatt.collector.writer import DeviceUpdate, apply_batch
from flopwatt.records import DeviceSeries, TelemetryBatch
from flopwatt.v1 import telemetry_pb2
from flopwatt.wire import telemetry_to_proto

AGENT = "agent-a"
DEVICES = [f"GPU-{d}" for d in range(4)]


def _series(uuid: str, t0: int, n: int, *, rng: np.random.Generator, full: bool) -> DeviceSeries:
    cols: dict[str, Any] = {
        "power_instant_w": rng.uniform(50, 400, n),
        "power_average_1s_w": rng.uniform(50, 400, n),
        "energy_j": np.cumsum(rng.uniform(1, 5, n)),
        "sm_clock_mhz": rng.integers(300, 2000, n).astype(np.uint32),
        "throttle_reasons": rng.integers(0, 2**40, n).astype(np.uint64),
    }
    if full:
        cols["memory_temperature_c"] = rng.uniform(30, 80, n).astype(np.float32)
        cols["power_limit_w"] = np.full(n, 700.0)
    stamps = t0 + np.arange(n, dtype=np.int64) * 100_000_000
    return DeviceSeries(uuid, stamps, cols)


def _wire(series: list[DeviceSeries]) -> bytes:
    return telemetry_to_proto(TelemetryBatch(tuple(series))).SerializeToString()


def _messages(t0: int) -> list[bytes]:
    """Every shape a commit can hold: uniform messages, mixed column sets within one message,
    a bad sample, an unregistered device, a malformed series, no series, an empty series."""
    rng = np.random.default_rng(11)
    out = []
    for k in range(6):  # uniform, all four devices
        out.append(_wire([_series(u, t0 + k * 10**9, 10, rng=rng, full=True) for u in DEVICES]))
    # mixed column sets in one message (and a different sample count per device)
    out.append(
        _wire(
            [
                _series(DEVICES[0], t0 + 7 * 10**9, 5, rng=rng, full=True),
                _series(DEVICES[1], t0 + 7 * 10**9, 3, rng=rng, full=False),
                _series(DEVICES[2], t0 + 7 * 10**9, 5, rng=rng, full=True),
            ]
        )
    )
    bad = _series(DEVICES[1], t0 + 8 * 10**9, 4, rng=rng, full=True)
    bad.columns["power_instant_w"][2] = math.nan  # type: ignore[index]
    bad.columns["power_average_1s_w"][3] = -5.0  # type: ignore[index]
    out.append(_wire([_series(DEVICES[0], t0 + 8 * 10**9, 4, rng=rng, full=True), bad]))
    out.append(_wire([_series("GPU-unregistered", t0, 3, rng=rng, full=True)]))
    broken = telemetry_to_proto(
        TelemetryBatch((_series(DEVICES[2], t0 + 9 * 10**9, 4, rng=rng, full=True),))
    )
    broken.series[0].power_instant_w = broken.series[0].power_instant_w[:-8]
    out.append(broken.SerializeToString())
    out.append(telemetry_pb2.TelemetryBatch(missed_ticks=3).SerializeToString())
    out.append(
        _wire(
            [
                _series(DEVICES[3], t0 + 10 * 10**9, 6, rng=rng, full=False),
                DeviceSeries(DEVICES[2], np.zeros(0, dtype=np.int64), {}),
            ]
        )
    )
    for k in range(3):  # uniform again after the odd ones
        out.append(
            _wire([_series(u, t0 + (11 + k) * 10**9, 10, rng=rng, full=False) for u in DEVICES])
        )
    return out


def _writes(wires: list[bytes]) -> list[MessageWrite]:
    return [
        MessageWrite(AGENT, 1, seq, "telemetry", b"", 5, telemetry_wire=w)
        for seq, w in enumerate(wires, start=1)
    ]


def _stored(store: SQLiteStore) -> tuple[list[tuple[Any, ...]], ...]:
    tables = [
        "SELECT * FROM telemetry_chunks ORDER BY sequence, chunk_index",
        "SELECT * FROM rejected_samples ORDER BY sequence, device_uuid, reason",
        "SELECT sequence, kind, digest, status, detail, samples FROM messages ORDER BY sequence",
    ]
    return tuple([tuple(r) for r in store.query(sql)] for sql in tables)


def _newest(blocks: list[Any]) -> dict[str, tuple[int, dict[str, float]]]:
    """uuid → (stamp, values) applying rows in order, newer or equal stamp wins."""
    newest: dict[str, tuple[int, dict[str, float]]] = {}
    for lb in blocks:
        for i, uuid in enumerate(lb.device_uuids):
            stamp = int(lb.stamps_unix_ns[i])
            if uuid not in newest or stamp >= newest[uuid][0]:
                newest[uuid] = (stamp, lb.row(i))
    return newest


@pytest.mark.parametrize("split", [1, 4, 100])
def test_batch_preparation_stores_what_one_by_one_preparation_stores(
    tmp_path: Path, split: int
) -> None:
    """Commits of ``split`` messages through the batch path against each message prepared and
    stored alone: identical outcomes, rows and newest values."""
    t0 = time.time_ns() - 60 * 10**9
    wires = _messages(t0)
    limits = {u: 700.0 for u in DEVICES}

    batch_store = SQLiteStore(tmp_path / "batch.db")
    batch_prep = TelemetryPreparer()
    apply_batch(batch_store, batch_prep, [DeviceUpdate(AGENT, limits)])
    writes = _writes(wires)
    batch_out = []
    for k in range(0, len(writes), split):
        batch_out += apply_batch(batch_store, batch_prep, writes[k : k + split])

    alone_store = SQLiteStore(tmp_path / "alone.db")
    alone_prep = TelemetryPreparer()
    alone_prep.update_devices(AGENT, limits)
    alone = []
    latest = []
    for w in _writes(wires):
        prepared = alone_prep.prepare(w)
        (outcome,) = alone_store.apply([prepared])
        alone.append(
            (
                outcome.outcome,
                outcome.committed_through,
                prepared.rejected_detail,
                prepared.reject_code,
                prepared.samples,
                dict(prepared.rejected_samples),
            )
        )
        latest += [lb for b in prepared.blocks if (lb := latest_block(b)) is not None]

    assert [
        (
            o.outcome,
            o.committed_through,
            o.rejected_detail,
            o.reject_code,
            o.samples,
            dict(o.rejected_samples),
        )
        for o in batch_out
    ] == alone
    assert [o.samples for o in batch_out] == [10 * 4] * 6 + [13, 6, 0, 0, 0, 6] + [40] * 3
    assert batch_out[7].rejected_samples == {
        ("GPU-1", "power_not_finite"): 1,
        ("GPU-1", "power_negative"): 1,
    }
    assert batch_out[8].reject_code == REJECT_INVALID and "GPU-unregistered" in (
        batch_out[8].rejected_detail
    )
    assert batch_out[9].reject_code == REJECT_INVALID
    assert _stored(batch_store) == _stored(alone_store)
    assert _newest([lb for o in batch_out for lb in o.latest]) == _newest(latest)
    batch_store.close()
    alone_store.close()


def test_chunks_packed_from_wire_bytes_decode_to_the_sent_values(tmp_path: Path) -> None:
    """A chunk the batch path packs from wire bytes unpacks to exactly the arrays sent, with
    absent columns absent."""
    rng = np.random.default_rng(3)
    sent = [_series(u, time.time_ns() - 10**9, 7, rng=rng, full=u == "GPU-0") for u in DEVICES]
    store = SQLiteStore(tmp_path / "s.db")
    prep = TelemetryPreparer()
    out = apply_batch(
        store,
        prep,
        [DeviceUpdate(AGENT, {u: None for u in DEVICES}), *_writes([_wire(sent)])],
    )
    assert out[0].samples == 28
    rows = store.query("SELECT device_uuid, data FROM telemetry_chunks ORDER BY chunk_index")
    assert [r["device_uuid"] for r in rows] == DEVICES
    for s, row in zip(sent, rows, strict=True):
        ts, cols = unpack_chunk(row["data"])
        np.testing.assert_array_equal(ts, s.timestamp_unix_ns)
        assert set(cols) == set(s.columns)
        for name, values in s.columns.items():
            assert cols[name].dtype == values.dtype
            np.testing.assert_array_equal(cols[name], values)
    store.close()
