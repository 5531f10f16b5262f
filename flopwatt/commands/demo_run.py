"""``flopwatt demo``: a whole fleet on one machine — a collector on SQLite, a real agent for this
machine, simulated agents for a mixed V100/A100/H100/T4 fleet (one GPU deliberately slowed, one
held at a low power limit), a GEMM and a model job on every agent through the collector, then the
fleet report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices import open_backend
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.agent.devices.sim_workload import has_gpm
from flopwatt.channel import ClientCredentials
from flopwatt.collector.jobs import Selector
from flopwatt.collector.server import CollectorConfig, RunningCollector, run_server
from flopwatt.records import GemmJobSpec, JobSpec, JobState, ModelJobSpec

log = logging.getLogger(__name__)

DEFAULT_SKUS = ("V100-SXM2-32GB", "A100-SXM4-80GB", "H100-SXM5-80GB")
DEFAULT_NODES_PER_SKU = 3
T4_NODE = ("T4", 4)
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class SimNode:
    """One simulated node of the demo fleet."""

    hostname: str
    sku: str
    gpus: int
    faults: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ()
    """Background workloads (``--sim-workload`` syntax): what the node's GPUs run between
    flopwatt's own jobs, seen through GPM on Hopper and newer."""
    pods: tuple[str, ...] = ()
    """The Kubernetes containers its GPUs are allocated to (``--sim-pod`` syntax)."""


DEMO_WORKLOADS: tuple[tuple[str, ...], ...] = (
    ("train:0.42",),
    ("inference:0.2", "idle@6", "idle@7"),
    ("train:0.31",),
)
"""Workloads of the nodes of GPM-capable SKUs, by node: a training job, a serving node with two
GPUs allocated but idle, a less efficient training job."""

DEMO_PODS: tuple[tuple[str, ...], ...] = (
    tuple(f"ml-train/llama-pretrain-0/trainer@{i}" for i in range(8)),
    (
        *(f"serving/chat-api-{i}/vllm@{i}" for i in range(6)),
        "research/notebook-alice/jupyter@6",
        "research/notebook-alice/jupyter@7",
    ),
    tuple(f"ml-train/finetune-7b-0/trainer@{i}" for i in range(8)),
)
"""The pods holding those GPUs, by node (as the kubelet's pod-resources API would say): the
report's live efficiency by pod and the dashboard's by-pod panels show them."""


def default_fleet(
    skus: Sequence[str] = DEFAULT_SKUS, nodes_per_sku: int = DEFAULT_NODES_PER_SKU
) -> list[SimNode]:
    """The demo fleet: ``nodes_per_sku`` nodes of 8 GPUs per SKU, plus one node of 4 T4s.

    On the second node of the second SKU one GPU is slowed to 80 % (an outlier with no throttle
    reason); on the first node of the last SKU one GPU is held at half its TDP (a power cap).
    Nodes of GPM-capable SKUs (Hopper) run :data:`DEMO_WORKLOADS` between flopwatt's jobs, in
    the pods of :data:`DEMO_PODS`, and on the third of them one GPU has a row remap pending (a
    suspect GPU in the report).
    """
    from flopwatt.analysis.registry import load_registry

    registry = load_registry()
    nodes: list[SimNode] = []
    for s, sku in enumerate(skus):
        for n in range(nodes_per_sku):
            faults: tuple[str, ...] = ()
            if s == min(1, len(skus) - 1) and n == min(1, nodes_per_sku - 1):
                faults += ("slow:0.8@3",)
            if s == len(skus) - 1 and n == 0:
                faults += (f"power-cap:{_half_tdp(sku)}@5",)
            workloads: tuple[str, ...] = ()
            pods: tuple[str, ...] = ()
            if has_gpm(registry.get(sku)):
                workloads = DEMO_WORKLOADS[n % len(DEMO_WORKLOADS)]
                pods = DEMO_PODS[n % len(DEMO_PODS)]
                if n == 2:
                    # A GPU with a remap pending (critical), one with a flaky NVLink (warning).
                    faults += ("row-remap@2", "nvlink:40@6")
            nodes.append(
                SimNode(f"{_short(sku)}-node-{n + 1}", sku, GPUS_PER_NODE, faults, workloads, pods)
            )
    t4_sku, t4_gpus = T4_NODE
    if t4_sku not in skus:
        nodes.append(SimNode("t4-node-1", t4_sku, t4_gpus))
    return nodes


def _short(sku: str) -> str:
    return sku.split("-")[0].lower()


def _half_tdp(sku: str) -> int:
    from flopwatt.analysis.registry import load_registry

    tdp = load_registry().get(sku).tdp_w or 400.0
    return int(tdp / 2)


@dataclass
class DemoConfig:
    """Everything the demo needs; defaults give the documented fleet."""

    data_dir: Path = Path("flopwatt-data")
    db_path: Path | None = None
    out_dir: Path | None = None
    grpc_listen: str = "127.0.0.1:0"
    http_listen: str = "127.0.0.1:0"
    nodes: list[SimNode] = field(default_factory=default_fleet)
    local_agent: bool = True
    gemm_sustain_s: float = 3.0
    local_gemm_sustain_s: float = 3.0
    models: tuple[str, ...] = ("resnet50", "vit_b_16")
    batches: tuple[int, ...] = (1, 8)
    model_runs: int = 5
    job_timeout_s: float = 150.0
    seed: int = 0


@dataclass
class DemoResult:
    """What the demo produced."""

    report_paths: list[Path]
    metrics_url: str
    db_path: Path
    jobs: dict[str, dict[str, JobState]]
    local_device: str | None


ProgressFn = Callable[[str, int, int], None]


async def run_demo(
    config: DemoConfig,
    *,
    keep_serving: asyncio.Event | None = None,
    progress: ProgressFn | None = None,
    on_report: Callable[[DemoResult], None] | None = None,
) -> DemoResult:
    """Run the demo; return after the report is written, or — when ``keep_serving`` is given —
    after that event is set (Ctrl-C in the CLI). ``on_report`` is called as soon as the report
    exists (before serving on)."""
    from flopwatt.report.files import write_report

    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True)
    db = config.db_path or data / "flopwatt.db"
    out = config.out_dir or data / "report"
    collector_cfg = CollectorConfig(
        grpc_listen=config.grpc_listen, http_listen=config.http_listen, db_path=db
    )
    async with run_server(collector_cfg) as collector:
        agents = _make_agents(config, collector, data)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop)) for a in agents]
        try:
            await _wait_registered(collector, [a.config.hostname for a in agents], 60.0, progress)
            jobs = await _run_jobs(config, collector, agents, progress)
            # Let the last results and a few telemetry batches land before reporting.
            await asyncio.sleep(2.0)
            paths = await asyncio.to_thread(write_report, db, out, ("html", "csv"))
            local = next((a for a in agents if a.backend.name != "sim"), None)
            result = DemoResult(
                report_paths=paths,
                metrics_url=f"{collector.http_url}/metrics",
                db_path=db,
                jobs=jobs,
                local_device=local.devices[0].info.name if local and local.devices else None,
            )
            if on_report is not None:
                on_report(result)
            if keep_serving is not None:
                await keep_serving.wait()
            return result
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


def _make_agents(config: DemoConfig, collector: RunningCollector, data: Path) -> list[Agent]:
    creds = ClientCredentials(collector.grpc_address)
    spools = data / "spool"
    agents = []
    common = {
        "collector": creds,
        "batch_interval_s": 1.0,
        "interval_s": 0.1,
        "backoff_base_s": 0.5,
        "backoff_cap_s": 5.0,
    }
    for node in config.nodes:
        backend = SimBackend.from_options(
            sku=node.sku,
            gpus=node.gpus,
            seed=config.seed,
            faults=list(node.faults),
            workloads=list(node.workloads),
            pods=list(node.pods),
            host=node.hostname,
        )
        agents.append(
            Agent(
                AgentConfig(
                    hostname=node.hostname,
                    spool_path=spools / f"{node.hostname}.db",
                    job_options={"sustain_s": config.gemm_sustain_s},
                    **common,  # type: ignore[arg-type]
                ),
                backend,
            )
        )
    if config.local_agent:
        host = socket.gethostname()
        local = open_backend("auto")
        agents.append(
            Agent(
                AgentConfig(
                    hostname=host,
                    spool_path=spools / f"{host}.db",
                    job_options={"sustain_s": config.local_gemm_sustain_s},
                    **common,  # type: ignore[arg-type]
                ),
                local,
            )
        )
    return agents


async def _wait_registered(
    collector: RunningCollector, hosts: list[str], timeout: float, progress: ProgressFn | None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        snap = collector.state.snapshot()
        connected = sum(1 for h in hosts if h in snap.agents and snap.agents[h].connected)
        if progress is not None:
            progress("agents", connected, len(hosts))
        if connected == len(hosts):
            return
        if time.monotonic() > deadline:
            missing = [h for h in hosts if h not in snap.agents]
            raise TimeoutError(f"agents did not connect: {', '.join(missing)}")
        await asyncio.sleep(0.2)


async def _run_jobs(
    config: DemoConfig,
    collector: RunningCollector,
    agents: list[Agent],
    progress: ProgressFn | None,
) -> dict[str, dict[str, JobState]]:
    specs = {
        "gemm": JobSpec(gemm=GemmJobSpec(sustain_s=0.0)),
        "model": JobSpec(
            model=ModelJobSpec(config.models, config.batches, "", warmup=2, runs=config.model_runs)
        ),
    }
    job_ids: dict[str, str] = {}
    for name, spec in specs.items():
        job_ids[name], _ = await collector.jobs.create(Selector(all=True), spec)
    states: dict[str, dict[str, JobState]] = {}
    deadline = time.monotonic() + config.job_timeout_s
    total = len(agents) * len(job_ids)
    while True:
        done = 0
        for name, job_id in job_ids.items():
            row = await collector.jobs.get(job_id)
            targets = {t.agent_id: t.state for t in row.targets} if row else {}
            states[name] = targets
            done += sum(1 for s in targets.values() if s.final)
        if progress is not None:
            progress("jobs", done, total)
        if done >= total or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.5)


def run_demo_sync(
    config: DemoConfig,
    *,
    once: bool,
    progress: ProgressFn | None = None,
    on_report: Callable[[DemoResult], None] | None = None,
) -> DemoResult:
    """Run :func:`run_demo` on a fresh event loop; without ``once`` serve until Ctrl-C."""
    import signal

    async def main() -> DemoResult:
        keep: asyncio.Event | None = None
        if not once:
            keep = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, keep.set)
        return await run_demo(config, keep_serving=keep, progress=progress, on_report=on_report)

    return asyncio.run(main())
