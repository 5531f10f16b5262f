"""A real Prometheus server for tests (the Debian ``prometheus`` package, found on PATH).

``run_prometheus(tmp_path, ["127.0.0.1:9464"])`` starts one on a free loopback port with its own
TSDB directory and a config that scrapes the given targets, yields its base URL once it is
ready, and always stops it (TERM, then KILL) on exit. The helpers below it are blocking; call
them from async tests through ``asyncio.to_thread`` so the collector's event loop keeps running.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

#: Skip marker for tests needing both binaries; says why rather than skipping silently.
requires_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="needs the 'prometheus' and 'promtool' binaries on PATH "
    "(Debian package 'prometheus'; CI installs it)",
)


class PrometheusError(RuntimeError):
    """Prometheus did not start, or an API call failed; the message carries its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _config(scrape_targets: list[str], interval_s: float, metrics_path: str) -> dict[str, Any]:
    interval = _duration(interval_s)
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,  # must not exceed the interval
            "evaluation_interval": interval,
        },
        "scrape_configs": [
            {
                "job_name": "flopwatt",
                "metrics_path": metrics_path,
                "static_configs": [{"targets": list(scrape_targets)}],
            }
        ],
    }


@contextmanager
def run_prometheus(
    tmp_path: Path,
    scrape_targets: list[str],
    interval_s: float = 1,
    *,
    metrics_path: str = "/metrics",
    ready_timeout_s: float = 20.0,
) -> Iterator[str]:
    """Run a real Prometheus scraping ``scrape_targets`` (``host:port``) every ``interval_s``.

    Yields the base URL (``http://127.0.0.1:PORT``) once ``/-/ready`` answers 200. The server
    is always stopped on exit. Calls ``pytest.skip`` when the binary is not on PATH.

    Raises:
        PrometheusError: it exited or did not become ready; the message includes its log.
    """
    if PROMETHEUS is None:
        pytest.skip("needs the 'prometheus' binary on PATH (Debian package 'prometheus')")
    work = Path(tempfile.mkdtemp(prefix="prometheus-", dir=tmp_path))
    config = work / "prometheus.yml"
    config.write_text(json.dumps(_config(scrape_targets, interval_s, metrics_path), indent=2))
    log_path = work / "prometheus.log"
    if PROMTOOL is not None:
        check = subprocess.run(
            [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise PrometheusError(f"promtool rejects the config:\n{check.stdout}{check.stderr}")

    for _attempt in range(3):  # another process may grab the free port before Prometheus does
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=info",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=work,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + ready_timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if _get(base + "/-/ready", timeout=1)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            if proc.poll() is None and _get(base + "/-/ready", timeout=2)[0] == 200:
                yield base
                return
            if proc.poll() is not None and "address already in use" in log_path.read_text():
                continue
            raise PrometheusError(
                f"prometheus not ready after {ready_timeout_s} s "
                f"(exit code {proc.poll()}):\n{log_path.read_text()[-4000:]}"
            )
        finally:
            _stop(proc)
    raise PrometheusError(f"no free port for prometheus:\n{log_path.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def api(base_url: str, path: str, **params: str) -> Any:
    """GET a Prometheus HTTP API path; returns ``data`` of a successful answer.

    Raises:
        PrometheusError: non-200 or ``status`` other than ``success``.
    """
    url = base_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    status, body = _get(url)
    doc = json.loads(body or b"{}")
    if status != 200 or doc.get("status") != "success":
        raise PrometheusError(f"GET {url}: HTTP {status}: {body[:2000]!r}")
    return doc["data"]


def query(base_url: str, promql: str) -> list[dict[str, Any]]:
    """Instant query; the vector's samples (``metric`` labels and ``value`` [ts, "str"])."""
    data = api(base_url, "/api/v1/query", query=promql)
    assert data["resultType"] == "vector", data
    result: list[dict[str, Any]] = data["result"]
    return result


def wait_until(
    what: str, probe: Callable[[], Any], timeout_s: float = 15.0, interval_s: float = 0.2
) -> Any:
    """Call ``probe`` until it returns something truthy; return it.

    Raises:
        AssertionError: still falsy after ``timeout_s`` (with the last value in the message).
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        time.sleep(interval_s)


def wait_for_targets_up(base_url: str, count: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """Wait until ``count`` active targets report health ``up``; return the active targets."""

    def probe() -> list[dict[str, Any]] | None:
        active: list[dict[str, Any]] = api(base_url, "/api/v1/targets", state="active")[
            "activeTargets"
        ]
        return active if sum(t["health"] == "up" for t in active) >= count else None

    result: list[dict[str, Any]] = wait_until(f"{count} targets up", probe, timeout_s)
    return result


def wait_for_query(base_url: str, promql: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """Run an instant query until it returns at least one sample."""
    result: list[dict[str, Any]] = wait_until(promql, lambda: query(base_url, promql), timeout_s)
    return result
