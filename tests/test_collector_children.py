"""The collector's child processes as an operator meets them: the HTTP exporter serves every
scrape while agents stream (no fork of the gRPC process, gzip when asked), a killed exporter or
store writer is replaced within seconds without losing anything, Ctrl-C on the terminal stops
the whole process group cleanly, and a writer that cannot be restarted makes the collector give
up (so that its supervisor restarts it) instead of serving while committing nothing."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flopwatt.agent.agent import Agent
from flopwatt.collector import writer as writer_module
from flopwatt.http_server import accepts_gzip
from tests.collector_helpers import collector, find, samples
from tests.test_agent_e2e import Produced, assert_exactly_once, make_agent, run_agents, wait_for
from tests.test_collector_process import start_collector

pytestmark = pytest.mark.slow


def get(url: str, *, gzip_ok: bool = False) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return int(r.status), dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers), exc.read()


def children(pid: int) -> dict[str, int]:
    """The collector's store writer and exporter processes (by their process title order:
    the writer is spawned first)."""
    kids = [
        p
        for p in psutil.Process(pid).children()
        if "spawn_main" in " ".join(p.cmdline()) and p.is_running()
    ]
    kids.sort(key=lambda p: p.create_time())
    return {"store_writer": kids[0].pid, "exporter": kids[1].pid}


def acked_beyond(agents: list[Agent], n: int) -> bool:
    return all(a.uplink.stats.acked_messages > n for a in agents)


def test_accept_encoding_parsing() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("identity")
    assert not accepts_gzip(None)


async def test_every_scrape_under_load_comes_from_the_exporter_process(tmp_path: Path) -> None:
    """200 scrapes while simulated agents stream: each answered 200 by the exporter process
    (its scrape counter says so; it was never restarted), gzip-compressed when asked, and the
    compressed body parses to the same series as the plain one."""
    db = tmp_path / "c.db"
    async with collector(tmp_path, db_path=db, writer_process=True, exporter_process=True) as c:
        assert c.exporter is not None
        exporter_pid = c.exporter.pid
        agents = [make_agent(tmp_path, f"node-{i}", c.grpc_address, seed=i) for i in range(4)]
        stop, tasks = await run_agents(agents)
        try:
            await wait_for(
                lambda: all(a.uplink.stats.acked_messages > 2 for a in agents), 30, "acks"
            )
            codes = []
            for i in range(200):
                status, headers, body = await asyncio.to_thread(
                    get, f"{c.http_url}/metrics", gzip_ok=i % 2 == 0
                )
                codes.append(status)
                if i % 2 == 0:
                    assert headers.get("Content-Encoding") == "gzip"
                    body = gzip.decompress(body)
                list(text_string_to_metric_families(body.decode()))  # well-formed every time
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert codes == [200] * 200
        _, _, body = await asyncio.to_thread(get, f"{c.http_url}/metrics")
        m = samples(body.decode())
        assert find(m, "flopwatt_collector_metrics_scrapes_total", process="exporter") == [201.0]
        assert find(m, "flopwatt_collector_metrics_scrapes_total", process="main") == []
        assert find(m, "flopwatt_collector_child_restarts_total", process="exporter") == [0.0]
        assert find(m, "flopwatt_collector_store_up") == [1.0]
        assert len(find(m, "flopwatt_gpu_power_instant_watts")) == 4 * 2
        assert c.exporter.pid == exporter_pid


async def test_killed_exporter_and_writer_are_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    """SIGKILL of the exporter: /metrics answers again within seconds with the same series
    (the new exporter is sent the whole state). SIGKILL of the store writer while agents
    stream: NOT_SERVING (/healthz 503) until a new writer commits, then every message every
    agent produced is stored exactly once and the restarts are counted."""
    db = tmp_path / "c.db"
    async with collector(tmp_path, db_path=db, writer_process=True, exporter_process=True) as c:
        assert c.exporter is not None
        agents = [make_agent(tmp_path, f"node-{i}", c.grpc_address, seed=i) for i in range(3)]
        produced = [Produced(a) for a in agents]
        stop, tasks = await run_agents(agents)
        try:
            await wait_for(
                lambda: all(a.uplink.stats.acked_messages > 3 for a in agents), 30, "acks"
            )
            _, _, before = await asyncio.to_thread(get, f"{c.http_url}/metrics")
            series_before = {k for k in samples(before.decode()) if k[0].startswith("flopwatt_gpu")}

            os.kill(c.exporter.pid or 0, signal.SIGKILL)
            await wait_for(
                lambda: c.exporter is not None and c.exporter.restarts == 1, 30, "exporter"
            )
            status, _, after = await asyncio.to_thread(get, f"{c.http_url}/metrics")
            assert status == 200
            series_after = {k for k in samples(after.decode()) if k[0].startswith("flopwatt_gpu")}
            assert series_before <= series_after

            writer_pid = c.writer.pid  # type: ignore[attr-defined]
            os.kill(writer_pid, signal.SIGKILL)
            await wait_for(lambda: not c.health.serving, 10, "NOT_SERVING after the kill")
            status, _, body = await asyncio.to_thread(get, f"{c.http_url}/healthz")
            assert status == 503 and b"store writer process ended" in body
            await wait_for(lambda: c.health.serving, 30, "SERVING with a new writer")
            acked = [a.uplink.stats.acked_messages for a in agents]
            await wait_for(
                lambda: all(
                    a.uplink.stats.acked_messages > n + 3
                    for a, n in zip(agents, acked, strict=True)
                ),
                60,
                "acks from the new writer",
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert c.writer.restarts == 1  # type: ignore[attr-defined]
        _, _, body = await asyncio.to_thread(get, f"{c.http_url}/metrics")
        m = samples(body.decode())
        assert find(m, "flopwatt_collector_child_restarts_total", process="store_writer") == [1.0]
        assert find(m, "flopwatt_collector_child_restarts_total", process="exporter") == [1.0]
        assert find(m, "flopwatt_collector_store_unavailable_episodes_total") == [1.0]
    for agent, prod in zip(agents, produced, strict=True):
        assert_exactly_once(db, agent, prod)


async def test_a_writer_that_cannot_be_restarted_makes_the_collector_give_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database becomes unreadable and the writer is killed: no new writer can open it,
    so after its attempts the collector says why and sets ``fatal`` (the CLI then exits 1 for
    its supervisor) rather than serving while it commits nothing."""
    monkeypatch.setattr(writer_module, "RESTART_DELAYS_S", (0.0, 0.1))
    db = tmp_path / "c.db"
    async with collector(tmp_path, db_path=db, writer_process=True) as c:
        db.write_bytes(b"this is not a database" * 100)  # the open connections keep going
        for suffix in ("-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.kill(c.writer.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        await asyncio.wait_for(c.fatal.wait(), 60)
        assert "no new store writer process could be started" in c.fatal_reason[0]
        assert not c.health.serving


def test_ctrl_c_on_the_terminal_stops_the_process_group_cleanly(tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the children ignore
    it, the collector stops them in order and exits 0 within 10 s, with no traceback and no
    ERROR line."""
    proc, _ = start_collector(tmp_path)
    kids = children(proc.pid)
    t0 = time.monotonic()
    _sigint_group(proc, kids)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert took < 10
    assert "Traceback" not in err and " ERROR " not in err, err
    assert "collector stopped" in err
    for pid in kids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _sigint_group(proc: subprocess.Popen[str], kids: dict[str, int]) -> None:
    """SIGINT to the collector and each child at once (what the terminal does to its
    foreground process group; the test runner's own group must not get it)."""
    for pid in (proc.pid, *kids.values()):
        os.kill(pid, signal.SIGINT)


def test_store_writer_survives_a_stray_sigterm_and_sigint(tmp_path: Path) -> None:
    """A service manager may signal every process of the service: the children ignore it and
    keep working; only their parent stops them."""
    proc, addr = start_collector(tmp_path)
    try:
        kids = children(proc.pid)
        for pid in kids.values():
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        time.sleep(1.0)
        assert all(psutil.pid_exists(pid) for pid in kids.values())
        status, _, _ = get(f"http://{addr['http']}/healthz")
        assert status == 200
        with sqlite3.connect(tmp_path / "c.db") as conn:
            conn.execute("SELECT 1").fetchone()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
