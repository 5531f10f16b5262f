"""The report's tables as people see them: columns, headers with units, cell formats,
titles and explanations, shared by every output for people (terminal, Markdown, HTML)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from flopwatt.report.jobs import JOB_COLUMNS
from flopwatt.report.suspects import SUSPECT_COLUMNS, THROTTLED_SHARE
from flopwatt.report.tables import (
    GPU_COLUMNS,
    MODEL_COLUMNS,
    OUTLIER_COLUMNS,
    SKU_COLUMNS,
    VERDICT_COLUMNS,
)
from flopwatt.report.window_table import WINDOW_COLUMNS

TABLE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "gpus": GPU_COLUMNS,
    "skus": SKU_COLUMNS,
    "outliers": OUTLIER_COLUMNS,
    "verdicts": VERDICT_COLUMNS,
    "models": MODEL_COLUMNS,
    "window": WINDOW_COLUMNS,
    "suspects": SUSPECT_COLUMNS,
    "jobs": JOB_COLUMNS,
}


SECTION_ORDER: tuple[str, ...] = (
    "verdicts",
    "suspects",
    "outliers",
    "skus",
    "gpus",
    "window",
    "jobs",
    "models",
)
"""The order tables appear in for people: the answer first, the detail last."""


class ReportFormatError(ValueError):
    """An unknown report format, or a document that is not a flopwatt report."""


DASH = "—"


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v))


def _num_fmt(scale: float, spec: str, suffix: str = "") -> Callable[[Any], str]:
    def f(v: Any) -> str:
        return DASH if _missing(v) else f"{float(v) * scale:{spec}}{suffix}"

    return f


def _text_fmt(v: Any) -> str:
    return DASH if _missing(v) or v == "" else str(v)


def _int_fmt(v: Any) -> str:
    return DASH if _missing(v) else str(int(v))


def _bool_fmt(v: Any) -> str:
    return DASH if _missing(v) else ("yes" if bool(v) else "no")


def span_text(v: Any) -> str:
    """Seconds as a span for people: 45 s, 12 min, 5.5 h, 3.2 d (whole units shown whole)."""
    if _missing(v):
        return DASH
    s = max(0.0, float(v))
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:g} h" if s % 3600 == 0 else f"{s / 3600:.1f} h"
    return f"{s / 86400:g} d" if s % 86400 == 0 else f"{s / 86400:.1f} d"


def _age_fmt(v: Any) -> str:
    if _missing(v):
        return DASH
    s = max(0.0, float(v))
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    if s < 172800:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} d ago"


def tflops_text(v: Any) -> str:
    """FLOP/s → TFLOP/s for people: one decimal from 10 up, three significant digits below,
    so a CPU's 0.05 TFLOP/s does not print as a zero it is not."""
    if _missing(v):
        return DASH
    t = float(v) * 1e-12
    return f"{t:.1f}" if abs(t) >= 10 else f"{t:.3g}"


_pct = _num_fmt(100.0, ".1f", " %")


_pj = _num_fmt(1e12, ".3f")


_watts = _num_fmt(1.0, ".0f")


_times = _num_fmt(1.0, ".2f", "×")


_z = _num_fmt(1.0, "+.1f")


_ms = _num_fmt(1e3, ".2f")


_joules = _num_fmt(1.0, ".3g")


@dataclass(frozen=True)
class DisplayColumn:
    """A column as people see it: the data column, its header (with unit) and formatter."""

    name: str
    header: str
    fmt: Callable[[Any], str]
    numeric: bool = True


def _c(name: str, header: str, fmt: Callable[[Any], str] = _text_fmt) -> DisplayColumn:
    return DisplayColumn(name, header, fmt, numeric=fmt not in (_text_fmt, _bool_fmt))


#: What the people-facing tables show, per report table.
DISPLAY: Mapping[str, tuple[DisplayColumn, ...]] = {
    "verdicts": (
        _c("sku", "SKU"),
        _c("precision", "precision"),
        _c("source", "source"),
        _c("gpus_measured", "GPUs", _int_fmt),
        _c("spec_peak_flops_per_s", "spec peak TFLOP/s", tflops_text),
        _c("sustained_median_flops_per_s", "median sustained TFLOP/s", tflops_text),
        _c("sustained_over_spec_median_ratio", "sustained ÷ spec (median)", _pct),
        _c("sustained_over_spec_min_ratio", "min", _pct),
        _c("sustained_over_spec_max_ratio", "max", _pct),
        _c("power_limit_median_w", "limit W", _watts),
        _c("mean_power_over_limit_median_ratio", "power ÷ limit", _pct),
        _c("power_bound_gpus", "power-bound GPUs", _int_fmt),
        _c("measured_energy_per_flop_median_j", "measured pJ/FLOP", _pj),
        _c("ceiling_at_limit_energy_per_flop_j", "ceiling @ limit pJ/FLOP", _pj),
        _c("feedable_at_limit_over_spec_ratio", "limit can feed ÷ spec", _pct),
        _c("verdict", "verdict"),
    ),
    "outliers": (
        _c("cohort_rank", "rank", _int_fmt),
        _c("cohort", "cohort"),
        _c("cohort_size", "n", _int_fmt),
        _c("hostname", "host"),
        _c("device_index", "#", _int_fmt),
        _c("sku", "SKU / device"),
        _c("precision", "precision"),
        _c("source", "source"),
        _c("outlier_kind", "direction"),
        _c("sustained_flops_per_s", "sustained TFLOP/s", tflops_text),
        _c("sustained_over_cohort_ratio", "÷ cohort median", _times),
        _c("sustained_robust_z", "z sustained", _z),
        _c("measured_energy_per_flop_j", "pJ/FLOP", _pj),
        _c("energy_over_cohort_ratio", "÷ cohort median", _times),
        _c("energy_robust_z", "z energy", _z),
        _c("limiter", "likely limiter"),
        _c("throttle_reasons", "throttle reasons seen"),
        _c("mean_power_over_limit_ratio", "power ÷ limit", _pct),
        _c("temperature_max_c", "max °C", _num_fmt(1.0, ".0f")),
    ),
    "skus": (
        _c("sku", "SKU / device"),
        _c("precision", "precision"),
        _c("source", "source"),
        _c("gpus", "GPUs", _int_fmt),
        _c("hosts", "hosts", _int_fmt),
        _c("driver_versions", "drivers"),
        _c("sustained_over_spec_median_ratio", "sustained ÷ spec median", _pct),
        _c("sustained_over_spec_mad_ratio", "MAD", _pct),
        _c("sustained_over_spec_min_ratio", "min", _pct),
        _c("sustained_over_spec_max_ratio", "max", _pct),
        _c("burst_over_spec_median_ratio", "burst ÷ spec median", _pct),
        _c("model_efficiency_median_ratio", "model eff. median", _pct),
        _c("mean_power_over_limit_median_ratio", "power ÷ limit median", _pct),
        _c("measured_energy_per_flop_median_j", "pJ/FLOP median", _pj),
        _c("measured_energy_per_flop_mad_j", "MAD", _pj),
        _c("measured_over_physics_median_ratio", "measured ÷ physics", _times),
        _c("outliers", "outliers", _int_fmt),
    ),
    "gpus": (
        _c("hostname", "host"),
        _c("device_index", "#", _int_fmt),
        _c("sku", "SKU / device"),
        _c("source", "source"),
        _c("driver_version", "driver"),
        _c("precision", "precision"),
        _c("burst_flops_per_s", "burst TFLOP/s", tflops_text),
        _c("sustained_flops_per_s", "sustained TFLOP/s", tflops_text),
        _c("spec_peak_flops_per_s", "spec TFLOP/s", tflops_text),
        _c("burst_over_spec_ratio", "burst ÷ spec", _pct),
        _c("sustained_over_spec_ratio", "sustained ÷ spec", _pct),
        _c("model_efficiency_ratio", "model eff. (÷ GEMM)", _pct),
        _c("mean_power_w", "mean W", _watts),
        _c("spec_tdp_w", "TDP W", _watts),
        _c("power_limit_w", "limit W", _watts),
        _c("mean_power_over_tdp_ratio", "W ÷ TDP", _pct),
        _c("mean_power_over_limit_ratio", "W ÷ limit", _pct),
        _c("measured_energy_per_flop_j", "measured pJ/FLOP", _pj),
        _c("physics_energy_per_flop_j", "physics pJ/FLOP", _pj),
        _c("ceiling_energy_per_flop_j", "ceiling pJ/FLOP", _pj),
        _c("measured_over_ceiling_at_limit_ratio", "measured ÷ ceiling @ limit", _times),
        _c("throttle_reasons", "throttle reasons"),
        _c("limiter", "likely limiter"),
        _c("sustained_robust_z", "z sustained", _z),
        _c("energy_robust_z", "z energy", _z),
        _c("outlier_kind", "outlier"),
        _c("last_seen_age_s", "last seen", _age_fmt),
    ),
    "models": (
        _c("hostname", "host"),
        _c("device_index", "#", _int_fmt),
        _c("sku", "SKU / device"),
        _c("source", "source"),
        _c("model", "model"),
        _c("batch", "batch", _int_fmt),
        _c("precision", "precision"),
        _c("delivered_flops_per_s", "delivered TFLOP/s", _num_fmt(1e-12, ".3f")),
        _c("efficiency_ratio", "÷ measured GEMM peak", _pct),
        _c("spec_efficiency_ratio", "÷ spec peak", _pct),
        _c("latency_p50_s", "p50 ms", _ms),
        _c("energy_per_inference_j", "J per sample", _joules),
        _c("limiter", "likely limiter"),
    ),
    "suspects": (
        _c("severity", "severity"),
        _c("hostname", "host"),
        _c("device_index", "#", _int_fmt),
        _c("sku", "SKU / device"),
        _c("source", "source"),
        _c("reasons", "why"),
        _c("estimated_mfu_ratio", "est. MFU", _pct),
    ),
    "jobs": (
        _c("job", "pod / job"),
        _c("processes", "processes"),
        _c("hostnames", "hosts"),
        _c("skus", "SKUs"),
        _c("gpus", "GPUs", _int_fmt),
        _c("observed_gpu_s", "GPU-hours", _num_fmt(1 / 3600, ".2f")),
        _c("estimated_mfu_ratio", "est. MFU", _pct),
        _c("estimated_flops_per_s", "est. TFLOP/s per GPU", tflops_text),
        _c("estimated_flops", "est. PFLOP total", _num_fmt(1e-15, ".1f")),
        _c("estimate_basis", "est. basis"),
        _c("energy_j", "energy kWh", _num_fmt(1 / 3.6e6, ".3f")),
        _c("energy_mean_power_w", "mean W per GPU", _watts),
        _c("estimated_energy_per_flop_j", "est. pJ/FLOP", _pj),
    ),
    "window": (
        _c("hostname", "host"),
        _c("device_index", "#", _int_fmt),
        _c("sku", "SKU / device"),
        _c("source", "source"),
        _c("resolution", "resolution"),
        _c("tiers", "tiers read"),
        _c("window_start_utc", "from (UTC)"),
        _c("window_covered_s", "span", span_text),
        _c("observed_ratio", "observed", _pct),
        _c("energy_j", "energy kWh", _num_fmt(1 / 3.6e6, ".3f")),
        _c("energy_mean_power_w", "mean W (energy)", _watts),
        _c("power_average_1s_mean_w", "mean W (1 s avg)", _watts),
        _c("power_instant_max_w", "max W (instant)", _watts),
        _c("energy_mean_power_over_limit_ratio", "W ÷ limit", _pct),
        _c("sm_clock_mean_mhz", "mean SM MHz", _num_fmt(1.0, ".0f")),
        _c("gpu_temperature_max_c", "max °C", _num_fmt(1.0, ".0f")),
        _c("gpu_utilization_mean_ratio", "mean util.", _pct),
        _c("throttle_time", "throttled (share of observed time)"),
        _c("tensor_active_mean_ratio", "tensor active", _pct),
        _c("estimated_flops_per_s", "est. TFLOP/s", tflops_text),
        _c("estimated_mfu_ratio", "est. MFU", _pct),
        _c("estimate_basis", "est. basis"),
        _c("estimated_energy_per_flop_j", "est. pJ/FLOP", _pj),
    ),
}


#: The narrower views for a terminal (160 columns when piped): data columns per table.
TERMINAL_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "verdicts": (
        "sku",
        "precision",
        "source",
        "gpus_measured",
        "sustained_over_spec_median_ratio",
        "sustained_over_spec_min_ratio",
        "sustained_over_spec_max_ratio",
        "mean_power_over_limit_median_ratio",
        "feedable_at_limit_over_spec_ratio",
        "verdict",
    ),
    "outliers": (
        "hostname",
        "device_index",
        "sku",
        "precision",
        "source",
        "outlier_kind",
        "sustained_robust_z",
        "energy_robust_z",
        "limiter",
    ),
    "skus": (
        "sku",
        "precision",
        "source",
        "gpus",
        "sustained_over_spec_median_ratio",
        "sustained_over_spec_min_ratio",
        "sustained_over_spec_max_ratio",
        "measured_energy_per_flop_median_j",
        "outliers",
    ),
    "gpus": (
        "hostname",
        "device_index",
        "sku",
        "source",
        "precision",
        "sustained_flops_per_s",
        "sustained_over_spec_ratio",
        "mean_power_over_limit_ratio",
        "measured_energy_per_flop_j",
        "ceiling_energy_per_flop_j",
        "limiter",
        "outlier_kind",
        "last_seen_age_s",
    ),
    "suspects": ("severity", "hostname", "device_index", "sku", "source", "reasons"),
    "jobs": (
        "job",
        "gpus",
        "observed_gpu_s",
        "estimated_mfu_ratio",
        "estimated_flops_per_s",
        "energy_j",
        "estimated_energy_per_flop_j",
    ),
    "window": (
        "hostname",
        "device_index",
        "sku",
        "source",
        "resolution",
        "window_covered_s",
        "observed_ratio",
        "energy_j",
        "energy_mean_power_w",
        "power_instant_max_w",
        "gpu_temperature_max_c",
        "throttle_time",
        "estimated_mfu_ratio",
    ),
}


TITLES: Mapping[str, str] = {
    "verdicts": "Spec-achievability verdict",
    "outliers": "Outliers",
    "skus": "Per-SKU summary",
    "gpus": "Per-GPU table",
    "models": "Model results",
    "window": "Telemetry over the window",
    "suspects": "Suspect GPUs",
    "jobs": "Live efficiency by pod / job",
}


EXPLANATIONS: Mapping[str, str] = {
    "verdicts": (
        "Per SKU, precision and source: the median sustained GEMM FLOP/s (measured at each "
        "GPU's enforced power limit) as a fraction of the spec peak, and whether the limit can "
        "feed the spec peak at the measured energy per FLOP (ceiling @ limit = enforced limit "
        "÷ spec peak). 'reached': median ≥ {reached:.0%} of spec; 'power-limited': measured "
        "energy per FLOP above the ceiling, so the spec peak is not achievable within the limit; "
        "'not power-limited': below spec although power would allow it."
    ),
    "outliers": (
        "Robust z = 0.6745·(x − median) / MAD within a cohort of the same SKU, driver, "
        "precision and source, on sustained FLOP/s and measured energy per FLOP (MAD floored "
        "at {floor:.0%} of the median: smaller spread is noise). Flagged at |z| ≥ {z:g}; "
        "cohorts under {n} GPUs are not scored. slow = low sustained FLOP/s, hungry = high "
        "energy per FLOP. The likely limiter comes from the throttle reasons recorded during "
        "the run."
    ),
    "skus": "Median, MAD, min and max over the GPUs of each SKU, precision and source.",
    "gpus": (
        "One row per GPU and precision (latest result). Ceiling = TDP ÷ spec peak, the energy "
        "per FLOP a chip must reach to hold its spec peak within TDP (the inverse view)."
    ),
    "models": "Latest model result per GPU, model, batch and precision.",
    "suspects": (
        "GPUs worth a look, most severe first. critical: a hardware XID (48, 63, 64, 74, 79, "
        "92, 94, 95…), uncorrected ECC errors, a failed row remap or one pending a reset; "
        "warning: an application XID (13, 31, 43, 45), PCIe replays, NVLink CRC errors, replays or "
        "recoveries, rows "
        "remapped for correctable errors; performance: an outlier of its cohort "
        "(slow, hungry) or slowed by thermal, HW slowdown or power-brake throttling (not "
        "the software power cap, which is policy) for at least "
        f"{THROTTLED_SHARE:.0%} of the window's observed time. Health counters are the newest "
        "the GPU reported; a counter the GPU does not offer is absent, never counted as 0."
    ),
    "jobs": (
        "Over the last {window}: who held each GPU (the Kubernetes container it was allocated "
        "to, from the kubelet; else the processes NVML lists on it) and what its telemetry says "
        "for that time, summed per pod or job. est. MFU is weighted by GPU-time; est. TFLOP/s "
        "is per GPU; est. pJ/FLOP = the energy counters' increase ÷ the estimated FLOPs. GPUs "
        "whose agent reports no attribution are not in this table."
    ),
    "window": (
        "Per GPU, its telemetry over the last {window} before the report: energy from the "
        "energy counter (exact), mean power from it and from the 1 s averaged readings, the "
        "highest instant reading, and the share of observed time each throttle reason was "
        "reported. Read from raw samples where the store still keeps them and from 10 s or "
        "1 min rollups where they are pruned; 'resolution' names the coarsest tier read. The "
        "figures are exact over what they cover at any resolution: it only sets how finely "
        "the window's start is placed ('from'). Where a GPU has GPM (Hopper and newer), the "
        "ESTIMATED FLOP/s of whatever ran on it: mean pipe activity × each pipe's peak (this "
        "GPU's measured GEMM peak, else the spec) × mean SM clock ÷ the peak's clock; est. MFU "
        "= that ÷ the dense spec peak; an upper bound, since activity counts issue slots, not "
        "useful FLOPs."
    ),
}


def _sku_cell(row: Mapping[Any, Any]) -> str:
    sku = row.get("sku")
    if not _missing(sku):
        return str(sku)
    name = row.get("name", row.get("unmatched_name"))
    return f"{name} (unmatched)" if not _missing(name) else DASH


def display_rows(table: str, df: pd.DataFrame) -> list[list[str]]:
    """``df`` (one of the report's tables) as formatted strings, in :data:`DISPLAY` order."""
    cols = DISPLAY[table]
    out = []
    for rec in df.to_dict("records"):
        row = []
        for c in cols:
            if c.name == "sku" and ("name" in rec or "unmatched_name" in rec):
                row.append(_sku_cell(rec))
            else:
                row.append(c.fmt(rec.get(c.name)))
        out.append(row)
    return out
