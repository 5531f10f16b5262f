"""The report as one JSON document, and back (also embedded in the HTML page)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from flopwatt.report.columns import TABLE_COLUMNS, ReportFormatError
from flopwatt.report.tables import (
    TABLE_NAMES,
    FleetReport,
    ReportParameters,
    typed_frame,
)

REPORT_JSON_VERSION = 1
"""Version of the JSON document (and of the data embedded in the HTML)."""


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
