"""Physical bounds of telemetry, one test per rule, with hand-computed cases: what a GPU can
physically report, and what the collector therefore refuses to store (per sample or per
series, counted by reason) — see ``flopwatt/collector/validate.py`` for the rules' text."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from flopwatt.collector.telemetry_prep import TelemetryPreparer, claimed_samples
from flopwatt.collector.validate import (
    MAX_CLOCK_MHZ,
    REASONS,
    DeviceLimits,
    RejectReason,
    device_limits,
    reject_codes,
    thresholds,
    validate_series,
)
from flopwatt.records import DeviceInfo, DeviceSeries, SeriesBlock, TelemetryBatch
from flopwatt.store.base import MessageWrite
from flopwatt.v1 import telemetry_pb2
from flopwatt.wire import MAX_SERIES_SAMPLES, telemetry_to_proto

NOW = 1_800_000_000 * 10**9
GIB = 1 << 30
H100 = DeviceLimits(
    power_limit_w=700.0,
    power_limit_min_w=200.0,
    power_limit_max_w=700.0,
    sm_clock_max_mhz=1980,
    mem_clock_max_mhz=2619,
    memory_total_bytes=80 * GIB,
)


def _one(column: str, values: list[Any], dtype: Any, **more: list[Any]) -> DeviceSeries:
    """A series of ``values`` in ``column`` (plus ``more`` columns), one per nanosecond."""
    cols = {column: np.array(values, dtype=dtype)}
    for name, vals in more.items():
        cols[name] = np.array(vals, dtype=np.float64)
    return DeviceSeries("GPU-1", NOW + np.arange(len(values), dtype=np.int64), cols)


def _check(
    s: DeviceSeries, limits: DeviceLimits | None = H100
) -> tuple[DeviceSeries, dict[str, int]]:
    return validate_series(s, now_unix_ns=NOW, limits=limits)


# --- per-sample bounds ----------------------------------------------------------------------


def test_temperature_outside_minus_40_to_150_c_is_rejected() -> None:
    """GPU dies and HBM throttle near 85–95 °C and shut down by about 105 °C, well before
    150 °C; −40 °C is the lowest storage temperature of GPUs. A reading outside −40…150 °C
    (10,000 °C, −273 °C) is a sensor or wire error, not a temperature. The bounds themselves
    are believable."""
    temps = [-40.0, -40.5, 150.0, 150.5, 10_000.0, 25.0, -273.15]
    good, counts = _check(_one("gpu_temperature_c", temps, np.float32))
    assert counts == {"temperature_out_of_range": 4}
    assert good.columns["gpu_temperature_c"].tolist() == [-40.0, 150.0, 25.0]
    _, counts = _check(_one("memory_temperature_c", [95.0, 151.0], np.float32))
    assert counts == {"temperature_out_of_range": 1}
    # A temperature that is not a number is counted as such (an earlier reason), not twice.
    _, counts = _check(_one("gpu_temperature_c", [math.nan, math.inf], np.float32))
    assert counts == {"value_not_finite": 2}


def test_clock_above_one_and_a_half_times_the_maximum_is_rejected() -> None:
    """A GPU's clock does not exceed its maximum (boost) clock — overclocking headroom is a
    few per cent — so a clock above 1.5 × the registered maximum is a unit or wire error
    (1980 MHz max → bound 2970 MHz; 2619 MHz memory max → bound 3928.5 MHz). Without a
    registered maximum the bound is 10,000 MHz, beyond any GPU clock."""
    good, counts = _check(_one("sm_clock_mhz", [1980, 2970, 2971, 0], np.uint32))
    assert counts == {"clock_out_of_range": 1}
    assert good.columns["sm_clock_mhz"].tolist() == [1980, 2970, 0]
    _, counts = _check(_one("mem_clock_mhz", [2619, 3928, 3929], np.uint32))
    assert counts == {"clock_out_of_range": 1}
    unknown = DeviceLimits(power_limit_w=700.0)
    assert MAX_CLOCK_MHZ == 10_000
    _, counts = _check(_one("sm_clock_mhz", [9999, 10_000, 10_001, 2**32 - 1], np.uint32), unknown)
    assert counts == {"clock_out_of_range": 2}
    _, counts = _check(_one("mem_clock_mhz", [10_001], np.uint32), None)
    assert counts == {"clock_out_of_range": 1}


def test_utilization_outside_zero_to_one_is_rejected() -> None:
    """Utilisation is the fraction of a sample period a kernel (or the memory) was busy: by
    definition 0…1. NVML reports percent; 45 as a ratio is a percent sent without ÷ 100."""
    good, counts = _check(
        _one("gpu_utilization_ratio", [0.0, 1.0, -0.01, 1.01, 0.5, 45.0], np.float32)
    )
    assert counts == {"utilization_out_of_range": 3}
    assert good.columns["gpu_utilization_ratio"].tolist() == [0.0, 1.0, 0.5]
    _, counts = _check(_one("memory_utilization_ratio", [0.4, 1.5], np.float32))
    assert counts == {"utilization_out_of_range": 1}


def test_memory_used_above_the_devices_memory_is_rejected() -> None:
    """A device cannot use more memory than it has (80 GiB here); without a registered
    total (0 = unknown) there is no bound."""
    used = [0, 80 * GIB, 80 * GIB + 1, 2**64 - 1]
    good, counts = _check(_one("memory_used_bytes", used, np.uint64))
    assert counts == {"memory_used_out_of_range": 2}
    assert good.columns["memory_used_bytes"].tolist() == [0, 80 * GIB]
    _, counts = _check(
        _one("memory_used_bytes", used, np.uint64), DeviceLimits(memory_total_bytes=0)
    )
    assert counts == {}


def test_sample_power_limit_outside_the_devices_range_is_rejected() -> None:
    """The enforced power limit can only be set within the device's [min, max] constraints
    (200…700 W for an H100 SXM); NVML reports whole milliwatts, so 1 W of slack is allowed
    (199…701 W). A limit ≤ 0 W or not a number is not a limit."""
    limits = [199.0, 198.9, 701.0, 701.5, 0.0, -5.0, math.nan, math.inf, 700.0]
    good, counts = _check(_one("power_limit_w", limits, np.float64))
    assert counts == {"power_limit_out_of_range": 6}
    assert good.columns["power_limit_w"].tolist() == [199.0, 701.0, 700.0]
    # Without a registered range only ≤ 0 and non-finite limits are refused.
    _, counts = _check(
        _one("power_limit_w", [5000.0, 0.0, math.nan], np.float64), DeviceLimits(700.0)
    )
    assert counts == {"power_limit_out_of_range": 2}


def test_power_is_checked_against_a_believable_limit() -> None:
    """Power above 1.5 × the limit is not believable. The sample's own limit is used when it
    passes its own bound (600 W → 900 W cap), else the registered one (700 W → 1050 W cap),
    so a garbage limit of 5000 W neither excuses 1100 W nor is counted instead of it."""
    good, counts = _check(
        _one(
            "power_instant_w",
            [950.0, 950.0, 1100.0, 300.0],
            np.float64,
            power_limit_w=[600.0, 700.0, 5000.0, 5000.0],
        )
    )
    assert counts == {"power_above_limit": 2, "power_limit_out_of_range": 1}
    assert good.columns["power_instant_w"].tolist() == [950.0]


def test_energy_decreasing_inside_a_series_rejects_the_later_samples() -> None:
    """Energy is the integral of power since the epoch began (the agent folds counter resets
    into an offset): it never decreases within an epoch. Each sample is compared with the
    largest energy accepted before it (12 → 11 and 13 → 12.5 are refused, equal is fine);
    rejected samples never raise that reference (a 1e6 J sample at 10,000 °C is refused for
    its temperature and the 11 J after it is still fine)."""
    good, counts = _check(_one("energy_j", [10.0, 12.0, 11.0, 12.0, 13.0, 12.5], np.float64))
    assert counts == {"energy_decreasing": 2}
    assert good.columns["energy_j"].tolist() == [10.0, 12.0, 12.0, 13.0]
    s = _one("energy_j", [10.0, 1e6, 11.0], np.float64)
    s.columns["gpu_temperature_c"] = np.array([40, 10_000, 41], dtype=np.float32)  # type: ignore[index]
    _, counts = _check(s)
    assert counts == {"temperature_out_of_range": 1}
    # A starting reference from before the series (the device's previous message).
    _, counts = validate_series(
        _one("energy_j", [99.0, 100.0, 101.0], np.float64),
        now_unix_ns=NOW,
        limits=None,
        energy_from=100.0,
    )
    assert counts == {"energy_decreasing": 1}


def test_each_sample_counts_once_under_the_first_reason_in_order() -> None:
    """A sample wrong in several ways is counted once, under the first reason in
    :class:`RejectReason` order: power before temperature before energy decreasing. Energy
    3 J is accepted; 5 J (power NaN) is refused and does not raise the reference; 1 J at
    10,000 °C counts as a temperature; 2 J < 3 J is decreasing."""
    s = DeviceSeries(
        "GPU-1",
        NOW + np.arange(4, dtype=np.int64),
        {
            "power_instant_w": np.array([100.0, math.nan, 100.0, 100.0]),
            "gpu_temperature_c": np.array([40.0, 40.0, 10_000.0, 40.0], dtype=np.float32),
            "energy_j": np.array([3.0, 5.0, 1.0, 2.0]),
        },
    )
    good, counts = _check(s)
    assert counts == {
        "power_not_finite": 1,
        "temperature_out_of_range": 1,
        "energy_decreasing": 1,
    }
    assert good.columns["energy_j"].tolist() == [3.0]
    order = [r.value for r in REASONS]
    assert order[:4] == [
        "malformed_series",
        "unregistered_device",
        "timestamp_invalid",
        "timestamp_future",
    ]
    assert order[-1] == RejectReason.ENERGY_DECREASING.value


_SPOILS: dict[str, Any] = {
    "power_instant_w": math.inf,
    "energy_j": -1.0,
    "sm_clock_mhz": 2**32 - 1,
    "gpu_temperature_c": 1000.0,
    "gpu_utilization_ratio": 2.0,
    "power_limit_w": -1.0,
    "memory_used_bytes": 2**63,
}


@pytest.mark.parametrize("spoil", [None, *_SPOILS])
def test_reject_codes_fast_path_agrees_with_the_per_rule_masks(spoil: str | None) -> None:
    """The all-good fast path answers None exactly when no rule rejects a row, for blocks of
    several devices with different limits; one bad value in any column is found."""
    rng = np.random.default_rng(5)
    n = 30
    cols: dict[str, Any] = {
        "power_instant_w": rng.uniform(50, 290, n),  # below 1.5 × the lowest limit, 200 W
        "energy_j": rng.uniform(0, 1e6, n),
        "sm_clock_mhz": rng.integers(0, 1980, n).astype(np.uint32),
        "gpu_temperature_c": rng.uniform(-40, 150, n).astype(np.float32),
        "gpu_utilization_ratio": rng.uniform(0, 1, n).astype(np.float32),
        "power_limit_w": rng.uniform(200, 700, n),
        "memory_used_bytes": rng.integers(0, 40 * GIB, n).astype(np.uint64),
    }
    if spoil is not None:
        cols[spoil][7] = _SPOILS[spoil]  # a row of device A, the one with every bound
    block = SeriesBlock(
        ("A", "B", "C"),
        np.array([0, 10, 20, 30], dtype=np.int64),
        NOW + np.arange(n, dtype=np.int64),
        cols,
    )
    table = np.stack([thresholds(H100), thresholds(None), thresholds(DeviceLimits(300.0))])
    codes = reject_codes(block, now_unix_ns=NOW, thresholds=table)
    if spoil is None:
        assert codes is None
    else:
        assert codes is not None and np.flatnonzero(codes).tolist() == [7]


# --- limits ---------------------------------------------------------------------------------


def test_device_limits_take_the_enforced_limit_else_the_tdp() -> None:
    """The limit power is checked against is the enforced limit the device registered, else
    its SKU's TDP; zero (NVML's "not supported" placeholder) counts as unknown."""
    info = DeviceInfo(
        uuid="GPU-1",
        index=0,
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=80 * GIB,
        power_limit_enforced_w=650.0,
        power_limit_min_w=200.0,
        power_limit_max_w=700.0,
        sm_clock_max_mhz=1980,
        mem_clock_max_mhz=2619,
    )
    assert device_limits(info, 700.0) == DeviceLimits(650.0, 200.0, 700.0, 1980, 2619, 80 * GIB)
    bare = DeviceInfo(uuid="GPU-2", index=1, name="x", power_limit_enforced_w=0.0)
    assert device_limits(bare, 700.0) == DeviceLimits(power_limit_w=700.0)
    assert device_limits(bare, None) == DeviceLimits()


# --- series, messages, epochs (through the writer's preparer) ------------------------------

AGENT = "node-a"


def _series(uuid: str, energy: list[float], t0: int, **cols: list[float]) -> DeviceSeries:
    columns: dict[str, Any] = {
        "power_instant_w": np.full(len(energy), 300.0),
        "energy_j": np.array(energy, dtype=np.float64),
    }
    for name, vals in cols.items():
        columns[name] = np.array(vals, dtype=np.float32)
    return DeviceSeries(uuid, t0 + np.arange(len(energy), dtype=np.int64) * 10**8, columns)


def _write(
    epoch: int, seq: int, *series: DeviceSeries | telemetry_pb2.DeviceSeries
) -> MessageWrite:
    m = telemetry_pb2.TelemetryBatch()
    for s in series:
        if isinstance(s, DeviceSeries):
            m.series.extend(telemetry_to_proto(TelemetryBatch((s,))).series)
        else:
            m.series.append(s)
    return MessageWrite(
        AGENT, epoch, seq, "telemetry", b"", 0, telemetry_wire=m.SerializeToString()
    )


def _preparer(uuids: tuple[str, ...] = ("GPU-0", "GPU-1")) -> TelemetryPreparer:
    p = TelemetryPreparer(clock_ns=lambda: T0 + 60 * 10**9)
    p.update_devices(AGENT, {u: H100 for u in uuids})
    return p


T0 = time.time_ns() - 60 * 10**9


def _both(writes: list[MessageWrite]) -> list[tuple[int, dict[tuple[str, str], int]]]:
    """(samples, rejections) per write, asserting the batch and one-by-one paths agree."""
    batch, _ = _preparer().prepare_batch(writes)
    alone_prep = _preparer()
    alone = [alone_prep.prepare(w) for w in writes]
    got = [(w.samples, dict(w.rejected_samples)) for w in batch]
    assert got == [(w.samples, dict(w.rejected_samples)) for w in alone]
    return got


def test_energy_decreasing_across_messages_of_one_epoch_but_not_across_epochs() -> None:
    """Within an epoch, energy carries on from the device's previous message (100 J → a
    message starting at 90 J loses the samples below 100 J); a new epoch (agent restart)
    starts from zero again and is accepted; the other device is unaffected."""
    writes = [
        _write(1, 1, _series("GPU-0", [95.0, 100.0], T0), _series("GPU-1", [5.0], T0)),
        _write(1, 2, _series("GPU-0", [90.0, 99.0, 100.0, 101.0], T0 + 10**9)),
        _write(2, 1, _series("GPU-0", [0.0, 1.0], T0 + 2 * 10**9)),
        _write(2, 2, _series("GPU-0", [0.5, 2.0], T0 + 3 * 10**9), _series("GPU-1", [1.0], T0)),
    ]
    assert _both(writes) == [
        (3, {}),
        (2, {("GPU-0", "energy_decreasing"): 2}),
        (2, {}),
        (2, {("GPU-0", "energy_decreasing"): 1}),  # GPU-1's epoch-2 stream starts fresh
    ]
    p = _preparer()
    p.prepare_batch(writes)
    assert p.energy_reference("GPU-0") == (2, 2, 2.0)


def test_energy_reference_does_not_survive_a_replay_after_a_failed_commit() -> None:
    """When a commit fails, the agent resends its messages: a message whose sequence is not
    above the last one the writer validated starts without a cross-message reference, so a
    replay is never refused against energy of messages that were never stored."""
    first = _write(1, 1, _series("GPU-0", [10.0, 20.0], T0))
    second = _write(1, 2, _series("GPU-0", [30.0, 40.0], T0 + 10**9))
    p = _preparer()
    p.prepare_batch([first, second])  # prepared, then (say) the commit failed
    replayed, _ = p.prepare_batch([first, second])
    assert [(w.samples, dict(w.rejected_samples)) for w in replayed] == [(2, {}), (2, {})]


def test_unregistered_series_is_rejected_alone_and_counted() -> None:
    """A series naming a device the agent did not register is refused with its samples
    counted (``unregistered_device``); the registered devices' samples beside it are
    stored. A message of foreign series only is stored empty (it consumes its sequence)."""
    writes = [
        _write(
            1,
            1,
            _series("GPU-0", [1.0, 2.0], T0),
            _series("GPU-other", [1.0, 2.0, 3.0], T0),
            _series("GPU-1", [1.0], T0),
        ),
        _write(1, 2, _series("GPU-other", [4.0], T0 + 10**9)),
    ]
    assert _both(writes) == [
        (3, {("GPU-other", "unregistered_device"): 3}),
        (0, {("GPU-other", "unregistered_device"): 1}),
    ]
    batch, _ = _preparer().prepare_batch(writes)
    assert batch[1].chunks == () and not batch[1].rejected_detail


def _proto(s: DeviceSeries) -> telemetry_pb2.DeviceSeries:
    return telemetry_to_proto(TelemetryBatch((s,))).series[0]


@pytest.mark.parametrize(
    ("spoil", "uuid", "claimed"),
    [
        ("column_short", "GPU-1", 3),  # power has 2 values for 3 timestamps
        ("no_uuid", "", 3),
        ("partial_timestamp", "GPU-1", 1),  # 20 bytes is not whole int64
        ("no_samples", "GPU-1", 1),
        ("no_timestamps_but_a_column", "GPU-1", 1),
    ],
)
def test_malformed_series_is_rejected_alone_and_counted(
    spoil: str, uuid: str, claimed: int
) -> None:
    """A structurally broken series is refused alone (``malformed_series``), counted with
    the samples its timestamps claim (byte length ÷ 8 when whole and positive, else 1); the
    good series beside it is stored."""
    bad = _proto(_series("GPU-1", [1.0, 2.0, 3.0], T0))
    if spoil == "column_short":
        bad.power_instant_w = bad.power_instant_w[:-8]
    elif spoil == "no_uuid":
        bad.device_uuid = ""
    elif spoil == "partial_timestamp":
        bad.timestamp_unix_ns = bad.timestamp_unix_ns[:-4]
    elif spoil == "no_samples":
        bad = telemetry_pb2.DeviceSeries(device_uuid="GPU-1")
    else:
        bad = telemetry_pb2.DeviceSeries(device_uuid="GPU-1", power_instant_w=b"\0" * 8)
    writes = [_write(1, 1, _series("GPU-0", [1.0, 2.0], T0), bad)]
    assert _both(writes) == [(2, {(uuid, "malformed_series"): claimed})]


def test_oversized_series_is_a_malformed_series() -> None:
    """More than ``MAX_SERIES_SAMPLES`` samples in one series is refused like any other
    broken series (no longer a whole-message RESOURCE_EXHAUSTED), counted with its size."""
    n = MAX_SERIES_SAMPLES + 1
    big = telemetry_pb2.DeviceSeries(
        device_uuid="GPU-1", timestamp_unix_ns=np.full(n, T0, dtype="<i8").tobytes()
    )
    writes = [_write(1, 1, _series("GPU-0", [1.0], T0), big)]
    assert _both(writes) == [(1, {("GPU-1", "malformed_series"): n})]


def test_claimed_samples_of_a_broken_series() -> None:
    assert [claimed_samples(b) for b in (0, 4, 8, 20, 24, 8 * 10**6)] == [1, 1, 1, 1, 3, 10**6]


def test_bytes_that_are_not_a_batch_still_reject_the_whole_message() -> None:
    """Only bytes that do not decode as a ``TelemetryBatch`` reject the whole message (the
    stream is then ended with INVALID_ARGUMENT)."""
    w = MessageWrite(AGENT, 1, 1, "telemetry", b"", 0, telemetry_wire=b"\xff\xff")
    (batch,), _ = _preparer().prepare_batch([w])
    alone = _preparer().prepare(w)
    for out in (batch, alone):
        assert out.reject_code == "invalid_argument" and "TelemetryBatch" in out.rejected_detail
