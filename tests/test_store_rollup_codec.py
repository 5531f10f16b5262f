"""Compact chunks and rollups: lossless packing, and rollups equal to what the raw samples say.

The reference for each rollup figure is computed here directly from the raw samples (numpy on
the whole series), never through the rollup code's own grouping."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flopwatt.records import TELEMETRY_COLUMNS
from flopwatt.store import rollup
from flopwatt.store.packing import (
    SCALED,
    XOR,
    decode_words,
    encode_floats,
    pack_compact,
    unpack_compact,
)

S = 1_000_000_000
T0 = 1_764_997_200 * S  # a whole hour


def _series(
    n: int, seed: int = 0, hz: float = 10.0
) -> tuple[npt.NDArray[np.int64], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    # Starts 10 min before a whole hour: series of 20 min and more span two 1-hour windows.
    ts = (
        T0
        - 600 * S
        + (np.arange(n) * (S / hz)).astype(np.int64)
        + rng.integers(-300_000, 300_000, n)
    )
    power = np.round(300 + 20 * rng.standard_normal(n), 3)
    energy = np.round(1e6 + np.cumsum(power) / hz, 3)
    cols: dict[str, Any] = {
        "power_instant_w": power,
        "power_average_1s_w": np.round(power * 0.99, 3),
        "energy_j": energy,
        "sm_clock_mhz": rng.choice([1755, 1980], n).astype(np.uint32),
        "gpu_temperature_c": np.round(60 + rng.random(n), 1).astype(np.float32),
        # NVML: whole percent
        "gpu_utilization_ratio": (rng.integers(90, 101, n) / 100).astype(np.float32),
        "throttle_reasons": rng.choice([0, 4, 4 | 32, 1 << 63], n).astype(np.uint64),
        "power_limit_w": np.full(n, 700.0),
        "memory_used_bytes": (np.arange(n) // 100 * (1 << 20) + (40 << 30)).astype(np.uint64),
    }
    return ts, cols


def test_compact_chunks_give_back_every_bit() -> None:
    """Every encoding is lossless, including NaN payloads, infinities, u64 bitmasks with the
    top bit set, and values that are not short decimals (XOR path)."""
    ts, cols = _series(777)
    cols["memory_temperature_c"] = np.array(
        [np.nan, np.inf, -0.0, 1e-30] * 194 + [3.5], dtype=np.float32
    )
    blob = pack_compact(ts, cols)
    ts2, cols2 = unpack_compact(blob)
    assert ts2.tobytes() == ts.tobytes()
    assert set(cols2) == set(cols)
    for name, values in cols.items():
        expected = values.astype(np.dtype(dict((c.name, c.dtype) for c in TELEMETRY_COLUMNS)[name]))
        assert cols2[name].tobytes() == expected.tobytes(), name


def test_compact_chunks_widen_the_bitmap_only_for_columns_past_the_32nd() -> None:
    """Without a column past the 32nd the header is the 32-bit ``FWZ1`` one an older version
    reads; with one (the NVLink replay counter is the 33rd) it is ``FWZ2`` with a 64-bit bitmap,
    and every column comes back. A bitmap naming a column this version lacks is refused."""
    ts, cols = _series(50)
    assert pack_compact(ts, cols)[:4] == b"FWZ1"
    assert TELEMETRY_COLUMNS[32].name == "nvlink_replay_errors_total"
    cols["nvlink_replay_errors_total"] = np.arange(50, dtype=np.uint64)
    cols["xid_last"] = np.full(50, 79, dtype=np.uint64)
    blob = pack_compact(ts, cols)
    assert blob[:4] == b"FWZ2"
    ts2, cols2 = unpack_compact(blob)
    assert ts2.tobytes() == ts.tobytes() and set(cols2) == set(cols)
    assert cols2["nvlink_replay_errors_total"].tolist() == list(range(50))
    assert cols2["xid_last"].tolist() == [79] * 50
    unknown = bytearray(blob)
    unknown[8:16] = (int.from_bytes(blob[8:16], "little") | 1 << 62).to_bytes(8, "little")
    with pytest.raises(ValueError, match="does not know"):
        unpack_compact(bytes(unknown))


def test_compact_chunks_are_small_for_milliwatt_telemetry() -> None:
    """NVML-resolution values at 10 Hz pack to a few bytes per sample (vs 80 uncompressed)."""
    ts, cols = _series(600)
    per_sample = len(pack_compact(ts, cols)) / 600
    assert per_sample < 20


def test_float_columns_pick_the_smallest_exact_decimal_scale_or_xor() -> None:
    """Hand cases, several columns of two dtypes encoded together: milliwatts scale by 1000,
    half-degrees by 10 (0.5 is not a whole number, 5 tenths are), whole values by 1, a NaN or
    full-precision noise falls back to XOR; each column decodes to its exact bits."""
    cols = [
        np.array([301.125, 300.5, 299.001]),
        np.array([60.5, 61.0, 61.5], dtype=np.float32),
        np.array([1.0, np.nan, 3.0]),
        np.array([700.0, 700.0, 700.0]),
        np.array([0.1, 0.2, 1 / 3]),
        np.array([0.93, 0.94, 1.0], dtype=np.float32),
    ]
    got = encode_floats(cols)
    assert [(code, k) for code, k, _ in got] == [
        (SCALED, 3),
        (SCALED, 1),
        (XOR, 0),
        (SCALED, 0),
        (XOR, 0),
        (SCALED, 2),
    ]
    for col, (code, k, words) in zip(cols, got, strict=True):
        back = decode_words(words, code, k, col.dtype)
        assert back.tobytes() == col.tobytes()


def test_a_corrupt_compact_chunk_is_an_error() -> None:
    ts, cols = _series(10)
    blob = pack_compact(ts, cols)
    with pytest.raises(ValueError, match="not a flopwatt"):
        unpack_compact(b"XXXX" + blob[4:])
    with pytest.raises(ValueError):
        unpack_compact(blob[:-3])


def _reference(
    tier: rollup.RollupTier, ts: npt.NDArray[np.int64], cols: dict[str, Any]
) -> dict[int, dict[str, Any]]:
    """Per bucket start: the figures, straight from the raw samples."""
    buckets = (ts // tier.bucket_ns) * tier.bucket_ns
    out: dict[int, dict[str, Any]] = {}
    energy = cols["energy_j"]
    dt = np.diff(ts) / 1e9
    for b in np.unique(buckets).tolist():
        idx = np.flatnonzero(buckets == b)
        p = cols["power_instant_w"][idx]
        # Energy: the counter's increase from the sample before the bucket's first (if any)
        # to the bucket's last.
        start = idx[0] - 1 if idx[0] > 0 else idx[0]
        throttle = cols["throttle_reasons"][idx]
        pairs = idx[idx > 0]
        out[b] = {
            "samples": len(idx),
            "mean_power": p.mean(),
            "min_power": p.min(),
            "max_power": p.max(),
            "last_power": p[-1],
            "energy": energy[idx[-1]] - energy[start],
            "or": int(np.bitwise_or.reduce(throttle)),
            "throttle_s_2": float(
                np.sum(np.minimum(dt[pairs - 1], 5.0)[(cols["throttle_reasons"][pairs] & 4) > 0])
            ),
        }
    return out


@pytest.mark.parametrize("tier", rollup.TIERS, ids=lambda t: t.name)
def test_rollups_equal_the_reference_from_raw_samples(tier: rollup.RollupTier) -> None:
    """min/max/last/sample-weighted mean per bucket as numpy computes them on the raw data;
    energy per bucket is the exact counter delta and the buckets add up to last − first;
    throttle: the OR, and the seconds with each reason."""
    ts, cols = _series(12_000)  # 20 minutes at 10 Hz: several windows of both tiers
    windows = rollup.rollup(tier, rollup.sample_entries(ts, cols, None))
    assert len(windows) >= 2
    ref = _reference(tier, ts, cols)
    got: dict[int, dict[str, Any]] = {}
    for start, arrays in windows.items():
        assert (arrays["bucket"] // tier.window_ns * tier.window_ns == start).all()
        means = rollup.mean(arrays, "power_instant_w")
        for i, b in enumerate(arrays["bucket"].tolist()):
            got[b] = {
                "samples": int(arrays["samples"][i]),
                "mean_power": means[i],
                "min_power": arrays["power_instant_w:min"][i],
                "max_power": arrays["power_instant_w:max"][i],
                "last_power": arrays["power_instant_w:last"][i],
                "energy": arrays["energy_j:delta"][i],
                "or": int(arrays["throttle_reasons:or"][i]),
                "throttle_s_2": arrays["throttle_s:2"][i],
            }
    assert got.keys() == ref.keys()
    for b, r in ref.items():
        g = got[b]
        assert g["samples"] == r["samples"]
        assert g["min_power"] == r["min_power"] and g["max_power"] == r["max_power"]
        assert g["last_power"] == r["last_power"]
        assert g["mean_power"] == pytest.approx(r["mean_power"], rel=1e-12)
        assert g["energy"] == pytest.approx(r["energy"], rel=1e-12, abs=1e-9)
        assert g["or"] == r["or"]
        assert g["throttle_s_2"] == pytest.approx(r["throttle_s_2"], rel=1e-12)
    total = sum(float(w["energy_j:delta"].sum()) for w in windows.values())
    assert total == pytest.approx(cols["energy_j"][-1] - cols["energy_j"][0], rel=1e-12)


def test_rollups_built_in_pieces_equal_one_built_at_once() -> None:
    """Maintenance rolls up whatever settled since its last pass and merges it into the stored
    window: splitting the raw data anywhere (mid-bucket too) gives the same rollup, the
    energy pair across the split included (it comes from the previous pass's last sample)."""
    tier = rollup.TIER_BY_NAME["10s"]
    ts, cols = _series(3_000, seed=3)
    whole = rollup.rollup(tier, rollup.sample_entries(ts, cols, None))
    merged: dict[int, rollup.Arrays] = {}
    previous = None
    for lo, hi in ((0, 1234), (1234, 1235), (1235, 3_000)):
        part = {k: v[lo:hi] for k, v in cols.items()}
        entries = rollup.sample_entries(ts[lo:hi], part, previous)
        previous = rollup.Previous(int(ts[hi - 1]), float(cols["energy_j"][hi - 1]))
        for start, arrays in rollup.rollup(tier, entries).items():
            stored = merged.get(start)
            # through the blob, as the store does
            merged[start] = rollup.decode(
                rollup.encode(arrays if stored is None else rollup.merge(stored, arrays))
            )
    assert merged.keys() == whole.keys()
    for start, arrays in whole.items():
        assert merged[start].keys() == arrays.keys()
        for name, values in arrays.items():
            np.testing.assert_allclose(merged[start][name], values, rtol=1e-12, err_msg=name)


def test_a_counter_restart_counts_no_negative_energy_and_gaps_are_not_observed_time() -> None:
    """Hand-computed: samples at 0, 1, 2 s and 20 s (the device was away); the counter goes
    100 → 150 → 10 (restart) → 70. Energy delta: 50 + 0 + 60 = 110 J over the 1 + 18 s of the
    pairs counted; observed time 1 + 1 + 5 (capped) = 7 s."""
    ts = T0 + np.array([0, 1, 2, 20], dtype=np.int64) * S
    cols = {"energy_j": np.array([100.0, 150.0, 10.0, 70.0])}
    (arrays,) = rollup.rollup(
        rollup.TIER_BY_NAME["1m"], rollup.sample_entries(ts, cols, None)
    ).values()
    assert arrays["energy_j:delta"].tolist() == [110.0]
    assert arrays["energy_j:delta_s"].tolist() == [19.0]
    assert arrays["interval_s"].tolist() == [7.0]
    assert arrays["energy_j:n"].tolist() == [4]


def test_a_corrupt_rollup_is_an_error() -> None:
    ts, cols = _series(50)
    (arrays,) = rollup.rollup(
        rollup.TIER_BY_NAME["1m"], rollup.sample_entries(ts, cols, None)
    ).values()
    blob = rollup.encode(arrays)
    with pytest.raises(ValueError, match="not a flopwatt"):
        rollup.decode(b"ABCD" + blob[4:])
    with pytest.raises(ValueError):
        rollup.decode(blob[:-5])
