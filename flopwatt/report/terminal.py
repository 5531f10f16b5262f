"""The report on a terminal: narrow tables with row styles (see also :mod:`.summary`)."""

from __future__ import annotations

from dataclasses import dataclass

from flopwatt.report.columns import (
    DISPLAY,
    SECTION_ORDER,
    TERMINAL_COLUMNS,
    TITLES,
    DisplayColumn,
    display_rows,
)
from flopwatt.report.summary import FleetSummary
from flopwatt.report.tables import SIM, FleetReport


@dataclass(frozen=True)
class TerminalTable:
    """One table for a terminal: formatted cells, and a style per row (outliers bold red,
    simulated rows magenta)."""

    title: str
    columns: tuple[DisplayColumn, ...]
    rows: tuple[tuple[str, ...], ...]
    styles: tuple[str, ...]


def terminal_sections(report: FleetReport) -> list[TerminalTable]:
    """The narrow terminal views (:data:`TERMINAL_COLUMNS`), in :data:`SECTION_ORDER`."""
    out = []
    for name in SECTION_ORDER:
        if name not in TERMINAL_COLUMNS:
            continue
        df = report.tables()[name]
        cols = DISPLAY[name]
        keep = [i for i, c in enumerate(cols) if c.name in TERMINAL_COLUMNS[name]]
        rows, styles = [], []
        for rec, cells in zip(df.to_dict("records"), display_rows(name, df), strict=True):
            rows.append(tuple(cells[i] for i in keep))
            if rec.get("outlier") is True or name == "outliers":
                styles.append("bold red")
            else:
                styles.append("magenta" if rec.get("source") == SIM else "")
        out.append(
            TerminalTable(TITLES[name], tuple(cols[i] for i in keep), tuple(rows), tuple(styles))
        )
    return out


def terminal_tables(report: FleetReport) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """:func:`terminal_sections` as plain (title, headers, rows, row styles) tuples."""
    return [
        (t.title, [c.header for c in t.columns], [list(r) for r in t.rows], list(t.styles))
        for t in terminal_sections(report)
    ]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f} %"


def _span(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "—"
    return _pct(lo) if round(100 * lo) == round(100 * hi) else f"{_pct(lo)[:-2]}–{_pct(hi)}"


def fleet_line(summary: FleetSummary) -> str:
    """One line: how many devices on how many hosts, simulated and hardware."""
    hardware = summary.devices - summary.simulated_devices
    return (
        f"Fleet: {summary.devices} devices on {summary.hosts} hosts "
        f"({summary.simulated_devices} simulated, {hardware} hardware)"
    )


def summary_tables(summary: FleetSummary) -> list[TerminalTable]:
    """The one-screen summary (:func:`~flopwatt.report.summary.fleet_summary`) as terminal
    tables: fleet by SKU, verdicts (precisions that agree on one line), top outliers and
    suspect agents. Empty sections are returned with no rows (say "none")."""
    text = DisplayColumn
    fleet = TerminalTable(
        "Devices by SKU",
        (
            text("sku", "SKU", str, numeric=False),
            text("source", "source", str, numeric=False),
            text("devices", "devices", str),
            text("hosts", "hosts", str),
        ),
        tuple((s.sku, s.source, str(s.devices), str(s.hosts)) for s in summary.skus),
        tuple("magenta" if s.source == SIM else "" for s in summary.skus),
    )
    verdicts = TerminalTable(
        "Spec achievability: median sustained GEMM ÷ dense spec peak, per SKU",
        (
            text("sku", "SKU", str, numeric=False),
            text("source", "source", str, numeric=False),
            text("verdict", "verdict", str, numeric=False),
            text("precisions", "precisions", str, numeric=False),
            text("ratio", "sustained ÷ spec", str),
        ),
        tuple(
            (
                v.sku,
                v.source,
                v.verdict,
                ", ".join(v.precisions),
                _span(v.sustained_over_spec_min_ratio, v.sustained_over_spec_max_ratio),
            )
            for v in summary.verdicts
        ),
        tuple("yellow" if v.verdict == "power-limited" else "" for v in summary.verdicts),
    )
    more = f" (and {summary.more_outliers} more in the report)" if summary.more_outliers else ""
    outliers = TerminalTable(
        f"Top outliers within their cohorts{more}",
        (
            text("hostname", "host", str, numeric=False),
            text("device_index", "GPU", str),
            text("sku", "SKU", str, numeric=False),
            text("kinds", "kind", str, numeric=False),
            text("z", "worst robust z", str),
            text("precisions", "precisions", str, numeric=False),
            text("limiter", "likely limiter", str, numeric=False),
        ),
        tuple(
            (
                o.hostname,
                str(o.device_index),
                o.sku,
                ", ".join(o.kinds),
                f"{o.worst_robust_z:+.1f}",
                ", ".join(o.precisions),
                o.limiter,
            )
            for o in summary.outliers
        ),
        tuple("bold red" for _ in summary.outliers),
    )
    suspects = TerminalTable(
        "Suspect agents",
        (
            text("hostname", "host", str, numeric=False),
            text("reason", "why", str, numeric=False),
        ),
        tuple((s.hostname, s.reason) for s in summary.suspects),
        tuple("yellow" for _ in summary.suspects),
    )
    tables = [fleet, verdicts, outliers, suspects]
    if summary.suspect_gpus:
        more_gpus = summary.more_suspect_gpus
        tables.append(
            TerminalTable(
                "Suspect GPUs (health)"
                + (f" (and {more_gpus} more in the report)" if more_gpus else ""),
                (
                    text("hostname", "host", str, numeric=False),
                    text("device_index", "GPU", str),
                    text("sku", "SKU", str, numeric=False),
                    text("severity", "severity", str, numeric=False),
                    text("reasons", "why", str, numeric=False),
                ),
                tuple(
                    (g.hostname, str(g.device_index), g.sku, g.severity, g.reasons)
                    for g in summary.suspect_gpus
                ),
                tuple(
                    "bold red" if g.severity == "critical" else "yellow"
                    for g in summary.suspect_gpus
                ),
            )
        )
    if summary.live:
        tables.append(
            TerminalTable(
                "Live efficiency over the window (ESTIMATED from GPM pipe activity)",
                (
                    text("sku", "SKU", str, numeric=False),
                    text("source", "source", str, numeric=False),
                    text("gpus", "GPUs", str),
                    text("mfu", "median est. MFU", str),
                    text("idle", "idle (est. MFU 0)", str),
                ),
                tuple(
                    (
                        line.sku,
                        line.source,
                        str(line.gpus),
                        "—"
                        if line.estimated_mfu_median_ratio is None
                        else f"{100 * line.estimated_mfu_median_ratio:.1f} %",
                        str(line.idle),
                    )
                    for line in summary.live
                ),
                tuple("magenta" if line.source == SIM else "" for line in summary.live),
            )
        )
    if summary.jobs:
        more_jobs = summary.more_jobs
        tables.append(
            TerminalTable(
                "Live efficiency by pod / job, most energy first (ESTIMATED)"
                + (f" (and {more_jobs} more in the report)" if more_jobs else ""),
                (
                    text("job", "pod / job", str, numeric=False),
                    text("gpus", "GPUs", str),
                    text("gpu_hours", "GPU-hours", str),
                    text("mfu", "est. MFU", str),
                    text("energy", "energy kWh", str),
                ),
                tuple(
                    (
                        line.job,
                        str(line.gpus),
                        f"{line.observed_gpu_s / 3600:.2f}",
                        "—"
                        if line.estimated_mfu_ratio is None
                        else f"{100 * line.estimated_mfu_ratio:.1f} %",
                        "—" if line.energy_j is None else f"{line.energy_j / 3.6e6:.3f}",
                    )
                    for line in summary.jobs
                ),
                tuple(
                    "yellow"
                    if line.estimated_mfu_ratio is not None and line.estimated_mfu_ratio < 0.2
                    else ""
                    for line in summary.jobs
                ),
            )
        )
    return tables
