"""The single ``flopwatt`` command. Subcommand groups live in :mod:`flopwatt.commands` and are
imported only when invoked, so ``flopwatt collector`` never imports torch and ``--help`` is fast.
"""

from __future__ import annotations

import importlib
import sys

import click

from flopwatt import __version__

#: subcommand name → (module, attribute, one-line help shown by ``flopwatt --help``)
_SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "tdp": ("flopwatt.commands.tdp", "tdp", "Physics TDP model and spec-registry comparison."),
    "bench": (
        "flopwatt.commands.bench",
        "bench",
        "Measure GEMM peak (burst, sustained) and model efficiency on this machine.",
    ),
    "collector": (
        "flopwatt.commands.collector",
        "collector",
        "Run the collector (gRPC ingest, SQLite or PostgreSQL store, /metrics).",
    ),
    "agent": (
        "flopwatt.commands.agent",
        "agent",
        "Run an agent: sample devices, stream to a collector, run jobs.",
    ),
    "demo": (
        "flopwatt.commands.demo",
        "demo",
        "The whole pipeline on this machine: collector, agents, jobs, fleet report.",
    ),
    "fleet": (
        "flopwatt.commands.fleet",
        "fleet",
        "Operate the fleet: list agents, run and follow jobs (admin API).",
    ),
    "store": (
        "flopwatt.commands.store",
        "store",
        "Look into a collector's store (SQLite or PostgreSQL): ledger check, sizes.",
    ),
    "report": (
        "flopwatt.commands.report",
        "report",
        "Fleet comparison report: per GPU, per SKU, outliers, spec verdict (html/md/csv/...).",
    ),
}


class _LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _SUBCOMMANDS:
            module_name, attr, _ = _SUBCOMMANDS[cmd_name]
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in sorted(_SUBCOMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flopwatt")
def cli() -> None:
    """flopwatt: how much of its spec-sheet compute each GPU really delivers, at what power,
    and whether that matches physics."""


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(standalone_mode=True))
