"""Each device's telemetry over a time window, read from the tiers that still hold it.

A window ``[start, end]`` of one device is read from, newest first:

* **fresh** per-message chunks (not compacted yet) — raw samples;
* the **compacted** data, from one tier chosen for the window's length
  (:func:`preferred_tier`: raw up to :data:`RAW_UP_TO_S`, 10 s rollups up to
  :data:`TEN_S_UP_TO_S`, 1 min rollups beyond), and where that tier no longer reaches back to
  ``start`` (pruned at its horizon), the next coarser tier for the older part, and so on. A
  device with nothing in the chosen tier or coarser (maintenance off, or a store from before
  retention) is read from the finer tiers instead.

The tiers used are cut at boundaries aligned to the coarsest bucket used (a 1 min rollup
cannot be cut inside a minute), and the oldest part starts at the window's start rounded up to
that tier's own bucket (or where its data begins, if later), so the figures cover
``[start_used, end]``. A coarser tier is only read where it reaches back at least one of its
own buckets before the finer ones (a device that began reporting inside the window is read
from raw samples alone). Every figure is exact over the samples it covers, whatever the tier —
rollups keep sums, counts, minima, maxima and exact energy-counter deltas — so the resolution
only says how finely the window's start could be placed; it is named per device
(:attr:`WindowRead.resolution`).

Energy is the counter's increase over consecutive sample pairs (a restart counts 0), exact
across tier boundaries: a raw part is read together with the sample before it, and fresh
samples continue from the last compacted sample (``telemetry_tails``).

Read-only; the same SQL on SQLite and PostgreSQL (``conn.execute`` with ``?`` placeholders,
rows by column name, as :func:`flopwatt.store.readonly.connect_read_only` gives).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from flopwatt.store import rollup
from flopwatt.store.chunks import unpack_chunk
from flopwatt.store.inspect import RETENTION_SCHEMA, schema_version
from flopwatt.store.packing import unpack_compact
from flopwatt.store.retention import RAW, S_NS

TIER_ORDER: tuple[str, ...] = (RAW, *(t.name for t in rollup.TIERS))
"""Tiers from finest to coarsest."""
BUCKET_NS: dict[str, int] = {RAW: 1, **{t.name: t.bucket_ns for t in rollup.TIERS}}
"""Where a tier can be cut (ns): raw anywhere, a rollup on its bucket boundaries."""

RAW_UP_TO_S = 3_600
"""Windows up to this long are read from raw samples where they are kept (s): ≤ 36,000
samples per device at 10 Hz."""
TEN_S_UP_TO_S = 2 * 86_400
"""Windows up to this long (and longer than :data:`RAW_UP_TO_S`) are read from 10 s rollups
(s): ≤ 17,280 buckets per device; longer ones from 1 min rollups."""


def preferred_tier(window_s: float) -> str:
    """The tier a window of ``window_s`` seconds is read from where it is kept."""
    if window_s <= RAW_UP_TO_S:
        return RAW
    if window_s <= TEN_S_UP_TO_S:
        return "10s"
    return "1m"


@dataclass(frozen=True)
class WindowRead:
    """One device's telemetry over a window, reduced to one summary.

    ``summary`` holds rollup arrays of one entry each (see :mod:`flopwatt.store.rollup`:
    ``samples``, ``interval_s``, ``<column>:n/sum/min/max/last``, ``energy_j:delta`` and
    ``:delta_s``, ``throttle_reasons:or``, ``throttle_s:<bit>``…); columns the device never
    reported in the window are absent.
    """

    device_uuid: str
    start_unix_ns: int
    """The start of what the figures cover: the window's start rounded up to the oldest tier
    read's bucket, or where that tier's data begins if later (ns). The first sample covered is
    ``summary["t_first"][0]``."""
    end_unix_ns: int
    """The window's end (ns)."""
    resolution: str
    """The coarsest tier used: ``raw``, ``10s`` or ``1m``."""
    tiers: tuple[str, ...]
    """Every tier read, coarsest first (e.g. ``("1m", "10s", "raw")``)."""
    summary: rollup.Arrays


def _align_up(t: int, step: int) -> int:
    return -((-t) // step) * step


def read_windows(
    conn: Any,
    start_unix_ns: int,
    end_unix_ns: int,
    device_uuids: Iterable[str] | None = None,
) -> dict[str, WindowRead]:
    """Each device's telemetry in ``[start_unix_ns, end_unix_ns]`` (see the module docstring).

    Args:
        conn: a read-only store connection.
        start_unix_ns, end_unix_ns: the window (ns since the Unix epoch).
        device_uuids: the devices to read (default: every registered device).

    Returns:
        A :class:`WindowRead` per device with at least one sample in the window.

    Raises:
        ValueError: ``end_unix_ns`` before ``start_unix_ns``, or a corrupt chunk or window.
    """
    if end_unix_ns < start_unix_ns:
        raise ValueError("the window ends before it starts")
    if device_uuids is None:
        device_uuids = [r["device_uuid"] for r in conn.execute("SELECT device_uuid FROM devices")]
    wanted = sorted(set(device_uuids))
    tiered = schema_version(conn) >= RETENTION_SCHEMA
    fresh = _fresh_samples(conn, start_unix_ns, end_unix_ns, wanted)
    tier = preferred_tier((end_unix_ns - start_unix_ns) / S_NS)
    out = {}
    for uuid in wanted:
        read = _read_device(
            conn, uuid, start_unix_ns, end_unix_ns, tier, fresh.get(uuid, []), tiered
        )
        if read is not None:
            out[uuid] = read
    return out


Series = tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[Any]]]


def _fresh_samples(conn: Any, start: int, end: int, uuids: list[str]) -> dict[str, list[Series]]:
    """Per device, its not-yet-compacted chunks overlapping the window. One query per agent
    (the chunks' primary key starts with the agent; there is no device index on them, and
    maintenance keeps them few)."""
    agents: dict[str, set[str]] = {}
    wanted = set(uuids)
    for r in conn.execute("SELECT device_uuid, agent_id FROM devices"):
        if r["device_uuid"] in wanted:
            agents.setdefault(r["agent_id"], set()).add(r["device_uuid"])
    out: dict[str, list[Series]] = {}
    for agent_id, devices in sorted(agents.items()):
        rows = conn.execute(
            "SELECT device_uuid, data FROM telemetry_chunks WHERE agent_id = ? "
            "AND t_last_unix_ns >= ? AND t_first_unix_ns <= ?",
            (agent_id, start, end),
        ).fetchall()
        for row in rows:
            if row["device_uuid"] in devices:
                out.setdefault(row["device_uuid"], []).append(unpack_chunk(bytes(row["data"])))
    return out


def _oldest(conn: Any, uuid: str, tiered: bool) -> dict[str, int]:
    """Where each compacted tier's data of ``uuid`` begins (ns); tiers without any absent."""
    if not tiered:
        return {}
    out = {}
    row = conn.execute(
        "SELECT MIN(t_first_unix_ns) AS lo FROM telemetry_packed WHERE device_uuid = ?", (uuid,)
    ).fetchone()
    if row is not None and row["lo"] is not None:
        out[RAW] = int(row["lo"])
    for t in rollup.TIERS:
        # The first sample's bucket, not the first row's start: a row (10 min, 1 h) of a
        # device that began reporting inside it holds nothing before its first sample.
        row = conn.execute(
            "SELECT MIN(t_first_unix_ns) AS lo FROM telemetry_rollups "
            "WHERE tier = ? AND device_uuid = ?",
            (t.name, uuid),
        ).fetchone()
        if row is not None and row["lo"] is not None:
            out[t.name] = (int(row["lo"]) // t.bucket_ns) * t.bucket_ns
    return out


def _plan(oldest: dict[str, int], start: int, preferred: str) -> list[tuple[str, int]]:
    """The compacted tiers to read, newest part first, each with where it begins."""
    i = TIER_ORDER.index(preferred)
    used: list[str] = []
    covered_from: int | None = None

    def consider(candidates: Iterable[str]) -> None:
        nonlocal covered_from
        for name in candidates:
            lo = oldest.get(name)
            # Another tier only helps where it reaches back a whole bucket of its own before
            # what is covered (its first bucket may just hold the same first samples).
            if lo is None or (covered_from is not None and lo > covered_from - BUCKET_NS[name]):
                continue
            used.append(name)
            covered_from = lo
            if lo <= start:
                return

    consider(TIER_ORDER[i:])
    if not used:
        consider(reversed(TIER_ORDER[:i]))
    if not used:
        return []
    grid = max(BUCKET_NS[name] for name in used)
    plan = []
    newer: int | None = None
    for i, name in enumerate(used):
        lo = max(start, oldest[name])
        # Boundaries between tiers sit on the coarsest bucket; the oldest part starts where
        # its own data does (aligned only to its own bucket: nothing older is lost).
        step = grid if i < len(used) - 1 else BUCKET_NS[name]
        begin = _align_up(lo, step) if lo == start or i < len(used) - 1 else lo
        if newer is not None and begin >= newer:
            continue
        plan.append((name, begin))
        newer = begin
    return plan


def _runs(parts: list[Series]) -> list[Series]:
    """Chunks in time order, joined into runs that share a column set."""
    parts = sorted(parts, key=lambda p: int(p[0][0]) if p[0].size else 0)
    runs: list[tuple[list[npt.NDArray[np.int64]], dict[str, list[npt.NDArray[Any]]]]] = []
    names_of: list[tuple[str, ...]] = []
    for ts, cols in parts:
        if ts.size == 0:
            continue
        names = tuple(sorted(cols))
        if not runs or names_of[-1] != names:
            runs.append(([], {n: [] for n in names}))
            names_of.append(names)
        runs[-1][0].append(ts)
        for n in names:
            runs[-1][1][n].append(cols[n])
    out: list[Series] = []
    for ts_parts, col_parts in runs:
        ts = np.concatenate(ts_parts)
        cols = {n: np.concatenate(v) for n, v in col_parts.items()}
        order = np.argsort(ts, kind="stable")
        out.append((ts[order], {n: v[order] for n, v in cols.items()}))
    return out


def _entries(
    runs: list[Series], previous: rollup.Previous | None, keep_from: int
) -> list[rollup.Arrays]:
    """Sample entries of consecutive runs (each continuing from the one before), keeping the
    samples at or after ``keep_from``: the one before still anchors the first interval and
    energy delta."""
    out = []
    for ts, cols in runs:
        entries = rollup.sample_entries(ts, cols, previous)
        energy = cols.get(rollup.ENERGY)
        last_energy = float(energy[-1]) if energy is not None else None
        if last_energy is not None and not np.isfinite(last_energy):
            last_energy = None
        previous = rollup.Previous(int(ts[-1]), last_energy)
        keep = ts >= keep_from
        if keep.any():
            out.append({k: v[keep] for k, v in entries.items()})
    return out


def _packed(conn: Any, uuid: str, begin: int, end: int) -> list[Series]:
    """The compact chunks of ``uuid`` from the last one starting before ``begin`` (it holds
    the sample before ``begin``) through ``end``."""
    before = conn.execute(
        "SELECT MAX(t_first_unix_ns) AS t FROM telemetry_packed "
        "WHERE device_uuid = ? AND t_first_unix_ns < ?",
        (uuid, begin),
    ).fetchone()
    lo = int(before["t"]) if before is not None and before["t"] is not None else begin
    rows = conn.execute(
        "SELECT data FROM telemetry_packed WHERE device_uuid = ? AND t_first_unix_ns >= ? "
        "AND t_first_unix_ns <= ? ORDER BY t_first_unix_ns",
        (uuid, lo, end),
    ).fetchall()
    return [unpack_compact(bytes(r["data"])) for r in rows]


def _buckets(
    conn: Any, tier: rollup.RollupTier, uuid: str, begin: int, until: int | None
) -> rollup.Arrays | None:
    """The tier's buckets of ``uuid`` starting in ``[begin, until)`` (``until`` None: all)."""
    first_window = (begin // tier.window_ns) * tier.window_ns
    sql = (
        "SELECT data FROM telemetry_rollups WHERE tier = ? AND device_uuid = ? "
        "AND window_start_unix_ns >= ?"
    )
    params: tuple[Any, ...] = (tier.name, uuid, first_window)
    if until is not None:
        sql += " AND window_start_unix_ns < ?"
        params += (until,)
    windows = [rollup.decode(bytes(r["data"])) for r in conn.execute(sql, params).fetchall()]
    if not windows:
        return None
    arrays = rollup.concat(windows)
    keep = arrays["bucket"] >= begin
    if until is not None:
        keep &= arrays["bucket"] < until
    if not keep.any():
        return None
    return {k: v[keep] for k, v in arrays.items()}


def _tail(conn: Any, uuid: str, tiered: bool) -> rollup.Previous | None:
    if not tiered:
        return None
    row = conn.execute(
        "SELECT t_unix_ns, energy_j FROM telemetry_tails WHERE device_uuid = ?", (uuid,)
    ).fetchone()
    if row is None:
        return None
    energy = row["energy_j"]
    return rollup.Previous(int(row["t_unix_ns"]), float(energy) if energy is not None else None)


def _read_device(
    conn: Any,
    uuid: str,
    start: int,
    end: int,
    preferred: str,
    fresh: list[Series],
    tiered: bool,
) -> WindowRead | None:
    plan = _plan(_oldest(conn, uuid, tiered), start, preferred)
    parts: list[rollup.Arrays] = []
    tiers: list[str] = []
    until: int | None = None
    for name, begin in plan:
        if name == RAW:
            runs = _runs(_packed(conn, uuid, begin, end))
            entries = _entries(runs, None, begin)
            stop = end + 1 if until is None else until
            entries = [{k: v[e["t_last"] < stop] for k, v in e.items()} for e in entries]
            got = [e for e in entries if e["t_last"].size]
            for e in got:
                e["bucket"] = np.zeros(e["t_last"].shape[0], dtype=np.int64)
        else:
            # The newest part stops at the window's end too (a window may end in the past: a
            # report's per-span parts): buckets that start before it, one straddling it whole.
            stop = end if until is None else until
            buckets = _buckets(conn, rollup.TIER_BY_NAME[name], uuid, begin, stop)
            got = [] if buckets is None else [buckets]
        if got:
            parts.extend(got)
            tiers.append(name)
        until = begin
    covered_from = plan[-1][1] if plan else start
    if fresh:
        runs = _runs(fresh)
        runs = [(ts, cols) for ts, cols in runs if ts.size]
        entries = _entries(runs, _tail(conn, uuid, tiered), covered_from)
        got = [{k: v[e["t_last"] <= end] for k, v in e.items()} for e in entries]
        got = [e for e in got if e["t_last"].size]
        for e in got:
            e["bucket"] = np.zeros(e["t_last"].shape[0], dtype=np.int64)
        if got:
            parts.extend(got)
            if RAW not in tiers:
                tiers.insert(0, RAW)
    if not parts:
        return None
    entries_all = rollup.concat(parts)
    entries_all["bucket"] = np.zeros(entries_all["t_last"].shape[0], dtype=np.int64)
    summary = rollup.reduce_entries(entries_all)
    coarsest_first = tuple(t for t in reversed(TIER_ORDER) if t in tiers)
    return WindowRead(
        device_uuid=uuid,
        start_unix_ns=covered_from,
        end_unix_ns=end,
        resolution=coarsest_first[0],
        tiers=coarsest_first,
        summary=summary,
    )
