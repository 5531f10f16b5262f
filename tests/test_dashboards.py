"""The Grafana dashboards under ``deploy/grafana/dashboards/`` against the metric spec and a real
Prometheus.

Static checks: every metric a panel or template variable names exists in
:mod:`flopwatt.metrics_spec` and is exported by the collector; every label a selector, a
grouping, a ``label_values`` or a legend uses belongs to those metrics; throttle-reason values are
real reasons; every query names the provisioned datasource.

Live check: a real collector fed by simulated agents (three SKUs, a power-capped T4 GPU, a slow
A100 GPU) runs a sim GEMM job and a sim model job; a real Prometheus scrapes the collector every
second; then every template-variable query is resolved the way Grafana does it and **every
PromQL expression in every dashboard** is evaluated, with the variables set to real values
(each SKU, "All", and every GPU for the drill-down), and must return data.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.analysis.throttle import ThrottleReason
from flopwatt.channel import ClientCredentials
from flopwatt.collector.jobs import Selector
from flopwatt.collector.server import RunningCollector
from flopwatt.metrics_spec import BY_NAME, MetricSpec, MetricType
from flopwatt.records import GemmJobSpec, JobSpec, JobState, ModelJobSpec
from tests.collector_helpers import collector
from tests.prometheus_helpers import (
    api,
    query,
    requires_prometheus,
    run_prometheus,
    wait_for_targets_up,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources"

SCRAPE_S = 1.0
#: Grafana's built-in variables as a dashboard over the last few minutes would set them:
#: $__rate_interval = max($__interval + scrape interval, 4 × scrape interval).
BUILTINS: dict[str, str] = {
    "__interval": "5s",
    "__interval_ms": "5000",
    "__rate_interval": "6s",
    "__range": "1m",
    "__range_s": "60",
    "__range_ms": "60000",
}
#: (hostname, SKU, GPUs, faults) of the simulated agents feeding the live test.
SIM_AGENTS: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("node-h100", "H100-SXM5-80GB", 2, ()),
    ("node-a100", "A100-SXM4-80GB", 2, ("slow:0.85@1",)),
    ("node-t4", "T4", 2, ("power-cap:50@1",)),
)

#: Background workloads (GPM on Hopper): the live-efficiency dashboard needs a busy GPU and an
#: idle one.
SIM_WORKLOADS: dict[str, tuple[str, ...]] = {"node-h100": ("train:0.42@0", "idle@1")}
SIM_PODS: dict[str, tuple[str, ...]] = {"node-h100": ("ml/llama-pretrain-0/trainer@0",)}
"""The H100 node's GPU 0 is allocated to a pod (as the kubelet would say): the by-pod panels."""

# --- reading dashboards ---------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str
    legend: str
    datasource_uid: str | None

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}: {self.expr}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON file, by file name."""
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files, f"no dashboards under {DASHBOARD_DIR}"
    return {f.name: json.loads(f.read_text()) for f in files}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Panels, including those nested in (collapsed) rows."""
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


def queries(name: str, dashboard: dict[str, Any]) -> list[Query]:
    """Every PromQL target of every panel of ``dashboard``."""
    out = []
    for p in iter_panels(dashboard["panels"]):
        panel_ds = (p.get("datasource") or {}).get("uid")
        for t in p.get("targets", []):
            ds = (t.get("datasource") or {}).get("uid", panel_ds)
            out.append(
                Query(name, p["title"], t["refId"], t["expr"], t.get("legendFormat", ""), ds)
            )
    return out


def variable_query(var: dict[str, Any]) -> str:
    """A query variable's PromQL (Grafana stores a string or an object with ``query``)."""
    q = var["query"]
    return str(q["query"] if isinstance(q, dict) else q)


def provisioned_datasource_uid() -> str:
    docs = [yaml.safe_load(f.read_text()) for f in sorted(DATASOURCES.glob("*.y*ml"))]
    uids = [ds["uid"] for d in docs for ds in d["datasources"] if ds["type"] == "prometheus"]
    assert len(uids) == 1, uids
    return str(uids[0])


# --- PromQL, just enough to check names ----------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"\bflopwatt_[A-Za-z0-9_]+")
_SELECTOR = re.compile(r"\b(flopwatt_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(\"(?:[^\"\\]|\\.)*\")")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?([A-Za-z_]\w*)\s*\)\s*$")
#: The destination label of ``label_replace(v, "dst", ...)`` (first argument: one level of nesting).
_LABEL_REPLACE = re.compile(r'label_replace\((?:[^()"]|\([^()]*\)|"[^"]*")*?,\s*"([A-Za-z_]\w*)"')
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def spec_of(series_name: str) -> tuple[MetricSpec, tuple[str, ...]]:
    """The spec of a series name (histogram ``_bucket``/``_sum``/``_count`` included) and the
    labels that series carries.

    Raises:
        KeyError: no such metric in the spec.
    """
    if series_name in BY_NAME:
        return BY_NAME[series_name], BY_NAME[series_name].labels
    for suffix in _HISTOGRAM_SUFFIXES:
        base = series_name.removesuffix(suffix)
        if base != series_name and base in BY_NAME:
            spec = BY_NAME[base]
            if spec.type is MetricType.HISTOGRAM:
                extra = ("le",) if suffix == "_bucket" else ()
                return spec, (*spec.labels, *extra)
    raise KeyError(series_name)


def label_problems(expr: str, legend: str = "") -> list[str]:
    """What is wrong with the metric and label names of ``expr`` (empty: nothing)."""
    problems: list[str] = []
    bare = _STRING.sub('""', expr)
    names = set(_METRIC.findall(bare))
    if not names:
        problems.append("names no flopwatt metric")
    known: set[str] = set()
    for name in sorted(names):
        try:
            spec, labels = spec_of(name)
        except KeyError:
            problems.append(f"{name} is not in flopwatt.metrics_spec")
            continue
        if spec.scope != "collector":
            problems.append(f"{name} is an agent-local metric; Prometheus scrapes the collector")
        known.update(labels)
    known.update(_LABEL_REPLACE.findall(expr))
    for name, body in _SELECTOR.findall(expr):
        try:
            _, labels = spec_of(name)
        except KeyError:
            continue
        for label, _op, value in _MATCHER.findall(body):
            if label not in labels:
                problems.append(f"{name} has no label {label!r}")
            if name == "flopwatt_gpu_throttle_active" and label == "reason":
                for alternative in value.strip('"').split("|"):
                    if alternative not in {r.value for r in ThrottleReason}:
                        problems.append(f"{alternative!r} is not a throttle reason")
    for group in _GROUPING.findall(bare):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in known:
                problems.append(f"grouping label {label!r} is on none of {sorted(names)}")
    for label in _LEGEND.findall(legend):
        if label not in known:
            problems.append(f"legend label {label!r} is on none of {sorted(names)}")
    return problems


# --- static checks ---------------------------------------------------------------------------


def test_every_panel_query_names_real_metrics_and_labels() -> None:
    problems = []
    count = 0
    for name, d in load_dashboards().items():
        for q in queries(name, d):
            count += 1
            problems += [f"{q}\n    -> {p}" for p in label_problems(q.expr, q.legend)]
    assert count >= 40, count
    assert not problems, "\n".join(problems)


def test_every_variable_query_names_real_metrics_and_labels() -> None:
    problems = []
    for name, d in load_dashboards().items():
        for var in d["templating"]["list"]:
            assert var["type"] == "query", var["name"]
            q = variable_query(var)
            m = _LABEL_VALUES.match(q)
            assert m, f"{name} ${var['name']}: only label_values(...) is used here, got {q}"
            selector, label = m.groups()
            assert selector, f"{name} ${var['name']}: label_values without a metric: {q}"
            problems += [f"{name} ${var['name']}: {p}" for p in label_problems(selector)]
            spec, labels = spec_of(_METRIC.findall(selector)[0])
            if label not in labels:
                problems.append(f"{name} ${var['name']}: {spec.name} has no label {label!r}")
    assert not problems, "\n".join(problems)


def test_dashboards_use_the_provisioned_datasource_and_define_their_variables() -> None:
    uid = provisioned_datasource_uid()
    boards = load_dashboards()
    assert len({d["uid"] for d in boards.values()}) == len(boards)
    for name, d in boards.items():
        ids = [p["id"] for p in iter_panels(d["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        defined = {v["name"] for v in d["templating"]["list"]}
        for q in queries(name, d):
            assert q.datasource_uid == uid, str(q)
            used = {a or b or c for a, b, c in _VARIABLE.findall(q.expr)}
            assert used <= defined | set(BUILTINS), f"{q}: undefined {used - defined}"
        for p in iter_panels(d["panels"]):
            if p["type"] != "row":
                assert (p.get("datasource") or {}).get("uid") == uid, p["title"]
                refs = [t["refId"] for t in p["targets"]]
                assert refs and len(refs) == len(set(refs)), p["title"]


def test_fleet_overview_and_drill_down_cover_what_operators_need() -> None:
    boards = {d["uid"]: (name, d) for name, d in load_dashboards().items()}
    assert {"flopwatt-fleet", "flopwatt-gpu"} <= set(boards)

    def metrics_used(uid: str) -> set[str]:
        name, d = boards[uid]
        return {m for q in queries(name, d) for m in _METRIC.findall(_STRING.sub("", q.expr))}

    fleet = metrics_used("flopwatt-fleet")
    for needed in (
        "flopwatt_gpu_power_average_1s_watts",  # power by SKU and node
        "flopwatt_gpu_energy_joules_total",  # energy
        "flopwatt_gemm_sustained_spec_ratio",  # GEMM delivered vs spec
        "flopwatt_spec_peak_flops_per_second",
        "flopwatt_model_efficiency_ratio",  # model efficiency
        "flopwatt_physics_tdp_watts",  # physics TDP vs measured power
        "flopwatt_gemm_mean_power_watts",
        "flopwatt_spec_tdp_watts",
        "flopwatt_energy_per_flop_joules",  # energy per FLOP vs physics vs ceiling
        "flopwatt_physics_energy_per_flop_joules",
        "flopwatt_energy_per_flop_ceiling_joules",
        "flopwatt_gpu_throttle_active",  # throttle reasons over time
        "flopwatt_agent_last_seen_timestamp_seconds",  # agents' freshness
        "flopwatt_agent_connected",
        "flopwatt_collector_commit_latency_seconds_bucket",  # collector health
    ):
        assert needed in fleet, needed
    # The first row leads with efficiency, energy and throttling.
    _, d = boards["flopwatt-fleet"]
    first_row: list[str] = []
    for p in d["panels"][1:]:
        if p["type"] == "row":
            break
        first_row += [t["expr"] for t in p["targets"]]
    lead = " ".join(first_row)
    for needed in ("flopwatt_gemm_sustained_spec_ratio", "energy_joules_total", "throttle_active"):
        assert needed in lead, needed

    _, gpu = boards["flopwatt-gpu"]
    names = [v["name"] for v in gpu["templating"]["list"]]
    assert {"hostname", "sku", "gpu_uuid"} <= set(names)
    assert names.index("gpu_uuid") > max(names.index("hostname"), names.index("sku"))
    assert "flopwatt_gpu_throttle_active" in metrics_used("flopwatt-gpu")


def test_the_name_checker_catches_mistakes() -> None:
    """The checker itself: a typo in a metric, a label, a grouping, a legend or a reason."""
    power = "flopwatt_gpu_power_instant_watts"
    assert label_problems(f'sum by (sku) ({power}{{device_kind="gpu"}})') == []
    assert label_problems("flopwatt_gpu_power_watts")  # the old name, split in two
    assert label_problems(f'{power}{{kind="instant"}}')  # its old label
    assert label_problems(f'{power}{{gpu_id="x"}}')
    assert label_problems(f"sum by (gpu) ({power})")
    assert label_problems(power, "{{node}}")
    assert label_problems('flopwatt_gpu_throttle_active{reason=~"sw_power_cap|powercap"}')
    assert label_problems("flopwatt_agent_spool_bytes")  # agent-local, not scraped
    assert label_problems("rate(flopwatt_collector_commit_latency_seconds_bucket[1m])") == []
    assert label_problems("sum by (le) (flopwatt_collector_commit_latency_seconds_sum)")
    relabelled = 'label_replace(flopwatt_gpu_sm_clock_hertz{sku="T4"}, "clock", "SM", "", "")'
    assert label_problems(relabelled, "{{clock}} {{sku}}") == []
    assert label_problems(relabelled, "{{clocks}}")


# --- Grafana's variable substitution --------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def grafana_value(values: list[str], *, multi: bool) -> str:
    """What Grafana substitutes for a Prometheus variable: a multi-value variable becomes a
    regex alternation of escaped values ("All" is the variable's ``allValue``, here ``.*``)."""
    if not multi:
        (only,) = values
        return only
    if values == ["$__all"]:
        return ".*"
    escaped = [_REGEX_SPECIAL.sub(r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(text: str, chosen: Mapping[str, str]) -> str:
    """``text`` with every ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` replaced.

    Raises:
        KeyError: a variable that is neither defined nor built in.
    """
    values = {**BUILTINS, **chosen}

    def repl(m: re.Match[str]) -> str:
        return values[m.group(1) or m.group(2) or m.group(3)]

    return _VARIABLE.sub(repl, text)


# --- live: simulated fleet → collector → Prometheus → every query ---------------------------


def _sim_agent(
    tmp_path: Path, target: str, name: str, sku: str, gpus: int, faults: tuple[str, ...]
) -> Agent:
    cfg = AgentConfig(
        hostname=name,
        collector=ClientCredentials(target),
        spool_path=tmp_path / f"spool-{name}.db",
        interval_s=0.05,
        batch_interval_s=0.2,
        ack_timeout_s=2.0,
        backoff_base_s=0.2,
        backoff_cap_s=1.0,
        job_options={"sustain_s": 1.0, "model_window_s": 0.3},
    )
    backend = SimBackend.from_options(
        sku=sku,
        gpus=gpus,
        faults=faults,
        seed=len(name),
        host=name,
        workloads=SIM_WORKLOADS.get(name, ()),
        pods=SIM_PODS.get(name, ()),
    )
    return Agent(cfg, backend)


async def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _job_states(c: RunningCollector, job_ids: list[str]) -> list[tuple[str, str, int, str]]:
    rows = c.store.query(
        "SELECT job_id, agent_id, state, message FROM job_targets WHERE job_id IN (?, ?)",
        job_ids,
    )
    return [(r["job_id"], r["agent_id"], r["state"], r["message"]) for r in rows]


async def _run_sim_fleet_jobs(c: RunningCollector, agents: list[Agent]) -> None:
    await _wait(
        lambda: all(a.uplink.stats.acked_messages > 2 for a in agents), 30, "agents streaming"
    )
    gemm_id, targets = await c.jobs.create(
        Selector(all=True), JobSpec(gemm=GemmJobSpec(precisions=("bf16", "fp16"), sustain_s=1.0))
    )
    assert sorted(targets) == sorted(a.config.hostname for a in agents)
    model_id, _ = await c.jobs.create(
        Selector(all=True),
        JobSpec(model=ModelJobSpec(models=("resnet50",), batches=(1,), precision="fp16", runs=20)),
    )
    ids = [gemm_id, model_id]

    def done() -> bool:
        states = _job_states(c, ids)
        failed = [s for s in states if s[2] in (JobState.FAILED, JobState.UNAVAILABLE)]
        assert not failed, failed
        return len(states) == 2 * len(agents) and all(s[2] == JobState.SUCCEEDED for s in states)

    await _wait(done, 40, "the GEMM and model jobs to succeed on every agent")


def _variable_values(base: str, var: dict[str, Any], chosen: Mapping[str, str]) -> list[str]:
    """Resolve a ``label_values(selector, label)`` variable as Grafana does (series API)."""
    m = _LABEL_VALUES.match(substitute(variable_query(var), chosen))
    assert m, variable_query(var)
    selector, label = m.groups()
    values: list[str] = api(
        base,
        f"/api/v1/label/{label}/values",
        **{"match[]": selector, "start": str(time.time() - 3600), "end": str(time.time())},
    )
    return values


def _check_queries(base: str, qs: list[Query], chosen: Mapping[str, str]) -> list[str]:
    failures = []
    for q in qs:
        promql = substitute(q.expr, chosen)
        try:
            result = query(base, promql)
        except Exception as exc:  # report every failure at once, not just the first
            failures.append(f"{q}\n    as {promql}\n    -> {exc}")
            continue
        finite = [s for s in result if math.isfinite(float(s["value"][1]))]
        if not finite:
            failures.append(f"{q}\n    as {promql}\n    -> no data {result}  with {dict(chosen)}")
    return failures


def _evaluate_dashboards(
    base: str, fleet: tuple[tuple[str, str, int, tuple[str, ...]], ...] = SIM_AGENTS
) -> dict[str, int]:
    """Evaluate every dashboard; returns how many queries ran per dashboard."""
    boards = {d["uid"]: (name, d) for name, d in load_dashboards().items()}
    ran: dict[str, int] = {}
    failures: list[str] = []
    want_hosts = sorted(h for h, *_ in fleet)
    want_skus = sorted({s for _, s, *_ in fleet})

    for uid, (name, d) in sorted(boards.items()):
        qs = queries(name, d)
        variables = d["templating"]["list"]
        ran[uid] = 0
        if uid == "flopwatt-gpu":
            selections = list(_drill_down_selections(base, variables, want_hosts, want_skus))
            assert len(selections) == sum(n for _, _, n, _ in fleet), selections
        else:
            selections = list(_multi_selections(base, variables))
        for chosen in selections:
            failures += _check_queries(base, qs, chosen)
            ran[uid] += len(qs)
    assert not failures, f"{len(failures)} queries returned no data:\n" + "\n".join(failures)
    return ran


def _drill_down_selections(
    base: str, variables: list[dict[str, Any]], want_hosts: list[str], want_skus: list[str]
) -> Iterator[dict[str, str]]:
    """Every (hostname, sku, gpu_uuid) the chained single-value variables offer."""
    by_name = {v["name"]: v for v in variables}
    order = [v["name"] for v in variables]

    def walk(i: int, chosen: dict[str, str]) -> Iterator[dict[str, str]]:
        if i == len(order):
            yield dict(chosen)
            return
        values = _variable_values(base, by_name[order[i]], chosen)
        assert values, f"${order[i]} has no values with {chosen}"
        if order[i] == "hostname":
            assert sorted(values) == want_hosts, values
        if order[i] == "sku" and "hostname" not in chosen:
            assert sorted(values) == want_skus, values
        for v in values:
            yield from walk(i + 1, {**chosen, order[i]: grafana_value([v], multi=False)})

    yield from walk(0, {})


def _multi_selections(base: str, variables: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """ "All" for every variable, then each value of the first variable alone (the others
    "All"): every panel must have data for every SKU of the fleet, not only in aggregate."""
    everything = {v["name"]: grafana_value(["$__all"], multi=True) for v in variables}
    for v in variables:
        assert v.get("multi") and v.get("includeAll") and v.get("allValue") == ".*", v["name"]
        assert _variable_values(base, v, everything), f"${v['name']} has no values"
    yield everything
    first = variables[0]
    for value in _variable_values(base, first, {}):
        yield {**everything, first["name"]: grafana_value([value], multi=True)}


@pytest.mark.prometheus
@pytest.mark.slow
@requires_prometheus
async def test_every_dashboard_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    started = time.monotonic()
    async with collector(tmp_path) as c:
        target = f"{c.http_host}:{c.http_port}"
        prom_cm = run_prometheus(tmp_path, [target], interval_s=SCRAPE_S)
        base = await asyncio.to_thread(prom_cm.__enter__)
        try:
            agents = [
                _sim_agent(tmp_path, c.grpc_address, name, sku, gpus, faults)
                for name, sku, gpus, faults in SIM_AGENTS
            ]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(a.run(stop, drain_s=5.0)) for a in agents]
            try:
                await asyncio.to_thread(wait_for_targets_up, base, 1)
                await _run_sim_fleet_jobs(c, agents)
                n_gpus = sum(n for _, _, n, _ in SIM_AGENTS)

                def scraped() -> bool:
                    got = query(base, "count(flopwatt_model_efficiency_ratio)")
                    rate = query(base, "count(rate(flopwatt_gpu_energy_joules_total[6s]))")
                    return bool(got and rate) and all(
                        float(r[0]["value"][1]) == n_gpus for r in (got, rate)
                    )

                await asyncio.to_thread(wait_until, "job results in Prometheus", scraped, 20)
                ran = await asyncio.to_thread(_evaluate_dashboards, base)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
        finally:
            await asyncio.to_thread(prom_cm.__exit__, None, None, None)
    assert ran["flopwatt-fleet"] > 0 and ran["flopwatt-gpu"] > 0
    assert time.monotonic() - started < 60, "keep this test under a minute"


@pytest.mark.prometheus
@pytest.mark.slow
@requires_prometheus
async def test_two_replicas_scraped_together_answer_like_one_collector(
    tmp_path: Path, postgres: Any
) -> None:
    """Two collector replicas on one PostgreSQL, the fleet's agents split between them, one
    Prometheus scraping both: every dashboard query returns data, no GPU series is written by
    both replicas (sums count each GPU once), and the fleet-wide counts are the fleet's."""
    dsn = postgres.create_database("dashboards_ha")
    # A second H100 node: the H100's per-SKU series are written by both replicas, as in a
    # real fleet, and the dashboards must not double them or fail to join them.
    fleet = (*SIM_AGENTS, ("node-h100-b", "H100-SXM5-80GB", 2, ()))
    async with (
        collector(tmp_path / "a", db_path=dsn) as a,
        collector(tmp_path / "b", db_path=dsn) as b,
    ):
        targets = [f"{c.http_host}:{c.http_port}" for c in (a, b)]
        prom_cm = run_prometheus(tmp_path, targets, interval_s=SCRAPE_S)
        base = await asyncio.to_thread(prom_cm.__enter__)
        try:
            agents = [
                _sim_agent(tmp_path, (a if i % 2 == 0 else b).grpc_address, name, sku, gpus, faults)
                for i, (name, sku, gpus, faults) in enumerate(fleet)
            ]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(x.run(stop, drain_s=5.0)) for x in agents]
            try:
                await asyncio.to_thread(wait_for_targets_up, base, 2)
                await _run_sim_fleet_jobs(a, agents)  # requested on A, run on A's and B's
                n_gpus = sum(n for _, _, n, _ in fleet)

                def scraped() -> bool:
                    got = query(base, "count(flopwatt_model_efficiency_ratio)")
                    rate = query(base, "count(rate(flopwatt_gpu_energy_joules_total[6s]))")
                    return bool(got and rate) and all(
                        float(r[0]["value"][1]) == n_gpus for r in (got, rate)
                    )

                await asyncio.to_thread(wait_until, "job results in Prometheus", scraped, 20)
                # Each GPU is written by exactly one replica, and both replicas carry GPUs.
                for family in (
                    "flopwatt_gpu_info",
                    "flopwatt_gpu_power_instant_watts",
                    "flopwatt_gemm_sustained_flops_per_second",
                ):
                    twice = query(base, f"count by (gpu_uuid, precision) ({family}) > 1")
                    assert twice == [], (family, twice)
                per_replica = query(base, "count by (instance) (flopwatt_gpu_info)")
                assert len(per_replica) == 2, per_replica
                (total,) = query(base, "count(flopwatt_gpu_info)")
                assert float(total["value"][1]) == n_gpus
                sku_twice = query(
                    base, 'count by (sku) (flopwatt_spec_tdp_watts{sku="H100-SXM5-80GB"})'
                )
                assert float(sku_twice[0]["value"][1]) == 2  # per-SKU facts on both replicas
                ran = await asyncio.to_thread(_evaluate_dashboards, base, fleet)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
        finally:
            await asyncio.to_thread(prom_cm.__exit__, None, None, None)
    assert ran["flopwatt-fleet"] > 0 and ran["flopwatt-gpu"] > 0
