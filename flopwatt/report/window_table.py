"""The report's "telemetry over the window" table: per GPU, what its telemetry says over the
report's window, read from whichever store tier still holds it, with that tier named.

Pure: input is one row per device (:data:`WINDOW_INPUT_COLUMNS`, filled by
:func:`flopwatt.report.loading.load_report_inputs` from :mod:`flopwatt.store.window`) joined
with the device frame; output :data:`WINDOW_COLUMNS`.

Figures and their units:

* ``energy_j`` — the energy counter's increase over the window (J), exact whatever the tier
  (a counter restart counts 0); ``energy_mean_power_w`` = that ÷ the seconds it spans: the
  truest mean power where the device has an energy counter;
* ``power_average_1s_mean_w`` / ``power_instant_mean_w`` — the sample-weighted mean of the 1 s
  averaged and of the instant power readings (W); ``power_instant_max_w`` the highest instant
  reading (the rollups keep every bucket's maximum, so it is exact at any resolution);
* ``observed_s`` — the seconds the device was seen reporting (gaps over 5 s not counted);
  ``observed_ratio`` = that ÷ the span covered;
* ``throttle_time`` — per throttle reason seen, its share of ``observed_s``;
* live efficiency, where the GPU has GPM (:mod:`flopwatt.analysis.live_efficiency`): the
  ESTIMATED delivered FLOP/s of whatever ran, from the window's mean pipe activity and mean SM
  clock, with ``estimate_basis`` (this GPU's measured GEMM peaks, the spec, or mixed) and the
  dominant precision; ``estimated_mfu_ratio`` = that ÷ the dense spec peak;
  ``estimated_energy_per_flop_j`` = the window's energy ÷ (estimated FLOP/s × the seconds the
  energy spans). An estimate: pipe activity counts issue slots, not useful FLOPs.

``resolution`` is the coarsest tier read (``raw``, ``10s``, ``1m``): figures are exact over the
samples they cover at any resolution; the resolution is how finely the window's start could be
placed (``window_start_unix_ns`` is the start actually covered). ``tiers`` lists every tier
read, coarsest first (older parts come from coarser tiers once finer ones are pruned).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from flopwatt.analysis.live_efficiency import MeasuredPeak, estimate, pipe_peaks
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec
from flopwatt.analysis.throttle import THROTTLE_BITS, decode_throttle

WINDOW_INPUT_COLUMNS: tuple[str, ...] = (
    "device_uuid",
    "resolution",
    "tiers",
    "window_start_unix_ns",
    "window_end_unix_ns",
    "first_sample_unix_ns",
    "last_sample_unix_ns",
    "samples",
    "observed_s",
    "energy_j",
    "energy_span_s",
    "power_average_1s_mean_w",
    "power_instant_mean_w",
    "power_instant_max_w",
    "sm_clock_mean_mhz",
    "sm_clock_min_mhz",
    "gpu_temperature_max_c",
    "gpu_utilization_mean_ratio",
    "throttle_reasons_mask",
    "throttle_seconds",
    "sm_active_mean_ratio",
    "tensor_active_mean_ratio",
    "pipe_activity",
)
"""One row per device with telemetry in the window; ``throttle_seconds`` maps a reason bit to
the seconds it was reported; ``pipe_activity`` each GPM column's sample-weighted mean (None
where the device has no GPM)."""

WINDOW_COLUMNS: tuple[str, ...] = (
    "hostname",
    "device_uuid",
    "device_index",
    "sku",
    "name",
    "source",
    "resolution",
    "tiers",
    "window_start_unix_ns",
    "window_start_utc",
    "window_end_unix_ns",
    "window_covered_s",
    "samples",
    "observed_s",
    "observed_ratio",
    "energy_j",
    "energy_mean_power_w",
    "power_average_1s_mean_w",
    "power_instant_mean_w",
    "power_instant_max_w",
    "power_limit_w",
    "energy_mean_power_over_limit_ratio",
    "sm_clock_mean_mhz",
    "sm_clock_min_mhz",
    "gpu_temperature_max_c",
    "gpu_utilization_mean_ratio",
    "throttle_reasons",
    "throttle_time",
    "sm_active_mean_ratio",
    "tensor_active_mean_ratio",
    "estimated_flops_per_s",
    "estimated_mfu_ratio",
    "estimate_precision",
    "estimate_basis",
    "estimated_energy_per_flop_j",
)

WINDOW_INT_COLUMNS: frozenset[str] = frozenset(
    {"window_start_unix_ns", "window_end_unix_ns", "samples"}
)
"""Whole-number columns of the window table (the rest are typed by their unit suffix)."""

_BIT_NAMES = {bit.bit_length() - 1: reason.value for reason, bit in THROTTLE_BITS.items()}


def throttle_time_text(seconds_by_bit: Mapping[int, float] | None, observed_s: float) -> str | None:
    """``"sw_power_cap 41.7 %, hw_slowdown 0.3 %"``: each reason's share of ``observed_s``,
    largest first; "none" when the device reported throttle reasons and none was active; None
    when it reported none at all (it cannot tell: absent, not "none") or nothing was observed."""
    if seconds_by_bit is None or not observed_s or not np.isfinite(observed_s):
        return None
    if not seconds_by_bit:
        return "none"
    parts = sorted(
        ((s, _BIT_NAMES.get(b, f"bit{b}")) for b, s in seconds_by_bit.items() if s > 0),
        reverse=True,
    )
    if not parts:
        return "none"
    return ", ".join(f"{name} {100 * s / observed_s:.1f} %" for s, name in parts)


def _reasons(mask: Any) -> str | None:
    if mask is None or mask is pd.NA or (isinstance(mask, float) and np.isnan(mask)):
        return None
    return ", ".join(r.value for r in decode_throttle(int(mask))) or "none"


def _ratio(a: pd.Series, b: pd.Series) -> pd.Series:
    a = pd.to_numeric(a, errors="coerce").astype("float64")
    b = pd.to_numeric(b, errors="coerce").astype("float64")
    return (a / b).where(b > 0)


def window_frame(devices: pd.DataFrame, window: pd.DataFrame) -> pd.DataFrame:
    """The window table (untyped, :data:`WINDOW_COLUMNS` plus helpers), sorted by hostname and
    device index; devices without telemetry in the window are left out.

    ``devices`` needs ``device_uuid``, ``hostname``, ``device_index``, ``sku``, ``name``,
    ``source`` and ``power_limit_enforced_w``.
    """
    if window.empty:
        return pd.DataFrame(columns=list(WINDOW_COLUMNS))
    df = window.merge(devices, on="device_uuid", how="left")
    start = pd.to_numeric(df["window_start_unix_ns"], errors="coerce")
    end = pd.to_numeric(df["window_end_unix_ns"], errors="coerce")
    df["window_covered_s"] = (end - start) / 1e9
    df["window_start_utc"] = [
        None
        if pd.isna(v)
        else pd.Timestamp(int(v), unit="ns", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        for v in start
    ]
    df["observed_ratio"] = _ratio(df["observed_s"], df["window_covered_s"]).clip(upper=1.0)
    df["energy_mean_power_w"] = _ratio(df["energy_j"], df["energy_span_s"])
    df["power_limit_w"] = pd.to_numeric(df["power_limit_enforced_w"], errors="coerce")
    df["energy_mean_power_over_limit_ratio"] = _ratio(
        df["energy_mean_power_w"], df["power_limit_w"]
    )
    df["throttle_reasons"] = [_reasons(m) for m in df["throttle_reasons_mask"]]
    df["throttle_time"] = [
        throttle_time_text(s if isinstance(s, Mapping) else None, float(o))
        for s, o in zip(df["throttle_seconds"], df["observed_s"], strict=True)
    ]
    return df.sort_values(
        ["hostname", "device_index"], kind="stable", na_position="last"
    ).reset_index(drop=True)


def add_live_estimates(
    df: pd.DataFrame,
    specs: Mapping[str, GpuSpec],
    measured: Mapping[str, Mapping[Precision, MeasuredPeak]],
) -> pd.DataFrame:
    """The live-efficiency columns of :func:`window_frame`'s rows (see the module docstring):
    ``specs`` by SKU, ``measured`` GEMM peaks by device UUID. Rows without GPM activity keep
    them absent."""
    out = df.copy()
    cols: dict[str, list[Any]] = {
        "estimated_flops_per_s": [],
        "estimated_mfu_ratio": [],
        "estimate_precision": [],
        "estimate_basis": [],
        "estimated_energy_per_flop_j": [],
    }
    for rec in df.to_dict("records"):
        activity = rec.get("pipe_activity")
        sku = rec.get("sku")
        spec = specs.get(sku) if isinstance(sku, str) else None
        est = None
        if isinstance(activity, Mapping) and activity:
            clock = rec.get("sm_clock_mean_mhz")
            clock = float(clock) if clock is not None and np.isfinite(clock) else None
            peaks = pipe_peaks(spec, measured.get(str(rec["device_uuid"])))
            est = estimate(activity, clock, peaks, spec)
        cols["estimated_flops_per_s"].append(None if est is None else est.flops_per_s)
        cols["estimated_mfu_ratio"].append(None if est is None else est.mfu_ratio)
        cols["estimate_precision"].append(None if est is None else est.precision.value)
        cols["estimate_basis"].append(None if est is None else est.basis.value)
        energy: Any = rec.get("energy_j")
        span: Any = rec.get("energy_span_s")
        per_flop = None
        measurable = energy is not None and span and np.isfinite(energy) and np.isfinite(span)
        if est is not None and est.flops_per_s > 0 and measurable:
            per_flop = float(energy) / (est.flops_per_s * float(span))
        cols["estimated_energy_per_flop_j"].append(per_flop)
    for name, values in cols.items():
        out[name] = values
    return out
