"""The Prometheus exporter: derives every metric from a snapshot of the fleet state at scrape
time (no ``Gauge.set`` from RPC handlers).

One walk over the snapshot feeds either of two sinks:

* :meth:`FleetMetrics.collect` — a custom ``prometheus_client`` Collector yielding metric
  families (for registries, tests and composition);
* :meth:`FleetMetrics.render_text` — the same families written straight to the Prometheus text
  format: with each series' text up to its value kept across scrapes it renders a fleet of
  thousands of GPUs several times faster than formatting every sample through
  ``generate_latest``. ``/metrics`` runs it in a child forked for the scrape
  (:mod:`flopwatt.collector.forked_render`); where that is not possible,
  :meth:`FleetMetrics.render_text_async` runs the same walk in steps on the collector's event
  loop, so a scrape never holds the loop that sends acks for more than a few milliseconds.

Families come from :mod:`flopwatt.metrics_spec`. Per-GPU series of an agent silent for longer
than the staleness window are left out rather than repeating old values; the agent's
``last_seen`` timestamp stays, so an operator can still see how long ago it went quiet.
Spec-sheet and physics figures are per SKU (they are facts about the part, identical for every
GPU of it) and join GPU series ``on(sku)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from flopwatt.analysis.comparison import physics_energy_per_flop_j
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec
from flopwatt.analysis.throttle import THROTTLE_BITS
from flopwatt.collector.state import (
    COMMIT_LATENCY_BUCKETS_S,
    AgentState,
    Counters,
    DeviceState,
    FleetState,
)
from flopwatt.metrics_spec import BY_NAME, METRICS, MetricType

DEVICES_PER_STEP = 100
"""Devices rendered between two turns of the event loop (a few milliseconds of work)."""

_MHZ = 1e6
_THROTTLE = tuple((reason.value, bit) for reason, bit in THROTTLE_BITS.items())
_LATEST_SIMPLE = (
    ("energy_j", "flopwatt_gpu_energy_joules_total", 1.0),
    ("sm_clock_mhz", "flopwatt_gpu_sm_clock_hertz", _MHZ),
    ("mem_clock_mhz", "flopwatt_gpu_memory_clock_hertz", _MHZ),
    ("memory_used_bytes", "flopwatt_gpu_memory_used_bytes", 1.0),
)
_LATEST_KIND = (
    ("power_instant_w", "flopwatt_gpu_power_watts", "instant"),
    ("power_average_1s_w", "flopwatt_gpu_power_watts", "average_1s"),
    ("gpu_temperature_c", "flopwatt_gpu_temperature_celsius", "gpu"),
    ("memory_temperature_c", "flopwatt_gpu_temperature_celsius", "memory"),
    ("gpu_utilization_ratio", "flopwatt_gpu_utilization_ratio", "gpu"),
    ("memory_utilization_ratio", "flopwatt_gpu_utilization_ratio", "memory"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Gpu:
    """A device's GPU label values, their text form escaped once, and each series' text up to
    its value (``name{labels} ``), built on first use and kept across scrapes while the device's
    labels stay the same."""

    __slots__ = ("prefixes", "standard_key", "standard_text", "text", "values")

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values
        names = BY_NAME["flopwatt_gpu_power_watts"].labels  # the GPU label names, in order
        self.text = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=False))
        self.prefixes: dict[tuple[str, tuple[str, ...]], str] = {}
        self.standard_key: tuple[str, str] | None = None
        self.standard_text: _Standard | None = None

    def standard(self, sku_match: str, pci_bus_id: str) -> _Standard:
        """The series every device has (info, telemetry, throttle, power limit) with their
        kept text, built once per (registry match, PCI bus id)."""
        key = (sku_match, pci_bus_id)
        if self.standard_text is None or self.standard_key != key:
            self.standard_key = key
            values: list[tuple[str, tuple[str, ...], str, str, float]] = [
                (name, (kind,), self.prefix(name, (kind,)), column, 1.0)
                for column, name, kind in _LATEST_KIND
            ]
            values += [
                (name, (), self.prefix(name, ()), column, scale)
                for column, name, scale in _LATEST_SIMPLE
            ]
            self.standard_text = _Standard(
                info=("flopwatt_gpu_info", key, self.prefix("flopwatt_gpu_info", key)),
                values=values,
                throttle=[
                    ((reason,), self.prefix("flopwatt_gpu_throttle_active", (reason,)), bit)
                    for reason, bit in _THROTTLE
                ],
                limit=self.prefix("flopwatt_gpu_power_limit_watts", ()),
            )
        return self.standard_text

    def prefix(self, name: str, extra: tuple[str, ...]) -> str:
        key = (name, extra)
        text = self.prefixes.get(key)
        if text is None:
            labels = BY_NAME[name].labels[len(self.values) :]
            tail = "".join(f',{n}="{_escape(v)}"' for n, v in zip(labels, extra, strict=True))
            text = self.prefixes[key] = f"{name}{{{self.text}{tail}}} "
        return text


@dataclass(frozen=True, slots=True)
class _Standard:
    """One device's standard series and their kept text (see :meth:`_Gpu.standard`)."""

    info: tuple[str, tuple[str, ...], str]
    """(family, label values after the GPU labels, prefix) of the info series."""
    values: list[tuple[str, tuple[str, ...], str, str, float]]
    """(family, label values after the GPU labels, prefix, latest column, scale to base units)
    per telemetry series."""
    throttle: list[tuple[tuple[str, ...], str, int]]
    """(label values after the GPU labels, prefix, reason bit) per throttle reason."""
    limit: str
    """Prefix of the power-limit series."""

    def series(self, d: DeviceState) -> Iterator[tuple[str, tuple[str, ...], str, float]]:
        """(family, label values after the GPU labels, prefix, value) of each standard series
        ``d`` has now: the one place that says which exist and what their values are."""
        yield (*self.info, 1.0)
        v = d.latest
        for name, extra, prefix, column, scale in self.values:
            x = v.get(column)
            if x is not None:
                yield name, extra, prefix, float(x) * scale
        mask = v.get("throttle_reasons")
        if mask is not None:
            m = int(mask)
            for extra, prefix, bit in self.throttle:
                yield "flopwatt_gpu_throttle_active", extra, prefix, 1.0 if m & bit else 0.0
        limit = v.get("power_limit_w", d.info.power_limit_enforced_w)
        if limit is not None:
            yield "flopwatt_gpu_power_limit_watts", (), self.limit, float(limit)


class _View(Protocol):
    """What a walk reads: a :class:`FleetSnapshot` or a :class:`LiveView`."""

    @property
    def agents(self) -> Mapping[str, AgentState]: ...

    @property
    def counters(self) -> Counters: ...

    def device(self, uuid: str) -> DeviceState | None: ...


class _Sink(Protocol):
    def gpu(self, dev: _Gpu, rows: Sequence[tuple[str, tuple[str, ...], float]]) -> None:
        """One device's series: (metric name, label values after the GPU labels, value)."""

    def standard(self, dev: _Gpu, d: DeviceState) -> None:
        """One device's standard series (info, telemetry, throttle, power limit)."""

    def plain(self, name: str, values: tuple[str, ...], value: float) -> None: ...

    def histogram(self, name: str, buckets: list[tuple[str, float]], total: float) -> None: ...


class _FamilySink:
    """Builds prometheus_client metric families."""

    def __init__(self) -> None:
        self.families: dict[str, Any] = {}
        for m in METRICS:
            if m.scope != "collector":
                continue
            if m.type is MetricType.COUNTER:
                fam: Any = CounterMetricFamily(
                    m.name.removesuffix("_total"), m.help, labels=list(m.labels)
                )
            elif m.type is MetricType.HISTOGRAM:
                fam = HistogramMetricFamily(m.name, m.help, labels=list(m.labels))
            else:
                fam = GaugeMetricFamily(m.name, m.help, labels=list(m.labels))
            self.families[m.name] = fam

    def gpu(self, dev: _Gpu, rows: Sequence[tuple[str, tuple[str, ...], float]]) -> None:
        for name, extra, value in rows:
            self.families[name].add_metric([*dev.values, *extra], value)

    def standard(self, dev: _Gpu, d: DeviceState) -> None:
        families, labels = self.families, dev.values
        for name, extra, _, value in dev.standard(d.sku_match, d.info.pci_bus_id).series(d):
            families[name].add_metric([*labels, *extra], value)

    def plain(self, name: str, values: tuple[str, ...], value: float) -> None:
        self.families[name].add_metric(list(values), value)

    def histogram(self, name: str, buckets: list[tuple[str, float]], total: float) -> None:
        self.families[name].add_metric([], buckets, total)


class _TextSink:
    """Writes the Prometheus text exposition format (0.0.4) directly."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {m.name: [] for m in METRICS if m.scope == "collector"}

    def gpu(self, dev: _Gpu, rows: Sequence[tuple[str, tuple[str, ...], float]]) -> None:
        lines, prefixes = self.lines, dev.prefixes
        for name, extra, value in rows:
            prefix = prefixes.get((name, extra)) or dev.prefix(name, extra)
            lines[name].append(prefix + repr(float(value)))

    def standard(self, dev: _Gpu, d: DeviceState) -> None:
        # From the device's kept text: a scrape of thousands of GPUs is mostly these lines.
        lines = self.lines
        for name, _, prefix, value in dev.standard(d.sku_match, d.info.pci_bus_id).series(d):
            lines[name].append(prefix + repr(value))

    def plain(self, name: str, values: tuple[str, ...], value: float) -> None:
        labels = BY_NAME[name].labels
        if values:
            inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(labels, values, strict=True))
            self.lines[name].append(f"{name}{{{inner}}} {float(value)!r}")
        else:
            self.lines[name].append(f"{name} {float(value)!r}")

    def histogram(self, name: str, buckets: list[tuple[str, float]], total: float) -> None:
        out = self.lines[name]
        for le, count in buckets:
            out.append(f'{name}_bucket{{le="{le}"}} {float(count)!r}')
        out.append(f"{name}_count {float(buckets[-1][1])!r}")
        out.append(f"{name}_sum {float(total)!r}")

    def text(self) -> str:
        parts: list[str] = []
        for m in METRICS:
            if m.scope != "collector":
                continue
            lines = self.lines[m.name]
            parts.append(f"# HELP {m.name} {m.help.replace(chr(92), chr(92) * 2)}")
            parts.append(f"# TYPE {m.name} {m.type.value}")
            parts.extend(lines)
        return "\n".join(parts) + "\n"


class FleetMetrics:
    """Custom collector over a :class:`FleetState` (see module docstring).

    Args:
        state: the fleet state to read.
        staleness_s: GPU series of agents silent for longer than this are omitted.
        clock_ns: wall clock (ns since the Unix epoch).
    """

    def __init__(
        self,
        state: FleetState,
        *,
        staleness_s: float = 300.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._state = state
        self._staleness_ns = int(staleness_s * 1e9)
        self._clock_ns = clock_ns
        # Label values → their _Gpu, from the previous scrape: a fleet's labels rarely change,
        # so each series' text up to its value is built once, not on every scrape.
        self._gpus: dict[tuple[str, ...], _Gpu] = {}
        self._labels_of: dict[str, tuple[str, ...]] = {}
        """uuid → the label values its kept text was built for (see :meth:`warm`)."""

    def warm(self, devices: Sequence[DeviceState]) -> None:
        """Build the kept series text of registered devices now (called at registration,
        about a tenth of a millisecond per device). A render in a forked child cannot add to
        what the parent keeps, so without this every scrape would rebuild every series'
        labels (about twice the work of formatting the values)."""
        for d in devices:
            values = _labels(d)
            old = self._labels_of.get(d.info.uuid)
            if old is not None and old != values:
                self._gpus.pop(old, None)  # relabelled: the old text is dead
            self._labels_of[d.info.uuid] = values
            dev = self._gpus.get(values)
            if dev is None:
                dev = self._gpus[values] = _Gpu(values)
            dev.standard(d.sku_match, d.info.pci_bus_id)

    def describe(self) -> list[Metric]:
        """Nothing up front: families are built per scrape (keeps registration cheap)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family, as prometheus_client metric families."""
        sink = _FamilySink()
        for _ in self._walk(self._state.snapshot(), sink):
            pass
        yield from sink.families.values()

    def render_text(self) -> str:
        """Every family in the Prometheus text format, from one consistent snapshot."""
        sink = _TextSink()
        for _ in self._walk(self._state.snapshot(), sink):
            pass
        return sink.text()

    async def render_text_async(self, devices_per_step: int = DEVICES_PER_STEP) -> str:
        """What :meth:`render_text` renders, on the event loop in steps of
        ``devices_per_step`` devices with other work in between (``/metrics`` where a forked
        render is not available).

        The collector's event loop also reads every agent stream and sends every ack. A render
        on another thread held the GIL for the whole scrape (seconds for 8,000 GPUs under load)
        and acks stalled behind it; in steps, the loop stays responsive and the scrape takes a
        little longer. Devices are read as of their step (:class:`LiveView`).
        """
        sink = _TextSink()
        for _ in self._walk(self._state.live_view(), sink, devices_per_step):
            await asyncio.sleep(0)
        return sink.text()

    # --- the walk -------------------------------------------------------------------------

    def _walk(self, snap: _View, sink: _Sink, step: int = 0) -> Iterator[None]:
        """Feed every family to ``sink``; yields after every ``step`` devices (0: never)."""
        now = self._clock_ns()
        walked = 0
        skus: dict[str, GpuSpec] = {}
        previous = self._gpus
        current: dict[tuple[str, ...], _Gpu] = {}
        for agent_id, a in sorted(snap.agents.items()):
            sink.plain(
                "flopwatt_agent_last_seen_timestamp_seconds", (agent_id,), a.last_seen_unix_ns / 1e9
            )
            if now - a.last_seen_unix_ns > self._staleness_ns:
                continue
            sink.plain("flopwatt_agent_connected", (agent_id,), 1.0 if a.connected else 0.0)
            sink.plain(
                "flopwatt_agent_info",
                (
                    agent_id,
                    a.node.agent_version,
                    a.node.device_backend,
                    a.node.software.driver_version,
                ),
                1.0,
            )
            for uuid in a.device_uuids:
                walked += 1
                if step and walked % step == 0:
                    yield
                d = snap.device(uuid)
                if d is None or d.agent_id != agent_id:
                    continue  # gone, or since registered by another agent (moved hosts)
                values = _labels(d)
                dev = current[values] = previous.get(values) or _Gpu(values)
                self._device(sink, d, dev)
                if d.spec is not None:
                    skus[d.spec.sku] = d.spec
        self._gpus = current
        for sku in sorted(skus):
            self._sku(sink, skus[sku])
        self._counters(sink, snap)

    @staticmethod
    def _device(sink: _Sink, d: DeviceState, dev: _Gpu) -> None:
        sink.standard(dev, d)
        if not d.gemm and not d.models:
            return
        rows: list[tuple[str, tuple[str, ...], float]] = []
        add = rows.append  # one sink call per device: the per-series call overhead dominated
        for precision, g in sorted(d.gemm.items()):
            r, comp = g.result, g.comparison
            burst, sustained = (precision, "burst"), (precision, "sustained")
            add(("flopwatt_gemm_flops_per_second", burst, r.burst_flops_per_s))
            if comp is not None and comp.burst_over_spec_ratio is not None:
                add(("flopwatt_gemm_spec_ratio", burst, comp.burst_over_spec_ratio))
            if r.sustained_flops_per_s is not None:
                add(("flopwatt_gemm_flops_per_second", sustained, r.sustained_flops_per_s))
                if comp is not None and comp.sustained_over_spec_ratio is not None:
                    add(("flopwatt_gemm_spec_ratio", sustained, comp.sustained_over_spec_ratio))
            if r.mean_power_w is not None:
                add(("flopwatt_gemm_mean_power_watts", (precision,), r.mean_power_w))
            if r.energy_per_flop_j is not None:
                add(("flopwatt_energy_per_flop_joules", (precision,), r.energy_per_flop_j))

        for (model, batch, precision), m in sorted(d.models.items()):
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
            if mr.energy_j_per_inference is not None:
                add(
                    ("flopwatt_model_energy_per_inference_joules", extra, mr.energy_j_per_inference)
                )
        sink.gpu(dev, rows)

    @staticmethod
    def _sku(sink: _Sink, spec: GpuSpec) -> None:
        if spec.tdp_w is not None:
            sink.plain("flopwatt_spec_tdp_watts", (spec.sku,), spec.tdp_w)
        for precision in Precision:
            peak = spec.best_peak(precision)
            if peak is None:
                continue
            labels = (spec.sku, precision.value)
            sink.plain("flopwatt_spec_peak_flops_per_second", labels, peak.flops_per_s)
            physics = physics_energy_per_flop_j(spec, precision, peak.unit)
            if physics is not None:
                sink.plain("flopwatt_physics_energy_per_flop_joules", labels, physics)
                sink.plain("flopwatt_physics_tdp_watts", labels, physics * peak.flops_per_s)
            if spec.tdp_w is not None:
                sink.plain(
                    "flopwatt_energy_per_flop_ceiling_joules", labels, spec.tdp_w / peak.flops_per_s
                )

    @staticmethod
    def _counters(sink: _Sink, snap: _View) -> None:
        c = snap.counters
        sink.plain("flopwatt_collector_samples_ingested_total", (), c.samples_ingested)
        for reason, n in sorted(c.samples_rejected.items()):
            sink.plain("flopwatt_collector_samples_rejected_total", (reason,), n)
        sink.plain(
            "flopwatt_collector_samples_dropped_by_agents_total", (), c.samples_dropped_by_agents
        )
        for (kind, outcome), n in sorted(c.messages.items()):
            sink.plain("flopwatt_collector_messages_total", (kind, outcome), n)
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, k in zip(COMMIT_LATENCY_BUCKETS_S, c.commit_latency_buckets, strict=True):
            cumulative += k
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", c.commit_latency_count))
        sink.histogram("flopwatt_collector_commit_latency_seconds", buckets, c.commit_latency_sum_s)
        sink.plain("flopwatt_collector_streams_active", (), c.streams_active)


def _labels(d: DeviceState) -> tuple[str, ...]:
    """A device's GPU label values, in the order of the GPU label names."""
    return (
        d.agent_id,
        d.info.uuid,
        str(d.info.index),
        d.info.name,
        d.sku or "unknown",
        "sim" if d.info.simulated else "hardware",
    )


def _spec_efficiency(spec: GpuSpec, precision: str, delivered_flops_per_s: float) -> float | None:
    try:
        peak = spec.best_peak(Precision.parse(precision))
    except ValueError:
        return None
    return delivered_flops_per_s / peak.flops_per_s if peak is not None else None


def exposition(collectors: Sequence[FleetMetrics]) -> bytes:
    """The ``/metrics`` body for the given exporters."""
    return "".join(c.render_text() for c in collectors).encode()


async def exposition_async(collectors: Sequence[FleetMetrics]) -> bytes:
    """The ``/metrics`` body for the given exporters, rendered in steps on the event loop
    (:meth:`FleetMetrics.render_text_async`)."""
    return "".join([await c.render_text_async() for c in collectors]).encode()
