"""The Prometheus exporter: a custom ``prometheus_client`` Collector that derives every metric
from a snapshot of the fleet state at scrape time (no ``Gauge.set`` from RPC handlers).

Families come from :mod:`flopwatt.metrics_spec`. GPU series of an agent silent for longer than
the staleness window are left out rather than repeating old values; the agent's
``last_seen`` timestamp stays, so an operator can still see how long ago it went quiet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from flopwatt.analysis.comparison import physics_energy_per_flop_j
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.throttle import THROTTLE_BITS
from flopwatt.collector.state import COMMIT_LATENCY_BUCKETS_S, DeviceState, FleetState
from flopwatt.metrics_spec import METRICS, MetricSpec, MetricType

_MHZ = 1e6


def _family(spec: MetricSpec) -> Any:
    if spec.type is MetricType.COUNTER:
        return CounterMetricFamily(
            spec.name.removesuffix("_total"), spec.help, labels=list(spec.labels)
        )
    if spec.type is MetricType.HISTOGRAM:
        return HistogramMetricFamily(spec.name, spec.help, labels=list(spec.labels))
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


class FleetMetrics:
    """Custom collector over a :class:`FleetState`.

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

    def describe(self) -> list[Metric]:
        """Nothing up front: families are built per scrape (keeps registration cheap)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Build every family from one consistent snapshot."""
        snap = self._state.snapshot()
        now = self._clock_ns()
        fam = {m.scope + m.name: _family(m) for m in METRICS if m.scope == "collector"}

        def f(name: str) -> Any:
            return fam["collector" + name]

        for agent_id, a in sorted(snap.agents.items()):
            f("flopwatt_agent_last_seen_timestamp_seconds").add_metric(
                [agent_id], a.last_seen_unix_ns / 1e9
            )
            if now - a.last_seen_unix_ns > self._staleness_ns:
                continue
            f("flopwatt_agent_connected").add_metric([agent_id], 1.0 if a.connected else 0.0)
            f("flopwatt_agent_info").add_metric(
                [
                    agent_id,
                    a.node.agent_version,
                    a.node.device_backend,
                    a.node.software.driver_version,
                ],
                1.0,
            )
            for uuid in a.device_uuids:
                d = snap.devices.get(uuid)
                if d is not None:
                    self._device(f, d)

        c = snap.counters
        f("flopwatt_collector_samples_ingested_total").add_metric([], c.samples_ingested)
        for reason, n in sorted(c.samples_rejected.items()):
            f("flopwatt_collector_samples_rejected_total").add_metric([reason], n)
        f("flopwatt_collector_samples_dropped_by_agents_total").add_metric(
            [], c.samples_dropped_by_agents
        )
        for (kind, outcome), n in sorted(c.messages.items()):
            f("flopwatt_collector_messages_total").add_metric([kind, outcome], n)
        cumulative, buckets = 0, []
        for bound, k in zip(COMMIT_LATENCY_BUCKETS_S, c.commit_latency_buckets, strict=True):
            cumulative += k
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", c.commit_latency_count))
        f("flopwatt_collector_commit_latency_seconds").add_metric(
            [], buckets, c.commit_latency_sum_s
        )
        f("flopwatt_collector_streams_active").add_metric([], c.streams_active)
        yield from fam.values()

    def _device(self, f: Callable[[str], Any], d: DeviceState) -> None:
        info = d.info
        gpu = [
            d.agent_id,
            info.uuid,
            str(info.index),
            info.name,
            d.sku or "unknown",
            "sim" if info.simulated else "hardware",
        ]
        f("flopwatt_gpu_info").add_metric([*gpu, d.sku_match, info.pci_bus_id], 1.0)
        v = d.latest
        if "power_instant_w" in v:
            f("flopwatt_gpu_power_watts").add_metric([*gpu, "instant"], v["power_instant_w"])
        if "power_average_1s_w" in v:
            f("flopwatt_gpu_power_watts").add_metric([*gpu, "average_1s"], v["power_average_1s_w"])
        if "energy_j" in v:
            f("flopwatt_gpu_energy_joules_total").add_metric(gpu, v["energy_j"])
        if "sm_clock_mhz" in v:
            f("flopwatt_gpu_sm_clock_hertz").add_metric(gpu, v["sm_clock_mhz"] * _MHZ)
        if "mem_clock_mhz" in v:
            f("flopwatt_gpu_memory_clock_hertz").add_metric(gpu, v["mem_clock_mhz"] * _MHZ)
        if "gpu_temperature_c" in v:
            f("flopwatt_gpu_temperature_celsius").add_metric([*gpu, "gpu"], v["gpu_temperature_c"])
        if "memory_temperature_c" in v:
            f("flopwatt_gpu_temperature_celsius").add_metric(
                [*gpu, "memory"], v["memory_temperature_c"]
            )
        if "gpu_utilization_ratio" in v:
            f("flopwatt_gpu_utilization_ratio").add_metric(
                [*gpu, "gpu"], v["gpu_utilization_ratio"]
            )
        if "memory_utilization_ratio" in v:
            f("flopwatt_gpu_utilization_ratio").add_metric(
                [*gpu, "memory"], v["memory_utilization_ratio"]
            )
        if "memory_used_bytes" in v:
            f("flopwatt_gpu_memory_used_bytes").add_metric(gpu, v["memory_used_bytes"])
        if "throttle_reasons" in v:
            mask = int(v["throttle_reasons"])
            for reason, bit in THROTTLE_BITS.items():
                f("flopwatt_gpu_throttle_active").add_metric(
                    [*gpu, reason.value], 1.0 if mask & bit else 0.0
                )
        limit = v.get("power_limit_w", info.power_limit_enforced_w)
        if limit is not None:
            f("flopwatt_gpu_power_limit_watts").add_metric(gpu, limit)

        spec = d.spec
        if spec is not None:
            if spec.tdp_w is not None:
                f("flopwatt_spec_tdp_watts").add_metric(gpu, spec.tdp_w)
            for precision in Precision:
                peak = spec.best_peak(precision)
                if peak is None:
                    continue
                labels = [*gpu, precision.value]
                f("flopwatt_spec_peak_flops_per_second").add_metric(labels, peak.flops_per_s)
                physics = physics_energy_per_flop_j(spec, precision, peak.unit)
                if physics is not None:
                    f("flopwatt_physics_energy_per_flop_joules").add_metric(labels, physics)
                    f("flopwatt_physics_tdp_watts").add_metric(labels, physics * peak.flops_per_s)
                if spec.tdp_w is not None:
                    f("flopwatt_energy_per_flop_ceiling_joules").add_metric(
                        labels, spec.tdp_w / peak.flops_per_s
                    )

        for prec_name, g in sorted(d.gemm.items()):
            r, comp = g.result, g.comparison
            f("flopwatt_gemm_flops_per_second").add_metric(
                [*gpu, prec_name, "burst"], r.burst_flops_per_s
            )
            if comp is not None and comp.burst_over_spec_ratio is not None:
                f("flopwatt_gemm_spec_ratio").add_metric(
                    [*gpu, prec_name, "burst"], comp.burst_over_spec_ratio
                )
            if r.sustained_flops_per_s is not None:
                f("flopwatt_gemm_flops_per_second").add_metric(
                    [*gpu, prec_name, "sustained"], r.sustained_flops_per_s
                )
                if comp is not None and comp.sustained_over_spec_ratio is not None:
                    f("flopwatt_gemm_spec_ratio").add_metric(
                        [*gpu, prec_name, "sustained"], comp.sustained_over_spec_ratio
                    )
            if r.mean_power_w is not None:
                f("flopwatt_gemm_mean_power_watts").add_metric([*gpu, prec_name], r.mean_power_w)
            if r.energy_per_flop_j is not None:
                f("flopwatt_energy_per_flop_joules").add_metric(
                    [*gpu, prec_name], r.energy_per_flop_j
                )

        for (model, batch, prec_name), m in sorted(d.models.items()):
            r2 = m.result
            labels = [*gpu, model, str(batch), prec_name]
            f("flopwatt_model_delivered_flops_per_second").add_metric(
                labels, r2.delivered_flops_per_s
            )
            f("flopwatt_model_latency_p50_seconds").add_metric(labels, r2.latency_p50_s)
            if r2.efficiency_ratio is not None:
                f("flopwatt_model_efficiency_ratio").add_metric(labels, r2.efficiency_ratio)
            spec_eff = r2.spec_efficiency_ratio
            if spec_eff is None and spec is not None:
                peak = (
                    spec.best_peak(Precision.parse(precision)) if precision in Precision else None
                )
                spec_eff = r2.delivered_flops_per_s / peak.flops_per_s if peak else None
            if spec_eff is not None:
                f("flopwatt_model_spec_efficiency_ratio").add_metric(labels, spec_eff)
            if r2.energy_j_per_inference is not None:
                f("flopwatt_model_energy_per_inference_joules").add_metric(
                    labels, r2.energy_j_per_inference
                )
