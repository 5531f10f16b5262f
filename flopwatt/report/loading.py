"""Load the fleet report's input frames from a collector store, or a report from a collector.

:func:`load_report_inputs` opens the store read-only — a SQLite file (a running collector keeps
writing undisturbed; WAL readers never block the writer) or a PostgreSQL database (a read-only
transaction) — and reads, with the store's schema (the same SQL on both):

* devices joined with their agent (hostname, node driver version, capabilities from the stored
  ``DeviceInfo``);
* the latest result per (device, kind, precision, model, batch) with its spec comparison, the
  driver version and energy per inference decoded from ``result_json``;
* the latest telemetry sample per device, decoded from its newest chunk (one indexed lookup per
  device, never a scan of the telemetry table);
* each device's telemetry over the report's window (:mod:`flopwatt.store.window`: raw samples
  where they are kept, rollups where they are gone), with the resolution it came from;
* the same for each attribution span's part of the window (who used the GPU then:
  :mod:`flopwatt.store.attribution`), for the live efficiency per pod or job.

:func:`fetch_report_html` downloads ``GET /report`` from a collector's HTTP side.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flopwatt.jsonable import from_jsonable
from flopwatt.records import GPM_COLUMNS, DeviceInfo, JobResult, NodeInfo
from flopwatt.report.jobs import JOB_INPUT_COLUMNS
from flopwatt.report.suspects import HEALTH_INPUT_COLUMNS
from flopwatt.report.tables import (
    DEVICE_INPUT_COLUMNS,
    RESULT_INPUT_COLUMNS,
    TELEMETRY_INPUT_COLUMNS,
    WINDOW_S,
    ReportInputs,
)
from flopwatt.report.window_table import WINDOW_INPUT_COLUMNS
from flopwatt.store import describe_db, is_postgres, rollup
from flopwatt.store.attribution import SPAN_GRACE_NS, SPANS_IN_WINDOW_SQL, spans_from_rows
from flopwatt.store.chunks import unpack_chunk
from flopwatt.store.inspect import ATTRIBUTION_SCHEMA, RETENTION_SCHEMA, schema_version
from flopwatt.store.packing import unpack_compact
from flopwatt.store.readonly import StoreUnreadableError, connect_read_only, read_snapshot
from flopwatt.store.window import WindowRead, read_windows

ReportSourceError = StoreUnreadableError
"""The store or collector could not be read for a report (the message says why)."""


def load_report_inputs(
    db_path: Path | str, *, now_unix_ns: int | None = None, window_s: float = WINDOW_S
) -> ReportInputs:
    """The report's input frames from the store at ``db_path`` (opened read-only).

    Args:
        db_path: a SQLite file or a PostgreSQL DSN.
        now_unix_ns: the end of the telemetry window (default: now).
        window_s: the telemetry window's length (s).

    Raises:
        FileNotFoundError: no such file.
        ReportSourceError: not a flopwatt store, or a newer schema.
    """
    end = time.time_ns() if now_unix_ns is None else now_unix_ns
    with closing(connect_read_only(db_path)) as conn, read_snapshot(conn):
        devices = _devices(conn)
        results = _results(conn)
        telemetry = _telemetry(conn)
        start = end - round(window_s * 1e9)
        window = window_inputs(conn, start, end)
        jobs = attribution_inputs(conn, start, end)
    source = describe_db(db_path) if is_postgres(db_path) else str(Path(db_path))
    return ReportInputs(devices, results, telemetry, source=source, window=window, jobs=jobs)


def _stat(summary: Mapping[str, np.ndarray[Any, Any]], name: str) -> float | None:
    col = summary.get(name)
    if col is None:
        return None
    v = float(col[0])
    return v if math.isfinite(v) else None


def _column_mean(summary: Mapping[str, np.ndarray[Any, Any]], column: str) -> float | None:
    if f"{column}:n" not in summary:
        return None
    v = float(rollup.mean(summary, column)[0])
    return v if math.isfinite(v) else None


def window_inputs(conn: Any, start_unix_ns: int, end_unix_ns: int) -> pd.DataFrame:
    """Each device's telemetry in ``[start_unix_ns, end_unix_ns]`` as the report's window
    input frame (:data:`~flopwatt.report.window_table.WINDOW_INPUT_COLUMNS`)."""
    records = [
        _window_record(uuid, read)
        for uuid, read in read_windows(conn, start_unix_ns, end_unix_ns).items()
    ]
    return pd.DataFrame.from_records(records, columns=list(WINDOW_INPUT_COLUMNS))


def attribution_inputs(conn: Any, start_unix_ns: int, end_unix_ns: int) -> pd.DataFrame:
    """Each attribution span's part of ``[start_unix_ns, end_unix_ns]`` with its device's
    telemetry over just that part: the window input columns plus :data:`JOB_INPUT_COLUMNS`
    (:mod:`flopwatt.store.attribution`; an empty frame before schema 7)."""
    columns = [*WINDOW_INPUT_COLUMNS, *JOB_INPUT_COLUMNS]
    if schema_version(conn) < ATTRIBUTION_SCHEMA:
        return pd.DataFrame(columns=columns)
    rows = conn.execute(
        SPANS_IN_WINDOW_SQL, (start_unix_ns - SPAN_GRACE_NS, end_unix_ns)
    ).fetchall()
    records = []
    for span in spans_from_rows([dict(r) for r in rows]):
        begin = max(start_unix_ns, span.start_unix_ns)
        until = min(end_unix_ns, span.until_unix_ns)
        if until <= begin:
            continue
        read = read_windows(conn, begin, until, [span.device_uuid]).get(span.device_uuid)
        if read is None:
            continue
        a = span.attribution
        record = _window_record(span.device_uuid, read)
        record.update(
            {
                "job": a.job,
                "namespace": a.pod.namespace if a.pod else None,
                "pod": a.pod.pod if a.pod else None,
                "container": a.pod.container if a.pod else None,
                "processes": "+".join(sorted({p.name or f"pid {p.pid}" for p in a.processes}))
                or None,
            }
        )
        records.append(record)
    return pd.DataFrame.from_records(records, columns=columns)


def _window_record(uuid: str, read: WindowRead) -> dict[str, Any]:
    """One device's window read as a window input record."""
    s = read.summary
    energy_s = _stat(s, f"{rollup.ENERGY}:delta_s")
    throttle = {
        int(name.split(":", 1)[1]): float(values[0])
        for name, values in s.items()
        if name.startswith("throttle_s:")
    }
    return {
        "device_uuid": uuid,
        "resolution": read.resolution,
        "tiers": "+".join(read.tiers),
        "window_start_unix_ns": read.start_unix_ns,
        "window_end_unix_ns": read.end_unix_ns,
        "first_sample_unix_ns": int(s["t_first"][0]),
        "last_sample_unix_ns": int(s["t_last"][0]),
        "samples": int(s["samples"][0]),
        "observed_s": float(s["interval_s"][0]),
        # Energy with no measured span (no counter, or one sample) is absent, not 0.
        "energy_j": _stat(s, f"{rollup.ENERGY}:delta") if energy_s else None,
        "energy_span_s": energy_s or None,
        "power_average_1s_mean_w": _column_mean(s, "power_average_1s_w"),
        "power_instant_mean_w": _column_mean(s, "power_instant_w"),
        "power_instant_max_w": _stat(s, "power_instant_w:max"),
        "sm_clock_mean_mhz": _column_mean(s, "sm_clock_mhz"),
        "sm_clock_min_mhz": _stat(s, "sm_clock_mhz:min"),
        "gpu_temperature_max_c": _stat(s, "gpu_temperature_c:max"),
        "gpu_utilization_mean_ratio": _column_mean(s, "gpu_utilization_ratio"),
        "throttle_reasons_mask": (
            int(s[f"{rollup.THROTTLE}:or"][0]) if f"{rollup.THROTTLE}:or" in s else None
        ),
        "throttle_seconds": throttle if f"{rollup.THROTTLE}:or" in s else None,
        "sm_active_mean_ratio": _column_mean(s, "sm_active_ratio"),
        "tensor_active_mean_ratio": _column_mean(s, "tensor_active_ratio"),
        "pipe_activity": {c: v for c in GPM_COLUMNS if (v := _column_mean(s, c)) is not None}
        or None,
    }


def _devices(conn: Any) -> pd.DataFrame:
    rows = conn.execute(
        "SELECT d.device_uuid, COALESCE(a.hostname, d.agent_id) AS hostname, d.device_index, "
        "d.name, d.kind, d.sku, d.sku_match, d.simulated, d.power_limit_enforced_w, "
        "d.info_json, d.registered_unix_ns, a.node_json "
        "FROM devices d LEFT JOIN agents a ON a.agent_id = d.agent_id"
    ).fetchall()
    records = []
    for r in rows:
        info = from_jsonable(DeviceInfo, json.loads(r["info_json"]))
        driver = ""
        if r["node_json"] is not None:
            driver = from_jsonable(NodeInfo, json.loads(r["node_json"])).software.driver_version
        records.append(
            {
                "device_uuid": r["device_uuid"],
                "hostname": r["hostname"],
                "device_index": r["device_index"],
                "name": r["name"],
                "kind": r["kind"],
                "sku": r["sku"],
                "sku_match": r["sku_match"],
                "simulated": bool(r["simulated"]),
                "power_limit_enforced_w": r["power_limit_enforced_w"],
                "throttle_reasons_capable": info.capabilities.throttle_reasons,
                "driver_version": driver or None,
                "registered_unix_ns": r["registered_unix_ns"],
            }
        )
    return pd.DataFrame.from_records(records, columns=list(DEVICE_INPUT_COLUMNS))


# The latest row per result key; NULL model / batch (GEMM) partition together, as wanted.
# Window functions run on SQLite ≥ 3.25 and PostgreSQL alike.
_LATEST_RESULTS_SQL = """
SELECT * FROM (
    SELECT r.device_uuid, r.job_id, r.kind, r.precision, r.model, r.batch,
           r.finished_unix_ns, r.simulated, r.burst_flops_per_s, r.sustained_flops_per_s,
           r.energy_per_flop_j, r.mean_power_w, r.delivered_flops_per_s, r.latency_p50_s,
           r.efficiency_ratio, r.spec_efficiency_ratio, r.throttle_reasons_seen,
           r.power_limit_w, r.sm_clock_mean_mhz, r.temperature_max_c, r.result_json,
           c.datapath, c.spec_peak_flops_per_s, c.spec_tdp_w, c.measured_energy_per_flop_j,
           c.physics_energy_per_flop_j, c.ceiling_energy_per_flop_j,
           ROW_NUMBER() OVER (
               PARTITION BY r.device_uuid, r.kind, r.precision, r.model, r.batch
               ORDER BY r.finished_unix_ns DESC, r.sequence DESC
           ) AS newest
    FROM job_results r
    LEFT JOIN comparisons c
        ON c.agent_id = r.agent_id AND c.epoch = r.epoch AND c.sequence = r.sequence
) AS ranked WHERE newest = 1
"""


def _results(conn: Any) -> pd.DataFrame:
    records = []
    for r in conn.execute(_LATEST_RESULTS_SQL).fetchall():
        result = from_jsonable(JobResult, json.loads(r["result_json"]))
        measured = r["measured_energy_per_flop_j"]
        if measured is None:
            measured = r["energy_per_flop_j"]
        records.append(
            {
                "device_uuid": r["device_uuid"],
                "job_id": r["job_id"],
                "kind": r["kind"],
                "precision": r["precision"],
                "model": r["model"],
                "batch": r["batch"],
                "finished_unix_ns": r["finished_unix_ns"],
                "simulated": bool(r["simulated"]),
                "burst_flops_per_s": r["burst_flops_per_s"],
                "sustained_flops_per_s": r["sustained_flops_per_s"],
                "mean_power_w": r["mean_power_w"],
                "delivered_flops_per_s": r["delivered_flops_per_s"],
                "latency_p50_s": r["latency_p50_s"],
                "efficiency_ratio": r["efficiency_ratio"],
                "spec_efficiency_ratio": r["spec_efficiency_ratio"],
                "energy_per_inference_j": (
                    result.model.energy_per_inference_j if result.model is not None else None
                ),
                "throttle_reasons_seen": r["throttle_reasons_seen"],
                "power_limit_w": r["power_limit_w"],
                "sm_clock_mean_mhz": r["sm_clock_mean_mhz"],
                "temperature_max_c": r["temperature_max_c"],
                "driver_version": result.conditions.driver_version or None,
                "datapath": r["datapath"],
                "spec_peak_flops_per_s": r["spec_peak_flops_per_s"],
                "spec_tdp_w": r["spec_tdp_w"],
                "measured_energy_per_flop_j": measured,
                "physics_energy_per_flop_j": r["physics_energy_per_flop_j"],
                "ceiling_energy_per_flop_j": r["ceiling_energy_per_flop_j"],
            }
        )
    return pd.DataFrame.from_records(records, columns=list(RESULT_INPUT_COLUMNS))


def _last_finite(columns: dict[str, np.ndarray[Any, Any]], name: str, i: int) -> float | None:
    col = columns.get(name)
    if col is None:
        return None
    value = float(col[i])
    return value if math.isfinite(value) else None


def _newest_chunks(conn: Any) -> dict[str, bytes]:
    """The newest telemetry chunk of every registered device, by device UUID.

    Walks each agent's current epoch newest sequence first (the primary key's order) until all
    of its devices are found, which for a live agent is its last batch; the walk stops after a
    few dozen batches' worth of chunks. A device not found that way (lost before the agent's last
    restart or long ago, or moved hosts) falls back to a scan of its agent's chunks by time,
    which costs in proportion to what that agent has stored.
    """
    wanted: dict[str, set[str]] = {}
    epochs: dict[str, int | None] = {}
    for r in conn.execute(
        "SELECT d.device_uuid, d.agent_id, a.epoch FROM devices d "
        "LEFT JOIN agents a ON a.agent_id = d.agent_id"
    ):
        wanted.setdefault(r["agent_id"], set()).add(r["device_uuid"])
        epochs[r["agent_id"]] = r["epoch"]
    newest: dict[str, bytes] = {}
    for agent_id, uuids in wanted.items():
        if epochs[agent_id] is not None:
            rows = conn.execute(
                "SELECT device_uuid, data FROM telemetry_chunks WHERE agent_id = ? AND epoch = ? "
                "ORDER BY sequence DESC, chunk_index DESC LIMIT ?",
                (agent_id, epochs[agent_id], 64 * len(uuids)),
            )
            missing = set(uuids)
            for row in rows:
                if row["device_uuid"] in missing:
                    newest[row["device_uuid"]] = bytes(row["data"])
                    missing.discard(row["device_uuid"])
                    if not missing:
                        break
            rows.close()
        for uuid in uuids - newest.keys():
            row = conn.execute(
                "SELECT data FROM telemetry_chunks WHERE agent_id = ? AND device_uuid = ? "
                "ORDER BY t_first_unix_ns DESC LIMIT 1",
                (agent_id, uuid),
            ).fetchone()
            if row is not None:
                newest[uuid] = bytes(row["data"])
    return newest


def _newest_packed(conn: Any, missing: set[str]) -> dict[str, bytes]:
    """The newest compact chunk of each device in ``missing`` (its fresh per-message chunks
    are all compacted, or pruned): one indexed lookup per device."""
    if schema_version(conn) < RETENTION_SCHEMA:
        return {}
    out = {}
    for uuid in sorted(missing):
        row = conn.execute(
            "SELECT data FROM telemetry_packed WHERE device_uuid = ? "
            "ORDER BY t_first_unix_ns DESC LIMIT 1",
            (uuid,),
        ).fetchone()
        if row is not None:
            out[uuid] = bytes(row["data"])
    return out


def _telemetry(conn: Any) -> pd.DataFrame:
    records = []
    newest = _newest_chunks(conn)
    devices = {r["device_uuid"] for r in conn.execute("SELECT device_uuid FROM devices")}
    chunks = [(uuid, unpack_chunk(data)) for uuid, data in newest.items()]
    chunks += [
        (uuid, unpack_compact(data))
        for uuid, data in _newest_packed(conn, devices - newest.keys()).items()
    ]
    for uuid, (ts, columns) in chunks:
        if ts.size == 0:
            continue
        i = int(np.argmax(ts))
        power = _last_finite(columns, "power_average_1s_w", i)
        if power is None:
            power = _last_finite(columns, "power_instant_w", i)
        records.append(
            {
                "device_uuid": uuid,
                "last_sample_unix_ns": int(ts[i]),
                "last_power_w": power,
                "last_temperature_c": _last_finite(columns, "gpu_temperature_c", i),
                **{c: _last_finite(columns, c, i) for c in HEALTH_INPUT_COLUMNS},
            }
        )
    return pd.DataFrame.from_records(records, columns=list(TELEMETRY_INPUT_COLUMNS))


def report_url(collector_url: str) -> str:
    """``http://host:port`` (or a URL already ending in ``/report``) → the report's URL."""
    base = collector_url.rstrip("/")
    return base if base.endswith("/report") else f"{base}/report"


def fetch_report_html(
    collector_url: str, *, window_s: float | None = None, timeout_s: float = 120.0
) -> str:
    """Download the HTML report a collector renders from its own store (``GET /report``),
    with its telemetry table over ``window_s`` seconds (default: the collector's, 24 h).

    Raises:
        ReportSourceError: the collector could not be reached or did not answer 200.
    """
    url = report_url(collector_url)
    if window_s is not None:
        url += f"?window={round(window_s)}s"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body: bytes = resp.read()
            charset = resp.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()[:200]
        raise ReportSourceError(
            f"{url} answered HTTP {exc.code}" + (f": {detail}" if detail else "")
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ReportSourceError(f"cannot reach {url}: {exc}") from None
    return body.decode(charset)
