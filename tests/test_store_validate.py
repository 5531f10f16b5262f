"""Store and validation units: exactly-once bookkeeping on a real SQLite file, schema versioning,
packed telemetry columns, and per-sample validation rules."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flopwatt.collector.state import DeviceState, FleetState
from flopwatt.collector.telemetry_prep import TelemetryPreparer
from flopwatt.collector.validate import POWER_LIMIT_FACTOR, DeviceLimits, validate_series
from flopwatt.collector.writer import ProcessStoreWriter, apply_batch
from flopwatt.records import DeviceInfo, DeviceSeries, NodeInfo, SeriesBlock
from flopwatt.store.base import MessageWrite, Outcome
from flopwatt.store.chunks import pack_block_chunks, pack_chunk, unpack_chunk
from flopwatt.store.schema import SCHEMA_VERSION
from flopwatt.store.sqlite import SQLiteStore
from tests.collector_helpers import telemetry_pb

NOW = 1_800_000_000 * 10**9
LIMIT_700 = DeviceLimits(power_limit_w=700.0)


def _series(
    power: list[float], *, ts: list[int] | None = None, limit: list[float] | None = None
) -> DeviceSeries:
    n = len(power)
    cols = {
        "power_instant_w": np.array(power, dtype=np.float64),
        "sm_clock_mhz": np.full(n, 1980, dtype=np.uint32),
    }
    if limit is not None:
        cols["power_limit_w"] = np.array(limit, dtype=np.float64)
    stamps = np.array(ts if ts is not None else [NOW + i for i in range(n)], dtype=np.int64)
    return DeviceSeries("GPU-1", stamps, cols)


def test_validation_keeps_good_samples_and_counts_each_bad_one_once() -> None:
    s = _series([100.0, math.nan, -1.0, 700 * POWER_LIMIT_FACTOR + 1, 200.0, math.inf])
    good, counts = validate_series(s, now_unix_ns=NOW, limits=LIMIT_700)
    assert good.columns["power_instant_w"].tolist() == [100.0, 200.0]
    assert good.timestamp_unix_ns.tolist() == [NOW, NOW + 4]
    assert good.columns["sm_clock_mhz"].tolist() == [1980, 1980]
    assert counts == {"power_not_finite": 2, "power_negative": 1, "power_above_limit": 1}


def test_per_sample_power_limit_column_wins_and_unknown_limit_skips_the_check() -> None:
    s = _series([500.0, 500.0, 500.0], limit=[300.0, 800.0, 0.0])
    good, counts = validate_series(s, now_unix_ns=NOW, limits=None)
    # 500 > 1.5 × 300; 800 allows 1200; a limit of 0 W is no limit (the sample is refused)
    assert counts == {"power_above_limit": 1, "power_limit_out_of_range": 1}
    assert good.columns["power_instant_w"].tolist() == [500.0]
    _, counts = validate_series(_series([5000.0]), now_unix_ns=NOW, limits=None)
    assert counts == {}


def test_timestamps_in_the_future_or_invalid() -> None:
    ten_min = 600 * 10**9
    s = _series([1.0, 1.0, 1.0], ts=[NOW + ten_min, NOW + ten_min + 1, 0])
    _, counts = validate_series(s, now_unix_ns=NOW, limits=LIMIT_700)
    assert counts == {"timestamp_future": 1, "timestamp_invalid": 1}


def test_other_non_finite_values_are_rejected() -> None:
    s = DeviceSeries(
        "GPU-1",
        np.array([NOW, NOW + 1], dtype=np.int64),
        {"gpu_temperature_c": np.array([40.0, math.nan], dtype=np.float32)},
    )
    good, counts = validate_series(s, now_unix_ns=NOW, limits=None)
    assert counts == {"value_not_finite": 1} and len(good) == 1


def test_chunk_roundtrip_keeps_dtypes_and_absent_columns() -> None:
    ts = np.array([NOW, NOW + 1, NOW + 2], dtype=np.int64)
    cols = {
        "power_instant_w": np.array([1.5, -2.0, math.nan]),
        "sm_clock_mhz": np.array([1980, 1410, 0], dtype=np.uint32),
        "throttle_reasons": np.array([0, 4, 2**63], dtype=np.uint64),
    }
    blob = pack_chunk(ts, cols)
    assert blob[:4] == b"FWT1"
    back_ts, back = unpack_chunk(blob)
    assert back_ts.tolist() == ts.tolist()
    assert set(back) == set(cols)
    for name, v in cols.items():
        assert back[name].dtype == v.dtype.newbyteorder("<") or back[name].dtype == v.dtype
        assert np.array_equal(back[name], v, equal_nan=True)
    with pytest.raises(ValueError, match="trailing"):
        unpack_chunk(blob + b"x")
    with pytest.raises(ValueError, match="not a flopwatt"):
        unpack_chunk(b"XXXX" + blob[4:])


def test_chunks_widen_the_bitmap_only_for_columns_past_the_32nd() -> None:
    """Chunks of the first 32 columns keep the 32-bit ``FWT1`` header (byte-identical to what
    an older collector sharing the store writes and reads); the NVLink replay and recovery
    counters (the 33rd and 34th columns) need the 64-bit ``FWT2`` one. Every packer agrees, and a
    bitmap naming a column this version lacks is refused, not misread."""
    ts = np.array([NOW, NOW + 1], dtype=np.int64)
    narrow = {"xid_last": np.array([79, 79], dtype=np.uint64)}
    assert pack_chunk(ts, narrow)[:4] == b"FWT1"
    wide = {
        "power_instant_w": np.array([300.0, 301.0]),
        "nvlink_replay_errors_total": np.array([4, 40], dtype=np.uint64),
        "nvlink_recovery_errors_total": np.array([0, 1], dtype=np.uint64),
    }
    blob = pack_chunk(ts, wide)
    assert blob[:4] == b"FWT2"
    back_ts, back = unpack_chunk(blob)
    assert back_ts.tolist() == ts.tolist() and set(back) == set(wide)
    assert back["nvlink_replay_errors_total"].tolist() == [4, 40]
    block = SeriesBlock.concat([DeviceSeries("GPU-w", ts, wide)])
    row = pack_block_chunks(block)[0]
    assert row is not None and row[4] == blob
    unknown = bytearray(blob)
    unknown[8:16] = (int.from_bytes(blob[8:16], "little") | 1 << 62).to_bytes(8, "little")
    with pytest.raises(ValueError, match="does not know"):
        unpack_chunk(bytes(unknown))
    with pytest.raises(ValueError):
        unpack_chunk(blob[:6])


def _write(seq: int, digest: bytes = b"d", *, epoch: int = 1) -> MessageWrite:
    return MessageWrite("a", epoch, seq, "heartbeat", digest, NOW)


def test_store_exactly_once_and_contiguous_progress(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    out = store.apply([_write(1), _write(2), _write(2), _write(2, b"other")])
    assert [o.outcome for o in out] == [
        Outcome.STORED,
        Outcome.STORED,
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
    ]
    assert [o.committed_through for o in out] == [1, 2, 2, 2]
    assert store.committed_through("a", 1) == 2 and store.committed_through("a", 9) == 0
    rejected = MessageWrite("a", 1, 3, "telemetry", b"x", NOW, rejected_detail="broken")
    assert store.apply([rejected])[0].outcome is Outcome.REJECTED
    assert store.committed_through("a", 1) == 3  # a rejection consumes its sequence
    store.close()


def test_store_reopen_keeps_data_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    store.apply([_write(1)])
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    again = SQLiteStore(path)
    assert again.committed_through("a", 1) == 1
    assert again.apply([_write(1)])[0].outcome is Outcome.DUPLICATE
    mode = again.query("PRAGMA journal_mode")[0][0]
    assert mode == "wal"
    again.close()


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this flopwatt"):
        SQLiteStore(path)


def test_failed_transaction_rolls_back_everything(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    # A malformed write (a rejection key with three parts) fails inside the transaction.
    bad = MessageWrite(
        "a", 1, 2, "telemetry", b"x", NOW, rejected_samples={("GPU", "reason", "extra"): 1}
    )  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unpack"):
        store.apply([_write(1), bad])
    assert store.committed_through("a", 1) == 0
    assert store.query("SELECT COUNT(*) FROM messages")[0][0] == 0
    store.close()


def test_epochs_use_the_full_unsigned_64_bit_range(tmp_path: Path) -> None:
    """Epochs are random fixed64 values; SQLite integers are signed 64-bit."""
    store = SQLiteStore(tmp_path / "s.db")
    big = (1 << 64) - 5
    assert store.apply([_write(1, epoch=big)])[0].outcome is Outcome.STORED
    assert store.apply([_write(1, epoch=big)])[0].outcome is Outcome.DUPLICATE
    assert store.committed_through("a", big) == 1
    store.close()


async def test_process_writer_pipelines_batches_in_order(tmp_path: Path) -> None:
    """The process writer keeps several batches in flight; every write still commits exactly
    once, in submission order, and each future carries its own outcome."""
    SQLiteStore(tmp_path / "s.db").close()  # create the schema
    writer = ProcessStoreWriter(tmp_path / "s.db", max_batch=7, max_delay_s=0.0)
    try:
        futures = [writer.submit(_write(seq)) for seq in range(1, 301)]
        futures.append(writer.submit(_write(5, b"other")))
        outcomes = await asyncio.gather(*futures)
    finally:
        await asyncio.to_thread(writer.close)
    assert [o.outcome for o in outcomes[:300]] == [Outcome.STORED] * 300
    assert [o.committed_through for o in outcomes[:300]] == list(range(1, 301))
    assert outcomes[300].outcome is Outcome.CONFLICT
    store = SQLiteStore(tmp_path / "s.db")
    assert store.committed_through("a", 1) == 300
    store.close()


async def test_process_writer_fails_writes_when_its_process_dies(tmp_path: Path) -> None:
    """A writer process that dies fails the writes in flight and every later one with a clear
    error: nothing waits forever, and nothing is acked that was not committed."""
    SQLiteStore(tmp_path / "s.db").close()
    writer = ProcessStoreWriter(tmp_path / "s.db")
    try:
        assert (await writer.submit(_write(1))).outcome is Outcome.STORED
        writer._proc.kill()
        writer._proc.join(5)
        for seq in (2, 3):
            with pytest.raises(RuntimeError, match="store writer process ended"):
                await asyncio.wait_for(writer.submit(_write(seq)), 10)
    finally:
        await asyncio.to_thread(writer.close)


def test_batch_reports_each_devices_newest_values_once(tmp_path: Path) -> None:
    """A commit reports each device's newest stored values once, on its agent's last stored
    telemetry outcome (the metrics show the newest anyway), including a device missing from
    that last message."""
    store = SQLiteStore(tmp_path / "s.db")
    preparer = TelemetryPreparer()
    preparer.update_devices("a", {"GPU-0": DeviceLimits(), "GPU-1": DeviceLimits()})
    t0 = time.time_ns() - 10**9

    def telemetry(seq: int, uuid: str, power: float, t_ns: int) -> MessageWrite:
        energy = [float(seq * 10 + i) for i in range(3)]  # rising across messages
        wire = telemetry_pb(1, seq, uuid, n=3, t0_ns=t_ns, power_w=power, energy_j=energy)
        return MessageWrite(
            "a",
            1,
            seq,
            "telemetry",
            b"%d" % seq,
            NOW,
            telemetry_wire=wire.telemetry.SerializeToString(),
        )

    entries = [
        telemetry(1, "GPU-0", 100.0, t0),
        telemetry(2, "GPU-1", 200.0, t0),
        telemetry(3, "GPU-0", 300.0, t0 + 10**8),
    ]
    out = apply_batch(store, preparer, entries)
    store.close()
    assert [o.outcome for o in out] == [Outcome.STORED] * 3
    assert [o.rejected_samples for o in out] == [{}] * 3
    assert out[0].latest == () and out[1].latest == ()
    state = FleetState()
    state.register(
        NodeInfo("a"),
        1,
        [
            DeviceState(DeviceInfo(uuid=u, index=i, name="sim"), "a", None, "none")
            for i, u in enumerate(["GPU-0", "GPU-1"])
        ],
        NOW,
    )
    state.apply_latest(out[2].latest)
    devices = state.snapshot().devices
    assert devices["GPU-1"].latest["power_instant_w"] == 200.0
    assert devices["GPU-0"].latest["power_instant_w"] == 300.0
    assert devices["GPU-0"].latest_sample_unix_ns == t0 + 10**8 + 2 * 100_000_000


@pytest.mark.parametrize("lengths", [[4, 4, 4], [2, 0, 3], [0, 0]])
def test_block_chunks_equal_per_device_chunks(lengths: list[int]) -> None:
    """Packing a whole block at once (the writer joins a commit's messages into one) gives
    byte for byte the chunk each device's samples pack to on their own; equal lengths take
    the byte-matrix path, unequal ones the per-device path."""
    rng = np.random.default_rng(7)
    n = sum(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ts = np.sort(rng.integers(NOW, NOW + 10**9, size=n)).astype(np.int64)
    columns = {
        "power_instant_w": rng.uniform(50, 700, size=n),
        "sm_clock_mhz": rng.integers(300, 2000, size=n).astype(np.uint32),
        "throttle_reasons": rng.integers(0, 2**40, size=n).astype(np.uint64),
    }
    uuids = tuple(f"GPU-{d}" for d in range(len(lengths)))
    block = SeriesBlock(uuids, offsets, ts, columns)
    packed = pack_block_chunks(block)
    for d, uuid in enumerate(uuids):
        a, b = int(offsets[d]), int(offsets[d + 1])
        if a == b:
            assert packed[d] is None
            continue
        expected = pack_chunk(ts[a:b], {k: v[a:b] for k, v in columns.items()})
        assert packed[d] == (uuid, int(ts[a:b].min()), int(ts[a:b].max()), b - a, expected)


def test_joined_messages_with_a_bad_sample_count_rejections_per_message(tmp_path: Path) -> None:
    """When the joined block of a commit has a bad sample, rejections are still counted on the
    message that carried it, and the clean messages keep every sample; a message naming a
    device its agent did not register is stored without telemetry, its series counted as
    rejected, without touching the others."""
    store = SQLiteStore(tmp_path / "s.db")
    t0 = time.time_ns() - 10**9

    def telemetry(seq: int, uuid: str, power: list[float]) -> MessageWrite:
        t = t0 + seq * 10**8  # later messages carry later samples
        energy = [seq * 10.0 + i for i in range(len(power))]  # and more energy
        wire = telemetry_pb(1, seq, uuid, n=len(power), t0_ns=t, power_w=power, energy_j=energy)
        return MessageWrite(
            "a",
            1,
            seq,
            "telemetry",
            b"%d" % seq,
            NOW,
            telemetry_wire=wire.telemetry.SerializeToString(),
        )

    preparer = TelemetryPreparer()
    preparer.update_devices("a", {"GPU-0": LIMIT_700, "GPU-1": LIMIT_700})
    out = apply_batch(
        store,
        preparer,
        [
            telemetry(1, "GPU-0", [300.0, 301.0, 302.0]),
            telemetry(2, "GPU-1", [300.0, math.nan, 302.0]),
            telemetry(3, "GPU-9", [300.0]),
            telemetry(4, "GPU-0", [303.0, 304.0]),
        ],
    )
    assert [o.outcome for o in out] == [Outcome.STORED] * 4
    assert [o.committed_through for o in out] == [1, 2, 3, 4]
    assert [o.samples for o in out] == [3, 2, 0, 2]
    assert out[0].rejected_samples == {} and out[3].rejected_samples == {}
    assert out[1].rejected_samples == {("GPU-1", "power_not_finite"): 1}
    assert not out[2].rejected_detail and not out[2].reject_code
    rejected = store.query("SELECT sequence, device_uuid, reason, samples FROM rejected_samples")
    assert sorted(tuple(r) for r in rejected) == [
        (2, "GPU-1", "power_not_finite", 1),
        (3, "GPU-9", "unregistered_device", 1),
    ]
    rows = store.query("SELECT sequence, device_uuid, n_samples FROM telemetry_chunks")
    assert sorted(tuple(r) for r in rows) == [(1, "GPU-0", 3), (2, "GPU-1", 2), (4, "GPU-0", 2)]
    newest = {
        uuid: block.row(i)["power_instant_w"]
        for block in out[3].latest
        for i, uuid in enumerate(block.device_uuids)
    }
    assert newest == {"GPU-0": 304.0, "GPU-1": 302.0}
    store.close()


def test_background_checkpoint_moves_the_wal_into_the_database(tmp_path: Path) -> None:
    """With ``checkpoint_interval_s`` the committing connection never checkpoints (that copy and
    sync would sit on the ack path); a background connection does, so the WAL's content reaches
    the database file while the store is open, and close() stops it."""
    path = tmp_path / "s.db"
    store = SQLiteStore(path, checkpoint_interval_s=0.02)
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    size_before = path.stat().st_size
    store.apply([_write(i) for i in range(1, 2001)])
    deadline = time.monotonic() + 20
    while path.stat().st_size <= size_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.stat().st_size > size_before  # pages were copied from the WAL by the checkpointer
    store.close()
    assert not any(t.name == "sqlite-checkpoint" for t in threading.enumerate())
    again = SQLiteStore(path)
    assert again.committed_through("a", 1) == 2000
    again.close()
