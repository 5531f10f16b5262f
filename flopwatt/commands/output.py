"""Shared CLI output: rich tables for people, JSON for machines, and number formatting that
shows a missing value as missing (an em dash in tables, ``null`` in JSON), never as zero."""

from __future__ import annotations

import math
import sys
from typing import Any

import click
from rich.console import Console

from flopwatt.jsonable import dumps


def stdout_console() -> Console:
    """A console on stdout (tables); width follows the terminal, 160 columns when piped."""
    return Console(width=None if sys.stdout.isatty() else 160)


def stderr_console() -> Console:
    """A console on stderr (progress, notes) so stdout stays clean for ``--json``."""
    return Console(stderr=True)


def emit_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout (missing values as ``null``)."""
    click.echo(dumps(value, indent=2))


def fmt(value: float | int | None, spec: str = ".1f", suffix: str = "") -> str:
    """Format a number for a table; None and non-finite values print as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:{spec}}{suffix}"


def parse_csv_option(values: tuple[str, ...]) -> list[str]:
    """Flatten repeatable, comma-separated option values: ``("a,b", "c")`` → ``["a", "b", "c"]``."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]
