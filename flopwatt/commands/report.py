"""``flopwatt report``: the fleet comparison report from a store or a running collector.

Without ``--format`` it prints a one-screen summary for people (``--verbose``: the verdicts,
outliers, per-SKU and per-GPU tables after it); ``--json`` prints the whole report as one JSON
document; ``--format`` writes files (``--out DIR``, or ``--out -`` for one text format on
stdout).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flopwatt.commands.output import emit_json, parse_csv_option, stderr_console, stdout_console
from flopwatt.report.columns import ReportFormatError
from flopwatt.report.files import as_report, parse_formats, write_report
from flopwatt.report.html import render_html, report_from_html
from flopwatt.report.json_doc import render_json, report_to_jsonable
from flopwatt.report.loading import ReportSourceError, fetch_report_html
from flopwatt.report.markdown import render_markdown
from flopwatt.report.summary import fleet_summary
from flopwatt.report.tables import FleetReport, ReportParameters
from flopwatt.report.terminal import (
    TerminalTable,
    fleet_line,
    summary_tables,
    terminal_sections,
)
from flopwatt.store.retention import RetentionError, parse_duration_s

DEFAULT_DB = Path("flopwatt-data/flopwatt.db")
_STDOUT_FORMATS = ("html", "md", "json", "csv")


def _load(
    db_path: str | None, collector_url: str | None, params: ReportParameters
) -> tuple[FleetReport, str | None]:
    """The report, and the collector's own HTML when it came from one."""
    try:
        if collector_url is not None:
            page = fetch_report_html(collector_url, window_s=params.window_s)
            return report_from_html(page), page
        return as_report(db_path or str(DEFAULT_DB), parameters=params), None
    except (FileNotFoundError, ReportSourceError, ReportFormatError) as exc:
        raise click.ClickException(str(exc)) from None


def print_sections(console: Console, sections: list[TerminalTable]) -> None:
    """Print terminal tables (an empty one as "TITLE: none")."""
    for section in sections:
        if not section.rows:
            console.print(Text(f"{section.title}: none", style="italic"))
            continue
        table = Table(title=section.title, title_justify="left")
        for i, c in enumerate(section.columns):
            # Names and verdicts keep their width; numeric columns wrap their headers instead.
            widest = max((len(r[i]) for r in section.rows), default=0)
            table.add_column(
                c.header,
                justify="right" if c.numeric else "left",
                min_width=None if c.numeric else min(widest, 16),
            )
        for row, style in zip(section.rows, section.styles, strict=True):
            table.add_row(*(Text(cell) for cell in row), style=style or None)
        console.print(table)


def print_report(
    report: FleetReport,
    *,
    verbose: bool,
    failed_jobs: list[tuple[str, str]] | None = None,
    console: Console | None = None,
) -> None:
    """The one-screen fleet summary; with ``verbose`` the full tables after it."""
    console = console or stdout_console()
    summary = fleet_summary(report, failed_jobs=failed_jobs or ())
    console.print(Text(f"flopwatt fleet report from {report.source or 'unknown'}"))
    note = " — simulated devices shown in magenta" if summary.simulated_devices else ""
    console.print(Text(fleet_line(summary) + note, style="bold"))
    print_sections(console, summary_tables(summary))
    if verbose:
        print_sections(console, terminal_sections(report))


def _to_stdout(report: FleetReport, fmt: str, collector_page: str | None) -> None:
    if fmt == "html":
        text = collector_page if collector_page is not None else render_html(report)
    elif fmt == "md":
        text = render_markdown(report)
    elif fmt == "json":
        text = render_json(report)
    else:
        text = report.gpus.to_csv(index=False)
    sys.stdout.write(text)
    sys.stdout.flush()


@click.command("report")
@click.option(
    "--db",
    "db_path",
    envvar="FLOPWATT_DB",
    default=None,
    help="Collector store to read, read-only: a SQLite file or a PostgreSQL DSN "
    f"(postgresql://…); also from FLOPWATT_DB [default: {DEFAULT_DB}].",
)
@click.option(
    "--collector",
    "collector_url",
    default=None,
    metavar="URL",
    help="A collector's HTTP address (http://HOST:PORT): use the report it renders (/report).",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    help="Files to write: html, md, csv, parquet, json (comma list). Default: tables on stdout.",
)
@click.option(
    "--out",
    "out",
    default=".",
    show_default=True,
    help="Directory for --format files, or '-' for stdout (one of html, md, json, csv).",
)
@click.option("--stem", default="report", show_default=True, help="File name stem.")
@click.option(
    "--outlier-z",
    type=click.FloatRange(min=0, min_open=True),
    default=ReportParameters().outlier_z,
    show_default=True,
    help="|robust z| at which a GPU is an outlier within its cohort (with --db).",
)
@click.option(
    "--window",
    "window",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Span of the 'telemetry over the window' table, ending now (90m, 24h, 7d, 1y): "
    "energy, mean and peak power, clocks, temperature and throttle time per GPU, read from "
    "raw samples where the store keeps them and from 10 s / 1 min rollups where they are "
    "pruned; each row names its resolution.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="After the one-screen summary, print the full tables (verdicts, outliers, per SKU, "
    "per GPU).",
)
def report(
    db_path: str | None,
    collector_url: str | None,
    formats: tuple[str, ...],
    out: str,
    stem: str,
    outlier_z: float,
    window: str,
    as_json: bool,
    verbose: bool,
) -> None:
    """Fleet comparison report: per GPU, per SKU, outliers and the spec-achievability verdict.

    Reads a collector store (--db) or asks a running collector (--collector). On a terminal
    it prints a one-screen summary (fleet by SKU, verdicts, top outliers, suspect agents);
    --verbose adds the full tables. Simulated devices are marked as such in every format.
    """
    if db_path is not None and collector_url is not None:
        raise click.UsageError("give --db or --collector, not both")
    try:
        wanted = parse_formats(parse_csv_option(formats))
    except ReportFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from None
    try:
        window_s = float(parse_duration_s(window))
    except RetentionError as exc:
        raise click.BadParameter(str(exc), param_hint="--window") from None
    params = ReportParameters(outlier_z=outlier_z, window_s=window_s)
    fleet_report, page = _load(db_path, collector_url, params)

    if not wanted:
        if as_json:
            emit_json(report_to_jsonable(fleet_report))
        else:
            print_report(fleet_report, verbose=verbose)
        return
    if out == "-":
        if len(wanted) != 1 or wanted[0] not in _STDOUT_FORMATS:
            raise click.BadParameter(
                f"--out - takes exactly one of {', '.join(_STDOUT_FORMATS)}", param_hint="--out"
            )
        _to_stdout(fleet_report, wanted[0], page)
        return
    out_dir = Path(out)
    try:
        written = write_report(fleet_report, out_dir, [f for f in wanted if f != "html"], stem=stem)
        if "html" in wanted:
            # A collector's page is written as served; a local one is rendered here.
            html_path = out_dir / f"{stem}.html"
            html_path.write_text(page if page is not None else render_html(fleet_report), "utf-8")
            written.insert(wanted.index("html"), html_path)
    except OSError as exc:
        raise click.ClickException(f"cannot write the report: {exc}") from None
    if as_json:
        emit_json({"written": [str(p) for p in written]})
    else:
        err = stderr_console()
        for p in written:
            err.print(Text(f"wrote {p}"))
