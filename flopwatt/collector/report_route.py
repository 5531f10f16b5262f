"""``GET /report`` on the collector: the fleet report rendered from the collector's store.

Query parameters: ``window`` — the span of the "telemetry over the window" table, ending now
(a duration like ``90m``, ``24h``, ``7d``; default 24 h): older parts are read from rollups
where raw samples are pruned, and each row names the resolution it came from; ``format`` —
``html`` (default) or ``json`` (the report as one JSON document, as ``flopwatt report
--json`` prints it). A bad parameter is answered 400 with the reason.

The report machinery (pandas, matplotlib) is imported on the first request, so a collector that
never serves a report never loads it. The store is opened read-only per request, apart from the
collector's own connections (ingest is never blocked: WAL readers do not block the writer).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping

from flopwatt.http_server import Route
from flopwatt.store.retention import RetentionError, parse_duration_s

REPORT_FORMATS = ("html", "json")


def report_route(
    db_path: str | os.PathLike[str], *, clock_ns: Callable[[], int] = time.time_ns
) -> Route:
    """A route rendering the report from the store at ``db_path`` (see the module docstring).

    One report renders at a time: a render is CPU-bound for about a second, and concurrent
    requests should queue rather than compete with ingest for every core.
    """
    lock = threading.Lock()

    def route(query: Mapping[str, str]) -> tuple[int, str, bytes]:
        from flopwatt.report.files import as_report
        from flopwatt.report.html import render_html
        from flopwatt.report.json_doc import render_json
        from flopwatt.report.tables import ReportParameters

        fmt = query.get("format", "html").strip().lower() or "html"
        if fmt not in REPORT_FORMATS:
            return _bad(f"format={fmt!r}: accepted {', '.join(REPORT_FORMATS)}")
        params = ReportParameters()
        if "window" in query:
            try:
                params = ReportParameters(window_s=float(parse_duration_s(query["window"])))
            except RetentionError as exc:
                return _bad(f"window: {exc}")
        with lock:
            report = as_report(db_path, now_unix_ns=clock_ns(), parameters=params)
            if fmt == "json":
                return 200, "application/json", render_json(report).encode("utf-8")
            return 200, "text/html; charset=utf-8", render_html(report).encode("utf-8")

    return route


def _bad(reason: str) -> tuple[int, str, bytes]:
    return 400, "text/plain; charset=utf-8", f"bad request: {reason}\n".encode()
