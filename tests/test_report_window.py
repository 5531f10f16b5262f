"""Readers use the tiers: the report's "telemetry over the window" figures come from raw
samples where the store keeps them and from rollups where they are pruned, name the resolution
they came from, and equal a reference computed from every raw sample over the span they cover
(energy: the exact counter delta, restarts counting 0; means sample-weighted; maxima exact).

Both engines (the ``db`` / ``store`` fixtures). Three hours of one device at 1 Hz, compacted
and pruned with short horizons (raw 30 min, 10 s 90 min, 1 min 1 day) at T0 + 3 h with the
clock injected; the last minute stays fresh (uncompacted).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import closing
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from flopwatt.cli import cli
from flopwatt.collector.report_route import report_route
from flopwatt.http_server import HttpServer
from flopwatt.records import DeviceInfo, NodeInfo, SeriesBlock
from flopwatt.report.files import as_report
from flopwatt.report.json_doc import report_from_jsonable, report_to_jsonable
from flopwatt.report.tables import ReportParameters
from flopwatt.store.base import MessageWrite, Outcome, Registration, Store
from flopwatt.store.maintenance import Maintainer, MaintenanceConfig
from flopwatt.store.readonly import connect_read_only, read_snapshot
from flopwatt.store.retention import Retention
from flopwatt.store.window import preferred_tier, read_windows

S = 1_000_000_000
T0 = 1_764_997_200 * S  # a whole hour
AGENT, EPOCH, GPU = "node-w", 7, "GPU-w"
SECONDS = 3 * 3600
PER_MESSAGE = 60  # one minute of 1 Hz samples per message
NOW = T0 + SECONDS * S
RESTART_AT = 5000  # the energy counter restarts (driver reload) at this sample


def _all_samples() -> tuple[np.ndarray[Any, Any], dict[str, np.ndarray[Any, Any]]]:
    """Every sample: off the second grid by 0.25 s, power with noise-like variation, an energy
    counter that restarts once, power-cap throttling 20 % of the time."""
    k = np.arange(SECONDS)
    ts = (T0 + k * S + S // 4).astype(np.int64)
    power = np.round(300.0 + 40.0 * np.sin(k / 7.0) + 5.0 * np.cos(k / 3.1), 3)
    energy = np.round(1e6 + np.cumsum(power), 3)
    energy[RESTART_AT:] = np.round(np.cumsum(power[RESTART_AT:]), 3)
    return ts, {
        "power_instant_w": power,
        "power_average_1s_w": np.round(power - 1.5, 3),
        "energy_j": energy,
        "sm_clock_mhz": (1980 - (k % 10) * 15).astype(np.uint32),
        "gpu_temperature_c": (60.0 + (k % 600) / 20).astype(np.float32),
        "throttle_reasons": np.where(k % 10 < 2, 4, 0).astype(np.uint64),
    }


def _fill(store: Store) -> None:
    node = NodeInfo(hostname=AGENT, agent_version="t", device_backend="sim")
    dev = DeviceInfo(uuid=GPU, index=0, name="NVIDIA H100 80GB HBM3", simulated=True)
    store.register_agents([Registration(node, (dev,), EPOCH, {}, T0)])
    ts, cols = _all_samples()
    for seq, lo in enumerate(range(0, SECONDS, PER_MESSAGE), start=1):
        hi = lo + PER_MESSAGE
        block = SeriesBlock(
            (GPU,),
            np.array([0, PER_MESSAGE], dtype=np.int64),
            ts[lo:hi],
            {k: v[lo:hi] for k, v in cols.items()},
        )
        write = MessageWrite(
            AGENT, EPOCH, seq, "telemetry", bytes(16), int(ts[hi - 1]), blocks=(block,)
        )
        assert store.apply([write])[0].outcome is Outcome.STORED


def _maintain(db: str) -> None:
    config = MaintenanceConfig(
        retention=Retention.parse("raw=30m,10s=90m,1m=1d"), settle_s=60, rows_per_step=50
    )
    m = Maintainer(db, config, clock_ns=lambda: NOW, busy_timeout_s=5.0)
    try:
        m.run_pass()
    finally:
        m.close()


def _reference(from_ns: int) -> dict[str, float]:
    """The window's figures from every raw sample at or after ``from_ns``: each interval and
    energy step is counted with the sample that closes it."""
    ts, cols = _all_samples()
    keep = ts >= from_ns
    first = int(np.argmax(keep))
    step = np.diff(cols["energy_j"], prepend=np.nan)
    counted = keep & np.isfinite(step) & (step >= 0)
    dt = np.diff(ts, prepend=ts[0]) / 1e9
    if first == 0:
        dt[0] = 0.0
    p = cols["power_instant_w"][keep]
    return {
        "samples": float(keep.sum()),
        "observed_s": float(dt[keep].sum()),
        "energy_j": float(step[counted].sum()),
        "energy_span_s": float(dt[counted].sum()),
        "power_instant_mean_w": float(p.mean()),
        "power_average_1s_mean_w": float(cols["power_average_1s_w"][keep].mean()),
        "power_instant_max_w": float(p.max()),
        "sm_clock_min_mhz": float(cols["sm_clock_mhz"][keep].min()),
        "throttle_s": float(dt[keep & (cols["throttle_reasons"] == 4)].sum()),
    }


@pytest.fixture
def filled(db: str, store: Store) -> str:
    _fill(store)
    _maintain(db)
    return db


def _read(db: str, window_s: int) -> Any:
    with closing(connect_read_only(db)) as conn:
        return read_windows(conn, NOW - window_s * S, NOW)[GPU]


def _assert_matches(read: Any, want: dict[str, float]) -> None:
    s = read.summary
    assert int(s["samples"][0]) == want["samples"]
    assert float(s["interval_s"][0]) == pytest.approx(want["observed_s"], rel=1e-12)
    assert float(s["energy_j:delta"][0]) == pytest.approx(want["energy_j"], rel=1e-12)
    assert float(s["energy_j:delta_s"][0]) == pytest.approx(want["energy_span_s"], rel=1e-12)
    n = float(s["power_instant_w:n"][0])
    assert float(s["power_instant_w:sum"][0]) / n == pytest.approx(
        want["power_instant_mean_w"], rel=1e-12
    )
    assert float(s["power_instant_w:max"][0]) == want["power_instant_max_w"]
    assert float(s["sm_clock_mhz:min"][0]) == want["sm_clock_min_mhz"]
    assert float(s["throttle_s:2"][0]) == pytest.approx(want["throttle_s"], rel=1e-12)
    assert int(s["throttle_reasons:or"][0]) == 4


def test_the_tier_follows_the_window_length() -> None:
    """Raw up to an hour, 10 s rollups up to two days, 1 min beyond."""
    assert preferred_tier(60) == "raw"
    assert preferred_tier(3600) == "raw"
    assert preferred_tier(3601) == "10s"
    assert preferred_tier(2 * 86400) == "10s"
    assert preferred_tier(30 * 86400) == "1m"


def test_a_short_window_reads_raw_samples(filled: str) -> None:
    """20 minutes: raw samples are kept for 30, so every figure is raw and the window starts
    exactly where asked."""
    read = _read(filled, 20 * 60)
    assert read.resolution == "raw"
    assert read.tiers == ("raw",)
    assert read.start_unix_ns == NOW - 20 * 60 * S
    _assert_matches(read, _reference(NOW - 20 * 60 * S))


def test_a_long_window_reads_rollups_where_raw_is_pruned(filled: str) -> None:
    """Two hours fifty minutes and five seconds: 10 s rollups (90 min kept), 1 min rollups for
    the older part, raw for the newest minute not compacted yet; the start is rounded up to the
    minute, and from there every figure equals the raw reference (energy across the restart
    and across every tier boundary exact)."""
    window_s = 2 * 3600 + 50 * 60 + 5
    read = _read(filled, window_s)
    assert read.resolution == "1m"
    assert read.tiers == ("1m", "10s", "raw")
    start = NOW - window_s * S
    aligned = -(-start // (60 * S)) * 60 * S
    assert read.start_unix_ns == aligned
    _assert_matches(read, _reference(aligned))


def test_a_window_that_ends_in_the_past_stops_at_its_end(filled: str) -> None:
    """The report's per-span parts end in the past: a window of two hours ending 40 min ago
    (rollups only) covers nothing after its end — no sample of the last 40 minutes counted (a
    bucket straddling the end would count whole; this end is on the minute)."""
    end = NOW - 40 * 60 * S
    with closing(connect_read_only(filled)) as conn:
        read = read_windows(conn, end - 2 * 3600 * S, end)[GPU]
    assert int(read.summary["t_last"][0]) <= end
    assert float(read.summary["interval_s"][0]) <= 2 * 3600 + 60


def test_a_window_before_maintenance_reads_the_fresh_chunks(db: str, store: Store) -> None:
    """Nothing compacted yet (maintenance never ran): a day-long window is read from the raw
    per-message chunks, and says so."""
    _fill(store)
    read = _read(db, 86400)
    assert read.resolution == "raw"
    _assert_matches(read, _reference(T0))


def test_the_report_names_each_figures_resolution(filled: str) -> None:
    """The report's window table, built from the store: one row per GPU with its resolution,
    the tiers read, energy and power in their units; it survives the JSON round trip."""
    params = ReportParameters(window_s=3 * 3600)
    report = as_report(filled, now_unix_ns=NOW, parameters=params)
    row = report.window.iloc[0]
    assert row["resolution"] == "1m"
    assert row["tiers"] == "1m+10s+raw"
    want_all = _reference(T0)  # the window starts at T0 exactly, a whole minute
    assert row["samples"] == want_all["samples"]
    assert row["energy_j"] == pytest.approx(want_all["energy_j"], rel=1e-12)
    assert row["energy_mean_power_w"] == pytest.approx(
        want_all["energy_j"] / want_all["energy_span_s"], rel=1e-12
    )
    assert row["power_instant_max_w"] == want_all["power_instant_max_w"]
    assert row["throttle_reasons"] == "sw_power_cap"
    assert row["throttle_time"].startswith("sw_power_cap 20.0 %")
    back = report_from_jsonable(json.loads(json.dumps(report_to_jsonable(report))))
    assert back.window.iloc[0]["resolution"] == "1m"
    assert back.parameters.window_s == 3 * 3600


def test_get_report_takes_a_window(filled: str) -> None:
    """``GET /report?window=20m`` over real HTTP: HTML with the section; ``format=json`` the
    document; a bad window or format is a 400 with the reason."""
    http = HttpServer("127.0.0.1", 0, lambda: b"", lambda: True)
    http.routes["/report"] = report_route(filled, clock_ns=lambda: NOW)
    http.start()
    base = f"http://127.0.0.1:{http.port}/report"
    try:
        with urllib.request.urlopen(f"{base}?window=20m", timeout=60) as resp:
            page = resp.read().decode()
        assert "Telemetry over the window" in page
        assert "last 20 min" in page
        with urllib.request.urlopen(f"{base}?window=3h&format=json", timeout=60) as resp:
            doc = json.loads(resp.read())
        assert doc["parameters"]["window_s"] == 3 * 3600
        assert doc["tables"]["window"][0]["resolution"] == "1m"
        for query in ("window=soon", "window=0s", "format=xml"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"{base}?{query}", timeout=60)
            assert err.value.code == 400
            assert "bad request" in err.value.read().decode()
    finally:
        http.stop()


def test_cli_report_window(filled: str) -> None:
    """``flopwatt report --window`` reaches the table; a bad duration is a usage error."""
    runner = CliRunner()
    # The wall clock is a year past the data: a 1000-day window reaches back to it.
    res = runner.invoke(cli, ["report", "--db", filled, "--window", "1000d", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["parameters"]["window_s"] == 1000 * 86400
    (row,) = doc["tables"]["window"]
    assert row["device_uuid"] == GPU
    assert (row["resolution"], row["tiers"]) == ("1m", "1m+raw")
    assert row["samples"] == SECONDS
    res = runner.invoke(cli, ["report", "--db", filled, "--window", "forever"])
    assert res.exit_code == 2
    assert "--window" in res.output


def test_a_device_that_began_inside_the_window_is_read_at_its_finest_tier(
    db: str, store: Store
) -> None:
    """Samples from T0 + 25 min (inside a 10-min and a 1-h rollup row): a 6-hour window is
    read from 10 s rollups alone — the 1 min tier's first bucket holds the same first samples,
    so it adds nothing and must not coarsen the resolution."""
    node = NodeInfo(hostname=AGENT, agent_version="t", device_backend="sim")
    dev = DeviceInfo(uuid=GPU, index=0, name="NVIDIA H100 80GB HBM3", simulated=True)
    store.register_agents([Registration(node, (dev,), EPOCH, {}, T0)])
    first = T0 + 25 * 60 * S
    for seq in range(1, 11):
        ts = first + (seq - 1) * 60 * S + np.arange(60, dtype=np.int64) * S
        block = SeriesBlock(
            (GPU,),
            np.array([0, 60], dtype=np.int64),
            ts,
            {"power_instant_w": np.full(60, 300.0), "energy_j": 300.0 * (ts - first) / S},
        )
        write = MessageWrite(
            AGENT, EPOCH, seq, "telemetry", bytes(16), int(ts[-1]), blocks=(block,)
        )
        assert store.apply([write])[0].outcome is Outcome.STORED
    end = first + 12 * 60 * S
    config = MaintenanceConfig(retention=Retention.parse(""), settle_s=60, rows_per_step=50)
    m = Maintainer(db, config, clock_ns=lambda: end, busy_timeout_s=5.0)
    try:
        m.run_pass()
    finally:
        m.close()
    with closing(connect_read_only(db)) as conn:
        read = read_windows(conn, end - 6 * 3600 * S, end)[GPU]
    assert read.resolution == "10s"
    assert int(read.summary["samples"][0]) == 600
    assert float(read.summary["energy_j:delta"][0]) == pytest.approx(300.0 * 599)


def test_one_report_reads_one_snapshot(db: str, store: Store) -> None:
    """Inside read_snapshot a commit by another connection (maintenance moving samples
    between tables) is not seen: each sample is read once."""
    _fill(store)
    with closing(connect_read_only(db)) as conn, read_snapshot(conn):
        before = conn.execute("SELECT COUNT(*) AS n FROM telemetry_chunks").fetchone()["n"]
        _maintain(db)  # compacts: deletes chunks, inserts compact chunks and rollups
        during = conn.execute("SELECT COUNT(*) AS n FROM telemetry_chunks").fetchone()["n"]
    assert before == during > 0
    with closing(connect_read_only(db)) as conn:
        after = conn.execute("SELECT COUNT(*) AS n FROM telemetry_chunks").fetchone()["n"]
    assert after < before
