"""The report's "suspect GPUs" table: which GPUs to look at, and why — health counters joined
with the efficiency outliers and the window's throttling.

Pure: built from the per-GPU table (outliers), the window table (throttle time, live
efficiency) and each device's newest health counters (:data:`HEALTH_INPUT_COLUMNS` in the
telemetry input). One row per suspect GPU, most severe first:

* ``critical`` — a hardware XID seen (:data:`HARDWARE_XIDS`, the last code named: 79 = fallen
  off the bus, 48 = double-bit ECC, 94/95 = contained/uncontained ECC…), uncorrected ECC
  errors, a failed row remap, a row remap pending a reset;
* ``warning`` — an application XID (13, 31, 43, 45: it names a job, not a bad GPU), PCIe
  replays (a bad slot or riser), NVLink CRC errors, replays or recoveries (a bad link, cable
  or switch port), rows remapped for correctable errors;
* ``performance`` — a robust-z outlier of its cohort (slow, hungry), or slowed by a reason that
  points at the GPU or its cooling (thermal, HW slowdown, power brake — not the software power
  cap, which is policy) for at least :data:`THROTTLED_SHARE` of the window's observed time.

Counters are what the device reported last: absent counters (a GPU that does not offer them)
are not "0 errors", and never make a GPU look healthy or sick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from flopwatt.analysis.throttle import LIMITING_REASONS, THROTTLE_BITS, ThrottleReason
from flopwatt.records import HEALTH_COLUMNS

HEALTH_INPUT_COLUMNS: tuple[str, ...] = HEALTH_COLUMNS
"""The newest value of each health counter per device (telemetry input; absent: NaN)."""

SUSPECT_COLUMNS: tuple[str, ...] = (
    "severity_rank",
    "severity",
    "hostname",
    "device_uuid",
    "device_index",
    "sku",
    "source",
    "reasons",
    "xid_last",
    "xid_events_total",
    "ecc_uncorrected_volatile_total",
    "remapped_rows_uncorrectable_total",
    "row_remap_pending",
    "row_remap_failed",
    "pcie_replay_total",
    "nvlink_crc_errors_total",
    "nvlink_replay_errors_total",
    "nvlink_recovery_errors_total",
    "outlier_kind",
    "throttled_ratio",
    "estimated_mfu_ratio",
)
SUSPECT_INT_COLUMNS: frozenset[str] = frozenset(
    {"severity_rank", *(c for c in SUSPECT_COLUMNS if c in HEALTH_COLUMNS)}
)
"""Whole-number columns: the rank and the health counters."""

THROTTLED_SHARE = 0.10
"""Share of the observed time throttled by a limiting reason that makes a GPU a suspect."""
SEVERITIES = ("critical", "warning", "performance")
XID_MEANING: Mapping[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remap recorded",
    64: "ECC page retirement or row remap failed",
    74: "NVLink error",
    79: "fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
"""What common XID codes mean (NVIDIA's XID catalogue), for the reasons text."""
HARDWARE_XIDS = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120})
"""XIDs that name the GPU (memory, NVLink, bus, firmware), not the application: critical. The
others (13, 31, 43, 45: an application's fault or a killed context) are warnings."""

_SUSPECT_BITS = {
    THROTTLE_BITS[r].bit_length() - 1
    for r in LIMITING_REASONS
    if r is not ThrottleReason.SW_POWER_CAP
}
"""Throttle reasons that point at the GPU or its cooling (thermal, hardware slowdown, power
brake). The software power cap is policy: dense work at the enforced limit is expected."""


def _n(v: Any) -> float | None:
    """A counter's value, or None when absent."""
    if v is None or v is pd.NA:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _throttled(seconds: Any, observed: Any) -> float | None:
    o = _n(observed)
    if not isinstance(seconds, Mapping) or not o:
        return None
    return sum(float(s) for b, s in seconds.items() if int(b) in _SUSPECT_BITS) / o


def assess(
    health: Mapping[str, Any],
    outlier_kind: str | None,
    throttled_ratio: float | None,
) -> tuple[str, list[str]] | None:
    """(severity, reasons) for one GPU, or None when nothing is wrong that we can see."""
    critical: list[str] = []
    warning: list[str] = []
    performance: list[str] = []
    xids = _n(health.get("xid_events_total"))
    if xids:
        last_value = _n(health.get("xid_last"))
        last = int(last_value) if last_value is not None else None
        meaning = XID_MEANING.get(last) if last is not None else None
        text = (f"XID {last}" if last is not None else "XID") + (f" ({meaning})" if meaning else "")
        # Application faults (a job's bad memory access, a killed context) raise XIDs too:
        # they name a job, not a bad GPU.
        (critical if last in HARDWARE_XIDS else warning).append(f"{text}, {int(xids)} events")
    unc = _n(health.get("ecc_uncorrected_volatile_total"))
    if unc:
        critical.append(f"{int(unc)} uncorrected ECC errors")
    if _n(health.get("row_remap_failed")):
        critical.append("row remap failed: needs service")
    if _n(health.get("row_remap_pending")):
        critical.append("row remap pending: needs a GPU reset")
    replays = _n(health.get("pcie_replay_total"))
    if replays:
        warning.append(f"{int(replays)} PCIe replays")
    for column, what in (
        ("nvlink_crc_errors_total", "NVLink CRC errors"),
        ("nvlink_replay_errors_total", "NVLink replays"),
        ("nvlink_recovery_errors_total", "NVLink recoveries"),
    ):
        count = _n(health.get(column))
        if count:
            warning.append(f"{int(count)} {what}")
    corr_rows = _n(health.get("remapped_rows_correctable_total"))
    if corr_rows:
        warning.append(f"{int(corr_rows)} rows remapped (correctable)")
    if outlier_kind:
        performance.append(f"outlier: {outlier_kind}")
    if throttled_ratio is not None and throttled_ratio >= THROTTLED_SHARE:
        performance.append(f"throttled {100 * throttled_ratio:.0f} % of the time")
    for severity, reasons in zip(SEVERITIES, (critical, warning, performance), strict=True):
        if reasons:
            return severity, critical + warning + performance
    return None


def suspect_frame(
    devices: pd.DataFrame,
    telemetry: pd.DataFrame,
    gpus: pd.DataFrame,
    window: pd.DataFrame,
) -> pd.DataFrame:
    """The suspect GPUs (:data:`SUSPECT_COLUMNS`, untyped), most severe first.

    ``devices`` needs ``device_uuid``, ``hostname``, ``device_index``, ``sku``, ``source``;
    ``telemetry`` the health columns; ``gpus`` the per-GPU table; ``window`` the window
    input frame (``throttle_seconds``, ``observed_s``) joined with the window table's
    ``estimated_mfu_ratio`` where present.
    """
    health = telemetry.set_index("device_uuid") if len(telemetry) else pd.DataFrame()
    outliers: dict[str, set[str]] = {}
    for rec in gpus[["device_uuid", "outlier_kind"]].to_dict("records"):
        if isinstance(rec["outlier_kind"], str) and rec["outlier_kind"]:
            outliers.setdefault(str(rec["device_uuid"]), set()).update(
                k.strip() for k in rec["outlier_kind"].split(",")
            )
    win = window.set_index("device_uuid") if len(window) else pd.DataFrame()
    rows = []
    for dev in devices.to_dict("records"):
        uuid = str(dev["device_uuid"])
        h: dict[str, Any] = (
            {str(k): v for k, v in health.loc[uuid].items()} if uuid in health.index else {}
        )
        w: dict[str, Any] = (
            {str(k): v for k, v in win.loc[uuid].items()} if uuid in win.index else {}
        )
        kinds = ", ".join(sorted(outliers.get(uuid, ()))) or None
        throttled = _throttled(w.get("throttle_seconds"), w.get("observed_s"))
        verdict = assess(h, kinds, throttled)
        if verdict is None:
            continue
        severity, reasons = verdict
        rows.append(
            {
                "severity_rank": SEVERITIES.index(severity),
                "severity": severity,
                "hostname": dev.get("hostname"),
                "device_uuid": uuid,
                "device_index": dev.get("device_index"),
                "sku": dev.get("sku"),
                "source": dev.get("source"),
                "reasons": "; ".join(reasons),
                **{c: h.get(c) for c in HEALTH_INPUT_COLUMNS if c in SUSPECT_COLUMNS},
                "outlier_kind": kinds,
                "throttled_ratio": throttled,
                "estimated_mfu_ratio": w.get("estimated_mfu_ratio"),
            }
        )
    if not rows:
        return pd.DataFrame(columns=list(SUSPECT_COLUMNS))
    df = pd.DataFrame(rows)
    return df.sort_values(
        ["severity_rank", "hostname", "device_index"], kind="stable", na_position="last"
    ).reset_index(drop=True)
