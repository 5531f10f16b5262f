"""``GET /report`` on the collector: the HTML fleet report rendered from the collector's store.

The report machinery (pandas, matplotlib) is imported on the first request, so a collector that
never serves a report never loads it. The store file is opened read-only per request, apart
from the collector's own connections (ingest is never blocked: WAL readers do not block the
writer).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from flopwatt.http_server import Route


def report_route(
    db_path: str | os.PathLike[str], *, clock_ns: Callable[[], int] = time.time_ns
) -> Route:
    """A route rendering the HTML report from the store at ``db_path``.

    One report renders at a time: a render is CPU-bound for about a second, and concurrent
    requests should queue rather than compete with ingest for every core.
    """
    lock = threading.Lock()

    def route() -> tuple[int, str, bytes]:
        from flopwatt.report.files import as_report
        from flopwatt.report.html import render_html

        with lock:
            report = as_report(db_path, now_unix_ns=clock_ns())
            body = render_html(report).encode("utf-8")
        return 200, "text/html; charset=utf-8", body

    return route
