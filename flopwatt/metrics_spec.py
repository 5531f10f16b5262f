"""Every Prometheus metric flopwatt exports: name, type, unit, help and labels, in one place.

The collector's exporter builds its metric families from this list, the Grafana dashboards are
checked against it, and the README's metric table is generated from it
(``python -m flopwatt.metrics_spec`` prints the table). Names follow the Prometheus naming
guide: ``flopwatt_`` prefix, base units (watts, joules, seconds, hertz, celsius, ratio), counters
end in ``_total``; labels are lowercase snake_case from one frozen scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MetricType(StrEnum):
    """Prometheus metric types used here."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


#: Labels on every per-device series. Devices are keyed by UUID; the index is for display.
#: ``source`` is "hardware" or "sim" (simulated devices are labelled as such everywhere).
#: ``device_kind`` is what the device is: "gpu", or "cpu" for the CPU backend, which measures
#: the host's CPU through the same families (select ``device_kind="gpu"`` for GPUs only).
GPU_LABELS: tuple[str, ...] = (
    "hostname",
    "gpu_uuid",
    "gpu_index",
    "gpu_model",
    "sku",
    "source",
    "device_kind",
)


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric. ``name`` excludes the ``_total`` suffix of counters' samples only
    where prometheus_client adds it; here it is the full exposed family name."""

    name: str
    type: MetricType
    unit: str
    help: str
    labels: tuple[str, ...]
    scope: str = "collector"
    """"collector" (exported by the collector) or "agent" (the agent's local /metrics)."""


POD_LABELS: tuple[str, ...] = ("namespace", "pod", "container")
"""Attribution labels: the Kubernetes container a GPU is allocated to (empty, i.e. absent,
outside Kubernetes)."""
PROCESS_SERIES_PER_GPU = 4
"""Most per-process series one GPU exports per family (the busiest processes)."""


def _gpu(*extra: str) -> tuple[str, ...]:
    return (*GPU_LABELS, *extra)


METRICS: tuple[MetricSpec, ...] = (
    # --- per-GPU live telemetry ------------------------------------------------------------
    MetricSpec(
        "flopwatt_gpu_info",
        MetricType.GAUGE,
        "",
        "Device identity; value is always 1.",
        _gpu("sku_match", "pci_bus_id"),
    ),
    MetricSpec(
        "flopwatt_gpu_power_instant_watts",
        MetricType.GAUGE,
        "watts",
        "Board power, instantaneous reading (NVML's instant sensor).",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_power_average_1s_watts",
        MetricType.GAUGE,
        "watts",
        "Board power averaged by the hardware over the last second.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_energy_joules_total",
        MetricType.COUNTER,
        "joules",
        "Energy consumed since the agent's epoch began (hardware energy counter).",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_sm_clock_hertz", MetricType.GAUGE, "hertz", "Current SM clock.", _gpu()
    ),
    MetricSpec(
        "flopwatt_gpu_memory_clock_hertz",
        MetricType.GAUGE,
        "hertz",
        "Current memory clock.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_temperature_celsius",
        MetricType.GAUGE,
        "celsius",
        'Temperature; sensor="gpu" (die) or "memory" (HBM).',
        _gpu("sensor"),
    ),
    MetricSpec(
        "flopwatt_gpu_utilization_ratio",
        MetricType.GAUGE,
        "ratio",
        'Fraction of time busy; resource="gpu" (kernels) or "memory".',
        _gpu("resource"),
    ),
    MetricSpec(
        "flopwatt_gpu_memory_used_bytes", MetricType.GAUGE, "bytes", "Device memory used.", _gpu()
    ),
    MetricSpec(
        "flopwatt_gpu_throttle_active",
        MetricType.GAUGE,
        "",
        "1 while the clock-event (throttle) reason is active in the latest sample, else 0.",
        _gpu("reason"),
    ),
    MetricSpec(
        "flopwatt_gpu_power_limit_watts", MetricType.GAUGE, "watts", "Enforced power limit.", _gpu()
    ),
    MetricSpec(
        "flopwatt_gpu_pipe_active_ratio",
        MetricType.GAUGE,
        "ratio",
        "Fraction of the latest sample's interval a math pipe was active (NVML GPM, Hopper and "
        'newer): pipe="tensor" (any tensor pipe), "tensor_hmma" (FP16/BF16/TF32 matrix), '
        '"tensor_imma" (INT8 matrix), "tensor_dfma" (FP64 matrix), "fp64", "fp32", "fp16" '
        "(non-tensor). Absent where the GPU has no GPM.",
        _gpu("pipe"),
    ),
    MetricSpec(
        "flopwatt_gpu_sm_active_ratio",
        MetricType.GAUGE,
        "ratio",
        "Share of SMs busy over the latest sample's interval (NVML GPM SM_UTIL).",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_sm_occupancy_ratio",
        MetricType.GAUGE,
        "ratio",
        "Resident warps ÷ the maximum over the latest sample's interval (NVML GPM SM_OCCUPANCY).",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_dram_bandwidth_ratio",
        MetricType.GAUGE,
        "ratio",
        "DRAM bandwidth used ÷ its maximum over the latest sample's interval (NVML GPM "
        "DRAM_BW_UTIL).",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_ecc_errors_total",
        MetricType.COUNTER,
        "",
        'ECC errors since the driver loaded (NVML volatile counters); type="corrected" or '
        '"uncorrected". Resets when the driver reloads.',
        _gpu("type"),
    ),
    MetricSpec(
        "flopwatt_gpu_remapped_rows_total",
        MetricType.COUNTER,
        "",
        'Memory rows remapped (Ampere and newer); type="correctable" or "uncorrectable".',
        _gpu("type"),
    ),
    MetricSpec(
        "flopwatt_gpu_row_remap_pending",
        MetricType.GAUGE,
        "",
        "1 while a row remap waits for a GPU reset, else 0.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_row_remap_failed",
        MetricType.GAUGE,
        "",
        "1 once a row remap failed (the GPU needs service), else 0.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_pcie_replays_total",
        MetricType.COUNTER,
        "",
        "PCIe replays (link-level retransmissions): a rising count names a bad slot or riser.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_nvlink_crc_errors_total",
        MetricType.COUNTER,
        "",
        "NVLink data-link CRC flit errors, summed over the GPU's links.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_nvlink_replays_total",
        MetricType.COUNTER,
        "",
        "NVLink data-link replays (flits resent after an error), summed over the GPU's links.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_nvlink_recoveries_total",
        MetricType.COUNTER,
        "",
        "NVLink link recoveries (a link retrained after errors), summed over the GPU's links.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_xid_events_total",
        MetricType.COUNTER,
        "",
        "Critical XID events seen since the agent started.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_xid_last",
        MetricType.GAUGE,
        "",
        "The last critical XID code seen since the agent started (absent until the first); "
        "e.g. 79 = fallen off the bus, 48 = double-bit ECC error, 94/95 = contained/uncontained "
        "ECC error.",
        _gpu(),
    ),
    MetricSpec(
        "flopwatt_gpu_estimated_flops_per_second",
        MetricType.GAUGE,
        "flops_per_second",
        "ESTIMATED delivered FLOP/s of whatever runs on the GPU over the latest sample's "
        "interval: Σ pipe activity × that pipe's peak × SM clock ÷ the peak's clock (see the "
        "README's live-efficiency method). precision = the dominant pipe's; basis = "
        '"measured" (this GPU\'s sustained GEMM peaks), "spec" (dense spec peaks) or "mixed". '
        "namespace/pod/container: the Kubernetes container the GPU is allocated to (kubelet "
        "pod-resources; absent outside Kubernetes): one series per GPU at a time.",
        _gpu("precision", "basis", *POD_LABELS),
    ),
    MetricSpec(
        "flopwatt_gpu_estimated_mfu_ratio",
        MetricType.GAUGE,
        "ratio",
        "ESTIMATED model FLOP/s utilisation: flopwatt_gpu_estimated_flops_per_second ÷ the "
        "dense spec peak of its dominant precision (an upper bound: pipe activity counts "
        "issue slots, not useful FLOPs). Labels as flopwatt_gpu_estimated_flops_per_second.",
        _gpu("precision", "basis", *POD_LABELS),
    ),
    MetricSpec(
        "flopwatt_gpu_compute_processes",
        MetricType.GAUGE,
        "",
        "Processes with a compute context on the GPU (NVML), as last read by the agent "
        "(every 5 s by default). Absent where NVML cannot list them (not 0).",
        _gpu(*POD_LABELS),
    ),
    MetricSpec(
        "flopwatt_gpu_process_sm_utilization_ratio",
        MetricType.GAUGE,
        "ratio",
        "Share of the last interval in which one of the process's kernels ran (NVML "
        "per-process SM utilisation). Cardinality: at most "
        f"{PROCESS_SERIES_PER_GPU} processes per GPU (the busiest), labelled pid and process "
        "(command name); series come and go with processes.",
        _gpu(*POD_LABELS, "pid", "process"),
    ),
    MetricSpec(
        "flopwatt_gpu_process_used_memory_bytes",
        MetricType.GAUGE,
        "bytes",
        "GPU memory the process holds (NVML). The same processes as "
        "flopwatt_gpu_process_sm_utilization_ratio; absent where NVML does not say.",
        _gpu(*POD_LABELS, "pid", "process"),
    ),
    # --- benchmark results ------------------------------------------------------------------
    MetricSpec(
        "flopwatt_gemm_burst_flops_per_second",
        MetricType.GAUGE,
        "flops_per_second",
        "Latest burst GEMM throughput: best of the size sweep (2·m·n·k FLOP/s; OP/s for int8).",
        _gpu("precision"),
    ),
    MetricSpec(
        "flopwatt_gemm_sustained_flops_per_second",
        MetricType.GAUGE,
        "flops_per_second",
        "Latest sustained GEMM throughput: one long run at the enforced power limit "
        "(2·m·n·k FLOP/s; OP/s for int8).",
        _gpu("precision"),
    ),
    MetricSpec(
        "flopwatt_gemm_burst_spec_ratio",
        MetricType.GAUGE,
        "ratio",
        "Latest burst GEMM throughput ÷ the SKU's dense spec peak at that precision.",
        _gpu("precision"),
    ),
    MetricSpec(
        "flopwatt_gemm_sustained_spec_ratio",
        MetricType.GAUGE,
        "ratio",
        "Latest sustained GEMM throughput ÷ the SKU's dense spec peak at that precision.",
        _gpu("precision"),
    ),
    MetricSpec(
        "flopwatt_gemm_mean_power_watts",
        MetricType.GAUGE,
        "watts",
        "Mean power over the latest sustained GEMM run.",
        _gpu("precision"),
    ),
    MetricSpec(
        "flopwatt_energy_per_flop_joules",
        MetricType.GAUGE,
        "joules",
        "Measured energy per FLOP over the latest sustained GEMM run.",
        _gpu("precision"),
    ),
    # --- per SKU: spec sheet and physics (facts about the part; join GPU series on(sku)) -----
    MetricSpec(
        "flopwatt_spec_tdp_watts",
        MetricType.GAUGE,
        "watts",
        "The SKU's spec-sheet TDP (registry).",
        ("sku",),
    ),
    MetricSpec(
        "flopwatt_spec_peak_flops_per_second",
        MetricType.GAUGE,
        "flops_per_second",
        "The SKU's dense spec peak at a precision (registry; OP/s for int8).",
        ("sku", "precision"),
    ),
    MetricSpec(
        "flopwatt_physics_energy_per_flop_joules",
        MetricType.GAUGE,
        "joules",
        "Physics model's arithmetic energy per FLOP for the SKU and precision (spec profile).",
        ("sku", "precision"),
    ),
    MetricSpec(
        "flopwatt_energy_per_flop_ceiling_joules",
        MetricType.GAUGE,
        "joules",
        "Inverse view: spec TDP ÷ spec peak, the all-in energy per FLOP needed to hold the "
        "spec peak within TDP.",
        ("sku", "precision"),
    ),
    MetricSpec(
        "flopwatt_physics_tdp_watts",
        MetricType.GAUGE,
        "watts",
        "Physics model's power for the SKU's datapath at its spec peak (spec profile).",
        ("sku", "precision"),
    ),
    MetricSpec(
        "flopwatt_model_efficiency_ratio",
        MetricType.GAUGE,
        "ratio",
        "Model delivered FLOP/s ÷ measured GEMM peak of the same precision and device.",
        _gpu("model", "batch", "precision"),
    ),
    MetricSpec(
        "flopwatt_model_spec_efficiency_ratio",
        MetricType.GAUGE,
        "ratio",
        "Model delivered FLOP/s ÷ the SKU's dense spec peak.",
        _gpu("model", "batch", "precision"),
    ),
    MetricSpec(
        "flopwatt_model_delivered_flops_per_second",
        MetricType.GAUGE,
        "flops_per_second",
        "Model FLOPs (2 × MACs of conv, matmul and attention) ÷ p50 latency.",
        _gpu("model", "batch", "precision"),
    ),
    MetricSpec(
        "flopwatt_model_latency_p50_seconds",
        MetricType.GAUGE,
        "seconds",
        "Median latency of one batched forward pass.",
        _gpu("model", "batch", "precision"),
    ),
    MetricSpec(
        "flopwatt_model_energy_per_inference_joules",
        MetricType.GAUGE,
        "joules",
        "Energy per sample over the timed window.",
        _gpu("model", "batch", "precision"),
    ),
    # --- agents ---------------------------------------------------------------------------
    MetricSpec(
        "flopwatt_agent_last_seen_timestamp_seconds",
        MetricType.GAUGE,
        "seconds",
        "Unix time the collector last heard from the agent.",
        ("hostname",),
    ),
    MetricSpec(
        "flopwatt_agent_connected",
        MetricType.GAUGE,
        "",
        "1 while the agent holds an open stream, else 0.",
        ("hostname",),
    ),
    MetricSpec(
        "flopwatt_agent_info",
        MetricType.GAUGE,
        "",
        "Agent identity; value is always 1.",
        ("hostname", "agent_version", "device_backend", "driver_version"),
    ),
    # --- collector self-metrics -------------------------------------------------------------
    MetricSpec(
        "flopwatt_collector_samples_ingested_total",
        MetricType.COUNTER,
        "",
        "Telemetry samples committed to the store.",
        (),
    ),
    MetricSpec(
        "flopwatt_collector_samples_rejected_total",
        MetricType.COUNTER,
        "",
        "Telemetry samples rejected by validation, by reason.",
        ("reason",),
    ),
    MetricSpec(
        "flopwatt_collector_samples_dropped_by_agents_total",
        MetricType.COUNTER,
        "",
        "Samples agents reported dropping from a full spool (tombstones).",
        (),
    ),
    MetricSpec(
        "flopwatt_collector_messages_total",
        MetricType.COUNTER,
        "",
        "Agent messages by kind and outcome (stored, duplicate, conflict, rejected).",
        ("kind", "outcome"),
    ),
    MetricSpec(
        "flopwatt_collector_commit_latency_seconds",
        MetricType.HISTOGRAM,
        "seconds",
        "Time from a message's arrival to the commit that makes it durable.",
        (),
    ),
    MetricSpec(
        "flopwatt_collector_streams_active", MetricType.GAUGE, "", "Open agent streams.", ()
    ),
    MetricSpec(
        "flopwatt_collector_store_up",
        MetricType.GAUGE,
        "",
        "1 while the store commits; 0 while it cannot (writer restarting, disk full, database "
        "locked): health is NOT_SERVING and agents are told to retry.",
        (),
    ),
    MetricSpec(
        "flopwatt_collector_store_unavailable_episodes_total",
        MetricType.COUNTER,
        "",
        "Episodes during which the store could not commit.",
        (),
    ),
    MetricSpec(
        "flopwatt_collector_store_failed_commits_total",
        MetricType.COUNTER,
        "",
        "Commits and health probes of the store that failed (nothing in them was acked).",
        (),
    ),
    MetricSpec(
        "flopwatt_collector_child_restarts_total",
        MetricType.COUNTER,
        "",
        'Child processes started again after one ended: process="store_writer", "exporter" or '
        '"maintenance".',
        ("process",),
    ),
    MetricSpec(
        "flopwatt_collector_metrics_scrapes_total",
        MetricType.COUNTER,
        "",
        'Scrapes of /metrics, by the process that rendered them: process="exporter" (the HTTP '
        'exporter process) or "main" (HTTP served in the ingest process, a test setting).',
        ("process",),
    ),
    # --- store retention (written by the replica that maintains the store) -----------------
    MetricSpec(
        "flopwatt_store_bytes",
        MetricType.GAUGE,
        "bytes",
        'Bytes on disk per retention tier, tables with their indexes: tier="raw" (samples as '
        'received), "10s" / "1m" (rollups) or "results" (job results, comparisons, jobs, '
        "tombstones, rejected-sample counts). Measured every 5 min.",
        ("tier",),
    ),
    MetricSpec(
        "flopwatt_store_rows",
        MetricType.GAUGE,
        "",
        "Rows per retention tier (see flopwatt_store_bytes).",
        ("tier",),
    ),
    MetricSpec(
        "flopwatt_store_samples",
        MetricType.GAUGE,
        "",
        'Telemetry samples per tier: stored (tier="raw") or summarised by the rollups '
        '(tier="10s", "1m").',
        ("tier",),
    ),
    MetricSpec(
        "flopwatt_store_oldest_sample_age_seconds",
        MetricType.GAUGE,
        "seconds",
        "Age of the oldest data per tier (for results: the oldest job result); levels off at "
        "the tier's horizon.",
        ("tier",),
    ),
    MetricSpec(
        "flopwatt_store_size_bytes",
        MetricType.GAUGE,
        "bytes",
        "Bytes the store occupies (SQLite: pages in use; PostgreSQL: the database).",
        (),
    ),
    MetricSpec(
        "flopwatt_store_max_bytes",
        MetricType.GAUGE,
        "bytes",
        "The store's size cap (--max-db-bytes): near it the oldest data is pruned early. "
        "Absent when there is none.",
        (),
    ),
    MetricSpec(
        "flopwatt_store_pruned_rows_total",
        MetricType.COUNTER,
        "",
        "Rows pruned per tier (at its horizon, or early under the size cap).",
        ("tier",),
    ),
    MetricSpec(
        "flopwatt_store_pruned_bytes_total",
        MetricType.COUNTER,
        "bytes",
        "Telemetry data bytes pruned per tier (compact chunks and rollup windows).",
        ("tier",),
    ),
    MetricSpec(
        "flopwatt_store_compacted_samples_total",
        MetricType.COUNTER,
        "",
        "Raw samples re-packed from per-message chunks into compact per-device chunks.",
        (),
    ),
    MetricSpec(
        "flopwatt_store_compaction_ratio",
        MetricType.GAUGE,
        "",
        "Bytes of the per-message chunks compacted ÷ bytes of the compact chunks they became "
        "(since the maintenance process started).",
        (),
    ),
    MetricSpec(
        "flopwatt_store_early_prune_episodes_total",
        MetricType.COUNTER,
        "",
        "Times the store reached 90 % of its size cap and pruned the oldest data early.",
        (),
    ),
    MetricSpec(
        "flopwatt_store_maintenance_failed_passes_total",
        MetricType.COUNTER,
        "",
        "Maintenance passes that failed (retried at the next interval).",
        (),
    ),
    MetricSpec(
        "flopwatt_store_maintenance_pass_seconds",
        MetricType.GAUGE,
        "seconds",
        "Duration of the last maintenance pass (compaction, rollups, pruning).",
        (),
    ),
    # --- agent self-metrics (the agent's optional local /metrics) ---------------------------
    # The standard process metrics (the names prometheus_client's ProcessCollector and every
    # Go/Java exporter use), so generic process dashboards and alerts work on the agent.
    MetricSpec(
        "process_cpu_seconds_total",
        MetricType.COUNTER,
        "seconds",
        "Total user and system CPU time spent in seconds (the agent process).",
        (),
        "agent",
    ),
    MetricSpec(
        "process_resident_memory_bytes",
        MetricType.GAUGE,
        "bytes",
        "Resident memory size in bytes (the agent process).",
        (),
        "agent",
    ),
    MetricSpec(
        "process_start_time_seconds",
        MetricType.GAUGE,
        "seconds",
        "Start time of the process since unix epoch in seconds (the agent process).",
        (),
        "agent",
    ),
    MetricSpec(
        "process_open_fds",
        MetricType.GAUGE,
        "",
        "Number of open file descriptors (the agent process; absent where /proc is not).",
        (),
        "agent",
    ),
    MetricSpec(
        "flopwatt_agent_spool_bytes",
        MetricType.GAUGE,
        "bytes",
        "Size of the agent's on-disk spool.",
        (),
        "agent",
    ),
    MetricSpec(
        "flopwatt_agent_spool_messages",
        MetricType.GAUGE,
        "",
        "Unacked messages in the spool.",
        (),
        "agent",
    ),
    MetricSpec(
        "flopwatt_agent_dropped_samples_total",
        MetricType.COUNTER,
        "",
        "Telemetry samples the agent could not deliver, each counted in a tombstone: "
        'reason="spool_full", "too_large" (a message over the collector\'s limit) or '
        '"agent_stopped" (held in memory when an earlier run was killed).',
        ("reason",),
        "agent",
    ),
    MetricSpec(
        "flopwatt_agent_rejected_samples_total",
        MetricType.COUNTER,
        "",
        "Telemetry samples the collector reported it did not store, by validation reason.",
        ("reason",),
        "agent",
    ),
    MetricSpec(
        "flopwatt_agent_reconnects_total",
        MetricType.COUNTER,
        "",
        "Reconnections to the collector.",
        (),
        "agent",
    ),
    MetricSpec(
        "flopwatt_agent_missed_ticks_total",
        MetricType.COUNTER,
        "",
        "Sampling ticks that could not be taken on time.",
        (),
        "agent",
    ),
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}


def metric(name: str) -> MetricSpec:
    """The spec of metric ``name``.

    Raises:
        KeyError: no such metric.
    """
    return BY_NAME[name]


def _label_text(labels: tuple[str, ...]) -> str:
    if labels[: len(GPU_LABELS)] == GPU_LABELS:
        return ", ".join(("GPU labels", *labels[len(GPU_LABELS) :]))
    return ", ".join(labels)


def markdown_table() -> str:
    """The README's metric table (Markdown)."""
    lines = [
        "| Metric | Type | Labels | Meaning |",
        "|---|---|---|---|",
    ]
    for m in METRICS:
        labels = _label_text(m.labels)
        scope = " (agent)" if m.scope == "agent" else ""
        lines.append(f"| `{m.name}`{scope} | {m.type.value} | {labels} | {m.help} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
