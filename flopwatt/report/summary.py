"""The fleet on one screen: what ``flopwatt demo`` and ``flopwatt report`` print first.

A person reads the answer, not 456 rows: devices by SKU and source, the spec-achievability
verdict per SKU with precisions that agree collapsed into one line, the worst outliers (one
line per device, every precision it is an outlier at) with their likely limiter, and the
agents that look wrong (silent, or without a single measurement). The full tables stay in the
HTML report, the files and ``flopwatt report --verbose``.

Pure: built from a :class:`~flopwatt.report.tables.FleetReport`; the terminal rendering is in
:mod:`flopwatt.report.terminal`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from flopwatt.report.tables import SIM, FleetReport

TOP_OUTLIERS = 5
"""Outlier devices listed in the summary (the rest: "and N more")."""
SILENT_AFTER_S = 300.0
"""An agent last heard from longer ago than this is listed as silent (s)."""


@dataclass(frozen=True)
class SkuCount:
    """Devices of one SKU and source."""

    sku: str
    source: str
    devices: int
    hosts: int


@dataclass(frozen=True)
class VerdictLine:
    """Precisions of one SKU and source that share a verdict.

    ``sustained_over_spec_min_ratio``/``max`` span the per-precision medians (sustained GEMM
    FLOP/s ÷ dense spec peak, 0–1); absent where nothing was measured.
    """

    sku: str
    source: str
    verdict: str
    precisions: tuple[str, ...]
    sustained_over_spec_min_ratio: float | None
    sustained_over_spec_max_ratio: float | None


@dataclass(frozen=True)
class OutlierDevice:
    """One outlier device: every precision it is flagged at, its worst robust z, the kinds
    (slow, hungry) and the likely limiter."""

    hostname: str
    device_index: int
    sku: str
    source: str
    precisions: tuple[str, ...]
    kinds: tuple[str, ...]
    worst_robust_z: float
    limiter: str


@dataclass(frozen=True)
class SuspectAgent:
    """An agent worth a look, and why."""

    hostname: str
    reason: str


@dataclass(frozen=True)
class SuspectGpu:
    """A GPU whose health counters say something is wrong (critical or warning)."""

    hostname: str
    device_index: int
    sku: str
    severity: str
    reasons: str


@dataclass(frozen=True)
class LiveLine:
    """Live efficiency of one SKU and source over the report's window (GPUs with GPM)."""

    sku: str
    source: str
    gpus: int
    estimated_mfu_median_ratio: float | None
    idle: int
    """GPUs whose estimated MFU over the window is 0 (their pipes did nothing; whether a job
    holds them is in the window table's memory and the dashboards)."""


@dataclass(frozen=True)
class JobLine:
    """Live efficiency of one pod or job over the report's window."""

    job: str
    gpus: int
    observed_gpu_s: float
    estimated_mfu_ratio: float | None
    energy_j: float | None


@dataclass(frozen=True)
class FleetSummary:
    """Everything the one-screen summary shows (see the module docstring)."""

    devices: int
    hosts: int
    simulated_devices: int
    skus: tuple[SkuCount, ...]
    verdicts: tuple[VerdictLine, ...]
    outliers: tuple[OutlierDevice, ...]
    more_outliers: int
    suspects: tuple[SuspectAgent, ...]
    suspect_gpus: tuple[SuspectGpu, ...] = ()
    more_suspect_gpus: int = 0
    live: tuple[LiveLine, ...] = ()
    jobs: tuple[JobLine, ...] = ()
    """The pods or jobs that spent the most energy (at most ``top``)."""
    more_jobs: int = 0


def _float(v: object) -> float | None:
    if v is None or v is pd.NA:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _text(v: object, default: str = "") -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
        return default
    return str(v)


def _sku_of(rec: Mapping[Any, Any]) -> str:
    sku = _text(rec.get("sku"))
    return sku or f"{_text(rec.get('name'), '?')} (unmatched)"


def _sku_counts(gpus: pd.DataFrame) -> tuple[SkuCount, ...]:
    devices = gpus.drop_duplicates("device_uuid")
    counts: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for rec in devices.to_dict("records"):
        key = (_sku_of(rec), _text(rec.get("source")))
        uuids, hosts = counts.setdefault(key, (set(), set()))
        uuids.add(_text(rec.get("device_uuid")))
        hosts.add(_text(rec.get("hostname")))
    return tuple(
        SkuCount(sku, source, len(uuids), len(hosts))
        for (sku, source), (uuids, hosts) in sorted(counts.items())
    )


def _verdict_lines(verdicts: pd.DataFrame) -> tuple[VerdictLine, ...]:
    groups: dict[tuple[str, str, str], list[tuple[str, float | None]]] = {}
    for rec in verdicts.to_dict("records"):
        key = (_text(rec.get("sku")), _text(rec.get("source")), _text(rec.get("verdict")))
        groups.setdefault(key, []).append(
            (_text(rec.get("precision")), _float(rec.get("sustained_over_spec_median_ratio")))
        )
    lines = []
    for (sku, source, verdict), members in sorted(groups.items()):
        ratios = [r for _, r in members if r is not None]
        lines.append(
            VerdictLine(
                sku,
                source,
                verdict,
                tuple(p for p, _ in members),
                min(ratios) if ratios else None,
                max(ratios) if ratios else None,
            )
        )
    return tuple(lines)


def _worst_z(rec: Mapping[Any, Any]) -> float:
    zs = [_float(rec.get("sustained_robust_z")), _float(rec.get("energy_robust_z"))]
    return max((z for z in zs if z is not None), key=abs, default=0.0)


def _outlier_devices(outliers: pd.DataFrame) -> list[OutlierDevice]:
    by_device: dict[str, list[Mapping[Any, Any]]] = {}
    for rec in outliers.to_dict("records"):
        by_device.setdefault(_text(rec.get("device_uuid")), []).append(rec)
    out = []
    for recs in by_device.values():
        worst = max(recs, key=lambda r: abs(_worst_z(r)))
        kinds: list[str] = []  # in the report's order (slow/fast before hungry/frugal)
        for r in recs:
            kinds += [k for k in _text(r.get("outlier_kind")).split(", ") if k and k not in kinds]
        idx = _float(worst.get("device_index"))
        out.append(
            OutlierDevice(
                hostname=_text(worst.get("hostname")),
                device_index=int(idx) if idx is not None else -1,
                sku=_sku_of(worst),
                source=_text(worst.get("source")),
                precisions=tuple(sorted({_text(r.get("precision")) for r in recs})),
                kinds=tuple(kinds),
                worst_robust_z=_worst_z(worst),
                limiter=_text(worst.get("limiter"), "unknown"),
            )
        )
    return sorted(out, key=lambda o: -abs(o.worst_robust_z))


def _suspects(gpus: pd.DataFrame, silent_after_s: float) -> list[SuspectAgent]:
    out = []
    for host, rows in gpus.groupby("hostname", sort=True):
        reasons = []
        ages = [a for a in (_float(v) for v in rows["last_seen_age_s"]) if a is not None]
        if ages and min(ages) > silent_after_s:
            reasons.append(f"silent for {min(ages) / 60:.0f} min")
        if rows["sustained_flops_per_s"].map(_float).dropna().empty:
            reasons.append("no GEMM result from any of its devices")
        if reasons:
            out.append(SuspectAgent(str(host), "; ".join(reasons)))
    return out


def _suspect_gpus(suspects: pd.DataFrame) -> list[SuspectGpu]:
    out = []
    for rec in suspects.to_dict("records"):
        if rec.get("severity") not in ("critical", "warning"):
            continue  # performance suspects are the outliers, listed already
        idx = _float(rec.get("device_index"))
        out.append(
            SuspectGpu(
                hostname=_text(rec.get("hostname")),
                device_index=int(idx) if idx is not None else -1,
                sku=_text(rec.get("sku"), "?"),
                severity=_text(rec.get("severity")),
                reasons=_text(rec.get("reasons")),
            )
        )
    return out


def _live_lines(window: pd.DataFrame) -> tuple[LiveLine, ...]:
    if window.empty or "estimated_mfu_ratio" not in window:
        return ()
    with_estimate = window[window["estimated_mfu_ratio"].map(_float).notna()]
    lines = []
    for (sku, source), g in with_estimate.groupby(["sku", "source"], sort=True, dropna=False):
        mfu = [v for v in g["estimated_mfu_ratio"].map(_float) if v is not None]
        lines.append(
            LiveLine(
                sku=_text(sku, "?"),
                source=_text(source),
                gpus=len(g),
                estimated_mfu_median_ratio=float(pd.Series(mfu).median()) if mfu else None,
                idle=sum(1 for v in mfu if v == 0.0),
            )
        )
    return tuple(lines)


def _job_lines(jobs: pd.DataFrame) -> list[JobLine]:
    return [
        JobLine(
            job=_text(rec.get("job"), "?"),
            gpus=int(rec.get("gpus") or 0),
            observed_gpu_s=_float(rec.get("observed_gpu_s")) or 0.0,
            estimated_mfu_ratio=_float(rec.get("estimated_mfu_ratio")),
            energy_j=_float(rec.get("energy_j")),
        )
        for rec in jobs.to_dict("records")
        # "(no process)" and "(unknown)" are GPUs, not workloads: the report lists them.
        if not str(rec.get("job") or "(").startswith("(")
    ]


def fleet_summary(
    report: FleetReport,
    *,
    top: int = TOP_OUTLIERS,
    silent_after_s: float = SILENT_AFTER_S,
    failed_jobs: Sequence[tuple[str, str]] = (),
) -> FleetSummary:
    """The one-screen summary of ``report``.

    Args:
        report: a built fleet report.
        top: outlier devices to list; the rest are counted.
        silent_after_s: an agent not heard from for longer is a suspect (s).
        failed_jobs: (hostname, why) of jobs that did not succeed (the demo knows them; a
            report read from a store does not), listed as suspects too.
    """
    gpus = report.gpus
    devices = gpus.drop_duplicates("device_uuid")
    outliers = _outlier_devices(report.outliers)
    suspect_gpus = _suspect_gpus(report.suspects)
    job_lines = _job_lines(report.jobs)
    suspects = _suspects(gpus, silent_after_s) if not gpus.empty else []
    known = {s.hostname for s in suspects}
    for host, why in failed_jobs:
        if host not in known:
            suspects.append(SuspectAgent(host, why))
            known.add(host)
    return FleetSummary(
        devices=len(devices),
        hosts=int(devices["hostname"].nunique()) if not devices.empty else 0,
        simulated_devices=int((devices["source"] == SIM).sum()) if not devices.empty else 0,
        skus=_sku_counts(gpus) if not gpus.empty else (),
        verdicts=_verdict_lines(report.verdicts),
        outliers=tuple(outliers[:top]),
        more_outliers=max(0, len(outliers) - top),
        suspects=tuple(suspects),
        suspect_gpus=tuple(suspect_gpus[:top]),
        more_suspect_gpus=max(0, len(suspect_gpus) - top),
        live=_live_lines(report.window),
        jobs=tuple(job_lines[:top]),
        more_jobs=max(0, len(job_lines) - top),
    )
