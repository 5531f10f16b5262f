"""``flopwatt demo``: the whole pipeline on one machine (see :mod:`flopwatt.commands.demo_run`)."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flopwatt.commands.output import parse_csv_option, stderr_console, stdout_console


@click.command("demo")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file (default: ./flopwatt-data/flopwatt.db).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the report goes (default: ./flopwatt-data/report).",
)
@click.option("--once", is_flag=True, help="Exit after writing the report (tests, CI).")
@click.option(
    "--sim-skus",
    default=None,
    help="Comma list of registry SKUs for the simulated nodes "
    "(default: V100-SXM2-32GB,A100-SXM4-80GB,H100-SXM5-80GB, plus 4 T4s).",
)
@click.option(
    "--sim-nodes",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="Simulated nodes (8 GPUs each) per SKU.",
)
@click.option("--no-local-agent", is_flag=True, help="Only simulated agents.")
@click.option("--grpc-listen", default="127.0.0.1:0", show_default=True)
@click.option(
    "--http-listen",
    default="127.0.0.1:9464",
    show_default=True,
    help="Collector /metrics and /report (port 0 = any free port).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Simulation seed.")
@click.option(
    "--quick",
    is_flag=True,
    help="Lighter jobs (resnet18 at batch 1, 1-s GEMM runs) for CI and smoke tests.",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="After the one-screen summary, print the report's full tables.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
def demo(
    db_path: Path | None,
    out_dir: Path | None,
    once: bool,
    sim_skus: str | None,
    sim_nodes: int,
    no_local_agent: bool,
    grpc_listen: str,
    http_listen: str,
    seed: int,
    quick: bool,
    verbose: bool,
    log_level: str,
) -> None:
    """Start a collector (SQLite), a real agent for this machine, simulated agents for a mixed
    V100/A100/H100/T4 fleet, run a GEMM and a model job on every agent, and write the fleet
    report. Without --once it keeps serving /metrics and /report until Ctrl-C."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from flopwatt.analysis.registry import load_registry
    from flopwatt.commands.demo_run import (
        DEFAULT_SKUS,
        DemoConfig,
        DemoResult,
        default_fleet,
        run_demo_sync,
    )
    from flopwatt.commands.report import print_report
    from flopwatt.report.files import as_report

    skus = tuple(parse_csv_option((sim_skus,))) if sim_skus else DEFAULT_SKUS
    registry = load_registry()
    for sku in skus:
        if sku not in registry:
            raise click.BadParameter(
                f"unknown SKU {sku!r}; accepted: {', '.join(registry.skus)}",
                param_hint="--sim-skus",
            )
    config = DemoConfig(
        nodes=default_fleet(skus, sim_nodes),
        local_agent=not no_local_agent,
        grpc_listen=grpc_listen,
        http_listen=http_listen,
        seed=seed,
    )
    if quick:
        config.models, config.batches, config.model_runs = ("resnet18",), (1,), 3
        config.gemm_sustain_s = config.local_gemm_sustain_s = 1.0
    if db_path is not None:
        config.db_path = db_path
    if out_dir is not None:
        config.out_dir = out_dir
    err = stderr_console()
    gpus = sum(n.gpus for n in config.nodes)
    err.print(
        f"[bold]flopwatt demo[/bold]: collector + {len(config.nodes)} simulated nodes "
        f"({gpus} GPUs: {', '.join(skus)}, T4)" + (" + this machine" if config.local_agent else "")
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    agents_total = len(config.nodes) + (1 if config.local_agent else 0)
    tasks = {
        "agents": progress.add_task("agents registered", total=agents_total),
        "jobs": progress.add_task("GEMM and model jobs done", total=2 * agents_total),
    }

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage in tasks:
            progress.update(tasks[stage], completed=done, total=total)

    def on_report(result: DemoResult) -> None:
        progress.stop()
        report = as_report(result.db_path)
        out = stdout_console()
        failed = [
            (agent, f"{name} job {state.name.lower()}")
            for name, targets in result.jobs.items()
            for agent, state in targets.items()
            if state.name != "SUCCEEDED"
        ]
        print_report(report, verbose=verbose, failed_jobs=failed, console=out)
        html = next((p for p in result.report_paths if p.suffix == ".html"), None)
        out.print()
        if html:
            out.print(f"report:     {html}  (every table, figures; --verbose prints them here)")
        csvs = [p for p in result.report_paths if p.suffix == ".csv"]
        if csvs:
            out.print(f"csv:        {csvs[0].parent}/report*.csv ({len(csvs)} files)")
        out.print(f"metrics:    {result.metrics_url}")
        out.print(f"report now: {result.metrics_url.removesuffix('/metrics')}/report")
        out.print(
            "dashboards: deploy/grafana/dashboards/ (Grafana + Prometheus: docker compose up)"
        )
        out.print(f"database:   {result.db_path}")
        if result.local_device:
            out.print(f"this machine: {result.local_device}")
        if not once:
            out.print("serving /metrics and /report; Ctrl-C to stop")

    with progress:
        run_demo_sync(config, once=once, progress=on_progress, on_report=on_report)
