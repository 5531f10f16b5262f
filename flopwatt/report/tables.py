"""The fleet comparison report, as tables (pure: DataFrames in, DataFrames out).

Input is three frames a loader fills from the store (``flopwatt.report.loading``):
devices (:data:`DEVICE_INPUT_COLUMNS`), the latest result per device and job key with its
spec comparison (:data:`RESULT_INPUT_COLUMNS`) and the latest telemetry per device
(:data:`TELEMETRY_INPUT_COLUMNS`). :func:`build_report` turns them into a :class:`FleetReport`:

* **gpus** — one row per device and precision measured (a device with no result yet gets one
  row with no precision): burst and sustained GEMM against the spec peak, model efficiency,
  mean power against TDP and the enforced limit, measured energy per FLOP against the physics
  model and the inverse-view ceiling, throttle reasons, the likely limiter, outlier scores and
  when the device was last seen;
* **skus** — per SKU, precision and source: median, MAD, min and max of the main ratios;
* **outliers** — rows flagged by a robust z-score within their cohort, worst first;
* **verdicts** — per SKU, precision and source: the median sustained FLOP/s at the enforced
  power limit as a fraction of the spec peak, and whether the limit can feed the spec peak at
  the measured energy per FLOP (the seed's hypothesis, measured);
* **models** — the latest model results, one row each.

Every column name carries its unit (``_flops_per_s``, ``_w``, ``_j``, ``_ratio``,
``_unix_ns``, ``_s``, ``_mhz``, ``_c``); energy per FLOP is in joules (1 pJ = 1e-12 J). A value
not known stays NaN / None — never 0. ``source`` is ``"sim"`` for simulated devices and
``"hardware"`` otherwise; simulated and hardware GPUs never share a cohort, a SKU summary row or
a verdict.

Outliers: within a cohort (same SKU — the raw device name where the registry has none — driver
version, precision and source), each GPU gets a robust z-score ``0.6745·(x − median) / MAD``
for sustained FLOP/s and for measured energy per FLOP, with MAD floored at
:data:`MAD_FLOOR_RATIO` (1 %) of the cohort median. The floor says that spread below about
1.5 % (σ) is measurement noise, not evidence: without it a near-identical cohort (simulated
GPUs, cached results) turns a 0.01 % difference into |z| in the thousands, and MAD = 0 (half
the cohort identical) would divide by zero. A GPU is an outlier on a metric at ``|z| ≥ 3.5``
(Iglewicz & Hoaglin's cut-off), so never closer than about 5 % to the median. Direction: low
sustained FLOP/s is ``slow`` (high: ``fast``); high energy per FLOP is ``hungry`` (low:
``frugal``). Cohorts with fewer than :data:`MIN_COHORT` GPUs are not scored (z NaN, ``outlier``
None: not assessed, which is not "fine"). See :func:`robust_z`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from flopwatt.analysis.live_efficiency import MeasuredPeak
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, Registry, UnknownSkuError, load_registry
from flopwatt.analysis.throttle import decode_throttle, likely_limiter
from flopwatt.report.jobs import JOB_COLUMNS, JOB_INPUT_COLUMNS, job_frame
from flopwatt.report.suspects import (
    HEALTH_INPUT_COLUMNS,
    SUSPECT_COLUMNS,
    SUSPECT_INT_COLUMNS,
    suspect_frame,
)
from flopwatt.report.window_table import (
    WINDOW_COLUMNS,
    WINDOW_INPUT_COLUMNS,
    WINDOW_INT_COLUMNS,
    add_live_estimates,
    window_frame,
)

# --- parameters -------------------------------------------------------------------------------

MAD_Z_SCALE = 0.6745
"""Φ⁻¹(0.75): scales MAD so the robust z of normal data matches the ordinary z."""
MEAN_AD_Z_SCALE = 1.253314
"""√(π/2): the mean absolute deviation of normal data is σ·√(2/π); used when MAD is 0."""
OUTLIER_Z = 3.5
"""|robust z| at or above which a value is an outlier (Iglewicz & Hoaglin, 1993)."""
MIN_COHORT = 3
"""Fewest GPUs with a value for a robust z to mean anything; smaller cohorts get no score."""
MAD_FLOOR_RATIO = 0.01
"""MAD is never taken below this fraction of |median| (see the module docstring)."""
SPEC_REACHED_RATIO = 0.90
"""Median sustained ÷ spec peak at or above which a SKU is said to reach its spec peak."""
POWER_BOUND_RATIO = 0.95
"""Mean power ÷ enforced limit at or above which a run counts as power-bound."""
WINDOW_S = 86_400.0
"""The "telemetry over the window" table's span by default: the last 24 hours (s)."""

SIM = "sim"
HARDWARE = "hardware"

# --- input contract -------------------------------------------------------------------------

DEVICE_INPUT_COLUMNS: tuple[str, ...] = (
    "device_uuid",
    "hostname",
    "device_index",
    "name",
    "kind",
    "sku",
    "sku_match",
    "simulated",
    "power_limit_enforced_w",
    "throttle_reasons_capable",
    "driver_version",
    "registered_unix_ns",
)
"""One row per registered device. ``sku`` is None when the registry has no match;
``throttle_reasons_capable`` says whether the device can report clock-event reasons;
``driver_version`` is the node's (results carry their own, which wins)."""

RESULT_INPUT_COLUMNS: tuple[str, ...] = (
    "device_uuid",
    "job_id",
    "kind",
    "precision",
    "model",
    "batch",
    "finished_unix_ns",
    "simulated",
    "burst_flops_per_s",
    "sustained_flops_per_s",
    "mean_power_w",
    "delivered_flops_per_s",
    "latency_p50_s",
    "efficiency_ratio",
    "spec_efficiency_ratio",
    "energy_per_inference_j",
    "throttle_reasons_seen",
    "power_limit_w",
    "sm_clock_mean_mhz",
    "temperature_max_c",
    "driver_version",
    "datapath",
    "spec_peak_flops_per_s",
    "spec_tdp_w",
    "measured_energy_per_flop_j",
    "physics_energy_per_flop_j",
    "ceiling_energy_per_flop_j",
)
"""One row per result (``kind`` "gemm" or "model"); the spec columns come from the stored
comparison (``ceiling_energy_per_flop_j`` is the inverse view at TDP: TDP ÷ spec peak). Several rows
for the same (device, kind, precision, model, batch) are allowed: the latest wins."""

TELEMETRY_INPUT_COLUMNS: tuple[str, ...] = (
    "device_uuid",
    "last_sample_unix_ns",
    "last_power_w",
    "last_temperature_c",
    *HEALTH_INPUT_COLUMNS,
)
"""The latest telemetry sample per device (power: 1 s average where present, else instant)."""


@dataclass(frozen=True)
class ReportInputs:
    """What :func:`build_report` reads: the three input frames and where they came from."""

    devices: pd.DataFrame
    results: pd.DataFrame
    telemetry: pd.DataFrame
    source: str = ""
    """Where the data came from (a database path or a collector URL), for the report header."""
    window: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(WINDOW_INPUT_COLUMNS))
    )
    """Telemetry over the report's window per device (:data:`WINDOW_INPUT_COLUMNS`)."""
    jobs: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=[*WINDOW_INPUT_COLUMNS, *JOB_INPUT_COLUMNS])
    )
    """Telemetry over each attribution span's part of the window (:mod:`flopwatt.report.jobs`)."""


@dataclass(frozen=True)
class ReportParameters:
    """The thresholds a report was computed with (printed in every format)."""

    outlier_z: float = OUTLIER_Z
    min_cohort: int = MIN_COHORT
    mad_floor_ratio: float = MAD_FLOOR_RATIO
    spec_reached_ratio: float = SPEC_REACHED_RATIO
    power_bound_ratio: float = POWER_BOUND_RATIO
    window_s: float = WINDOW_S
    """The span of the "telemetry over the window" table, ending at the report's time (s)."""


@dataclass(frozen=True)
class FleetReport:
    """The report's tables (see the module docstring) and how they were made."""

    gpus: pd.DataFrame
    skus: pd.DataFrame
    outliers: pd.DataFrame
    verdicts: pd.DataFrame
    models: pd.DataFrame
    generated_unix_ns: int
    window: pd.DataFrame = field(default_factory=lambda: _empty(WINDOW_COLUMNS))
    """Telemetry over the window, per GPU (:mod:`flopwatt.report.window_table`)."""
    suspects: pd.DataFrame = field(default_factory=lambda: _empty(SUSPECT_COLUMNS))
    """GPUs worth a look, and why (:mod:`flopwatt.report.suspects`)."""
    jobs: pd.DataFrame = field(
        default_factory=lambda: typed_frame(_empty(JOB_COLUMNS), JOB_COLUMNS)
    )
    """Live efficiency per pod or job over the window (:mod:`flopwatt.report.jobs`)."""
    source: str = ""
    parameters: ReportParameters = field(default_factory=ReportParameters)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by name, in report order."""
        return {name: getattr(self, name) for name in TABLE_NAMES}


TABLE_NAMES: tuple[str, ...] = (
    "gpus",
    "skus",
    "outliers",
    "verdicts",
    "models",
    "window",
    "suspects",
    "jobs",
)

# --- output contract ------------------------------------------------------------------------

GPU_COLUMNS: tuple[str, ...] = (
    "hostname",
    "device_uuid",
    "device_index",
    "name",
    "kind",
    "sku",
    "sku_match",
    "source",
    "driver_version",
    "precision",
    "datapath",
    "spec_peak_flops_per_s",
    "burst_flops_per_s",
    "sustained_flops_per_s",
    "burst_over_spec_ratio",
    "sustained_over_spec_ratio",
    "model_efficiency_ratio",
    "model_spec_efficiency_ratio",
    "model_results",
    "mean_power_w",
    "spec_tdp_w",
    "power_limit_w",
    "mean_power_over_tdp_ratio",
    "mean_power_over_limit_ratio",
    "measured_energy_per_flop_j",
    "physics_energy_per_flop_j",
    "ceiling_energy_per_flop_j",
    "ceiling_at_limit_energy_per_flop_j",
    "measured_over_physics_ratio",
    "measured_over_ceiling_ratio",
    "measured_over_ceiling_at_limit_ratio",
    "sm_clock_mean_mhz",
    "temperature_max_c",
    "throttle_reasons_mask",
    "throttle_reasons",
    "limiter",
    "cohort",
    "cohort_size",
    "sustained_over_cohort_ratio",
    "sustained_robust_z",
    "energy_over_cohort_ratio",
    "energy_robust_z",
    "outlier",
    "outlier_kind",
    "cohort_rank",
    "job_id",
    "measured_unix_ns",
    "last_seen_unix_ns",
    "last_seen_utc",
    "last_seen_age_s",
    "last_power_w",
    "last_temperature_c",
)

OUTLIER_COLUMNS: tuple[str, ...] = (
    "cohort",
    "cohort_rank",
    "cohort_size",
    "hostname",
    "device_index",
    "device_uuid",
    "name",
    "sku",
    "source",
    "driver_version",
    "precision",
    "outlier_kind",
    "sustained_flops_per_s",
    "sustained_over_cohort_ratio",
    "sustained_robust_z",
    "measured_energy_per_flop_j",
    "energy_over_cohort_ratio",
    "energy_robust_z",
    "limiter",
    "throttle_reasons",
    "mean_power_over_limit_ratio",
    "temperature_max_c",
)

#: (stem, unit) of the metrics the SKU summary aggregates; columns are ``{stem}_{stat}_{unit}``.
SKU_METRICS: tuple[tuple[str, str], ...] = (
    ("sustained_over_spec", "ratio"),
    ("burst_over_spec", "ratio"),
    ("model_efficiency", "ratio"),
    ("mean_power_over_limit", "ratio"),
    ("measured_energy_per_flop", "j"),
    ("measured_over_physics", "ratio"),
)
SKU_STATS: tuple[str, ...] = ("median", "mad", "min", "max")
SKU_COLUMNS: tuple[str, ...] = (
    "sku",
    "unmatched_name",
    "precision",
    "source",
    "gpus",
    "hosts",
    "driver_versions",
    "spec_peak_flops_per_s",
    "spec_tdp_w",
    "sustained_median_flops_per_s",
    *(f"{stem}_{stat}_{unit}" for stem, unit in SKU_METRICS for stat in SKU_STATS),
    "outliers",
)

VERDICT_COLUMNS: tuple[str, ...] = (
    "sku",
    "precision",
    "source",
    "gpus",
    "gpus_measured",
    "spec_peak_flops_per_s",
    "spec_tdp_w",
    "power_limit_median_w",
    "sustained_median_flops_per_s",
    "sustained_over_spec_median_ratio",
    "sustained_over_spec_min_ratio",
    "sustained_over_spec_max_ratio",
    "mean_power_over_limit_median_ratio",
    "power_bound_gpus",
    "measured_energy_per_flop_median_j",
    "ceiling_at_limit_energy_per_flop_j",
    "measured_over_ceiling_at_limit_median_ratio",
    "feedable_at_limit_over_spec_ratio",
    "spec_reached",
    "spec_within_limit",
    "verdict",
    "verdict_note",
)

MODEL_COLUMNS: tuple[str, ...] = (
    "hostname",
    "device_uuid",
    "device_index",
    "name",
    "sku",
    "source",
    "model",
    "batch",
    "precision",
    "delivered_flops_per_s",
    "efficiency_ratio",
    "spec_efficiency_ratio",
    "latency_p50_s",
    "energy_per_inference_j",
    "measured_energy_per_flop_j",
    "mean_power_w",
    "limiter",
    "job_id",
    "measured_unix_ns",
)

# --- robust statistics ----------------------------------------------------------------------


def robust_z(
    values: npt.ArrayLike,
    *,
    min_count: int = MIN_COHORT,
    mad_floor_ratio: float = MAD_FLOOR_RATIO,
) -> npt.NDArray[np.float64]:
    """Robust (modified) z-scores of ``values``: ``0.6745·(x − median) / max(MAD, floor)``
    with ``floor = mad_floor_ratio·|median|``.

    NaN and infinite values take no part and score NaN. With fewer than ``min_count`` finite
    values every score is NaN (a median of two says nothing about which one is odd). If the
    scale is still 0 (MAD = 0 and a zero median, or ``mad_floor_ratio=0``), it falls back to the
    mean absolute deviation, ``(x − median) / (1.253314·MeanAD)``; when that is 0 too, every
    value equals the median and every score is 0.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    finite = np.isfinite(x)
    if int(finite.sum()) < min_count:
        return out
    v = x[finite]
    median = float(np.median(v))
    dev = v - median
    scale = max(float(np.median(np.abs(dev))), mad_floor_ratio * abs(median))
    if scale > 0:
        out[finite] = MAD_Z_SCALE * dev / scale
    else:
        mean_ad = float(np.mean(np.abs(dev)))
        out[finite] = dev / (MEAN_AD_Z_SCALE * mean_ad) if mean_ad > 0 else 0.0
    return out


def _mad(values: pd.Series) -> float:
    v = values.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    return float(np.median(np.abs(v - np.median(v))))


# --- helpers --------------------------------------------------------------------------------


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _ensure(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``df`` with every column of ``columns`` present (missing ones all-None)."""
    out = df.copy()
    for c in columns:
        if c not in out.columns:
            out[c] = None
    return out


def _num(df: pd.DataFrame, column: str) -> pd.Series:
    """A column as float64, with None → NaN."""
    return pd.to_numeric(df[column], errors="coerce").astype("float64")


def _ratio(a: pd.Series, b: pd.Series) -> pd.Series:
    """a ÷ b, NaN where either is missing or b is 0 (a ratio to nothing is not 0, nor ∞)."""
    out = a / b.where(b != 0)
    return out.where(np.isfinite(out))


def _text(value: Any) -> str | None:
    """A string cell, or None for NaN / None / empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    text = str(value)
    return text or None


def _latest(results: pd.DataFrame) -> pd.DataFrame:
    """The latest row per (device, kind, precision, model, batch)."""
    if results.empty:
        return results
    key = ["device_uuid", "kind", "precision", "model", "batch"]
    ordered = results.sort_values("finished_unix_ns", kind="stable")
    return ordered.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def _or_masks(values: pd.Series) -> int:
    mask = 0
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            mask |= int(v)
    return mask


def _limiter(mask: Any, capable: Any) -> str | None:
    """The likely limiter from a throttle mask; None when the device cannot report reasons
    and none were seen (a silent device is not evidence of "none")."""
    if mask is None or (isinstance(mask, float) and math.isnan(mask)):
        return None
    m = int(mask)
    if m == 0 and not _truthy(capable):
        return None
    return likely_limiter(m).value


def _reason_text(mask: Any) -> str | None:
    if mask is None or (isinstance(mask, float) and math.isnan(mask)):
        return None
    return ", ".join(r.value for r in decode_throttle(int(mask))) or "none"


def _utc(ns: Any) -> str | None:
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return None
    return datetime.fromtimestamp(int(ns) / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Result columns that would collide with the device frame's (dropped before the join).
_DEVICE_KEYED = frozenset({"kind", "model", "batch"})

_MODEL_AGG_COLUMNS = (
    "model_efficiency_ratio",
    "model_spec_efficiency_ratio",
    "model_results",
    "model_mask",
    "model_simulated",
    "model_finished_unix_ns",
    "model_spec_peak",
    "model_spec_tdp",
    "model_physics",
    "model_ceiling",
    "model_datapath",
    "model_limit",
    "model_driver",
)


# --- the tables -----------------------------------------------------------------------------


def build_report(
    inputs: ReportInputs,
    *,
    now_unix_ns: int,
    parameters: ReportParameters | None = None,
    registry: Registry | None = None,
) -> FleetReport:
    """Compute every table of the fleet report from ``inputs``.

    Args:
        inputs: the device, result and telemetry frames (missing columns count as all-absent).
        now_unix_ns: the report's time (wall clock, ns since the Unix epoch), for ages.
        parameters: thresholds (defaults: :class:`ReportParameters`).
        registry: spec peaks for the live-efficiency estimate (default: the shipped one,
            loaded only when a GPU reports GPM activity).

    Raises:
        KeyError: a frame lacks its key column (``device_uuid``).
    """
    params = parameters or ReportParameters()
    devices = _ensure(inputs.devices, DEVICE_INPUT_COLUMNS)
    results = _latest(_ensure(inputs.results, RESULT_INPUT_COLUMNS))
    telemetry = _ensure(inputs.telemetry, TELEMETRY_INPUT_COLUMNS)
    gpus = gpu_table(devices, results, telemetry, now_unix_ns=now_unix_ns, params=params)
    window_input = _ensure(inputs.window, WINDOW_INPUT_COLUMNS)
    window = window_table(devices, window_input, results, registry)
    return FleetReport(
        gpus=gpus,
        skus=sku_summary(gpus),
        outliers=outlier_table(gpus),
        verdicts=verdict_table(gpus, params=params),
        models=model_table(devices, results),
        window=window,
        suspects=suspect_table(devices, telemetry, gpus, window_input, window),
        jobs=job_table(
            devices,
            _ensure(inputs.jobs, (*WINDOW_INPUT_COLUMNS, *JOB_INPUT_COLUMNS)),
            results,
            registry,
        ),
        generated_unix_ns=now_unix_ns,
        source=inputs.source,
        parameters=params,
    )


def _flags(values: pd.Series) -> pd.Series:
    """A (nullable) boolean column as plain bools, absent → False (for masks and counts)."""
    return pd.Series([_truthy(v) for v in values], index=values.index, dtype=bool)


def _truthy(v: Any) -> bool:
    """True for a present, true value (Python or numpy bool, 1); False for NaN / None / NA."""
    return not _isnan(v) and bool(v)


def gpu_table(
    devices: pd.DataFrame,
    results: pd.DataFrame,
    telemetry: pd.DataFrame,
    *,
    now_unix_ns: int,
    params: ReportParameters | None = None,
) -> pd.DataFrame:
    """The per-GPU table (:data:`GPU_COLUMNS`), one row per device and precision, sorted by
    hostname, device index and precision; outlier columns filled per cohort."""
    params = params or ReportParameters()
    gemm = results[results["kind"] == "gemm"].drop(columns=["model", "batch", "kind"])
    models = results[results["kind"] == "model"]
    model_agg = (
        models.groupby(["device_uuid", "precision"], dropna=False)
        .agg(
            model_efficiency_ratio=("efficiency_ratio", lambda s: _num_median(s)),
            model_spec_efficiency_ratio=("spec_efficiency_ratio", lambda s: _num_median(s)),
            model_results=("job_id", "size"),
            model_mask=("throttle_reasons_seen", _or_masks),
            model_simulated=("simulated", lambda s: any(_truthy(v) for v in s)),
            model_finished_unix_ns=("finished_unix_ns", "max"),
            model_spec_peak=("spec_peak_flops_per_s", "first"),
            model_spec_tdp=("spec_tdp_w", "first"),
            model_physics=("physics_energy_per_flop_j", "first"),
            model_ceiling=("ceiling_energy_per_flop_j", "first"),
            model_datapath=("datapath", "first"),
            model_limit=("power_limit_w", "first"),
            model_driver=("driver_version", "first"),
        )
        .reset_index()
        if not models.empty
        else pd.DataFrame(columns=["device_uuid", "precision"])
    )
    per_prec = gemm.merge(model_agg, on=["device_uuid", "precision"], how="outer")
    per_prec = _ensure(
        per_prec,
        [c for c in (*RESULT_INPUT_COLUMNS, *_MODEL_AGG_COLUMNS) if c not in _DEVICE_KEYED],
    )
    # Spec figures belong to (device, precision): take them from whichever result has them.
    for col, alt in (
        ("spec_peak_flops_per_s", "model_spec_peak"),
        ("spec_tdp_w", "model_spec_tdp"),
        ("physics_energy_per_flop_j", "model_physics"),
        ("ceiling_energy_per_flop_j", "model_ceiling"),
        ("datapath", "model_datapath"),
        ("power_limit_w", "model_limit"),
        ("driver_version", "model_driver"),
    ):
        per_prec[col] = per_prec[col].where(per_prec[col].notna(), per_prec[alt])
    has_gemm = per_prec["job_id"].notna()
    per_prec["throttle_reasons_mask"] = [
        int(m) if g and not _isnan(m) else (None if _isnan(mm) else int(mm))
        for g, m, mm in zip(
            has_gemm, per_prec["throttle_reasons_seen"], per_prec["model_mask"], strict=True
        )
    ]
    per_prec["result_simulated"] = [
        _truthy(a) or _truthy(b)
        for a, b in zip(per_prec["simulated"], per_prec["model_simulated"], strict=True)
    ]
    per_prec["measured_unix_ns"] = per_prec[["finished_unix_ns", "model_finished_unix_ns"]].max(
        axis=1
    )
    per_prec = per_prec.drop(columns=["simulated"])

    dev = devices.rename(columns={"driver_version": "node_driver_version"})
    df = dev.merge(per_prec, on="device_uuid", how="outer")
    df = df.merge(telemetry, on="device_uuid", how="left")
    if df.empty:
        return _empty(GPU_COLUMNS)

    df["source"] = [
        SIM if _truthy(s) or _truthy(r) else HARDWARE
        for s, r in zip(df["simulated"], df["result_simulated"], strict=True)
    ]
    df["driver_version"] = [
        _text(a) or _text(b)
        for a, b in zip(df["driver_version"], df["node_driver_version"], strict=True)
    ]
    df["power_limit_w"] = _num(df, "power_limit_w").where(
        _num(df, "power_limit_w").notna(), _num(df, "power_limit_enforced_w")
    )
    peak = _num(df, "spec_peak_flops_per_s")
    burst = _num(df, "burst_flops_per_s")
    sustained = _num(df, "sustained_flops_per_s")
    power = _num(df, "mean_power_w")
    tdp = _num(df, "spec_tdp_w")
    limit = _num(df, "power_limit_w")
    measured = _num(df, "measured_energy_per_flop_j")
    physics = _num(df, "physics_energy_per_flop_j")
    ceiling = _num(df, "ceiling_energy_per_flop_j")
    ceiling_at_limit = _ratio(limit, peak)
    df["burst_over_spec_ratio"] = _ratio(burst, peak)
    df["sustained_over_spec_ratio"] = _ratio(sustained, peak)
    df["mean_power_over_tdp_ratio"] = _ratio(power, tdp)
    df["mean_power_over_limit_ratio"] = _ratio(power, limit)
    df["ceiling_at_limit_energy_per_flop_j"] = ceiling_at_limit
    df["measured_over_physics_ratio"] = _ratio(measured, physics)
    df["measured_over_ceiling_ratio"] = _ratio(measured, ceiling)
    df["measured_over_ceiling_at_limit_ratio"] = _ratio(measured, ceiling_at_limit)
    df["throttle_reasons"] = [_reason_text(m) for m in df["throttle_reasons_mask"]]
    df["limiter"] = [
        _limiter(m, c)
        for m, c in zip(df["throttle_reasons_mask"], df["throttle_reasons_capable"], strict=True)
    ]
    seen = df[["registered_unix_ns", "measured_unix_ns", "last_sample_unix_ns"]].apply(
        pd.to_numeric, errors="coerce"
    )
    last = seen.max(axis=1)
    df["last_seen_unix_ns"] = last.astype("Int64")
    df["last_seen_utc"] = [_utc(v) for v in last]
    df["last_seen_age_s"] = (now_unix_ns - last) / 1e9
    df = _score_outliers(df, params)
    df = df.sort_values(
        ["hostname", "device_index", "precision"], kind="stable", na_position="last"
    ).reset_index(drop=True)
    return _typed(df, GPU_COLUMNS)


def _isnan(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _num_median(s: pd.Series) -> float:
    v = pd.to_numeric(s, errors="coerce").astype("float64").dropna()
    return float(v.median()) if len(v) else math.nan


def _cohort_label(sku: Any, name: Any, driver: Any, precision: Any, source: Any) -> str | None:
    if _isnan(precision):
        return None
    who = _text(sku) or f"{_text(name) or '?'} (unmatched)"
    return f"{who} · driver {_text(driver) or '?'} · {precision} · {source}"


def _score_outliers(df: pd.DataFrame, params: ReportParameters) -> pd.DataFrame:
    """Fill the cohort and outlier columns (see the module docstring for the rule)."""
    df = df.copy()
    df["cohort"] = [
        _cohort_label(*row)
        for row in zip(
            df["sku"], df["name"], df["driver_version"], df["precision"], df["source"], strict=True
        )
    ]
    n = len(df)
    z_s = np.full(n, np.nan)
    z_e = np.full(n, np.nan)
    rel_s = np.full(n, np.nan)
    rel_e = np.full(n, np.nan)
    size = np.full(n, np.nan)
    rank = np.full(n, np.nan)
    sustained = _num(df, "sustained_flops_per_s").to_numpy()
    energy = _num(df, "measured_energy_per_flop_j").to_numpy()
    positions = np.arange(n)
    for _, idx in df.groupby("cohort", dropna=True).indices.items():
        rows = positions[idx]
        size[rows] = len(rows)
        for values, z_out, rel_out in ((sustained, z_s, rel_s), (energy, z_e, rel_e)):
            v = values[rows]
            z_out[rows] = robust_z(
                v, min_count=params.min_cohort, mad_floor_ratio=params.mad_floor_ratio
            )
            finite = np.isfinite(v)
            if int(finite.sum()) >= params.min_cohort:
                med = float(np.median(v[finite]))
                if med != 0:
                    rel_out[rows] = v / med
        severity = np.fmax(np.abs(z_s[rows]), np.abs(z_e[rows]))
        ranked = pd.Series(-severity).rank(method="min").to_numpy()
        rank[rows] = ranked
    df["cohort_size"] = pd.array([None if math.isnan(s) else int(s) for s in size], "Int64")
    df["sustained_robust_z"] = z_s
    df["energy_robust_z"] = z_e
    df["sustained_over_cohort_ratio"] = rel_s
    df["energy_over_cohort_ratio"] = rel_e
    df["cohort_rank"] = pd.array([None if math.isnan(r) else int(r) for r in rank], "Int64")

    outlier: list[bool | None] = []
    kinds: list[str | None] = []
    for zs, ze in zip(z_s, z_e, strict=True):
        if math.isnan(zs) and math.isnan(ze):
            outlier.append(None)
            kinds.append(None)
            continue
        parts = []
        if abs(zs) >= params.outlier_z:
            parts.append("slow" if zs < 0 else "fast")
        if abs(ze) >= params.outlier_z:
            parts.append("hungry" if ze > 0 else "frugal")
        outlier.append(bool(parts))
        kinds.append(", ".join(parts) or None)
    df["outlier"] = pd.array(outlier, dtype="boolean")
    df["outlier_kind"] = kinds
    return df


#: Columns whose values are whole numbers (nullable Int64 so absent stays absent).
_INT_COLUMNS = frozenset(
    {
        "device_index",
        "model_results",
        "throttle_reasons_mask",
        "cohort_size",
        "cohort_rank",
        "measured_unix_ns",
        "last_seen_unix_ns",
        "last_sample_unix_ns",
        "gpus",
        "gpus_measured",
        "hosts",
        "outliers",
        "power_bound_gpus",
        "batch",
        *WINDOW_INT_COLUMNS,
        *SUSPECT_INT_COLUMNS,
    }
)
_BOOL_COLUMNS = frozenset({"outlier", "spec_reached", "spec_within_limit"})
_FLOAT_COLUMNS = frozenset({"estimated_flops"})
"""Float columns whose names end in no unit suffix (a count of FLOPs)."""
_FLOAT_SUFFIXES = ("_ratio", "_w", "_j", "_flops_per_s", "_s", "_mhz", "_c", "_z")


def column_kind(name: str) -> str:
    """``"int"``, ``"bool"``, ``"float"`` or ``"str"``: the type of a report column, by name."""
    if name in _INT_COLUMNS:
        return "int"
    if name in _BOOL_COLUMNS:
        return "bool"
    if name in _FLOAT_COLUMNS or name.endswith(_FLOAT_SUFFIXES):
        return "float"
    return "str"


def typed_frame(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``df`` restricted to ``columns`` (added as absent where missing), each cast to its
    :func:`column_kind`: float64 (NaN), nullable Int64 / boolean (NA) or object (None)."""
    out = pd.DataFrame(index=df.index)
    for c in columns:
        col = df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index)
        kind = column_kind(c)
        if kind == "float":
            out[c] = pd.to_numeric(col, errors="coerce").astype("float64")
        elif kind == "int":
            out[c] = pd.to_numeric(col, errors="coerce").round().astype("Int64")
        elif kind == "bool":
            out[c] = pd.array([None if _isnan(v) else bool(v) for v in col], dtype="boolean")
        else:
            out[c] = pd.Series([_text(v) for v in col], index=df.index, dtype=object)
    return out.reset_index(drop=True)


_typed = typed_frame


def _stats(values: pd.Series) -> dict[str, float]:
    v = pd.to_numeric(values, errors="coerce").astype("float64").dropna()
    if v.empty:
        return dict.fromkeys(SKU_STATS, math.nan)
    return {
        "median": float(v.median()),
        "mad": _mad(v),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _group_key(df: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [_text(s) or f"\x00{_text(n) or '?'}" for s, n in zip(df["sku"], df["name"], strict=True)],
        index=df.index,
    )


def sku_summary(gpus: pd.DataFrame) -> pd.DataFrame:
    """Per (SKU, precision, source): GPU count, median / MAD / min / max of the main ratios
    (:data:`SKU_COLUMNS`). Devices the registry does not know group by their raw name
    (``unmatched_name``); rows without a precision (nothing measured) are left out."""
    measured = gpus[gpus["precision"].notna()].copy()
    if measured.empty:
        return _empty(SKU_COLUMNS)
    measured["_key"] = _group_key(measured)
    rows: list[dict[str, Any]] = []
    for (key, precision, source), g in measured.groupby(["_key", "precision", "source"], sort=True):
        unmatched = str(key).startswith("\x00")
        row: dict[str, Any] = {
            "sku": None if unmatched else key,
            "unmatched_name": str(key)[1:] if unmatched else None,
            "precision": precision,
            "source": source,
            "gpus": g["device_uuid"].nunique(),
            "hosts": g["hostname"].nunique(),
            "driver_versions": ", ".join(sorted({str(d) for d in g["driver_version"].dropna()}))
            or None,
            "spec_peak_flops_per_s": _num_median(g["spec_peak_flops_per_s"]),
            "spec_tdp_w": _num_median(g["spec_tdp_w"]),
            "sustained_median_flops_per_s": _num_median(g["sustained_flops_per_s"]),
            "outliers": int(_flags(g["outlier"]).sum()),
        }
        for stem, unit in SKU_METRICS:
            col = f"{stem}_{unit}"
            for stat, value in _stats(g[col]).items():
                row[f"{stem}_{stat}_{unit}"] = value
        rows.append(row)
    return _typed(pd.DataFrame(rows), SKU_COLUMNS)


def outlier_table(gpus: pd.DataFrame) -> pd.DataFrame:
    """The flagged rows of the per-GPU table (:data:`OUTLIER_COLUMNS`), worst first (largest
    |robust z| of the two metrics), with their rank inside their cohort."""
    flagged = gpus[_flags(gpus["outlier"])].copy()
    if flagged.empty:
        return _empty(OUTLIER_COLUMNS)
    severity = np.fmax(
        _num(flagged, "sustained_robust_z").abs().to_numpy(),
        _num(flagged, "energy_robust_z").abs().to_numpy(),
    )
    flagged["_severity"] = severity
    flagged = flagged.sort_values(["_severity", "hostname"], ascending=[False, True])
    return _typed(flagged, OUTLIER_COLUMNS)


def _verdict(
    reached: bool | None, within: bool | None, params: ReportParameters
) -> tuple[str, str]:
    pct = f"{params.spec_reached_ratio:.0%}"
    if reached is None:
        return "not measured", "no sustained GEMM result at this precision"
    if reached:
        return "reached", f"median sustained FLOP/s is at least {pct} of the spec peak"
    if within is False:
        return (
            "power-limited",
            "at the measured energy per FLOP the enforced power limit cannot feed the spec "
            "peak: the spec peak is not achievable within the limit",
        )
    if within is True:
        return (
            "not power-limited",
            f"below {pct} of the spec peak although the power limit could feed it at the "
            "measured energy per FLOP: clocks, memory or software hold it back",
        )
    return "below spec", f"below {pct} of the spec peak; no energy reading to say why"


def verdict_table(gpus: pd.DataFrame, *, params: ReportParameters | None = None) -> pd.DataFrame:
    """Spec-achievability per (SKU, precision, source) (:data:`VERDICT_COLUMNS`).

    * ``sustained_over_spec_median_ratio``: median over the GPUs of sustained FLOP/s (measured at
      the enforced power limit) ÷ spec peak — the headline;
    * ``measured_over_ceiling_at_limit_median_ratio``: median of measured energy per FLOP ÷
      (enforced limit ÷ spec peak). Above 1, the limit cannot feed the spec peak at that
      energy per FLOP; ``feedable_at_limit_over_spec_ratio`` is its inverse, the FLOP/s the
      limit could feed ÷ the spec peak (an estimate: energy per FLOP measured at one operating
      point, static power included);
    * ``spec_reached``: the headline ≥ :data:`SPEC_REACHED_RATIO`; ``spec_within_limit``: the
      energy ratio ≤ 1 (None without energy readings); ``power_bound_gpus``: GPUs whose run
      hit a power cap or averaged ≥ :data:`POWER_BOUND_RATIO` of the limit.

    Only SKUs the registry knows (a spec peak) get a verdict.
    """
    params = params or ReportParameters()
    known = gpus[gpus["precision"].notna() & _num(gpus, "spec_peak_flops_per_s").notna()]
    if known.empty:
        return _empty(VERDICT_COLUMNS)
    rows: list[dict[str, Any]] = []
    for (sku, precision, source), g in known.groupby(["sku", "precision", "source"], sort=True):
        ratio = _num(g, "sustained_over_spec_ratio").dropna()
        energy_ratio = _num(g, "measured_over_ceiling_at_limit_ratio").dropna()
        over_limit = _num(g, "mean_power_over_limit_ratio")
        bound = (g["limiter"] == "power cap") | (over_limit >= params.power_bound_ratio)
        median_ratio = float(ratio.median()) if len(ratio) else math.nan
        median_energy = float(energy_ratio.median()) if len(energy_ratio) else math.nan
        reached = None if math.isnan(median_ratio) else median_ratio >= params.spec_reached_ratio
        within = None if math.isnan(median_energy) else median_energy <= 1.0
        verdict, note = _verdict(reached, within, params)
        limit_median = _num_median(g["power_limit_w"])
        peak = _num_median(g["spec_peak_flops_per_s"])
        rows.append(
            {
                "sku": sku,
                "precision": precision,
                "source": source,
                "gpus": g["device_uuid"].nunique(),
                "gpus_measured": len(ratio),
                "spec_peak_flops_per_s": peak,
                "spec_tdp_w": _num_median(g["spec_tdp_w"]),
                "power_limit_median_w": limit_median,
                "sustained_median_flops_per_s": _num_median(g["sustained_flops_per_s"]),
                "sustained_over_spec_median_ratio": median_ratio,
                "sustained_over_spec_min_ratio": float(ratio.min()) if len(ratio) else None,
                "sustained_over_spec_max_ratio": float(ratio.max()) if len(ratio) else None,
                "mean_power_over_limit_median_ratio": _num_median(over_limit),
                "power_bound_gpus": int(bound.sum()),
                "measured_energy_per_flop_median_j": _num_median(g["measured_energy_per_flop_j"]),
                "ceiling_at_limit_energy_per_flop_j": (
                    limit_median / peak if peak > 0 and math.isfinite(limit_median) else None
                ),
                "measured_over_ceiling_at_limit_median_ratio": median_energy,
                "feedable_at_limit_over_spec_ratio": (
                    1.0 / median_energy if median_energy > 0 else None
                ),
                "spec_reached": reached,
                "spec_within_limit": within,
                "verdict": verdict,
                "verdict_note": note,
            }
        )
    return _typed(pd.DataFrame(rows), VERDICT_COLUMNS)


def model_table(devices: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """The latest model results (:data:`MODEL_COLUMNS`), one row per device, model, batch and
    precision, sorted by hostname, device index, model and batch."""
    models = results[results["kind"] == "model"]
    if models.empty:
        return _empty(MODEL_COLUMNS)
    df = models.merge(
        devices.drop(columns=["simulated", "driver_version"]), on="device_uuid", how="left"
    )
    dev_sim: Mapping[Any, Any] = dict(
        zip(devices["device_uuid"], devices["simulated"], strict=True)
    )
    df["source"] = [
        SIM if _truthy(r) or _truthy(dev_sim.get(u)) else HARDWARE
        for u, r in zip(df["device_uuid"], df["simulated"], strict=True)
    ]
    df["limiter"] = [
        _limiter(m, c)
        for m, c in zip(df["throttle_reasons_seen"], df["throttle_reasons_capable"], strict=True)
    ]
    df["measured_unix_ns"] = df["finished_unix_ns"]
    df = df.sort_values(["hostname", "device_index", "model", "batch"], kind="stable")
    return _typed(df, MODEL_COLUMNS)


def window_table(
    devices: pd.DataFrame,
    window: pd.DataFrame,
    results: pd.DataFrame | None = None,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """Telemetry over the report's window per GPU (:data:`WINDOW_COLUMNS`, see
    :mod:`flopwatt.report.window_table`), sorted by hostname and device index. The live
    efficiency estimate takes spec peaks from ``registry`` (loaded only when a row has GPM
    activity) and measured GEMM peaks from ``results``."""
    if window.empty:
        return _empty(WINDOW_COLUMNS)
    return _typed(_estimated_window(devices, window, results, registry), WINDOW_COLUMNS)


def job_table(
    devices: pd.DataFrame,
    parts: pd.DataFrame,
    results: pd.DataFrame | None = None,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """Live efficiency per pod or job over the window (:data:`JOB_COLUMNS`, see
    :mod:`flopwatt.report.jobs`) from each attribution span's part of it."""
    if parts.empty:
        return _typed(_empty(JOB_COLUMNS), JOB_COLUMNS)
    return _typed(job_frame(_estimated_window(devices, parts, results, registry)), JOB_COLUMNS)


def _estimated_window(
    devices: pd.DataFrame,
    window: pd.DataFrame,
    results: pd.DataFrame | None,
    registry: Registry | None,
) -> pd.DataFrame:
    """:func:`window_frame` with the live-efficiency estimate, untyped (other input columns
    kept)."""
    dev = devices.copy()
    dev["source"] = [SIM if _truthy(s) else HARDWARE for s in dev["simulated"]]
    dev = dev[
        ["device_uuid", "hostname", "device_index", "sku", "name", "source",
         "power_limit_enforced_w"]
    ]  # fmt: skip
    df = window_frame(dev, window)
    specs: dict[str, GpuSpec] = {}
    if any(isinstance(a, Mapping) and a for a in df["pipe_activity"]):
        registry = registry or load_registry()
        for sku in {s for s in df["sku"] if isinstance(s, str)}:
            try:
                specs[sku] = registry.get(sku)
            except UnknownSkuError:
                continue
    return add_live_estimates(df, specs, _measured_peaks(results))


def _measured_peaks(
    results: pd.DataFrame | None,
) -> dict[str, dict[Precision, MeasuredPeak]]:
    """Each device's latest GEMM FLOP/s per precision (sustained, else burst) and the SM clock
    it ran at."""
    out: dict[str, dict[Precision, MeasuredPeak]] = {}
    if results is None or results.empty:
        return out
    for rec in results[results["kind"] == "gemm"].to_dict("records"):
        value = rec.get("sustained_flops_per_s")
        if _isnan(value):
            value = rec.get("burst_flops_per_s")
        if _isnan(value) or not value or value <= 0:
            continue
        try:
            precision = Precision.parse(str(rec["precision"]))
        except ValueError:
            continue
        clock: Any = rec.get("sm_clock_mean_mhz")
        out.setdefault(str(rec["device_uuid"]), {})[precision] = MeasuredPeak(
            float(value), None if _isnan(clock) else float(clock)
        )
    return out


def _with_source(devices: pd.DataFrame) -> pd.DataFrame:
    dev = devices.copy()
    dev["source"] = [SIM if _truthy(s) else HARDWARE for s in dev["simulated"]]
    return dev


def suspect_table(
    devices: pd.DataFrame,
    telemetry: pd.DataFrame,
    gpus: pd.DataFrame,
    window_input: pd.DataFrame,
    window: pd.DataFrame,
) -> pd.DataFrame:
    """The suspect GPUs (:data:`SUSPECT_COLUMNS`, see :mod:`flopwatt.report.suspects`), most
    severe first."""
    win = window_input
    if len(window):
        win = win.merge(
            window[["device_uuid", "estimated_mfu_ratio"]], on="device_uuid", how="left"
        )
    return _typed(suspect_frame(_with_source(devices), telemetry, gpus, win), SUSPECT_COLUMNS)
