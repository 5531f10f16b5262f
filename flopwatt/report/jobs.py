"""The report's "live efficiency by pod / job" table: the window's live-efficiency estimate
split by who held each GPU (attribution spans), then summed per workload.

Pure: input is one row per (attribution span ∩ window) with that part's telemetry
(:data:`WINDOW_INPUT_COLUMNS` + :data:`JOB_INPUT_COLUMNS`, filled by
:func:`flopwatt.report.loading.attribution_inputs`), after
:func:`flopwatt.report.window_table.add_live_estimates`; output :data:`JOB_COLUMNS`, one row
per job, the most energy first.

A job is ``flopwatt`` while flopwatt's own benchmark ran on the GPU, else the Kubernetes
container the GPU was allocated to (``namespace/pod/container``), else the names of the
processes on it (``python3``, ``python3+tritonserver``…); GPUs nobody used are
``(no process)``, and those whose processes cannot be listed ``(unknown)``
(:attr:`flopwatt.records.DeviceAttribution.job`). Figures and units:

* ``gpus`` — distinct GPUs the job held in the window; ``observed_gpu_s`` — GPU-seconds it was
  observed holding them (s);
* ``estimated_flops`` — Σ estimated FLOP/s × observed seconds over its parts (FLOPs, an
  estimate: pipe activity counts issue slots); ``estimated_flops_per_s`` — that ÷ the
  GPU-seconds with an estimate (mean per GPU); ``estimated_mfu_ratio`` — the GPU-time-weighted
  mean of the parts' estimated MFU; ``estimated_gpu_s`` — the GPU-seconds with GPM (the
  estimate's coverage);
* ``energy_j`` — the energy counters' increase over its parts (J); ``energy_mean_power_w`` —
  that ÷ the seconds the counters span (mean per GPU, W); ``estimated_energy_per_flop_j`` —
  energy of the parts with an estimate ÷ their estimated FLOPs.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

JOB_INPUT_COLUMNS: tuple[str, ...] = ("job", "namespace", "pod", "container", "processes")
"""Who held the GPU during the part (namespace/pod/container absent outside Kubernetes;
``processes`` the distinct process names joined by ``+``)."""

JOB_COLUMNS: tuple[str, ...] = (
    "job",
    "namespace",
    "pod",
    "container",
    "processes",
    "hostnames",
    "skus",
    "gpus",
    "observed_gpu_s",
    "estimated_gpu_s",
    "estimated_flops",
    "estimated_flops_per_s",
    "estimated_mfu_ratio",
    "estimate_basis",
    "energy_j",
    "energy_mean_power_w",
    "estimated_energy_per_flop_j",
)

JOB_INT_COLUMNS: frozenset[str] = frozenset({"gpus"})
"""Whole-number columns of the jobs table."""


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _joined(values: Any) -> str | None:
    parts: set[str] = set()
    for v in values:
        if isinstance(v, str) and v:
            parts.update(v.split("+") if "+" in v else [v])
    return ", ".join(sorted(parts)) or None


def job_frame(parts: pd.DataFrame) -> pd.DataFrame:
    """One row per job (:data:`JOB_COLUMNS`, untyped) from the estimated parts (see the module
    docstring); empty when no GPU was attributed in the window."""
    if parts.empty:
        return pd.DataFrame(columns=list(JOB_COLUMNS))
    rows = []
    for job, g in parts.groupby("job", sort=True, dropna=False):
        observed = 0.0
        est_s = est_flops = mfu_s = mfu_sum = 0.0
        energy = span = est_energy = est_energy_flops = 0.0
        have_energy = have_est_energy = False
        for rec in g.to_dict("records"):
            obs = _num(rec.get("observed_s")) or 0.0
            observed += obs
            flops = _num(rec.get("estimated_flops_per_s"))
            if flops is not None:
                est_s += obs
                est_flops += flops * obs
            mfu = _num(rec.get("estimated_mfu_ratio"))
            if mfu is not None:
                mfu_s += obs
                mfu_sum += mfu * obs
            e, es = _num(rec.get("energy_j")), _num(rec.get("energy_span_s"))
            if e is not None and es:
                energy += e
                span += es
                have_energy = True
                if flops is not None:
                    # Energy and FLOPs of the same parts only: a part without an energy
                    # counter must not lower the energy per FLOP.
                    est_energy += e
                    est_energy_flops += flops * obs
                    have_est_energy = True
        first = g.iloc[0]
        rows.append(
            {
                "job": job if isinstance(job, str) and job else "(unknown)",
                "namespace": first.get("namespace"),
                "pod": first.get("pod"),
                "container": first.get("container"),
                "processes": _joined(g["processes"]),
                "hostnames": _joined(g["hostname"]),
                "skus": _joined(g["sku"]),
                "gpus": int(g["device_uuid"].nunique()),
                "observed_gpu_s": observed,
                "estimated_gpu_s": est_s if est_s else None,
                "estimated_flops": est_flops if est_s else None,
                "estimated_flops_per_s": est_flops / est_s if est_s else None,
                "estimated_mfu_ratio": mfu_sum / mfu_s if mfu_s else None,
                "estimate_basis": _joined(g["estimate_basis"]),
                "energy_j": energy if have_energy else None,
                "energy_mean_power_w": energy / span if have_energy and span else None,
                "estimated_energy_per_flop_j": (
                    est_energy / est_energy_flops
                    if have_est_energy and est_energy_flops > 0
                    else None
                ),
            }
        )
    out = pd.DataFrame.from_records(rows, columns=list(JOB_COLUMNS))
    out["_energy"] = pd.to_numeric(out["energy_j"], errors="coerce")
    out = out.sort_values(["_energy", "job"], ascending=[False, True], na_position="last")
    return out.drop(columns="_energy").reset_index(drop=True)
