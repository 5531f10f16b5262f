"""Shared CLI output: rich tables for people, JSON for machines, and number formatting that
shows a missing value as missing (an em dash in tables, ``null`` in JSON), never as zero."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Console


def stdout_console() -> Console:
    """A console on stdout (tables); width follows the terminal, 160 columns when piped."""
    return Console(width=None if sys.stdout.isatty() else 160)


def stderr_console() -> Console:
    """A console on stderr (progress, notes) so stdout stays clean for ``--json``."""
    return Console(stderr=True)


def to_jsonable(value: Any) -> Any:
    """Convert dataclasses, enums, mappings, sequences and non-finite floats to JSON values.

    Non-finite floats become ``null``: a reading that is not a number is absent, not zero.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit_json(value: Any) -> None:
    """Print ``value`` as one JSON document on stdout."""
    click.echo(json.dumps(to_jsonable(value), indent=2, allow_nan=False))


def fmt(value: float | int | None, spec: str = ".1f", suffix: str = "") -> str:
    """Format a number for a table; None and non-finite values print as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:{spec}}{suffix}"


def parse_csv_option(values: tuple[str, ...]) -> list[str]:
    """Flatten repeatable, comma-separated option values: ``("a,b", "c")`` → ``["a", "b", "c"]``."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]
