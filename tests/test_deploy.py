"""Deployment artefacts, checked without a Docker engine or a cluster: ``docker-compose.yml``,
the Dockerfiles and ``.dockerignore``, ``deploy/prometheus``, Grafana provisioning,
``deploy/k8s`` and the token script.

What is checked: the files parse; every build context, Dockerfile, bind-mounted path and file a
service refers to exists; every ``flopwatt`` command in compose and Kubernetes is a valid
invocation (its ``--help`` lists each option used, and click accepts the whole command line);
every path a command reads or writes lies on a mounted volume; token files the commands name
are the ones the token script writes; Prometheus' config passes ``promtool check config`` and
scrapes the collector where compose runs it; Grafana's provider path is where compose mounts the
dashboards; the DaemonSet, Deployment and Service are wired to each other.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml

from flopwatt.channel import read_token_file
from flopwatt.collector.auth import load_admin_tokens, load_agent_tokens
from tests.prometheus_helpers import PROMTOOL

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "k8s"
TOKEN_SCRIPT = DEPLOY / "tokens" / "init-tokens.sh"
BASE_SERVICES = ("collector", "prometheus", "grafana")


# --- compose: loading and interpolation -----------------------------------------------------

_COMPOSE_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``$VAR``, ``$$``) applied to every string in ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3)
        got = env.get(name)
        if op in (":-", ":?") and not got:
            assert op == ":-", f"${{{name}}} is required"
            return default or ""
        if op == "-" and got is None:
            return default or ""
        return got or ""

    return _COMPOSE_VAR.sub(repl, value)


@functools.cache
def compose() -> dict[str, Any]:
    """docker-compose.yml with variables at their defaults (an empty environment)."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return {k: v for k, v in interpolate(doc, {}).items() if not k.startswith("x-")}


def services() -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = compose()["services"]
    return svc


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind, source, container target) of each volume of a service; kind is bind or volume."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            kind, source, target = v["type"], v.get("source", ""), v["target"]
        out.append((kind, source, target))
    return out


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The host file behind ``container_path`` when a bind mount provides it, else None."""
    p = PurePosixPath(container_path)
    for kind, source, target in mounts(service):
        if kind == "bind" and (p == PurePosixPath(target) or PurePosixPath(target) in p.parents):
            return (ROOT / source / p.relative_to(target)).resolve()
    return None


def on_a_mount(service: dict[str, Any], container_path: str) -> bool:
    p = PurePosixPath(container_path)
    return any(
        p == PurePosixPath(t) or PurePosixPath(t) in p.parents for _, _, t in mounts(service)
    )


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    assert isinstance(cmd, list), f"use the list form for commands: {cmd!r}"
    return [str(c) for c in cmd]


def profiles(service: dict[str, Any]) -> list[str]:
    return list(service.get("profiles", []))


# --- flopwatt invocations -------------------------------------------------------------------


def _param_for(cmd: click.Command, opt: str) -> click.Parameter | None:
    for p in cmd.params:
        if isinstance(p, click.Option) and opt in (*p.opts, *p.secondary_opts):
            return p
    return None


def _takes_value(p: click.Parameter) -> bool:
    return not (isinstance(p, click.Option) and (p.is_flag or p.count))


def split_levels(argv: list[str]) -> list[tuple[click.Command, str, list[str], str | None]]:
    """``flopwatt fleet --collector X run gemm ...`` → per level (command, its name, its own
    arguments, the subcommand chosen or None)."""
    from flopwatt.cli import cli

    assert argv[:1] == ["flopwatt"], argv
    levels = []
    cmd: click.Command = cli
    name, args = "flopwatt", argv[1:]
    while isinstance(cmd, click.Group):
        own: list[str] = []
        i = 0
        while i < len(args) and args[i].startswith("-"):
            opt = args[i].split("=", 1)[0]
            param = _param_for(cmd, opt)
            assert param is not None, f"`{name}` has no option {opt}"
            own.append(args[i])
            if "=" not in args[i] and _takes_value(param):
                own.append(args[i + 1])
                i += 1
            i += 1
        assert i < len(args), f"`{name}` needs a subcommand: {argv}"
        sub = cmd.get_command(click.Context(cmd, info_name=name), args[i])
        assert sub is not None, f"`{name}` has no subcommand {args[i]!r}"
        levels.append((cmd, name, own, args[i]))
        cmd, name, args = sub, args[i], args[i + 1 :]
    levels.append((cmd, name, args, None))
    return levels


def option_values(cmd: click.Command, args: list[str]) -> Iterator[tuple[click.Parameter, str]]:
    """(parameter, value) for each option with a value in ``args``."""
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("-"):
            opt, eq, inline = token.partition("=")
            param = _param_for(cmd, opt)
            assert param is not None, f"`{cmd.name}` has no option {opt}"
            if eq:
                yield param, inline
            elif _takes_value(param):
                yield param, args[i + 1]
                i += 1
        i += 1


@functools.cache
def help_text(path: tuple[str, ...]) -> str:
    """``flopwatt PATH... --help``, run as a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "flopwatt", *path, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"flopwatt {' '.join(path)} --help failed:\n{proc.stderr}"
    return proc.stdout


def path_options(argv: list[str]) -> list[tuple[str, str]]:
    """(option, value) of every file-path option in a flopwatt command line."""
    out = []
    for cmd, _name, own, _sub in split_levels(argv):
        for param, value in option_values(cmd, own):
            if isinstance(param.type, click.Path):
                out.append((param.opts[0], value))
    return out


def check_invocation(argv: list[str], existing_file: Path) -> None:
    """Assert ``argv`` is a valid ``flopwatt`` command line: each option used appears in the
    ``--help`` of its (sub)command, and click parses the whole line (choices, ranges, required
    options, arguments). Paths that must exist are pointed at ``existing_file`` for parsing."""
    parent: click.Context | None = None
    path: list[str] = []
    for cmd, name, own, sub in split_levels(argv):
        text = help_text(tuple(path))
        for token in own:
            if token.startswith("-"):
                opt = token.split("=", 1)[0]
                assert re.search(rf"(^|[\s,/]){re.escape(opt)}\b", text, re.M), (
                    f"`flopwatt {' '.join(path)} --help` does not list {opt}"
                )
        if sub is not None:
            assert re.search(rf"^\s+{re.escape(sub)}\b", text, re.M), (
                f"`flopwatt {' '.join(path)} --help` does not list {sub}"
            )
        parsed = list(own)
        for i, token in enumerate(own):
            param = _param_for(cmd, token) if token.startswith("-") else None
            if (
                param is not None
                and isinstance(param.type, click.Path)
                and param.type.exists
                and i + 1 < len(own)
            ):
                parsed[i + 1] = str(existing_file)
        try:
            ctx = cmd.make_context(name, [*parsed, *([sub] if sub else [])], parent=parent)
        except click.ClickException as exc:
            raise AssertionError(f"{' '.join(argv)}\n  -> {exc.format_message()}") from None
        parent = ctx
        if sub is not None:
            path.append(sub)


# --- compose --------------------------------------------------------------------------------


def test_compose_has_the_stack_a_gpu_agent_and_a_sim_profile() -> None:
    svc = services()
    for name in BASE_SERVICES:
        assert name in svc and not profiles(svc[name]), f"{name} must run in every profile"

    gpu = svc["agent-gpu"]
    assert profiles(gpu) == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    assert "nvml" in command(gpu)

    agents = {n: command(s) for n, s in svc.items() if command(s)[:2] == ["flopwatt", "agent"]}
    backends = {n: c[c.index("--device-backend") + 1] for n, c in agents.items()}
    sims = [n for n, b in backends.items() if b == "sim" and "ha" not in profiles(svc[n])]
    assert len(sims) >= 2, backends
    skus = set()
    for n in sims:
        assert profiles(svc[n]) == ["sim"], n
        cmd = command(svc[n])
        skus.add(cmd[cmd.index("--sim-sku") + 1])
        assert "deploy" not in svc[n], f"{n}: a simulated agent must not need a GPU"
    assert len(skus) >= 2, skus
    assert any("--sim-fault" in command(svc[n]) for n in sims), "show a fault on the dashboards"
    # Something queues GEMM and model jobs for the simulated nodes, in the sim profile.
    jobs = [s for s in svc.values() if command(s)[:2] == ["flopwatt", "fleet"]]
    kinds = {command(s)[command(s).index("run") + 1] for s in jobs}
    assert kinds == {"gemm", "model"} and all(profiles(s) == ["sim"] for s in jobs)

    # `docker compose --profile sim up` on a laptop starts nothing that needs a GPU.
    for n, s in svc.items():
        if not profiles(s) or "sim" in profiles(s):
            assert "deploy" not in s, f"{n} would need a GPU in the sim profile"


def test_compose_ha_profile_runs_two_replicas_on_postgres_scraped_together() -> None:
    """Profile "ha": PostgreSQL (official image, volume, health check), two collector replicas
    with the DSN from the environment, a Prometheus scraping both, agents given both."""
    svc = services()
    pg = svc["postgres"]
    assert profiles(pg) == ["ha"] and pg["image"].startswith("postgres:")
    assert any(v.startswith("postgres-data:") for v in pg["volumes"])
    assert "pg_isready" in pg["healthcheck"]["test"]
    replicas = [n for n in ("collector-a", "collector-b") if n in svc]
    assert len(replicas) == 2
    for n in replicas:
        s = svc[n]
        assert profiles(s) == ["ha"] and command(s)[:2] == ["flopwatt", "collector"]
        assert s["environment"]["FLOPWATT_DB"].startswith("postgresql://")
        assert "--db" not in command(s)
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
    prom = svc["prometheus-ha"]
    config_file = next(v.split(":")[0] for v in prom["volumes"] if "prometheus-ha.yml" in v)
    config = yaml.safe_load((ROOT / config_file).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "flopwatt-collector"]
    targets = job["static_configs"][0]["targets"]
    assert sorted(targets) == ["collector-a:9464", "collector-b:9464"]
    ha_agents = [n for n, s in svc.items() if "ha" in profiles(s) and "agent" in command(s)[:2]]
    assert len(ha_agents) >= 2
    orders = set()
    for n in ha_agents:
        cmd = command(svc[n])
        addresses = cmd[cmd.index("--collector") + 1].split(",")
        assert sorted(addresses) == ["collector-a:50051", "collector-b:50051"], n
        orders.add(addresses[0])
    assert orders == {"collector-a:50051", "collector-b:50051"}  # both replicas carry agents


def test_compose_dependencies_exist_and_respect_profiles() -> None:
    svc = services()
    for n, s in svc.items():
        deps = s.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in svc, f"{n} depends on unknown service {dep}"
            if profiles(svc[dep]):
                assert set(profiles(s)) and set(profiles(s)) <= set(profiles(svc[dep])), (
                    f"{n} would start without {dep}'s profile"
                )


def test_compose_builds_and_mounts_refer_to_files_that_exist() -> None:
    doc = compose()
    declared = set((doc.get("volumes") or {}).keys())
    svc = services()
    for n, s in svc.items():
        assert "image" in s, f"{n}: name its image"
        if "build" in s:
            context = ROOT / s["build"]["context"]
            assert context.is_dir(), f"{n}: build context {context}"
            assert (context / s["build"].get("dockerfile", "Dockerfile")).is_file(), n
        for kind, source, target in mounts(s):
            assert target.startswith("/"), f"{n}: {target}"
            if kind == "bind":
                assert (ROOT / source).exists(), f"{n}: bind source {source} does not exist"
            else:
                assert source in declared, f"{n}: volume {source} is not declared"
        # Every absolute path in a command or the environment that a bind mount provides.
        env = s.get("environment", {})
        values = [*command(s), *(env.values() if isinstance(env, dict) else env)]
        for value in values:
            for word in str(value).replace("=", " ").split():
                if word.startswith("/"):
                    path = host_path(s, word)
                    assert path is None or path.exists(), f"{n}: {word} -> {path} is missing"
    grafana = svc["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    found = host_path(grafana, home)
    assert found is not None and found.is_file(), home


def test_compose_publishes_ports_on_loopback_only_by_default() -> None:
    for n, s in services().items():
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{n} publishes {port} beyond loopback"


def test_compose_flopwatt_commands_are_valid_invocations(tmp_path: Path) -> None:
    existing = tmp_path / "exists"
    existing.write_text("x" * 32)
    checked = 0
    for n, s in services().items():
        cmd = command(s)
        if cmd[:1] != ["flopwatt"]:
            continue
        check_invocation(cmd, existing)
        checked += 1
        # Whatever a command reads or writes lives on a volume (tokens, database, spool).
        for opt, value in path_options(cmd):
            assert on_a_mount(s, value), f"{n}: {opt} {value} is not on a mounted volume"
        assert "--allow-unauthenticated-remote" not in cmd, f"{n}: compose runs authenticated"
    assert checked >= 6


def test_compose_token_files_are_the_ones_the_token_service_writes(tmp_path: Path) -> None:
    svc = services()
    tokens = svc["tokens"]
    cmd = command(tokens)
    script = host_path(tokens, cmd[1])
    assert cmd[0] == "sh" and script == TOKEN_SCRIPT.resolve(), cmd
    out_dir = cmd[2]
    (volume,) = [src for kind, src, t in mounts(tokens) if kind == "volume" and t == out_dir]
    generated = tmp_path / "tokens"
    subprocess.run(["sh", str(TOKEN_SCRIPT), str(generated), *cmd[3:]], check=True, timeout=30)

    collector = command(svc["collector"])
    assert "--agent-token-file" in collector and "--admin-token-file" in collector
    users = 0
    for n, s in svc.items():
        mount_points = [t for kind, src, t in mounts(s) if kind == "volume" and src == volume]
        if not mount_points or command(s)[:1] != ["flopwatt"]:
            continue
        (mount_point,) = mount_points
        for opt, value in path_options(command(s)):
            if PurePosixPath(mount_point) in PurePosixPath(value).parents:
                rel = PurePosixPath(value).relative_to(mount_point)
                assert (generated / rel).is_file(), f"{n}: {opt} {value} is never generated"
                users += 1
        c = command(s)
        if c[:2] == ["flopwatt", "agent"]:
            host = c[c.index("--hostname") + 1]
            token = c[c.index("--token-file") + 1]
            assert PurePosixPath(token).name == f"{host}.token", (n, host, token)
    assert users >= 6


def test_token_script_writes_tokens_the_collector_and_agents_accept(tmp_path: Path) -> None:
    out = tmp_path / "t"
    subprocess.run(["sh", str(TOKEN_SCRIPT), str(out), "node-a", "node-b"], check=True)
    agents = load_agent_tokens(out / "agents.tokens")
    assert sorted(agents.values()) == ["node-a", "node-b"]
    assert len(load_admin_tokens(out / "admin.tokens")) == 1
    node_a = read_token_file(out / "nodes" / "node-a.token")
    assert re.fullmatch(r"[0-9a-f]{64}", node_a)
    admin = read_token_file(out / "admin.token")
    assert admin != node_a
    for f in (out / "agents.tokens", out / "admin.token", out / "nodes" / "node-b.token"):
        assert f.stat().st_mode & 0o077 == 0, f"{f} is readable by others"

    # Re-running keeps every token and adds new nodes.
    subprocess.run(["sh", str(TOKEN_SCRIPT), str(out), "node-b", "node-c"], check=True)
    assert read_token_file(out / "nodes" / "node-a.token") == node_a
    assert read_token_file(out / "admin.token") == admin
    assert sorted(load_agent_tokens(out / "agents.tokens").values()) == [
        "node-a",
        "node-b",
        "node-c",
    ]
    bad = subprocess.run(
        ["sh", str(TOKEN_SCRIPT), str(out), "../etc"], capture_output=True, check=False
    )
    assert bad.returncode == 2


# --- Prometheus and Grafana -----------------------------------------------------------------


def _prometheus_config() -> tuple[Path, dict[str, Any]]:
    prom = services()["prometheus"]
    config_arg = next(c for c in command(prom) if c.startswith("--config.file="))
    path = host_path(prom, config_arg.split("=", 1)[1])
    assert path is not None and path == (DEPLOY / "prometheus" / "prometheus.yml").resolve()
    return path, yaml.safe_load(path.read_text())


def _listen_port(cmd: list[str], option: str) -> int:
    return int(cmd[cmd.index(option) + 1].rsplit(":", 1)[1])


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian package 'prometheus')")
def test_prometheus_config_passes_promtool() -> None:
    path, _ = _prometheus_config()
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_collector_where_compose_runs_it() -> None:
    _, config = _prometheus_config()
    collector_port = _listen_port(command(services()["collector"]), "--http-listen")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for j in jobs.values() for sc in j["static_configs"] for t in sc["targets"]]
    assert f"collector:{collector_port}" in targets, targets
    job = next(
        j
        for j in jobs.values()
        if any("collector:" in t for sc in j["static_configs"] for t in sc["targets"])
    )
    assert job.get("metrics_path", "/metrics") == "/metrics"


def _grafana_provisioning() -> tuple[dict[str, Any], dict[str, Any]]:
    grafana = services()["grafana"]
    prov = host_path(grafana, "/etc/grafana/provisioning")
    assert prov is not None and prov.is_dir()
    datasources = [yaml.safe_load(f.read_text()) for f in sorted(prov.glob("datasources/*.y*ml"))]
    providers = [yaml.safe_load(f.read_text()) for f in sorted(prov.glob("dashboards/*.y*ml"))]
    assert len(datasources) == 1 and len(providers) == 1
    return datasources[0], providers[0]


def test_grafana_datasource_points_at_the_compose_prometheus() -> None:
    ds_doc, _ = _grafana_provisioning()
    assert ds_doc["apiVersion"] == 1
    (ds,) = ds_doc["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "flopwatt-prometheus"
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services()
    _, prom = _prometheus_config()
    assert ds["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]


def test_grafana_dashboard_provider_reads_the_mounted_dashboards() -> None:
    _, prov_doc = _grafana_provisioning()
    (provider,) = prov_doc["providers"]
    assert provider["type"] == "file"
    folder = host_path(services()["grafana"], provider["options"]["path"])
    assert folder == (DEPLOY / "grafana" / "dashboards").resolve(), folder
    boards = sorted(folder.glob("*.json"))
    assert {b.name for b in boards} >= {"flopwatt-fleet.json", "flopwatt-gpu.json"}
    for b in boards:
        d = json.loads(b.read_text())
        assert d["uid"] and d["title"] and d["panels"] and d["schemaVersion"] >= 36, b.name
        assert "id" not in d or d["id"] is None, f"{b.name}: provisioned dashboards carry no id"


# --- Dockerfiles ----------------------------------------------------------------------------


def _dockerfile(path: Path) -> tuple[list[str], dict[str, str]]:
    """(instructions with continuation lines joined, ARG defaults)."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    args = {}
    for line in lines:
        m = re.match(r"ARG\s+(\w+)=(\S+)", line)
        if m:
            args[m.group(1)] = m.group(2)
    return lines, args


def _bases(path: Path) -> list[str]:
    lines, args = _dockerfile(path)
    out = []
    for line in lines:
        if line.upper().startswith("FROM "):
            image = line.split()[1]
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return out


def _copy_sources(path: Path) -> list[str]:
    lines, _ = _dockerfile(path)
    out = []
    for line in lines:
        parts = line.split()
        if parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
            out += parts[1:-1]
    return out


def test_collector_image_is_slim_and_agent_image_is_cuda_pytorch() -> None:
    svc = services()
    collector_df = ROOT / svc["collector"]["build"]["dockerfile"]
    agent_df = ROOT / svc["agent-gpu"]["build"]["dockerfile"]
    assert collector_df != agent_df
    assert set(_bases(collector_df)) == {"python:3.11-slim"}
    (agent_base,) = _bases(agent_df)
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", agent_base)

    collector_lines, _ = _dockerfile(collector_df)
    installs = [x for x in collector_lines if "pip install" in x or "pip wheel" in x]
    assert installs and not any(re.search(r"\[agent|torch\b(?!')", x) for x in installs)
    assert any("find_spec('torch') is not None" in x for x in collector_lines)
    agent_lines, _ = _dockerfile(agent_df)
    assert any("pip install --constraint" in x and '".[agent]"' in x for x in agent_lines)
    for df in (collector_df, agent_df):
        users = [x.split()[1] for x in _dockerfile(df)[0] if x.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("root", "0"), df.name

    # The agent's torch-free core is what the sim agents run on the collector image.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = " ".join(pyproject["project"]["dependencies"])
    assert "torch" not in core and "nvidia" not in core
    assert any(
        d.startswith("torch") for d in pyproject["project"]["optional-dependencies"]["agent"]
    )


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                rx += ".*"
                i += 2
                if pattern.startswith("/", i):
                    rx += "/?"
                    i += 1
                continue
            c = pattern[i]
            if c == "*":
                rx += "[^/]*"
            elif c == "?":
                rx += "[^/]"
            elif c == "[":
                end = pattern.index("]", i)
                rx += pattern[i : end + 1]
                i = end
            else:
                rx += re.escape(c)
            i += 1
        rules.append((negate, re.compile(rx + r"\Z")))
    return rules


def in_build_context(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = PurePosixPath(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in _dockerignore():
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return not excluded


def _package_files() -> list[str]:
    out = []
    for p in sorted((ROOT / "flopwatt").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so"):
            out.append(p.relative_to(ROOT).as_posix())
    return out


def test_dockerignore_keeps_what_the_images_copy_and_little_else() -> None:
    for df in (ROOT / "Dockerfile", ROOT / "Dockerfile.agent"):
        for src in _copy_sources(df):
            assert (ROOT / src).exists(), f"{df.name} copies missing {src}"
            assert in_build_context(src), f".dockerignore drops {src}, which {df.name} copies"
    for f in _package_files():
        assert in_build_context(f), f".dockerignore drops {f}"
    for f in ("flopwatt/analysis/data/gpu_specs.csv", "pyproject.toml", "README.md"):
        assert in_build_context(f), f
    for f in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "flopwatt-data/x.db",
        "flopwatt/__pycache__/cli.cpython-311.pyc",
        "flopwatt.egg-info/PKG-INFO",
    ):
        assert not in_build_context(f), f"{f} would be sent to the Docker daemon"


@pytest.mark.slow
def test_the_build_context_alone_builds_a_wheel_with_data_and_no_torch(tmp_path: Path) -> None:
    """What ``pip wheel .`` does in the collector Dockerfile, on a copy of the build context."""
    pytest.importorskip("setuptools", minversion="69")
    pytest.importorskip("wheel")
    context = tmp_path / "context"
    for rel in ["pyproject.toml", "README.md", *_package_files()]:
        if in_build_context(rel):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, context / rel)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = (tmp_path / "wheels").glob("flopwatt-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "flopwatt/analysis/data/gpu_specs.csv" in names
    assert any(n.startswith("flopwatt/v1/") and n.endswith(".pyi") for n in names)
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    for r in requires:
        if re.search(r"\btorch", r):
            assert "extra ==" in r, f"torch outside an extra: {r}"


def test_collector_image_runs_collector_fleet_and_sim_agents_without_torch() -> None:
    """The collector image has no torch: everything compose runs from it must import without."""
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'fvcore', 'pynvml'):\n"
        "    sys.modules[m] = None  # import fails\n"
        "import flopwatt.commands.collector, flopwatt.commands.agent, flopwatt.commands.fleet\n"
        "import flopwatt.collector.server, flopwatt.agent.agent, flopwatt.agent.jobs.sim_jobs\n"
        "from flopwatt.agent.devices import open_backend\n"
        "b = open_backend('sim', sku='T4', gpus=2, faults=['power-cap:50@1'])\n"
        "print(len(b.devices()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"


# --- Kubernetes -----------------------------------------------------------------------------


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    files = sorted(K8S.glob("*.yaml"))
    assert files
    for f in files:
        for d in yaml.safe_load_all(f.read_text()):
            if d is None:
                continue
            assert d.get("apiVersion") and d.get("kind"), f"{f.name}: {d}"
            if d["kind"] != "Kustomization":
                assert d["metadata"].get("name"), f"{f.name}: unnamed {d['kind']}"
            docs.append({**d, "_file": f.name})
    return docs


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in k8s_docs()
        if d["kind"] == kind and name in (None, d.get("metadata", {}).get("name"))
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def _expand(words: list[str], env: Mapping[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in command and args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], w) for w in words]


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    out = {}
    for e in container.get("env", []):
        out[e["name"]] = e.get("value", f"<{e['name'].lower()}>")
    return out


def _volume_for(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    p = PurePosixPath(path)
    for m in container.get("volumeMounts", []):
        if p == PurePosixPath(m["mountPath"]) or PurePosixPath(m["mountPath"]) in p.parents:
            return next(v for v in pod["volumes"] if v["name"] == m["name"])
    raise AssertionError(f"{path} is on no volume of {container['name']}")


def test_k8s_manifests_parse_and_kustomize_lists_existing_files() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"DaemonSet", "Deployment", "Service", "Kustomization"} <= kinds
    kust = k8s("Kustomization")
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    for d in docs:
        if d["kind"] not in ("Namespace", "Kustomization"):
            assert d["metadata"]["namespace"] == "flopwatt", d["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize build)")
def test_k8s_kustomization_builds() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    proc = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(proc.stdout) if d}
    assert ("DaemonSet", "flopwatt-agent") in built and ("Service", "flopwatt-collector") in built


def test_k8s_ha_overlay_runs_two_collector_replicas_on_postgres() -> None:
    """deploy/k8s/ha: the base with the collector as two replicas (DSN from a Secret), no
    volume, a gRPC-health readiness probe, rolling one pod at a time, and a PDB. Checked by
    parsing (no kubectl on the development machines: ``kubectl kustomize deploy/k8s/ha``
    builds it where one exists)."""
    ha = K8S / "ha"
    kust = yaml.safe_load((ha / "kustomization.yaml").read_text())
    assert "../" in kust["resources"]
    files = [r for r in kust["resources"] if r != "../"] + [p["path"] for p in kust["patches"]]
    docs = {f: yaml.safe_load((ha / f).read_text()) for f in files}
    base = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs() if "metadata" in d}
    for f, d in docs.items():
        if f in (p["path"] for p in kust["patches"]):
            assert (d["kind"], d["metadata"]["name"]) in base, f"{f} patches nothing in the base"
    dep = docs["collector-replicas.yaml"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--db" not in c["command"] and c["command"][:2] == ["flopwatt", "collector"]
    (env,) = c["env"]
    assert env["name"] == "FLOPWATT_DB"
    assert env["valueFrom"]["secretKeyRef"] == {"name": "flopwatt-collector-db", "key": "dsn"}
    probe = c["readinessProbe"]
    assert probe["grpc"]["port"] == 50051 and probe["$patch"] == "replace"
    base_collector = k8s("Deployment")
    base_mounts = base_collector["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    data_mount = next(m for m in base_mounts if m["name"] == "data")
    assert c["volumeMounts"] == [{"mountPath": data_mount["mountPath"], "$patch": "delete"}]
    assert docs["no-collector-volume.yaml"]["$patch"] == "delete"
    pdb = docs["collector-pdb.yaml"]
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["minAvailable"] == 1
    labels = base_collector["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels


def test_k8s_agent_daemonset(tmp_path: Path) -> None:
    ds = k8s("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items()
        <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    # GPU nodes only.
    selector = str(pod.get("nodeSelector", {})) + str(pod.get("affinity", {}))
    assert "nvidia.com/gpu" in selector, "schedule on GPU nodes only"
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    (agent,) = [c for c in pod["containers"] if c["name"] == "agent"]
    # Devices: the NVIDIA runtime class or a GPU resource.
    limits = agent.get("resources", {}).get("limits", {})
    assert pod.get("runtimeClassName") == "nvidia" or "nvidia.com/gpu" in limits
    # hostname = NODE_NAME from the downward API.
    (node_name,) = [e for e in agent["env"] if e["name"] == "NODE_NAME"]
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    argv = [*agent.get("command", []), *agent.get("args", [])]
    env = {**_container_env(agent), "NODE_NAME": "gpu-node-7"}
    expanded = _expand(argv, env)
    existing = tmp_path / "exists"
    existing.write_text("x" * 32)
    check_invocation(expanded, existing)
    assert expanded[expanded.index("--hostname") + 1] == "gpu-node-7"
    assert expanded[expanded.index("--device-backend") + 1] == "nvml"
    # The token comes from a Secret, per node.
    token = expanded[expanded.index("--token-file") + 1]
    assert "gpu-node-7" in token
    assert "secret" in _volume_for(pod, agent, token)
    spool = expanded[expanded.index("--spool") + 1]
    assert "hostPath" in _volume_for(pod, agent, spool) or "emptyDir" in _volume_for(
        pod, agent, spool
    )
    # Attribution: the kubelet's pod-resources socket where --kubelet-socket auto looks, and
    # the host's PIDs (NVML reports them) for process names.
    assert "--kubelet-socket" not in expanded or (
        expanded[expanded.index("--kubelet-socket") + 1] == "auto"
    )
    socket_dir = "/var/lib/kubelet/pod-resources"
    volume = _volume_for(pod, agent, f"{socket_dir}/kubelet.sock")
    assert volume["hostPath"] == {"path": socket_dir, "type": "Directory"}
    assert pod.get("hostPID") is True
    # It reaches the collector Service on its gRPC port.
    svc = k8s("Service", "flopwatt-collector")
    target = expanded[expanded.index("--collector") + 1]
    host, port = target.rsplit(":", 1)
    assert host.split(".")[0] == svc["metadata"]["name"]
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}


def test_k8s_collector_deployment_and_service(tmp_path: Path) -> None:
    dep = k8s("Deployment", "flopwatt-collector")
    svc = k8s("Service", "flopwatt-collector")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    argv = [*c.get("command", []), *c.get("args", [])]
    existing = tmp_path / "exists"
    existing.write_text("x" * 32)
    check_invocation(argv, existing)
    assert "--allow-unauthenticated-remote" not in argv
    for opt in ("--agent-token-file", "--admin-token-file"):
        assert "secret" in _volume_for(pod, c, argv[argv.index(opt) + 1]), opt
    assert "persistentVolumeClaim" in _volume_for(pod, c, argv[argv.index("--db") + 1])

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == _listen_port(argv, "--grpc-listen") == 50051
    assert ports["http-metrics"] == _listen_port(argv, "--http-listen") == 9464
    service_ports = {p["port"]: p for p in svc["spec"]["ports"]}
    assert set(service_ports) >= {50051, 9464}
    for p in service_ports.values():
        assert p["targetPort"] in ports or p["targetPort"] in ports.values(), p
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
        assert c[probe]["httpGet"]["port"] in ports

    # Prometheus finds it: scrape annotations on the Service, or a ServiceMonitor.
    notes = svc["metadata"].get("annotations", {})
    monitors = [d for d in k8s_docs() if d["kind"] == "ServiceMonitor"]
    assert notes.get("prometheus.io/scrape") == "true" or monitors
    if notes:
        assert int(notes["prometheus.io/port"]) == 9464
        assert notes.get("prometheus.io/path", "/metrics") == "/metrics"
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    for m in monitors:
        assert m["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert {e["port"] for e in m["spec"]["endpoints"]} <= port_names
