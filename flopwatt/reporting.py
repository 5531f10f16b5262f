"""The fleet report in files: HTML, Markdown, CSV, Parquet and JSON.

:func:`write_report` is the one entry point for writing (``flopwatt report``, ``flopwatt demo``
and tests use it): give it a store path, the input frames or a built report, a directory and
the formats. The renderers below it take a :class:`~flopwatt.analysis.fleet_report.FleetReport`.

* **html** — one self-contained file: inline CSS, no scripts, no external resources; the four
  figures as embedded PNGs (``data:image/png;base64``); simulated devices carry a ``SIM`` badge
  and outliers an ``OUTLIER`` one. The report's tables are also embedded as JSON
  (``<script type="application/json" id="flopwatt-report-data">``, not executed) so a client
  that downloaded the page (``flopwatt report --collector URL``) can rebuild every other format
  from it (:func:`report_from_html`).
* **md** — the same sections as pipe tables.
* **csv** / **parquet** — one file per table: ``report.csv`` is the per-GPU table;
  ``report-skus``, ``report-outliers``, ``report-verdicts``, ``report-models`` the others.
  Absent values are empty cells (CSV) or nulls (Parquet), never 0.
* **json** — one document: generation time, source, thresholds, column lists and every table
  as a list of records (absent values ``null``).

Tables for people show TFLOP/s, pJ/FLOP and percentages; the files keep SI units (FLOP/s,
J per FLOP, ratios) as the column names say.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flopwatt.analysis.fleet_report import (
    GPU_COLUMNS,
    MODEL_COLUMNS,
    OUTLIER_COLUMNS,
    SIM,
    SKU_COLUMNS,
    TABLE_NAMES,
    VERDICT_COLUMNS,
    FleetReport,
    ReportInputs,
    ReportParameters,
    build_report,
    typed_frame,
)

FORMATS: tuple[str, ...] = ("html", "md", "csv", "parquet", "json")
"""Every format :func:`write_report` writes."""

REPORT_JSON_VERSION = 1
"""Version of the JSON document (and of the data embedded in the HTML)."""

TABLE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "gpus": GPU_COLUMNS,
    "skus": SKU_COLUMNS,
    "outliers": OUTLIER_COLUMNS,
    "verdicts": VERDICT_COLUMNS,
    "models": MODEL_COLUMNS,
}

_DATA_ID = "flopwatt-report-data"

SECTION_ORDER: tuple[str, ...] = ("verdicts", "outliers", "skus", "gpus", "models")
"""The order tables appear in for people: the answer first, the detail last."""


class ReportFormatError(ValueError):
    """An unknown report format, or a document that is not a flopwatt report."""


# --- cell formatting --------------------------------------------------------------------------

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
        _c("measured_median_j_per_flop", "measured pJ/FLOP", _pj),
        _c("ceiling_at_limit_j_per_flop", "ceiling @ limit pJ/FLOP", _pj),
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
        _c("measured_j_per_flop", "pJ/FLOP", _pj),
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
        _c("measured_median_j_per_flop", "pJ/FLOP median", _pj),
        _c("measured_mad_j_per_flop", "MAD", _pj),
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
        _c("measured_j_per_flop", "measured pJ/FLOP", _pj),
        _c("physics_j_per_flop", "physics pJ/FLOP", _pj),
        _c("ceiling_j_per_flop", "ceiling pJ/FLOP", _pj),
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
        _c("energy_per_inference_j", "J per batch", _joules),
        _c("limiter", "likely limiter"),
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
        "measured_median_j_per_flop",
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
        "measured_j_per_flop",
        "ceiling_j_per_flop",
        "limiter",
        "outlier_kind",
        "last_seen_age_s",
    ),
}

TITLES: Mapping[str, str] = {
    "verdicts": "Spec-achievability verdict",
    "outliers": "Outliers",
    "skus": "Per-SKU summary",
    "gpus": "Per-GPU table",
    "models": "Model results",
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


# --- JSON ------------------------------------------------------------------------------------


def _py(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    cols = [str(c) for c in df.columns]
    return [
        {c: _py(v) for c, v in zip(cols, row, strict=True)}
        for row in df.itertuples(index=False, name=None)
    ]


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_to_jsonable(report: FleetReport) -> dict[str, Any]:
    """The report as one JSON-ready document (absent values None)."""
    return {
        "flopwatt_report": REPORT_JSON_VERSION,
        "generated_unix_ns": report.generated_unix_ns,
        "generated_utc": _utc(report.generated_unix_ns),
        "source": report.source,
        "parameters": asdict(report.parameters),
        "columns": {name: list(TABLE_COLUMNS[name]) for name in TABLE_NAMES},
        "tables": {name: _records(df) for name, df in report.tables().items()},
    }


_PARAMETER_FIELDS = frozenset(f.name for f in fields(ReportParameters))


def report_from_jsonable(doc: Mapping[str, Any]) -> FleetReport:
    """Inverse of :func:`report_to_jsonable` (column types restored by name).

    Raises:
        ReportFormatError: not a flopwatt report document, or a newer version.
    """
    version = doc.get("flopwatt_report")
    if not isinstance(version, int) or version > REPORT_JSON_VERSION:
        raise ReportFormatError(f"not a flopwatt report document (version {version!r})")
    tables = {}
    for name in TABLE_NAMES:
        cols = tuple(doc.get("columns", {}).get(name, TABLE_COLUMNS[name]))
        records = doc.get("tables", {}).get(name, [])
        tables[name] = typed_frame(pd.DataFrame.from_records(records, columns=list(cols)), cols)
    return FleetReport(
        **tables,
        generated_unix_ns=int(doc["generated_unix_ns"]),
        source=str(doc.get("source", "")),
        parameters=ReportParameters(
            **{k: v for k, v in doc.get("parameters", {}).items() if k in _PARAMETER_FIELDS}
        ),
    )


def render_json(report: FleetReport) -> str:
    """The report as one JSON document (see :func:`report_to_jsonable`)."""
    return json.dumps(report_to_jsonable(report), indent=2, allow_nan=False) + "\n"


# --- Markdown --------------------------------------------------------------------------------


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
        reached=p.spec_reached_ratio, z=p.outlier_z, floor=p.mad_floor_ratio, n=p.min_cohort
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


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1b1f24}
h1{margin:0 0 4px}h2{margin:28px 0 6px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;margin:0}.note{color:#57606a;max-width:70em}
.simwarn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px;
display:inline-block}
nav a{margin-right:14px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:3px 6px;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.sim td{background:#f3f0ff}
tr.outlier td{background:#ffebe9}
.badge{display:inline-block;font-size:10px;font-weight:700;padding:0 5px;border-radius:8px;
margin-right:4px;vertical-align:middle}
.badge.sim{background:#8250df;color:#fff}.badge.out{background:#cf222e;color:#fff}
figure{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:12px}
"""

_SIM_BADGE = (
    '<span class="badge sim" title="simulated device: figures come from the simulator, '
    'not hardware">SIM</span>'
)
_OUTLIER_BADGE = '<span class="badge out">OUTLIER</span>'


def _html_table(table: str, df: pd.DataFrame) -> str:
    cols = DISPLAY[table]
    if df.empty:
        return '<p class="note"><em>none</em></p>'
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = []
    for rec, cells in zip(df.to_dict("records"), display_rows(table, df), strict=True):
        sim = rec.get("source") == SIM
        outlier = rec.get("outlier") is True or table == "outliers"
        classes = " ".join(k for k, on in (("sim", sim), ("outlier", outlier)) if on)
        tds = []
        for c, cell in zip(cols, cells, strict=True):
            content = html.escape(cell)
            if c.name == "source" and sim:
                content = _SIM_BADGE
            elif c.name in ("outlier_kind",) and outlier and cell != DASH:
                content = _OUTLIER_BADGE + content
            tds.append(f'<td class="n">{content}</td>' if c.numeric else f"<td>{content}</td>")
        cls = f' class="{classes}"' if classes else ""
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    return (
        f'<div class="scroll"><table id="table-{table}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _embedded_json(report: FleetReport) -> str:
    text = json.dumps(report_to_jsonable(report), allow_nan=False, separators=(",", ":"))
    # Inside <script>, "</" could end the element early and "<!--" open a comment: escape "<"
    # (\u003c is the same character to any JSON parser).
    return text.replace("<", "\\u003c")


def render_html(report: FleetReport, figures: Mapping[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page (figures rendered unless given).

    ``figures`` maps :data:`flopwatt.analysis.report_plots.FIGURES` keys to PNG bytes.
    """
    from flopwatt.analysis.report_plots import FIGURES, report_figures

    if figures is None:
        figures = report_figures(report.gpus, threshold=report.parameters.outlier_z)
    p = report.parameters
    sims = int((report.gpus.drop_duplicates("device_uuid")["source"] == SIM).sum())
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>flopwatt fleet report {_utc(report.generated_unix_ns)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<header><h1>flopwatt fleet report</h1>",
        f'<p class="meta">Generated {_utc(report.generated_unix_ns)} from '
        f"<code>{html.escape(report.source or 'unknown')}</code> · "
        f"{html.escape(_fleet_line(report))} · outlier |z| ≥ {p.outlier_z:g}, "
        f"cohorts ≥ {p.min_cohort}</p>",
    ]
    if sims:
        parts.append(
            f'<p class="simwarn">{_SIM_BADGE} {sims} simulated device{"s" if sims != 1 else ""}: '
            "their figures come from flopwatt's simulator, not from hardware.</p>"
        )
    sections = [*SECTION_ORDER[:3], "figures", *SECTION_ORDER[3:]]
    parts.append("</header><nav>")
    parts += [
        f'<a href="#{name}">{html.escape(TITLES.get(name, "Figures"))}</a>' for name in sections
    ]
    parts.append("</nav>")
    for name in sections:
        if name != "figures":
            parts += [
                f'<section id="{name}"><h2>{html.escape(TITLES[name])}</h2>',
                f'<p class="note">{html.escape(_explain(name, p))}</p>',
                _html_table(name, report.tables()[name]),
                "</section>",
            ]
            continue
        parts.append('<section id="figures"><h2>Figures</h2>')
        for key, title in FIGURES:
            png = figures.get(key)
            if png is None:
                continue
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
                f"<figcaption>{html.escape(title)}; hollow markers: simulated, red rings: "
                "outliers</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append(
        f'<script type="application/json" id="{_DATA_ID}">{_embedded_json(report)}</script>'
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


_DATA_RE = re.compile(rf'<script type="application/json" id="{_DATA_ID}">(.*?)</script>', re.DOTALL)


def report_from_html(text: str) -> FleetReport:
    """The report embedded in a page made by :func:`render_html`.

    Raises:
        ReportFormatError: the page carries no flopwatt report data.
    """
    m = _DATA_RE.search(text)
    if m is None:
        raise ReportFormatError("the page carries no flopwatt report data")
    return report_from_jsonable(json.loads(m.group(1)))


# --- files -----------------------------------------------------------------------------------


def parse_formats(formats: Iterable[str]) -> list[str]:
    """Normalise format names (case, ``markdown`` → ``md``, duplicates dropped, order kept).

    Raises:
        ReportFormatError: an unknown format (the message lists the accepted ones).
    """
    out: list[str] = []
    for f in formats:
        key = f.strip().lower()
        key = {"markdown": "md", "htm": "html", "pq": "parquet"}.get(key, key)
        if key not in FORMATS:
            raise ReportFormatError(f"unknown format {f!r}; accepted: {', '.join(FORMATS)}")
        if key not in out:
            out.append(key)
    return out


def table_file_name(stem: str, table: str, ext: str) -> str:
    """``report.csv`` for the per-GPU table, ``report-<table>.csv`` for the others."""
    return f"{stem}.{ext}" if table == "gpus" else f"{stem}-{table}.{ext}"


def as_report(
    source: FleetReport | ReportInputs | str | os.PathLike[str],
    *,
    now_unix_ns: int | None = None,
    parameters: ReportParameters | None = None,
) -> FleetReport:
    """A built report from a store path, input frames or a report (returned as is).

    Raises:
        FileNotFoundError, flopwatt.collector.report_data.ReportSourceError: unreadable store.
    """
    if isinstance(source, FleetReport):
        return source
    if not isinstance(source, ReportInputs):
        from flopwatt.collector.report_data import load_report_inputs

        source = load_report_inputs(Path(source))
    now = time.time_ns() if now_unix_ns is None else now_unix_ns
    return build_report(source, now_unix_ns=now, parameters=parameters)


def write_report(
    source: FleetReport | ReportInputs | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    formats: Iterable[str] = ("html", "csv"),
    *,
    stem: str = "report",
    now_unix_ns: int | None = None,
    parameters: ReportParameters | None = None,
) -> list[Path]:
    """Write the fleet report into ``out_dir`` (created if missing) in each of ``formats``.

    Args:
        source: a store path (SQLite file, opened read-only), input frames or a built report.
        out_dir: the directory to write into.
        formats: any of :data:`FORMATS`; html and csv by default.
        stem: file name stem (``report.html``, ``report.csv``, ``report-skus.csv``…).
        now_unix_ns: the report's time (default: now).
        parameters: thresholds (default :class:`ReportParameters`).

    Returns:
        The paths written, in format order (csv and parquet give one file per table).

    Raises:
        ReportFormatError: an unknown format.
        FileNotFoundError, ReportSourceError: the store cannot be read.
        OSError: the files cannot be written.
    """
    wanted = parse_formats(formats)
    report = as_report(source, now_unix_ns=now_unix_ns, parameters=parameters)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in wanted:
        if fmt == "html":
            path = out / f"{stem}.html"
            path.write_text(render_html(report), encoding="utf-8")
            written.append(path)
        elif fmt == "md":
            path = out / f"{stem}.md"
            path.write_text(render_markdown(report), encoding="utf-8")
            written.append(path)
        elif fmt == "json":
            path = out / f"{stem}.json"
            path.write_text(render_json(report), encoding="utf-8")
            written.append(path)
        else:
            for name, df in report.tables().items():
                path = out / table_file_name(stem, name, fmt)
                if fmt == "csv":
                    df.to_csv(path, index=False)
                else:
                    df.to_parquet(path, index=False)
                written.append(path)
    return written


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
