"""``flopwatt fleet``: the operator's side of the admin API — list agents, run and follow jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import grpc
from rich.live import Live
from rich.table import Table

from flopwatt.channel import ClientCredentials, TokenFileError, sync_channel
from flopwatt.commands.output import emit_json, parse_csv_option, stderr_console, stdout_console
from flopwatt.records import GemmJobSpec, JobSpec, JobState, ModelJobSpec
from flopwatt.v1 import admin_pb2, admin_pb2_grpc
from flopwatt.wire import job_spec_to_proto

_path = click.Path(dir_okay=False, path_type=Path, exists=True)


class FleetClient:
    """A blocking admin-API client."""

    def __init__(self, creds: ClientCredentials) -> None:
        self._channel = sync_channel(creds)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = creds.metadata()

    def agents(self) -> admin_pb2.ListAgentsResponse:
        resp: admin_pb2.ListAgentsResponse = self._stub.ListAgents(
            admin_pb2.ListAgentsRequest(), metadata=self._metadata, timeout=30
        )
        return resp

    def run(self, selector: admin_pb2.AgentSelector, spec: JobSpec) -> admin_pb2.RunJobResponse:
        resp: admin_pb2.RunJobResponse = self._stub.RunJob(
            admin_pb2.RunJobRequest(selector=selector, spec=job_spec_to_proto(spec)),
            metadata=self._metadata,
            timeout=30,
        )
        return resp

    def job(self, job_id: str) -> admin_pb2.JobInfo:
        info: admin_pb2.JobInfo = self._stub.GetJob(
            admin_pb2.GetJobRequest(job_id=job_id), metadata=self._metadata, timeout=30
        )
        return info

    def watch(self, job_id: str) -> Iterator[admin_pb2.JobInfo]:
        yield from self._stub.WatchJob(
            admin_pb2.GetJobRequest(job_id=job_id), metadata=self._metadata
        )

    def close(self) -> None:
        self._channel.close()


def _client_options(f: Any) -> Any:
    for decorator in reversed(
        [
            click.option(
                "--collector",
                "target",
                default="127.0.0.1:50051",
                show_default=True,
                envvar="FLOPWATT_COLLECTOR",
                help="Collector gRPC HOST:PORT.",
            ),
            click.option(
                "--token-file",
                type=_path,
                default=None,
                envvar="FLOPWATT_ADMIN_TOKEN_FILE",
                help="File holding the admin token.",
            ),
            click.option("--tls-ca", type=_path, default=None, help="CA to verify the collector."),
            click.option("--tls-cert", type=_path, default=None, help="Client certificate."),
            click.option("--tls-key", type=_path, default=None, help="Client key."),
        ]
    ):
        f = decorator(f)
    return f


def _client(ctx: click.Context) -> FleetClient:
    return FleetClient(ctx.obj)


@click.group("fleet")
@_client_options
@click.pass_context
def fleet(
    ctx: click.Context,
    target: str,
    token_file: Path | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Operate the fleet through a collector's admin API (needs the admin token)."""
    ctx.obj = ClientCredentials(target, token_file, tls_ca, tls_cert, tls_key)


def _rpc_error(exc: grpc.RpcError) -> click.ClickException:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    return click.ClickException(f"collector answered {name}: {details}")


@fleet.command("agents")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def agents_cmd(ctx: click.Context, as_json: bool) -> None:
    """List agents and their devices (with the registry SKU each device matched)."""
    client = _client(ctx)
    try:
        resp = client.agents()
    except grpc.RpcError as exc:
        raise _rpc_error(exc) from None
    except TokenFileError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        client.close()
    now = time.time_ns()
    rows: list[dict[str, Any]] = [
        {
            "hostname": a.agent_id,
            "connected": a.connected,
            "last_seen_s_ago": (now - a.last_seen_unix_ns) / 1e9 if a.last_seen_unix_ns else None,
            "backend": a.node.device_backend,
            "agent_version": a.node.agent_version,
            "devices": [
                {
                    "uuid": d.device.uuid,
                    "index": d.device.index,
                    "name": d.device.name,
                    "sku": d.sku or None,
                    "sku_match": d.sku_match,
                    "simulated": d.device.simulated,
                }
                for d in a.devices
            ],
        }
        for a in resp.agents
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"{len(rows)} agents")
    for col in ("hostname", "connected", "last seen", "backend", "devices", "SKUs"):
        table.add_column(col)
    for r in rows:
        skus = sorted({d["sku"] or "unknown" for d in r["devices"]})
        seen = r["last_seen_s_ago"]
        table.add_row(
            r["hostname"],
            "yes" if r["connected"] else "no",
            "—" if seen is None else f"{seen:.0f} s ago",
            r["backend"],
            str(len(r["devices"])),
            ", ".join(skus) + (" (sim)" if any(d["simulated"] for d in r["devices"]) else ""),
        )
    stdout_console().print(table)


def parse_selector(values: tuple[str, ...]) -> admin_pb2.AgentSelector:
    """``--select all``, ``--select hostname=a,b``, ``--select sku=H100-SXM5-80GB`` (repeatable).

    Raises:
        click.BadParameter: an unknown form.
    """
    sel = admin_pb2.AgentSelector()
    for item in parse_csv_option(values):
        key, sep, value = item.partition("=")
        if not sep and key == "all":
            sel.all = True
        elif key in ("hostname", "host") and value:
            sel.hostnames.append(value)
        elif key == "sku" and value:
            sel.skus.append(value)
        elif not sep and sel.hostnames and "=" not in item:
            sel.hostnames.append(item)  # continuation of a comma list: hostname=a,b
        else:
            raise click.BadParameter(
                f"{item!r}: use 'all', 'hostname=NAME' or 'sku=SKU'", param_hint="--select"
            )
    return sel


def _state_name(state: int) -> str:
    return JobState(state).name.lower()


def _job_table(info: admin_pb2.JobInfo) -> Table:
    table = Table(title=f"job {info.job_id}" + (" (finished)" if info.finished else ""))
    for col in ("agent", "state", "results", "message"):
        table.add_column(col)
    for t in info.targets:
        table.add_row(t.agent_id, _state_name(t.state), str(t.results), t.message)
    return table


def _job_json(info: admin_pb2.JobInfo) -> dict[str, Any]:
    return {
        "job_id": info.job_id,
        "finished": info.finished,
        "targets": [
            {
                "agent_id": t.agent_id,
                "state": _state_name(t.state),
                "results": t.results,
                "message": t.message,
            }
            for t in info.targets
        ],
    }


def _follow(client: FleetClient, job_id: str, as_json: bool) -> admin_pb2.JobInfo:
    last = client.job(job_id)
    if as_json:
        for info in client.watch(job_id):
            last = info
        return last
    with Live(_job_table(last), console=stderr_console(), refresh_per_second=4) as live:
        for info in client.watch(job_id):
            last = info
            live.update(_job_table(info))
    return last


@fleet.command("run")
@click.argument("kind", type=click.Choice(["gemm", "model"]))
@click.option(
    "--select",
    "select",
    multiple=True,
    required=True,
    help="'all', 'hostname=NAME[,NAME]' or 'sku=SKU' (repeatable).",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    help="GEMM: precisions (comma list); model: one precision.",
)
@click.option("--max-size", type=click.IntRange(min=0), default=0, help="GEMM: largest size.")
@click.option(
    "--sustain-seconds",
    type=click.FloatRange(min=0),
    default=0.0,
    help="GEMM: length of the sustained run (0 = agent default).",
)
@click.option("--refresh", is_flag=True, help="GEMM: re-measure even if cached.")
@click.option("--model", "models", multiple=True, help="Model: names (comma list).")
@click.option("--batch", "batches", multiple=True, help="Model: batch sizes (comma list).")
@click.option("--runs", type=click.IntRange(min=0), default=0, help="Model: timed runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=0, help="Model: warm-up runs.")
@click.option("--device", "devices", multiple=True, help="Only these device UUIDs.")
@click.option("--wait", is_flag=True, help="Follow the job until every agent finishes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def run_cmd(
    ctx: click.Context,
    kind: str,
    select: tuple[str, ...],
    precisions: tuple[str, ...],
    max_size: int,
    sustain_seconds: float,
    refresh: bool,
    models: tuple[str, ...],
    batches: tuple[str, ...],
    runs: int,
    warmup: int,
    devices: tuple[str, ...],
    wait: bool,
    as_json: bool,
) -> None:
    """Request a GEMM or model job on the selected agents."""
    selector = parse_selector(select)
    device_uuids = tuple(parse_csv_option(devices))
    if kind == "gemm":
        spec = JobSpec(
            gemm=GemmJobSpec(
                tuple(parse_csv_option(precisions)), max_size, sustain_seconds, refresh
            ),
            device_uuids=device_uuids,
        )
    else:
        prec = parse_csv_option(precisions)
        if len(prec) > 1:
            raise click.BadParameter("a model job takes one precision", param_hint="--precision")
        try:
            batch_sizes = tuple(int(b) for b in parse_csv_option(batches))
        except ValueError:
            raise click.BadParameter("batch sizes are integers", param_hint="--batch") from None
        spec = JobSpec(
            model=ModelJobSpec(
                tuple(parse_csv_option(models)), batch_sizes, prec[0] if prec else "", warmup, runs
            ),
            device_uuids=device_uuids,
        )
    client = _client(ctx)
    try:
        resp = client.run(selector, spec)
        if not as_json:
            stderr_console().print(
                f"job {resp.job_id} queued on {len(resp.agent_ids)} agents: "
                + ", ".join(resp.agent_ids)
            )
        final = _follow(client, resp.job_id, as_json) if wait else client.job(resp.job_id)
    except grpc.RpcError as exc:
        raise _rpc_error(exc) from None
    except TokenFileError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        client.close()
    if as_json:
        emit_json(_job_json(final))
    elif wait:
        stdout_console().print(_job_table(final))
    if wait and any(JobState(t.state) is not JobState.SUCCEEDED for t in final.targets):
        ctx.exit(1)


@fleet.command("job")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow until finished.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def job_cmd(ctx: click.Context, job_id: str, wait: bool, as_json: bool) -> None:
    """Show a job's state per agent."""
    client = _client(ctx)
    try:
        info = _follow(client, job_id, as_json) if wait else client.job(job_id)
    except grpc.RpcError as exc:
        raise _rpc_error(exc) from None
    finally:
        client.close()
    if as_json:
        emit_json(_job_json(info))
    else:
        stdout_console().print(_job_table(info))
