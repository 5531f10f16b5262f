"""The report as Markdown: the same sections as the HTML page, as pipe tables."""

from __future__ import annotations

import pandas as pd

from flopwatt.report.columns import (
    DISPLAY,
    EXPLANATIONS,
    SECTION_ORDER,
    TITLES,
    display_rows,
    span_text,
)
from flopwatt.report.json_doc import _utc
from flopwatt.report.tables import (
    SIM,
    FleetReport,
    ReportParameters,
)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: str, df: pd.DataFrame) -> str:
    cols = DISPLAY[table]
    if df.empty:
        return "_none_\n"
    lines = [
        "| " + " | ".join(_md_cell(c.header) for c in cols) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|",
    ]
    for rec, cells in zip(df.to_dict("records"), display_rows(table, df), strict=True):
        if rec.get("source") == SIM:
            cells = [
                f"**SIM** {cell}" if c.name == "source" else cell
                for c, cell in zip(cols, cells, strict=True)
            ]
        lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


def _explain(table: str, p: ReportParameters) -> str:
    return EXPLANATIONS[table].format(
        reached=p.spec_reached_ratio,
        z=p.outlier_z,
        floor=p.mad_floor_ratio,
        n=p.min_cohort,
        window=span_text(p.window_s),
    )


def _fleet_line(report: FleetReport) -> str:
    g = report.gpus
    devices = g.drop_duplicates("device_uuid")
    sims = int((devices["source"] == SIM).sum())
    return (
        f"{len(devices)} devices on {devices['hostname'].nunique()} hosts "
        f"({sims} simulated, {len(devices) - sims} hardware)"
    )


def render_markdown(report: FleetReport) -> str:
    """The report as Markdown: header, then each table with what it means."""
    parts = [
        "# flopwatt fleet report\n",
        f"Generated {_utc(report.generated_unix_ns)} from `{report.source or 'unknown'}` · "
        f"{_fleet_line(report)}.\n",
    ]
    if (report.gpus["source"] == SIM).any():
        parts.append(
            "> Rows marked **SIM** are simulated GPUs: their figures come from flopwatt's "
            "simulator, not from hardware.\n"
        )
    for name in SECTION_ORDER:
        parts += [f"\n## {TITLES[name]}\n", _explain(name, report.parameters) + "\n", ""]
        parts.append(_md_table(name, report.tables()[name]))
    return "\n".join(parts)
