"""``flopwatt agent`` as an operator meets it: its own metrics parse and say why samples were
lost, a taken ``--metrics-listen`` port is a one-line error (no traceback), and SIGINT/SIGTERM
stop it cleanly within 10 s even with no collector to deliver to."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from flopwatt.agent.agent import Agent, AgentConfig
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.agent.self_metrics import render
from flopwatt.channel import ClientCredentials
from flopwatt.records import Rejection, SampleRejection


def _agent(tmp_path: Path) -> Agent:
    return Agent(
        AgentConfig(
            hostname="node-m",
            collector=ClientCredentials("127.0.0.1:1"),
            spool_path=tmp_path / "spool.db",
        ),
        SimBackend.from_options(sku="A100-SXM4-80GB", gpus=1, seed=0, host="node-m"),
    )


def test_agent_metrics_parse_and_count_losses_and_rejections_by_reason(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.uplink._on_rejection(  # what the collector reported on the stream
        Rejection(1, 2, samples=(SampleRejection("GPU-x", "timestamp_future", 7),))
    )
    families = {f.name: f for f in text_string_to_metric_families(render(agent).decode())}
    dropped = {
        s.labels["reason"]: s.value for s in families["flopwatt_agent_dropped_samples"].samples
    }
    assert dropped == {"spool_full": 0.0, "too_large": 0.0, "agent_stopped": 0.0}
    rejected = families["flopwatt_agent_rejected_samples"].samples
    assert [(s.labels["reason"], s.value) for s in rejected] == [("timestamp_future", 7.0)]
    agent.spool.close()
    agent.backend.close()


def _run_agent(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flopwatt",
            "agent",
            "--collector",
            "127.0.0.1:1",  # nothing listens there: the agent spools and retries
            "--device-backend",
            "sim",
            "--sim-gpus",
            "2",
            "--spool",
            str(tmp_path / "spool.db"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_taken_metrics_port_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run_agent(tmp_path, "--metrics-listen", f"127.0.0.1:{port}")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert f"--metrics-listen 127.0.0.1:{port}" in err and "in use" in err


def test_sigint_and_sigterm_stop_the_agent_cleanly(tmp_path: Path) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = _run_agent(tmp_path / sig.name)
        time.sleep(3.0)  # sampling and retrying a collector that is not there
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 < 10
        assert "Traceback" not in err and " ERROR " not in err, err
