"""The report as one self-contained HTML page (inline CSS, figures as embedded PNGs, the
tables embedded as JSON so a downloaded page can be turned into every other format)."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping

import pandas as pd

from flopwatt.report.columns import (
    DASH,
    DISPLAY,
    SECTION_ORDER,
    TITLES,
    ReportFormatError,
    display_rows,
)
from flopwatt.report.json_doc import _utc, report_from_jsonable, report_to_jsonable
from flopwatt.report.markdown import _explain, _fleet_line
from flopwatt.report.tables import (
    SIM,
    FleetReport,
)

_DATA_ID = "flopwatt-report-data"


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

    ``figures`` maps :data:`flopwatt.report.plots.FIGURES` keys to PNG bytes.
    """
    from flopwatt.report.plots import FIGURES, report_figures

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
