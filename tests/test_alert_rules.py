"""The Prometheus alerting rules under ``deploy/prometheus/rules/`` and where they are deployed.

With the real ``promtool``: every ``*.rules.yml`` passes ``promtool check rules``;
``deploy/prometheus/prometheus.yml`` passes ``promtool check config`` and loads exactly those
files (its ``rule_files`` resolved relative to the config file, whatever the working directory);
every ``*_test.yml`` beside them passes ``promtool test rules``.

Without it: every alert has a test case where it fires and one where it stays silent (a new
alert without tests fails here); every alert carries a severity and the summary, description
and runbook annotations; every ``flopwatt_*`` metric the rules use is in
:mod:`flopwatt.metrics_spec` (or is one of the pending renames below); GPU series are selected
with ``device_kind="gpu"``; the throttle reasons are the project's limiting reasons;
``deploy/k8s/prometheusrule.yaml`` is exactly what ``scripts/gen_prometheusrule.py`` makes of
the rule files; ``docker-compose.yml`` mounts the rules where ``prometheus.yml`` looks for them.

Live: each GPU-health alert's expression, evaluated on a real Prometheus scraping a real
collector fed by a sim agent with health faults, names exactly the GPU its fault hit.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.analysis.throttle import LIMITING_REASONS, ThrottleReason
from flopwatt.channel import ClientCredentials
from flopwatt.metrics_spec import BY_NAME, GPU_LABELS, MetricType
from tests.collector_helpers import collector
from tests.prometheus_helpers import query, requires_prometheus, run_prometheus, wait_for_query
from tests.test_agent_e2e import run_agents

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES_DIR = PROM_DIR / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted(RULES_DIR.glob("*_test.yml"))
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"
GENERATOR = ROOT / "scripts" / "gen_prometheusrule.py"
COMPOSE_FILE = ROOT / "docker-compose.yml"

PROMTOOL = shutil.which("promtool")
requires_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs the 'promtool' binary on PATH (Debian package 'prometheus'; CI installs it)",
)

SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = ("summary", "description", "runbook")

_METRIC_SELECTOR = re.compile(r"\b(flopwatt_[a-z0-9_]+)\b(\s*\{[^}]*\})?")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> Iterator[tuple[str, dict[str, Any]]]:
    """(group name, rule) of every rule in every rule file."""
    for path in RULE_FILES:
        for group in _load(path)["groups"]:
            for rule in group["rules"]:
                yield group["name"], rule


def _alerts() -> dict[str, dict[str, Any]]:
    alerts: dict[str, dict[str, Any]] = {}
    for _, rule in _rules():
        if "alert" in rule:
            assert rule["alert"] not in alerts, f"alert {rule['alert']} defined twice"
            alerts[rule["alert"]] = rule
    return alerts


def _alert_cases() -> tuple[set[str], set[str]]:
    """Alert names the unit tests expect to fire somewhere, and to stay silent somewhere."""
    fired: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for test in _load(path)["tests"]:
            for case in test.get("alert_rule_test") or []:
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    return fired, silent


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"promtool exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def test_the_rules_and_their_tests_exist() -> None:
    assert RULE_FILES, f"no *.rules.yml under {RULES_DIR}"
    assert TEST_FILES, f"no *_test.yml under {RULES_DIR}"
    assert _alerts()


# --- promtool ---------------------------------------------------------------------------------


@requires_promtool
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_passes_promtool_check(path: Path) -> None:
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, _output(proc)


@requires_promtool
def test_prometheus_config_passes_promtool_and_loads_every_rule_file(tmp_path: Path) -> None:
    # Run from elsewhere: rule_files must resolve relative to the config file, not the cwd.
    proc = _promtool("check", "config", str(PROM_CONFIG), cwd=tmp_path)
    assert proc.returncode == 0, _output(proc)
    text = proc.stdout + proc.stderr
    assert f"{len(RULE_FILES)} rule files found" in text, _output(proc)
    for path in RULE_FILES:
        assert f"Checking {path}" in text, _output(proc)
    for path in TEST_FILES:
        assert str(path) not in text, f"{path.name} is loaded as a rule file:\n{text}"


@requires_promtool
@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    proc = _promtool("test", "rules", str(path))
    assert proc.returncode == 0, _output(proc)
    assert "SUCCESS" in proc.stdout, _output(proc)


# --- the rules themselves -----------------------------------------------------------------


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent() -> None:
    alerts = set(_alerts())
    fired, silent = _alert_cases()
    assert not alerts - fired, f"alerts no unit test expects to fire: {sorted(alerts - fired)}"
    assert not alerts - silent, f"alerts no unit test expects silent: {sorted(alerts - silent)}"
    unknown = (fired | silent) - alerts
    assert not unknown, f"unit tests name alerts that do not exist: {sorted(unknown)}"


def test_test_files_load_the_rule_files() -> None:
    for path in TEST_FILES:
        listed = {(RULES_DIR / f).resolve() for f in _load(path)["rule_files"]}
        assert listed and listed <= {p.resolve() for p in RULE_FILES}, (path.name, listed)


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_has_severity_summary_description_and_runbook(name: str) -> None:
    rule = _alerts()[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, rule.get("labels")
    annotations = rule.get("annotations", {})
    for key in ANNOTATIONS:
        assert str(annotations.get(key, "")).strip(), f"{name}: no {key} annotation"
    assert "\n" not in annotations["runbook"].strip(), f"{name}: runbook is one line"


def _family(series: str) -> str:
    """The metric family of a series name (a histogram's ``_bucket``, ``_sum``, ``_count``)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base in BY_NAME and BY_NAME[base].type == MetricType.HISTOGRAM:
            return base
    return series


def _metric_uses() -> list[tuple[str, str, str]]:
    """(rule, metric family, selector braces or "") for every flopwatt_* series in every
    expression."""
    uses = []
    for _, rule in _rules():
        rule_name = rule.get("alert") or rule["record"]
        for m in _METRIC_SELECTOR.finditer(rule["expr"]):
            uses.append((rule_name, _family(m.group(1)), m.group(2) or ""))
    return uses


def test_rules_use_only_metrics_in_the_spec() -> None:
    for rule, metric, _ in _metric_uses():
        assert metric in BY_NAME, f"{rule}: unknown metric {metric}"


def _per_device(metric: str) -> bool:
    return BY_NAME[metric].labels[: len(GPU_LABELS)] == GPU_LABELS


def test_per_device_series_are_selected_as_gpus() -> None:
    for rule, metric, braces in _metric_uses():
        if _per_device(metric):
            assert re.search(r'\bdevice_kind\s*=\s*"gpu"', braces), (
                f'{rule}: {metric}{braces} must select device_kind="gpu"'
            )


def test_throttle_alert_counts_exactly_the_limiting_reasons() -> None:
    selectors = [b for _, m, b in _metric_uses() if m == "flopwatt_gpu_throttle_active"]
    assert selectors
    for braces in selectors:
        found = re.search(r'\breason\s*=~\s*"([^"]*)"', braces)
        assert found, braces
        reasons = set(found.group(1).split("|"))
        assert reasons <= {r.value for r in ThrottleReason}, reasons
        assert reasons == {r.value for r in LIMITING_REASONS}, reasons


# --- where the rules are deployed ---------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_prometheusrule", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_k8s_prometheusrule_is_generated_from_the_rule_files() -> None:
    committed = PROMETHEUS_RULE.read_text(encoding="utf-8")
    generated = _generator().render()
    assert committed == generated, (
        f"{PROMETHEUS_RULE.relative_to(ROOT)} is stale: run python scripts/gen_prometheusrule.py"
    )
    doc = yaml.safe_load(committed)
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["namespace"] == "flopwatt"
    groups = [g for path in RULE_FILES for g in _load(path)["groups"]]
    assert doc["spec"]["groups"] == groups


def test_prometheusrule_check_mode_passes() -> None:
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_mounts_the_rules_where_prometheus_loads_them() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    prometheus = compose["services"]["prometheus"]
    config_arg = next(c for c in prometheus["command"] if c.startswith("--config.file="))
    config_dir = PurePosixPath(config_arg.split("=", 1)[1]).parent
    binds = [
        (PurePosixPath(target), (ROOT / source).resolve())
        for source, target, *_ in (v.split(":") for v in prometheus["volumes"])
        if source.startswith(("./", "/"))
    ]
    loaded: set[Path] = set()
    for pattern in _load(PROM_CONFIG)["rule_files"]:
        in_container = config_dir / pattern
        # The bind mount that holds the pattern's directory.
        bind = next(((t, s) for t, s in binds if t in in_container.parents), None)
        assert bind is not None, f"{in_container} is on no bind mount of the prometheus service"
        target, source = bind
        loaded.update(source.glob(str(in_container.relative_to(target))))
    assert loaded == {p.resolve() for p in RULE_FILES}


# --- the health alerts on a real collector's series, in a real Prometheus ----------------------


@pytest.mark.prometheus
@pytest.mark.slow
@requires_prometheus
async def test_health_alert_expressions_name_the_sick_gpus_on_real_series(tmp_path: Path) -> None:
    """Sim faults through a real agent, collector and Prometheus: each health alert's ``expr``,
    evaluated as Prometheus evaluates it, names exactly the GPU its fault hit. The XID seen
    before the first scrape counts (the series is first seen above 0); an application XID
    (13) does not alert; the NVLink count that is already 40 at the first scrape is an old,
    steady count and does not alert as rising."""
    faults = ["xid:79@0", "ecc:3@1", "row-remap@2", "nvlink:40@3", "xid:13@4"]
    expected = {
        "FlopwattGpuHardwareXid": {"0": 79.0},
        "FlopwattGpuUncorrectedEcc": {"1": 3.0},
        "FlopwattGpuRowRemapPending": {"2": 1.0},
        "FlopwattGpuRowRemapFailed": {},
        "FlopwattGpuNvlinkErrorsRising": {},
        "FlopwattGpuPcieReplaysRising": {},
    }
    alerts = _alerts()
    async with collector(tmp_path) as c:
        prom_cm = run_prometheus(tmp_path, [f"{c.http_host}:{c.http_port}"], interval_s=1)
        base = await asyncio.to_thread(prom_cm.__enter__)
        try:
            config = AgentConfig(
                hostname="sick-node",
                collector=ClientCredentials(c.grpc_address),
                spool_path=tmp_path / "spool.db",
                interval_s=0.1,
                batch_interval_s=0.5,
            )
            backend = SimBackend.from_options(
                sku="H100-SXM5-80GB", gpus=6, host="sick-node", faults=faults
            )
            stop, tasks = await run_agents([Agent(config, backend)])
            try:
                replays = await asyncio.to_thread(
                    wait_for_query, base, 'flopwatt_gpu_nvlink_replays_total{gpu_index="3"}', 30
                )
                assert float(replays[0]["value"][1]) == 40.0
                await asyncio.sleep(3)  # a few scrapes of the steady counters
                got: dict[str, dict[str, float]] = {}
                for name in expected:
                    rows = await asyncio.to_thread(query, base, alerts[name]["expr"])
                    got[name] = {r["metric"]["gpu_index"]: float(r["value"][1]) for r in rows}
                    for r in rows:
                        assert r["metric"]["hostname"] == "sick-node"
                        assert r["metric"]["device_kind"] == "gpu"
                assert got == expected
            finally:
                stop.set()
                await asyncio.gather(*tasks)
        finally:
            await asyncio.to_thread(prom_cm.__exit__, None, None, None)
