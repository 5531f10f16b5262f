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

from flopwatt.collector.telemetry_prep import REJECT_INVALID, TelemetryPreparer
from flopwatt.collector.validate import DeviceLimits
from flopwatt.collector.writer import apply_batch
from flopwatt.records import DeviceSeries, TelemetryBatch
from flopwatt.store.base import MessageWrite, Outcome
from flopwatt.store.chunks import unpack_chunk
from flopwatt.store.latest import latest_block
from flopwatt.store.sqlite import SQLiteStore
from flopwatt.v1 import telemetry_pb2
from flopwatt.wire import telemetry_to_proto

AGENT = "agent-a"
DEVICES = [f"GPU-{d}" for d in range(4)]
GIB = 1 << 30
H100 = DeviceLimits(
    power_limit_w=700.0,
    power_limit_min_w=200.0,
    power_limit_max_w=700.0,
    sm_clock_max_mhz=1980,
    mem_clock_max_mhz=2619,
    memory_total_bytes=80 * GIB,
)
LIMITS = {u: H100 for u in DEVICES}


def _series(
    uuid: str,
    t0: int,
    n: int,
    *,
    rng: np.random.Generator,
    full: bool,
    energy_from: float | None = None,
) -> DeviceSeries:
    """``n`` samples 0.1 s apart from ``t0``. Energy rises inside the series and, unless
    ``energy_from`` is given, with ``t0`` too (100 J per second of ``t0``), so that a device's
    later messages carry more energy, as a real device's do."""
    e0 = t0 / 1e9 * 100.0 if energy_from is None else energy_from
    cols: dict[str, Any] = {
        "power_instant_w": rng.uniform(50, 400, n),
        "power_average_1s_w": rng.uniform(50, 400, n),
        "energy_j": e0 + np.cumsum(rng.uniform(1, 5, n)),
        "sm_clock_mhz": rng.integers(300, 2000, n).astype(np.uint32),
        "throttle_reasons": rng.integers(0, 2**40, n).astype(np.uint64),
    }
    if full:
        cols["mem_clock_mhz"] = np.full(n, 2619, dtype=np.uint32)
        cols["gpu_temperature_c"] = rng.uniform(30, 80, n).astype(np.float32)
        cols["memory_temperature_c"] = rng.uniform(30, 80, n).astype(np.float32)
        cols["gpu_utilization_ratio"] = rng.uniform(0, 1, n).astype(np.float32)
        cols["power_limit_w"] = np.full(n, 700.0)
        cols["memory_used_bytes"] = rng.integers(0, 80 * GIB, n).astype(np.uint64)
    stamps = t0 + np.arange(n, dtype=np.int64) * 100_000_000
    return DeviceSeries(uuid, stamps, cols)


def _wire(series: list[DeviceSeries]) -> bytes:
    return telemetry_to_proto(TelemetryBatch(tuple(series))).SerializeToString()


def _broken(s: DeviceSeries) -> telemetry_pb2.DeviceSeries:
    """``s`` with one power value missing (wrong byte length)."""
    m = telemetry_to_proto(TelemetryBatch((s,))).series[0]
    m.power_instant_w = m.power_instant_w[:-8]
    return m


def _messages(t0: int) -> list[tuple[int, bytes]]:
    """(epoch, telemetry bytes) of every shape a commit can hold: uniform messages, mixed
    column sets within one message, bad samples, an unregistered device, a malformed series,
    no series, an empty series, out-of-range values, unregistered and broken series beside
    good ones, energy decreasing across two messages of one epoch, and a new epoch whose
    energy starts again from zero."""
    rng = np.random.default_rng(11)
    s = 10**9
    out: list[bytes] = []
    for k in range(6):  # 1-6: uniform, all four devices
        out.append(_wire([_series(u, t0 + k * s, 10, rng=rng, full=True) for u in DEVICES]))
    # 7: mixed column sets in one message (and a different sample count per device)
    out.append(
        _wire(
            [
                _series(DEVICES[0], t0 + 7 * s, 5, rng=rng, full=True),
                _series(DEVICES[1], t0 + 7 * s, 3, rng=rng, full=False),
                _series(DEVICES[2], t0 + 7 * s, 5, rng=rng, full=True),
            ]
        )
    )
    # 8: bad samples
    bad = _series(DEVICES[1], t0 + 8 * s, 4, rng=rng, full=True)
    bad.columns["power_instant_w"][2] = math.nan  # type: ignore[index]
    bad.columns["power_average_1s_w"][3] = -5.0  # type: ignore[index]
    out.append(_wire([_series(DEVICES[0], t0 + 8 * s, 4, rng=rng, full=True), bad]))
    # 9: an unregistered device only; 10: a broken series only; 11: no series
    out.append(_wire([_series("GPU-unregistered", t0, 3, rng=rng, full=True)]))
    broken = telemetry_pb2.TelemetryBatch(
        series=[_broken(_series(DEVICES[2], t0 + 9 * s, 4, rng=rng, full=True))]
    )
    out.append(broken.SerializeToString())
    out.append(telemetry_pb2.TelemetryBatch(missed_ticks=3).SerializeToString())
    # 12: a series beside an empty one
    out.append(
        _wire(
            [
                _series(DEVICES[3], t0 + 10 * s, 6, rng=rng, full=False),
                DeviceSeries(DEVICES[2], np.zeros(0, dtype=np.int64), {}),
            ]
        )
    )
    for k in range(3):  # 13-15: uniform again after the odd ones
        out.append(_wire([_series(u, t0 + (11 + k) * s, 10, rng=rng, full=False) for u in DEVICES]))
    # 16: out-of-range values, one per device and rule, and energy falling inside a series
    odd = [_series(u, t0 + 14 * s, 10, rng=rng, full=True) for u in DEVICES]
    odd[0].columns["gpu_temperature_c"][1] = 10_000.0  # type: ignore[index]
    odd[0].columns["energy_j"][7] = odd[0].columns["energy_j"][6] - 1.0  # type: ignore[index]
    odd[1].columns["sm_clock_mhz"][2] = 5000  # type: ignore[index]
    odd[2].columns["gpu_utilization_ratio"][3] = 1.5  # type: ignore[index]
    odd[3].columns["memory_used_bytes"][4] = 81 * GIB  # type: ignore[index]
    odd[3].columns["power_limit_w"][5] = 1000.0  # type: ignore[index]
    out.append(_wire(odd))
    # 17: an unregistered series between good ones
    before = _series(DEVICES[0], t0 + 15 * s, 5, rng=rng, full=True)
    out.append(
        _wire(
            [
                before,
                _series("GPU-unregistered", t0 + 15 * s, 3, rng=rng, full=True),
                _series(DEVICES[1], t0 + 15 * s, 5, rng=rng, full=True),
            ]
        )
    )
    # 18: a broken series and one without a uuid beside good ones
    no_uuid = telemetry_to_proto(
        TelemetryBatch((_series(DEVICES[0], t0 + 16 * s, 2, rng=rng, full=False),))
    ).series[0]
    no_uuid.device_uuid = ""
    mixed = telemetry_pb2.TelemetryBatch(
        series=[
            *telemetry_to_proto(
                TelemetryBatch((_series(DEVICES[2], t0 + 16 * s, 5, rng=rng, full=True),))
            ).series,
            _broken(_series(DEVICES[3], t0 + 16 * s, 5, rng=rng, full=True)),
            *telemetry_to_proto(
                TelemetryBatch((_series(DEVICES[1], t0 + 16 * s, 5, rng=rng, full=True),))
            ).series,
            no_uuid,
        ]
    )
    out.append(mixed.SerializeToString())
    # 19: GPU-0's energy restarts 3 J below where message 17 left it (3 samples refused);
    # its column set differs from message 17's, so the batch path validates the two in
    # different joined blocks and must still compare them in message order.
    last = float(before.columns["energy_j"][-1])
    again = _series(DEVICES[0], t0 + 17 * s, 5, rng=rng, full=False)
    again.columns["energy_j"][:] = last - 3.0 + np.arange(5)  # type: ignore[index]
    out.append(_wire([again, _series(DEVICES[1], t0 + 17 * s, 5, rng=rng, full=True)]))
    epochs = [1] * len(out)
    # 20-21, epoch 2 (the agent restarted): energy starts again from zero and is accepted
    out.append(
        _wire(
            [_series(u, t0 + 18 * s, 5, rng=rng, full=True, energy_from=0.0) for u in DEVICES[:2]]
        )
    )
    out.append(_wire([_series(DEVICES[0], t0 + 19 * s, 5, rng=rng, full=True, energy_from=50.0)]))
    epochs += [2, 2]
    return list(zip(epochs, out, strict=True))


def _writes(messages: list[tuple[int, bytes]]) -> list[MessageWrite]:
    """One write per message, numbered 1, 2, 3, … within each epoch."""
    seqs: dict[int, int] = {}
    out = []
    for epoch, wire in messages:
        seqs[epoch] = seqs.get(epoch, 0) + 1
        out.append(
            MessageWrite(AGENT, epoch, seqs[epoch], "telemetry", b"", 5, telemetry_wire=wire)
        )
    return out


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
    stored alone: identical outcomes, rows, rejection counts and newest values."""
    t0 = time.time_ns() - 60 * 10**9
    messages = _messages(t0)

    batch_store = SQLiteStore(tmp_path / "batch.db")
    batch_prep = TelemetryPreparer()
    batch_prep.update_devices(AGENT, LIMITS)
    direct_prep = TelemetryPreparer()  # the same commits, prepared without a store
    direct_prep.update_devices(AGENT, LIMITS)
    writes = _writes(messages)
    batch_out = []
    direct = []
    for k in range(0, len(writes), split):
        batch_out += apply_batch(batch_store, batch_prep, writes[k : k + split])
        direct += direct_prep.prepare_batch(writes[k : k + split])[0]

    alone_store = SQLiteStore(tmp_path / "alone.db")
    alone_prep = TelemetryPreparer()
    alone_prep.update_devices(AGENT, LIMITS)
    alone = []
    latest = []
    for w in _writes(messages):
        prepared = alone_prep.prepare(w)
        (outcome,) = alone_store.apply([prepared])
        alone.append((prepared, outcome))
        latest += [lb for b in prepared.blocks if (lb := latest_block(b)) is not None]

    def outcome(o: Any) -> tuple[Any, ...]:
        return (o.outcome, o.committed_through, o.rejected_detail, o.reject_code)

    def write(w: MessageWrite) -> tuple[Any, ...]:
        return (w.samples, dict(w.rejected_samples), w.rejected_detail, w.reject_code)

    assert [outcome(o) for o in batch_out] == [outcome(o) for _, o in alone]
    assert [write(w) for w in direct] == [write(w) for w, _ in alone]
    for o, (w, _) in zip(batch_out, alone, strict=True):
        if o.samples:  # a stored message with telemetry reports what it stored and refused
            assert (o.samples, dict(o.rejected_samples)) == (w.samples, dict(w.rejected_samples))
    stored = [40] * 6 + [13, 6, 0, 0, 0, 6] + [40] * 3 + [34, 10, 10, 7] + [10, 5]
    assert [w.samples for w in direct] == stored
    # Every message is stored (consumes its sequence), even one whose every series is refused.
    assert [o.outcome for o in batch_out] == [Outcome.STORED] * len(stored)
    rejections = {i + 1: dict(w.rejected_samples) for i, w in enumerate(direct)}
    assert {i: r for i, r in rejections.items() if r} == {
        8: {("GPU-1", "power_not_finite"): 1, ("GPU-1", "power_negative"): 1},
        9: {("GPU-unregistered", "unregistered_device"): 3},
        10: {("GPU-2", "malformed_series"): 4},
        12: {("GPU-2", "malformed_series"): 1},
        16: {
            ("GPU-0", "temperature_out_of_range"): 1,
            ("GPU-0", "energy_decreasing"): 1,
            ("GPU-1", "clock_out_of_range"): 1,
            ("GPU-2", "utilization_out_of_range"): 1,
            ("GPU-3", "memory_used_out_of_range"): 1,
            ("GPU-3", "power_limit_out_of_range"): 1,
        },
        17: {("GPU-unregistered", "unregistered_device"): 3},
        18: {("GPU-3", "malformed_series"): 5, ("", "malformed_series"): 2},
        19: {("GPU-0", "energy_decreasing"): 3},
    }
    assert _stored(batch_store) == _stored(alone_store)
    assert _newest([lb for o in batch_out for lb in o.latest]) == _newest(latest)
    batch_store.close()
    alone_store.close()


def test_bytes_that_are_not_a_batch_reject_the_whole_message(tmp_path: Path) -> None:
    """Only undecodable bytes reject a message as a whole (the stream then ends)."""
    store = SQLiteStore(tmp_path / "db")
    prep = TelemetryPreparer()
    prep.update_devices(AGENT, LIMITS)
    out = apply_batch(store, prep, _writes([(1, b"\xff\xff")]))
    assert out[0].outcome is Outcome.REJECTED and out[0].reject_code == REJECT_INVALID
    assert "not a TelemetryBatch" in out[0].rejected_detail
    store.close()


def test_rejected_samples_and_series_never_reach_the_newest_values(tmp_path: Path) -> None:
    """A 10,000 °C sample (the device's newest) and an unregistered device's series in one
    batch: the good device's chunk holds only its good samples, the outcome counts both by
    reason, and the newest values the metrics show contain neither."""
    store = SQLiteStore(tmp_path / "db")
    prep = TelemetryPreparer()
    prep.update_devices(AGENT, {DEVICES[0]: H100})
    t = time.time_ns() - 10**9
    stamps = t + np.arange(3, dtype=np.int64) * 100_000_000
    good = DeviceSeries(
        DEVICES[0],
        stamps,
        {
            "power_instant_w": np.array([300.0, 301.0, 302.0]),
            "gpu_temperature_c": np.array([50.0, 51.0, 10_000.0], dtype=np.float32),
            "energy_j": np.array([1.0, 2.0, 3.0]),
        },
    )
    foreign = DeviceSeries(
        "GPU-foreign",
        stamps[:2] + 1,
        {
            "power_instant_w": np.array([999.0, 999.0]),
            "gpu_temperature_c": np.array([77.0, 77.0], dtype=np.float32),
            "energy_j": np.array([1.0, 2.0]),
        },
    )
    (out,) = apply_batch(store, prep, _writes([(1, _wire([good, foreign]))]))
    assert out.outcome is Outcome.STORED and out.samples == 2
    assert out.rejected_samples == {
        (DEVICES[0], "temperature_out_of_range"): 1,
        ("GPU-foreign", "unregistered_device"): 2,
    }
    rows = store.query("SELECT device_uuid, data FROM telemetry_chunks")
    assert [r["device_uuid"] for r in rows] == [DEVICES[0]]
    ts, cols = unpack_chunk(rows[0]["data"])
    assert ts.tolist() == stamps[:2].tolist()
    assert cols["gpu_temperature_c"].tolist() == [50.0, 51.0]
    assert [lb.device_uuids for lb in out.latest] == [(DEVICES[0],)]
    (lb,) = out.latest
    assert lb.row(0) == {"power_instant_w": 301.0, "gpu_temperature_c": 51.0, "energy_j": 2.0}
    assert int(lb.stamps_unix_ns[0]) == int(stamps[1])
    assert not any(v in (10_000.0, 999.0, 77.0) for lb in out.latest for v in lb.values.ravel())
    store.close()


def test_chunks_packed_from_wire_bytes_decode_to_the_sent_values(tmp_path: Path) -> None:
    """A chunk the batch path packs from wire bytes unpacks to exactly the arrays sent, with
    absent columns absent."""
    rng = np.random.default_rng(3)
    sent = [_series(u, time.time_ns() - 10**9, 7, rng=rng, full=u == "GPU-0") for u in DEVICES]
    store = SQLiteStore(tmp_path / "s.db")
    prep = TelemetryPreparer()
    prep.update_devices(AGENT, {u: DeviceLimits() for u in DEVICES})
    out = apply_batch(store, prep, _writes([(1, _wire(sent))]))
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
