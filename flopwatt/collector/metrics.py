"""The Prometheus exporter: ``/metrics`` derived from the fleet state at scrape time (no
``Gauge.set`` from RPC handlers), written straight to the Prometheus text format 0.0.4.

There is one renderer: :meth:`FleetMetrics.render_bytes` writes the ``/metrics`` body (UTF-8),
:meth:`FleetMetrics.render_text` is the same body as text. Families, their types, help texts
and label names come from :mod:`flopwatt.metrics_spec`, in its order; each family is written
as ``# HELP`` and ``# TYPE`` once, then all its lines. It is built for fleets of thousands of
GPUs, where a scrape is hundreds of thousands of lines and tens of megabytes:

* the values are read from the state's newest-values table, copied as two arrays in one short
  hold of the state's lock (:meth:`~flopwatt.collector.state.FleetState.scrape_view`);
* each series' text up to its value (``name{labels} ``) is built once per device, when the
  device is first seen or its labels change, and kept in arrays aligned with the table's rows;
* each telemetry series (say ``flopwatt_gpu_temperature_celsius{sensor="gpu"}``) is written for
  all the devices that have its column at once: their kept text and their values' ``repr``
  interleaved, and the whole body joined once, so a scrape costs little more than formatting
  the numbers (for 8,000 GPUs, less than a bare format-and-join of as many lines: see
  ``bench/metrics_render.py``).

Within a GPU family, lines are grouped by the series' own label (``sensor``,
``resource``, ``reason``) in the order the code lists them, and within a group follow the agents
(sorted by hostname) and each agent's registered device order; result families follow the
devices in the same order. Nothing else depends on the order.

Values are in base units: clocks in hertz (the state keeps MHz), power in watts, energy in
joules, temperatures in °C, utilisation and throttle as 0–1. A value the hardware does not give
is absent, never zero: a device without a column has no series for it. The throttle bitmask
becomes one 0/1 series per reason; the power limit is the latest sample's, else the enforced
limit the device registered with. Per-GPU series of an agent silent for longer than the
staleness window are left out rather than repeating old values; the agent's ``last_seen``
timestamp stays, so an operator can still see how long ago it went quiet. A device another
agent has since registered is written once, under that agent. Spec-sheet and physics figures
are per SKU (facts about the part, identical for every GPU of it) and join GPU series
``on(sku)``.

Attribution (who uses a GPU) labels the live-efficiency series with the Kubernetes container
the GPU is allocated to (``namespace``, ``pod``, ``container``: one set per GPU at a time) and
gives the per-process series, at most :data:`~flopwatt.metrics_spec.PROCESS_SERIES_PER_GPU`
per GPU (the busiest). An attribution not refreshed for three minutes labels nothing.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from flopwatt.analysis.comparison import physics_energy_per_flop_j
from flopwatt.analysis.live_efficiency import PIPES, MeasuredPeak, PipePeak, pipe_peaks
from flopwatt.analysis.live_efficiency import estimate as estimate_live
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec
from flopwatt.analysis.throttle import THROTTLE_BITS
from flopwatt.collector.state import (
    COLUMN_INDEX,
    COMMIT_LATENCY_BUCKETS_S,
    AgentState,
    Counters,
    DeviceState,
    FleetState,
    GemmLatest,
    ModelLatest,
    ScrapeView,
)
from flopwatt.metrics_spec import (
    BY_NAME,
    GPU_LABELS,
    METRICS,
    PROCESS_SERIES_PER_GPU,
    MetricType,
)
from flopwatt.records import GPM_COLUMNS, DeviceAttribution, DeviceKind, NodeInfo, busiest

_MHZ = 1e6
# (column, family, value of the family's own label); the column is in the family's unit.
_KIND_SERIES = (
    ("gpu_temperature_c", "flopwatt_gpu_temperature_celsius", "gpu"),
    ("memory_temperature_c", "flopwatt_gpu_temperature_celsius", "memory"),
    ("gpu_utilization_ratio", "flopwatt_gpu_utilization_ratio", "gpu"),
    ("memory_utilization_ratio", "flopwatt_gpu_utilization_ratio", "memory"),
    *(
        (column, "flopwatt_gpu_pipe_active_ratio", column.removesuffix("_active_ratio"))
        for column in GPM_COLUMNS
        if column.endswith("_active_ratio") and column != "sm_active_ratio"
    ),
    ("ecc_corrected_volatile_total", "flopwatt_gpu_ecc_errors_total", "corrected"),
    ("ecc_uncorrected_volatile_total", "flopwatt_gpu_ecc_errors_total", "uncorrected"),
    ("remapped_rows_correctable_total", "flopwatt_gpu_remapped_rows_total", "correctable"),
    ("remapped_rows_uncorrectable_total", "flopwatt_gpu_remapped_rows_total", "uncorrectable"),
)
# (column, family, scale from the column's unit to the family's base unit).
_SIMPLE_SERIES = (
    ("power_instant_w", "flopwatt_gpu_power_instant_watts", 1.0),
    ("power_average_1s_w", "flopwatt_gpu_power_average_1s_watts", 1.0),
    ("energy_j", "flopwatt_gpu_energy_joules_total", 1.0),
    ("sm_clock_mhz", "flopwatt_gpu_sm_clock_hertz", _MHZ),
    ("mem_clock_mhz", "flopwatt_gpu_memory_clock_hertz", _MHZ),
    ("memory_used_bytes", "flopwatt_gpu_memory_used_bytes", 1.0),
    ("sm_active_ratio", "flopwatt_gpu_sm_active_ratio", 1.0),
    ("sm_occupancy_ratio", "flopwatt_gpu_sm_occupancy_ratio", 1.0),
    ("dram_bandwidth_ratio", "flopwatt_gpu_dram_bandwidth_ratio", 1.0),
    ("row_remap_pending", "flopwatt_gpu_row_remap_pending", 1.0),
    ("row_remap_failed", "flopwatt_gpu_row_remap_failed", 1.0),
    ("pcie_replay_total", "flopwatt_gpu_pcie_replays_total", 1.0),
    ("nvlink_crc_errors_total", "flopwatt_gpu_nvlink_crc_errors_total", 1.0),
    ("nvlink_replay_errors_total", "flopwatt_gpu_nvlink_replays_total", 1.0),
    ("nvlink_recovery_errors_total", "flopwatt_gpu_nvlink_recoveries_total", 1.0),
    ("xid_events_total", "flopwatt_gpu_xid_events_total", 1.0),
    ("xid_last", "flopwatt_gpu_xid_last", 1.0),
)
_PIPE_NAMES = tuple(p.column for p in PIPES)
_PIPE_INDEXES = np.array([COLUMN_INDEX[c] for c in _PIPE_NAMES], dtype=np.intp)
_SM_CLOCK_COLUMN = COLUMN_INDEX["sm_clock_mhz"]
_THROTTLE_FAMILY = "flopwatt_gpu_throttle_active"
_LIMIT_FAMILY = "flopwatt_gpu_power_limit_watts"
_THROTTLE_COLUMN = COLUMN_INDEX["throttle_reasons"]
_LIMIT_COLUMN = COLUMN_INDEX["power_limit_w"]

_SeriesKey = tuple[str, tuple[str, ...]]
"""(family, values of the labels after the GPU labels)."""


@dataclass(frozen=True)
class _ValueSeries:
    key: _SeriesKey
    column: int
    scale: float


_VALUE_SERIES: tuple[_ValueSeries, ...] = (
    *(_ValueSeries((fam, (kind,)), COLUMN_INDEX[col], 1.0) for col, fam, kind in _KIND_SERIES),
    *(_ValueSeries((fam, ()), COLUMN_INDEX[col], scale) for col, fam, scale in _SIMPLE_SERIES),
)
_THROTTLE_SERIES: tuple[tuple[_SeriesKey, int], ...] = tuple(
    ((_THROTTLE_FAMILY, (reason.value,)), bit) for reason, bit in THROTTLE_BITS.items()
)
_LIMIT_KEY: _SeriesKey = (_LIMIT_FAMILY, ())
_KEPT_KEYS: tuple[_SeriesKey, ...] = (
    *(s.key for s in _VALUE_SERIES),
    *(k for k, _ in _THROTTLE_SERIES),
    _LIMIT_KEY,
)

_FAMILIES = tuple(m for m in METRICS if m.scope == "collector")
_FEW_MIN = 256
"""Values of one series kind from which repeated values are looked for (see _value_texts)."""
_FEW_SAMPLE = 128
_ZERO_ONE: npt.NDArray[np.object_] = np.array([b"0.0", b"1.0"], dtype=object)

ATTRIBUTION_FRESH_NS = 180_000_000_000
"""An attribution older than this (three missed refreshes) labels nothing: its agent stopped
reading it (ns)."""

_Lines = list[bytes]
"""Pieces of the body, UTF-8, to be joined: lines that start with their line feed, or series'
text up to the value and values in turn."""


def _escape(value: str) -> str:
    """A label value escaped for the text format (backslash, double quote, line feed)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _header(i: int, name: str, help_text: str, kind: MetricType) -> bytes:
    escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    text = f"# HELP {name} {escaped}\n# TYPE {name} {kind.value}"
    return (text if i == 0 else "\n" + text).encode()


_HEADERS = tuple(_header(i, m.name, m.help, m.type) for i, m in enumerate(_FAMILIES))


def _num(x: float) -> str:
    """A sample value as the text format writes it (``repr``; NaN and ±Inf spelt out)."""
    if math.isfinite(x):
        return repr(float(x))
    return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")


def _value_texts(v: npt.NDArray[np.float64]) -> _Lines:
    """Each value as the text format writes it (see :func:`_num`), UTF-8.

    ``tolist`` first: ``repr`` of a NumPy float64 is not the same as of a Python float. Where
    few distinct values repeat (clocks, limits, integer temperatures), each is formatted once.
    """
    if len(v) >= _FEW_MIN and len(np.unique(v[:_FEW_SAMPLE])) <= _FEW_SAMPLE // 4:
        distinct, index = np.unique(v, return_inverse=True)
        if len(distinct) <= len(v) // 4:
            texts_of = np.array(_value_texts(distinct), dtype=object)
            return texts_of[index].tolist()  # type: ignore[no-any-return]
    texts = list(map(str.encode, map(float.__repr__, v.tolist())))
    finite = np.isfinite(v)
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            texts[i] = _num(float(v[i])).encode()
    return texts


def _interleave(prefixes: _Lines, texts: _Lines) -> _Lines:
    """``[p0, t0, p1, t1, ...]``: each series' text up to its value, then its value."""
    parts = [b""] * (2 * len(prefixes))
    parts[0::2] = prefixes
    parts[1::2] = texts
    return parts


def _tail(key: _SeriesKey) -> str:
    """The labels after the GPU labels, as text: ``,kind="instant"}``."""
    family, extra = key
    names = BY_NAME[family].labels[len(GPU_LABELS) :]
    return "".join(f',{n}="{_escape(v)}"' for n, v in zip(names, extra, strict=True)) + "}"


def _labels(d: DeviceState) -> tuple[str, ...]:
    """A device's GPU label values, in the order of :data:`GPU_LABELS`."""
    return (
        d.agent_id,
        d.info.uuid,
        str(d.info.index),
        d.info.name,
        d.sku or "unknown",
        "sim" if d.info.simulated else "hardware",
        "cpu" if d.info.kind == DeviceKind.CPU else "gpu",
    )


class _RowText:
    """Each table row's kept text: the GPU labels, the info line, and every standard series'
    text up to its value, in object arrays indexed by row; rebuilt for a row only when the
    device registered there changes its labels."""

    def __init__(self) -> None:
        self.size = 0
        self.device: list[DeviceState | None] = []
        self.key: list[tuple[Any, ...] | None] = []
        self.labels: list[str] = []
        """The GPU labels as text (``hostname="...",...,source="..."``), per row."""
        self.info = np.empty(0, dtype=object)
        self.prefix = {k: np.empty(0, dtype=object) for k in _KEPT_KEYS}
        self.limit_fallback = np.empty(0, dtype=np.float64)
        """The registered enforced power limit (W) per row; NaN where there is none."""
        self._tails = {k: _tail(k) for k in _KEPT_KEYS}

    def update(self, view: ScrapeView) -> None:
        """Catch up with the devices registered in ``view``."""
        self._grow(len(view.rows))
        rows = view.rows
        for uuid, d in view.devices.items():
            r = rows[uuid]
            if self.device[r] is not d:
                self._build(r, d)

    def _grow(self, n: int) -> None:
        if n <= self.size:
            return
        extra = n - self.size
        self.device += [None] * extra
        self.key += [None] * extra
        self.labels += [""] * extra
        self.info = np.concatenate([self.info, np.full(extra, b"", dtype=object)])
        for k, arr in self.prefix.items():
            self.prefix[k] = np.concatenate([arr, np.full(extra, b"", dtype=object)])
        self.limit_fallback = np.concatenate([self.limit_fallback, np.full(extra, np.nan)])
        self.size = n

    def _build(self, r: int, d: DeviceState) -> None:
        self.device[r] = d
        labels = _labels(d)
        limit = d.info.power_limit_enforced_w
        key = (labels, d.sku_match, d.info.pci_bus_id, limit)
        if self.key[r] == key:
            return
        self.key[r] = key
        text = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(GPU_LABELS, labels, strict=True))
        self.labels[r] = text
        self.info[r] = (
            f'\nflopwatt_gpu_info{{{text},sku_match="{_escape(d.sku_match)}",'
            f'pci_bus_id="{_escape(d.info.pci_bus_id)}"}} 1.0'
        ).encode()
        for k, arr in self.prefix.items():
            arr[r] = f"\n{k[0]}{{{text}{self._tails[k]} ".encode()
        self.limit_fallback[r] = np.nan if limit is None else float(limit)


@dataclass(frozen=True)
class _ResultLines:
    """A device's result lines, kept while its results and labels stay the same (the state
    replaces a device's result dicts when a result arrives, so identity tells)."""

    gemm: Mapping[str, GemmLatest]
    models: Mapping[tuple[str, int, str], ModelLatest]
    labels: str
    spec: GpuSpec | None
    lines: list[tuple[str, _Lines]]
    """(family, lines) pairs."""

    def holds(
        self,
        gemm: Mapping[str, GemmLatest],
        models: Mapping[tuple[str, int, str], ModelLatest],
        labels: str,
        spec: GpuSpec | None,
    ) -> bool:
        return (
            self.gemm is gemm
            and self.models is models
            and self.labels == labels
            and self.spec is spec
        )


@dataclass(frozen=True)
class _AgentText:
    last_seen: str
    """Text of the last-seen series up to its value."""
    connected: tuple[bytes, bytes]
    """The connected series' line when 0 and when 1."""
    info: bytes


@dataclass(frozen=True)
class _Layout:
    """What follows from the registrations (see :attr:`ScrapeView.version`)."""

    version: int
    agent_ids: list[str]
    """Registered agents, sorted."""
    agent_text: list[_AgentText]
    rows: npt.NDArray[np.intp]
    """Table rows of the devices to write, agent by agent, in each agent's device order."""
    agent_of: npt.NDArray[np.intp]
    """For each of ``rows``, its agent's index in ``agent_ids``."""
    specs: list[dict[str, GpuSpec]]
    """Per agent, the registry specs of the devices it owns, by SKU."""


@dataclass(frozen=True)
class _AttributionText:
    """One device's attribution lines, kept while its attribution object and labels stay."""

    attribution: DeviceAttribution
    labels: str
    pod: str
    """The pod labels' text (``,namespace="…",pod="…",container="…"``), "" for none."""
    count: _Lines
    util: _Lines
    memory: _Lines


def _attribution_lines(a: DeviceAttribution, labels: str) -> _AttributionText:
    pod = ""
    if a.pod is not None:
        pod = (
            f',namespace="{_escape(a.pod.namespace)}",pod="{_escape(a.pod.pod)}",'
            f'container="{_escape(a.pod.container)}"'
        )
    count: _Lines = []
    util: _Lines = []
    memory: _Lines = []
    if a.processes_known:
        base = labels + pod
        count.append(f"\nflopwatt_gpu_compute_processes{{{base}}} {len(a.processes)}".encode())
        for proc in busiest(a.processes, PROCESS_SERIES_PER_GPU):
            head = f'{{{base},pid="{proc.pid}",process="{_escape(proc.name)}"}} '
            if proc.sm_utilization_ratio is not None:
                util.append(
                    f"\nflopwatt_gpu_process_sm_utilization_ratio{head}"
                    f"{_num(proc.sm_utilization_ratio)}".encode()
                )
            if proc.used_memory_bytes is not None:
                memory.append(
                    f"\nflopwatt_gpu_process_used_memory_bytes{head}"
                    f"{_num(proc.used_memory_bytes)}".encode()
                )
    return _AttributionText(a, labels, pod, count, util, memory)


class FleetMetrics:
    """Renders ``/metrics`` from a :class:`FleetState` (see module docstring).

    Safe to call from several threads (renders take turns: they share the kept text).

    Args:
        state: the fleet state to read.
        staleness_s: GPU series of agents silent for longer than this (s) are omitted.
        clock_ns: wall clock (ns since the Unix epoch).
        connected_only: write an agent's GPU and result series only while its stream is open
            to this collector (replicas on a shared store: an agent that moved to another
            replica is written there, and twice nowhere); its last-seen time stays.
    """

    def __init__(
        self,
        state: FleetState,
        *,
        staleness_s: float = 300.0,
        clock_ns: Callable[[], int] = time.time_ns,
        connected_only: bool = False,
    ) -> None:
        self._state = state
        self._connected_only = connected_only
        self._staleness_ns = int(staleness_s * 1e9)
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._rows = _RowText()
        self._layout: _Layout | None = None
        self._agents: dict[str, tuple[NodeInfo, _AgentText]] = {}
        self._tails: dict[_SeriesKey, str] = {}
        self._result_lines: dict[str, _ResultLines] = {}
        self._peaks: dict[
            str, tuple[GpuSpec | None, Mapping[str, GemmLatest] | None, Mapping[str, PipePeak]]
        ] = {}
        self._sku_lines: dict[str, dict[str, _Lines]] = {}
        self._attribution_text: dict[str, _AttributionText] = {}

    def warm(self, devices: Iterable[DeviceState] = ()) -> None:
        """Build the kept text of the devices registered now, rather than at the next render
        (which builds it for devices it has not seen: about ten microseconds each, so the
        first scrape of thousands of GPUs costs about a tenth of a second more than the next).

        ``devices`` (what a registration hook passes) is not needed: every device registered
        since the last render or warm is caught up. Costs a pass over all registered devices.
        """
        del devices
        with self._lock:
            view = self._state.scrape_view()
            if self._layout is None or self._layout.version != view.version:
                self._rows.update(view)

    def render_bytes(self) -> bytes:
        """Every family in the Prometheus text format 0.0.4, UTF-8: the ``/metrics`` body,
        from one consistent copy of the state."""
        chunks = self._render()
        parts: _Lines = []
        for i, m in enumerate(_FAMILIES):
            parts.append(_HEADERS[i])
            for lines in chunks[m.name]:
                parts += lines
        parts.append(b"\n")
        return b"".join(parts)

    def render_text(self) -> str:
        """:meth:`render_bytes` as text. (The body is made as bytes: its help texts are not
        ASCII, and encoding tens of megabytes of such text costs a fifth of a render.)"""
        return self.render_bytes().decode()

    # --- internals ------------------------------------------------------------------------

    def _sync(self, view: ScrapeView) -> _Layout:
        layout = self._layout
        if layout is None or layout.version != view.version:
            self._rows.update(view)
            layout = self._layout = self._build_layout(view)
        return layout

    def _build_layout(self, view: ScrapeView) -> _Layout:
        agent_ids = sorted(view.agents)
        rows: list[int] = []
        agent_of: list[int] = []
        specs: list[dict[str, GpuSpec]] = []
        texts: list[_AgentText] = []
        kept = self._agents
        self._agents = {}
        for i, agent_id in enumerate(agent_ids):
            a = view.agents[agent_id]
            old = kept.get(agent_id)
            text = old[1] if old is not None and old[0] == a.node else _agent_text(agent_id, a)
            self._agents[agent_id] = (a.node, text)
            texts.append(text)
            owned: dict[str, GpuSpec] = {}
            seen: set[str] = set()
            for uuid in a.device_uuids:
                d = view.devices.get(uuid)
                if d is None or d.agent_id != agent_id or uuid in seen:
                    continue  # gone, or since registered by another agent (moved hosts)
                seen.add(uuid)
                rows.append(view.rows[uuid])
                agent_of.append(i)
                if d.spec is not None:
                    owned[d.spec.sku] = d.spec
            specs.append(owned)
        return _Layout(
            view.version,
            agent_ids,
            texts,
            np.array(rows, dtype=np.intp),
            np.array(agent_of, dtype=np.intp),
            specs,
        )

    def _render(self) -> dict[str, list[_Lines]]:
        """Each family's lines, in pieces."""
        with self._lock:
            view = self._state.scrape_view()
            layout = self._sync(view)
            now = self._clock_ns()
            chunks: dict[str, list[_Lines]] = {m.name: [] for m in _FAMILIES}

            # Agents, and which are fresh.
            fresh = np.zeros(len(layout.agent_ids), dtype=np.bool_)
            last_seen: list[str] = []
            connected: _Lines = []
            info: _Lines = []
            for i, agent_id in enumerate(layout.agent_ids):
                is_connected, seen_ns = view.liveness[agent_id]
                text = layout.agent_text[i]
                last_seen.append(text.last_seen + _num(seen_ns / 1e9))
                if now - seen_ns > self._staleness_ns:
                    continue
                if self._connected_only and not is_connected:
                    continue
                fresh[i] = True
                connected.append(text.connected[is_connected])
                info.append(text.info)
            chunks["flopwatt_agent_last_seen_timestamp_seconds"].append(
                list(map(str.encode, last_seen))
            )
            chunks["flopwatt_agent_connected"].append(connected)
            chunks["flopwatt_agent_info"].append(info)
            rows = layout.rows if fresh.all() else layout.rows[fresh[layout.agent_of]]

            self._gpu_series(view, rows, chunks)
            pods = self._attribution(view, rows, chunks, now)
            self._estimates(view, rows, chunks, pods)
            self._results(view, rows, chunks)
            skus: dict[str, GpuSpec] = {}
            for i in np.flatnonzero(fresh).tolist():
                skus.update(layout.specs[i])
            for sku in sorted(skus):
                for family, lines in self._sku(skus[sku]).items():
                    chunks[family].append(lines)
        _counters(view.counters, chunks, now)
        return chunks

    def _gpu_series(
        self, view: ScrapeView, rows: npt.NDArray[np.intp], chunks: dict[str, list[_Lines]]
    ) -> None:
        """The standard series of the devices in ``rows``, one series kind at a time."""
        kept = self._rows
        values, present = view.values, view.present
        chunks["flopwatt_gpu_info"].append(kept.info[rows].tolist())
        for s in _VALUE_SERIES:
            have = present[rows, s.column]
            sel = rows if have.all() else rows[have]
            if not len(sel):
                continue
            v = values[sel, s.column]
            if s.scale != 1.0:
                v = v * s.scale
            prefixes = kept.prefix[s.key][sel].tolist()
            chunks[s.key[0]].append(_interleave(prefixes, _value_texts(v)))

        have = present[rows, _THROTTLE_COLUMN]
        sel = rows if have.all() else rows[have]
        if len(sel):
            masks = _masks(values[sel, _THROTTLE_COLUMN])
            for key, bit in _THROTTLE_SERIES:
                on = ((masks & bit) != 0).view(np.uint8)
                prefixes = kept.prefix[key][sel].tolist()
                chunks[_THROTTLE_FAMILY].append(_interleave(prefixes, _ZERO_ONE[on].tolist()))

        # The latest sample's limit, else the one the device registered with.
        have = present[rows, _LIMIT_COLUMN]
        fallback = kept.limit_fallback[rows]
        v = np.where(have, values[rows, _LIMIT_COLUMN], fallback)
        keep = have | ~np.isnan(fallback)
        if not keep.all():
            rows, v = rows[keep], v[keep]
        if len(rows):
            prefixes = kept.prefix[_LIMIT_KEY][rows].tolist()
            chunks[_LIMIT_FAMILY].append(_interleave(prefixes, _value_texts(v)))

    def _attribution(
        self,
        view: ScrapeView,
        rows: npt.NDArray[np.intp],
        chunks: dict[str, list[_Lines]],
        now_unix_ns: int,
    ) -> dict[int, str]:
        """The process series of each device in ``rows`` with a fresh attribution (observed
        within :data:`ATTRIBUTION_FRESH_NS`); returns row → its pod labels' text (``,namespace=
        "…",pod="…",container="…"``) for the devices allocated to a pod."""
        pods: dict[int, str] = {}
        if not view.attributions or not len(rows):
            return pods
        wanted = np.zeros(len(view.values), dtype=np.bool_)
        wanted[rows] = True
        count: _Lines = []
        util: _Lines = []
        memory: _Lines = []
        kept = self._attribution_text
        if len(kept) > len(view.attributions):  # devices gone: forget their text
            self._attribution_text = kept = {
                u: v for u, v in kept.items() if u in view.attributions
            }
        for uuid, (a, observed) in view.attributions.items():
            r = view.rows.get(uuid)
            if r is None or not wanted[r] or now_unix_ns - observed > ATTRIBUTION_FRESH_NS:
                continue
            labels = self._rows.labels[r]
            text = kept.get(uuid)
            if text is None or text.attribution is not a or text.labels != labels:
                text = kept[uuid] = _attribution_lines(a, labels)
            if text.pod:
                pods[r] = text.pod
            count += text.count
            util += text.util
            memory += text.memory
        chunks["flopwatt_gpu_compute_processes"].append(count)
        chunks["flopwatt_gpu_process_sm_utilization_ratio"].append(util)
        chunks["flopwatt_gpu_process_used_memory_bytes"].append(memory)
        return pods

    def _estimates(
        self,
        view: ScrapeView,
        rows: npt.NDArray[np.intp],
        chunks: dict[str, list[_Lines]],
        pods: Mapping[int, str],
    ) -> None:
        """The live-efficiency estimate of each device in ``rows`` whose latest sample has GPM
        pipe activity (:mod:`flopwatt.analysis.live_efficiency`), labelled with the pod the
        device is allocated to (``pods``: row → pod labels' text)."""
        if not len(rows):
            return
        have = view.present[rows][:, _PIPE_INDEXES].any(axis=1)
        if not have.any():
            return
        uuid_of = {r: uuid for uuid, r in view.rows.items()}
        if len(self._peaks) > len(view.devices):  # devices gone: forget their peaks
            self._peaks = {u: v for u, v in self._peaks.items() if u in view.devices}
        gemm_of = {uuid: gemm for uuid, gemm, _ in view.results}
        values, present = view.values, view.present
        flops: _Lines = []
        mfu: _Lines = []
        for r in rows[have].tolist():
            uuid = uuid_of[r]
            d = view.devices[uuid]
            peaks = self._pipe_peaks(uuid, d.spec, gemm_of.get(uuid))
            activity = {
                name: float(values[r, c]) if present[r, c] else None
                for name, c in zip(_PIPE_NAMES, _PIPE_INDEXES.tolist(), strict=True)
            }
            clock = float(values[r, _SM_CLOCK_COLUMN]) if present[r, _SM_CLOCK_COLUMN] else None
            est = estimate_live(activity, clock, peaks, d.spec)
            if est is None:
                continue
            head = f'{{{self._rows.labels[r]},precision="{est.precision.value}",'
            head += f'basis="{est.basis.value}"{pods.get(r, "")}}} '
            flops.append(
                f"\nflopwatt_gpu_estimated_flops_per_second{head}{_num(est.flops_per_s)}".encode()
            )
            if est.mfu_ratio is not None:
                mfu.append(
                    f"\nflopwatt_gpu_estimated_mfu_ratio{head}{_num(est.mfu_ratio)}".encode()
                )
        chunks["flopwatt_gpu_estimated_flops_per_second"].append(flops)
        chunks["flopwatt_gpu_estimated_mfu_ratio"].append(mfu)

    def _pipe_peaks(
        self, uuid: str, spec: GpuSpec | None, gemm: Mapping[str, GemmLatest] | None
    ) -> Mapping[str, PipePeak]:
        """A device's pipe peaks, kept while its spec and GEMM results stay the same."""
        kept = self._peaks.get(uuid)
        if kept is not None and kept[0] is spec and kept[1] is gemm:
            return kept[2]
        measured: dict[Precision, MeasuredPeak] = {}
        for precision, g in (gemm or {}).items():
            try:
                p = Precision.parse(precision)
            except ValueError:
                continue
            value = g.result.sustained_flops_per_s or g.result.burst_flops_per_s
            if value and value > 0:
                measured[p] = MeasuredPeak(value, g.sm_clock_mean_mhz)
        peaks = pipe_peaks(spec, measured)
        self._peaks[uuid] = (spec, gemm, peaks)
        return peaks

    def _results(
        self, view: ScrapeView, rows: npt.NDArray[np.intp], chunks: dict[str, list[_Lines]]
    ) -> None:
        """GEMM and model results of the devices in ``rows``, device by device."""
        if not view.results or not len(rows):
            return
        position = np.full(len(view.values), -1, dtype=np.intp)
        position[rows] = np.arange(len(rows))
        found = [
            (p, uuid, gemm, models)
            for uuid, gemm, models in view.results
            if (p := int(position[view.rows[uuid]])) >= 0
        ]
        found.sort(key=itemgetter(0))
        kept = self._result_lines
        lines: dict[str, _Lines] = {}
        for _, uuid, gemm, models in found:
            d = view.devices[uuid]
            labels = self._rows.labels[view.rows[uuid]]
            entry = kept.get(uuid)
            if entry is None or not entry.holds(gemm, models, labels, d.spec):
                entry = kept[uuid] = _ResultLines(
                    gemm, models, labels, d.spec, self._result_text(d, gemm, models, labels)
                )
            for family, family_lines in entry.lines:
                if family in lines:
                    lines[family] += family_lines
                else:
                    lines[family] = list(family_lines)
        for family, family_lines in lines.items():
            chunks[family].append(family_lines)

    def _result_text(
        self,
        d: DeviceState,
        gemm: Mapping[str, GemmLatest],
        models: Mapping[tuple[str, int, str], ModelLatest],
        labels: str,
    ) -> list[tuple[str, _Lines]]:
        by_family: dict[str, _Lines] = {}
        for family, extra, value in _result_series(d, gemm, models):
            tail = self._tails.get((family, extra))
            if tail is None:
                tail = self._tails[(family, extra)] = _tail((family, extra))
            line = f"\n{family}{{{labels}{tail} {_num(value)}".encode()
            by_family.setdefault(family, []).append(line)
        return list(by_family.items())

    def _sku(self, spec: GpuSpec) -> dict[str, _Lines]:
        """The per-SKU series of ``spec`` (kept: they are facts about the part)."""
        kept = self._sku_lines.get(spec.sku)
        if kept is not None:
            return kept
        lines: dict[str, _Lines] = {}

        def add(family: str, values: tuple[str, ...], value: float) -> None:
            lines.setdefault(family, []).append(_plain(family, values, value))

        if spec.tdp_w is not None:
            add("flopwatt_spec_tdp_watts", (spec.sku,), spec.tdp_w)
        for precision in Precision:
            peak = spec.best_peak(precision)
            if peak is None:
                continue
            labels = (spec.sku, precision.value)
            add("flopwatt_spec_peak_flops_per_second", labels, peak.flops_per_s)
            physics = physics_energy_per_flop_j(spec, precision, peak.unit)
            if physics is not None:
                add("flopwatt_physics_energy_per_flop_joules", labels, physics)
                add("flopwatt_physics_tdp_watts", labels, physics * peak.flops_per_s)
            if spec.tdp_w is not None:
                add(
                    "flopwatt_energy_per_flop_ceiling_joules", labels, spec.tdp_w / peak.flops_per_s
                )
        self._sku_lines[spec.sku] = lines
        return lines


def _agent_text(agent_id: str, a: AgentState) -> _AgentText:
    host = f'hostname="{_escape(agent_id)}"'
    node = a.node
    info = _plain(
        "flopwatt_agent_info",
        (agent_id, node.agent_version, node.device_backend, node.software.driver_version),
        1.0,
    )
    return _AgentText(
        last_seen=f"\nflopwatt_agent_last_seen_timestamp_seconds{{{host}}} ",
        connected=(
            f"\nflopwatt_agent_connected{{{host}}} 0.0".encode(),
            f"\nflopwatt_agent_connected{{{host}}} 1.0".encode(),
        ),
        info=info,
    )


def _masks(v: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Throttle bitmasks (stored as float) as integers; a value that is not one counts as 0."""
    ok = np.isfinite(v) & (v >= 0) & (v < 2.0**63)
    return np.where(ok, v, 0.0).astype(np.int64)


def _plain(name: str, values: tuple[str, ...], value: float) -> bytes:
    """One line of a family whose labels are all given (``values`` in label-name order)."""
    if not values:
        return f"\n{name} {_num(value)}".encode()
    names = BY_NAME[name].labels
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return f"\n{name}{{{inner}}} {_num(value)}".encode()


def _result_series(
    d: DeviceState,
    gemm: Mapping[str, GemmLatest],
    models: Mapping[tuple[str, int, str], ModelLatest],
) -> list[tuple[str, tuple[str, ...], float]]:
    """(family, label values after the GPU labels, value) of a device's result series."""
    rows: list[tuple[str, tuple[str, ...], float]] = []
    add = rows.append
    for precision, g in sorted(gemm.items()):
        r, comp = g.result, g.comparison
        at = (precision,)
        add(("flopwatt_gemm_burst_flops_per_second", at, r.burst_flops_per_s))
        if comp is not None and comp.burst_over_spec_ratio is not None:
            add(("flopwatt_gemm_burst_spec_ratio", at, comp.burst_over_spec_ratio))
        if r.sustained_flops_per_s is not None:
            add(("flopwatt_gemm_sustained_flops_per_second", at, r.sustained_flops_per_s))
            if comp is not None and comp.sustained_over_spec_ratio is not None:
                add(("flopwatt_gemm_sustained_spec_ratio", at, comp.sustained_over_spec_ratio))
        if r.mean_power_w is not None:
            add(("flopwatt_gemm_mean_power_watts", (precision,), r.mean_power_w))
        if r.energy_per_flop_j is not None:
            add(("flopwatt_energy_per_flop_joules", (precision,), r.energy_per_flop_j))
    for (model, batch, precision), m in sorted(models.items()):
        mr = m.result
        extra = (model, str(batch), precision)
        add(("flopwatt_model_delivered_flops_per_second", extra, mr.delivered_flops_per_s))
        add(("flopwatt_model_latency_p50_seconds", extra, mr.latency_p50_s))
        if mr.efficiency_ratio is not None:
            add(("flopwatt_model_efficiency_ratio", extra, mr.efficiency_ratio))
        spec_eff = mr.spec_efficiency_ratio
        if spec_eff is None and d.spec is not None:
            spec_eff = _spec_efficiency(d.spec, precision, mr.delivered_flops_per_s)
        if spec_eff is not None:
            add(("flopwatt_model_spec_efficiency_ratio", extra, spec_eff))
        if mr.energy_per_inference_j is not None:
            add(("flopwatt_model_energy_per_inference_joules", extra, mr.energy_per_inference_j))
    return rows


def _spec_efficiency(spec: GpuSpec, precision: str, delivered_flops_per_s: float) -> float | None:
    try:
        peak = spec.best_peak(Precision.parse(precision))
    except ValueError:
        return None
    return delivered_flops_per_s / peak.flops_per_s if peak is not None else None


def _counters(c: Counters, chunks: dict[str, list[_Lines]], now_unix_ns: int) -> None:
    """The collector's self-metrics."""

    def add(name: str, values: tuple[str, ...], value: float) -> None:
        chunks[name].append([_plain(name, values, value)])

    add("flopwatt_collector_samples_ingested_total", (), c.samples_ingested)
    for reason, n in sorted(c.samples_rejected.items()):
        add("flopwatt_collector_samples_rejected_total", (reason,), n)
    add("flopwatt_collector_samples_dropped_by_agents_total", (), c.samples_dropped_by_agents)
    for (kind, outcome), n in sorted(c.messages.items()):
        add("flopwatt_collector_messages_total", (kind, outcome), n)
    name = "flopwatt_collector_commit_latency_seconds"
    lines: list[str] = []
    cumulative = 0
    for bound, k in zip(COMMIT_LATENCY_BUCKETS_S, c.commit_latency_buckets, strict=True):
        cumulative += k
        lines.append(f'\n{name}_bucket{{le="{bound!r}"}} {_num(cumulative)}')
    lines.append(f'\n{name}_bucket{{le="+Inf"}} {_num(c.commit_latency_count)}')
    lines.append(f"\n{name}_count {_num(c.commit_latency_count)}")
    lines.append(f"\n{name}_sum {_num(c.commit_latency_sum_s)}")
    chunks[name].append([line.encode() for line in lines])
    add("flopwatt_collector_streams_active", (), c.streams_active)
    add("flopwatt_collector_store_up", (), 1.0 if c.store_up else 0.0)
    add("flopwatt_collector_store_unavailable_episodes_total", (), c.store_episodes)
    add("flopwatt_collector_store_failed_commits_total", (), c.store_failed_commits)
    for process, n in sorted(c.child_restarts.items()):
        add("flopwatt_collector_child_restarts_total", (process,), n)
    for process, n in sorted(c.metrics_scrapes.items()):
        add("flopwatt_collector_metrics_scrapes_total", (process,), n)
    _store_maintenance(c, add, now_unix_ns)


def _store_maintenance(
    c: Counters, add: Callable[[str, tuple[str, ...], float], None], now_unix_ns: int
) -> None:
    """Retention self-metrics: written by the replica that maintains the store (the only one
    on SQLite; one at a time on PostgreSQL), so a fleet-wide sum never counts a tier twice."""
    if c.store_max_bytes is not None:
        add("flopwatt_store_max_bytes", (), c.store_max_bytes)
    m = c.store_maintenance
    if not m or not m.get("maintaining"):
        return
    if m.get("store_bytes") is not None:
        add("flopwatt_store_size_bytes", (), m["store_bytes"])
    for tier, size in sorted(m.get("tiers", {}).items()):
        add("flopwatt_store_bytes", (tier,), size["bytes"])
        add("flopwatt_store_rows", (tier,), size["rows"])
        if tier != "results":
            add("flopwatt_store_samples", (tier,), size["samples"])
        if size.get("oldest_unix_ns") is not None:
            age = (now_unix_ns - size["oldest_unix_ns"]) / 1e9
            add("flopwatt_store_oldest_sample_age_seconds", (tier,), age)
    for tier, n in sorted(m.get("pruned_rows", {}).items()):
        add("flopwatt_store_pruned_rows_total", (tier,), n)
    for tier, n in sorted(m.get("pruned_bytes", {}).items()):
        add("flopwatt_store_pruned_bytes_total", (tier,), n)
    add("flopwatt_store_compacted_samples_total", (), m["compacted_samples"])
    if m["compacted_packed_bytes"]:
        ratio = m["compacted_source_bytes"] / m["compacted_packed_bytes"]
        add("flopwatt_store_compaction_ratio", (), ratio)
    add("flopwatt_store_early_prune_episodes_total", (), m["early_prune_episodes"])
    add("flopwatt_store_maintenance_failed_passes_total", (), m["failed_passes"])
    add("flopwatt_store_maintenance_pass_seconds", (), m["last_pass_s"])
