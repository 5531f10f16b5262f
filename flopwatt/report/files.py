"""The fleet report in files. :func:`write_report` is the one entry point for writing
(``flopwatt report``, ``flopwatt demo`` and tests use it)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from flopwatt.report.columns import ReportFormatError
from flopwatt.report.html import render_html
from flopwatt.report.json_doc import render_json
from flopwatt.report.markdown import render_markdown
from flopwatt.report.tables import (
    FleetReport,
    ReportInputs,
    ReportParameters,
    build_report,
)

FORMATS: tuple[str, ...] = ("html", "md", "csv", "parquet", "json")
"""Every format :func:`write_report` writes."""


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
        FileNotFoundError, flopwatt.report.loading.ReportSourceError: unreadable store.
    """
    if isinstance(source, FleetReport):
        return source
    now = time.time_ns() if now_unix_ns is None else now_unix_ns
    if not isinstance(source, ReportInputs):
        from flopwatt.report.loading import load_report_inputs

        source = load_report_inputs(
            source if isinstance(source, str) else Path(source),
            now_unix_ns=now,
            window_s=(parameters or ReportParameters()).window_s,
        )
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
