"""Processes the fault suite starts — the real collector (through its CLI), agent farms, raw
gRPC load, helpers — and the guarantee that none outlives the suite.

Every process is started in its own session (so its whole group, the collector's store writer
included, can be killed), its stdout and stderr go to files in the case directory, and it is
registered until it is reaped: :func:`cleanup_all` (also run at interpreter exit) SIGKILLs the
group of anything still registered.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

_LIVE: set[ManagedProcess] = set()


def cleanup_all() -> None:
    """Kill (SIGKILL, whole process group) every process started here and not yet reaped."""
    for proc in list(_LIVE):
        proc.close()


atexit.register(cleanup_all)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository on ``PYTHONPATH`` (for ``-m bench.faultlib.…``)."""
    env = dict(os.environ)
    # FLOPWATT_FAULTS_PYTHONPATH: run the product from another copy of the package (a snapshot
    # of the tree, while it is being edited).
    env["PYTHONPATH"] = os.pathsep.join(
        p
        for p in (
            env.get("FLOPWATT_FAULTS_PYTHONPATH", ""),
            str(REPO_ROOT),
            env.get("PYTHONPATH", ""),
        )
        if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def flopwatt_command() -> list[str]:
    """How to run the ``flopwatt`` CLI: the venv's console script, else ``python -m``."""
    script = Path(PYTHON).with_name("flopwatt")
    return [str(script)] if script.exists() else [PYTHON, "-m", "flopwatt"]


@dataclass(frozen=True)
class StopResult:
    """How a stop went: exit status (negative: killed by that signal), seconds from the signal
    to the exit, and whether it had to be SIGKILLed after the timeout."""

    returncode: int | None
    seconds: float
    killed_after_timeout: bool


@dataclass(frozen=True)
class LogScan:
    """What a log file holds that a clean run must not have."""

    tracebacks: int
    error_lines: list[str]


def scan_log(path: Path) -> LogScan:
    """Count ``Traceback`` lines and lines with `` ERROR `` (the logging format's level)."""
    if not path.exists():
        return LogScan(0, [])
    text = path.read_text(errors="replace").splitlines()
    return LogScan(
        sum("Traceback" in line for line in text), [line for line in text if " ERROR " in line]
    )


class ManagedProcess:
    """One command, restartable; each run logs to ``{log_dir}/{name}-{run}.out/.err``.

    Args:
        name: short name for log files and messages.
        argv: the command.
        log_dir: where the logs go.
        env_extra: environment additions.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_dir = log_dir
        self.env_extra = dict(env_extra or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.stderr_paths: list[Path] = []
        self.stdout_paths: list[Path] = []
        self._files: list[IO[bytes]] = []
        self._pgid: int | None = None
        self.cpus: set[int] | None = None
        """CPUs the process (and the children it starts later) may run on; None: any."""

    def start(self) -> None:
        """Start a run (the previous one must have ended)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running")
        self._close_files()
        self.runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = self.log_dir / f"{self.name}-{self.runs}.out"
        err = self.log_dir / f"{self.name}-{self.runs}.err"
        self.stdout_paths.append(out)
        self.stderr_paths.append(err)
        self._files = [open(out, "wb"), open(err, "wb")]  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._files[0],
            stderr=self._files[1],
            env=subprocess_env(self.env_extra),
            cwd=self.log_dir,
            start_new_session=True,
        )
        self._pgid = self.proc.pid
        _LIVE.add(self)
        if self.cpus:
            # Right away, before the interpreter has started any child (they inherit it).
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, self.cpus)

    @property
    def pid(self) -> int:
        """The current run's pid."""
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the current run is still running."""
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        """The current run's exit status (None while running)."""
        return None if self.proc is None else self.proc.poll()

    def send(self, sig: int) -> None:
        """Send ``sig`` to the main process only."""
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> StopResult:
        """Signal the process and wait up to ``timeout_s`` (then SIGKILL its group)."""
        if self.proc is None:
            return StopResult(None, 0.0, False)
        t0 = time.monotonic()
        self.send(sig)
        killed = False
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            killed = True
            self.kill_group()
            self.proc.wait(10)
        seconds = time.monotonic() - t0
        self._reap_group()
        return StopResult(self.proc.returncode, seconds, killed)

    def kill(self) -> None:
        """SIGKILL the main process only (its children live on until they notice) and reap."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)

    def kill_group(self) -> None:
        """SIGKILL the process group of the current run (children included)."""
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._pgid, signal.SIGKILL)

    def _reap_group(self, grace_s: float = 3.0) -> None:
        """Wait up to ``grace_s`` for the group's other members to exit, then kill them."""
        if self._pgid is None:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_members(self._pgid):
            time.sleep(0.05)
        if _group_members(self._pgid):
            self.kill_group()

    def close(self) -> None:
        """Make sure nothing of this process is left (SIGKILL the group), close the logs."""
        self.kill_group()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._close_files()
        _LIVE.discard(self)

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def _listens(proc: psutil.Process) -> bool:
    """Whether ``proc`` has a listening TCP socket."""
    try:
        conns = proc.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN for c in conns)


def _group_members(pgid: int) -> list[int]:
    members = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p.pid)
    return members


class CollectorProcess(ManagedProcess):
    """``flopwatt collector`` on fixed loopback ports (so restarts keep its address).

    Args:
        db: the SQLite file.
        log_dir: logs and the ready file.
        grpc_port, http_port: fixed ports (0: pick free ones now).
        env_extra: environment additions (LD_PRELOAD for the fsync shim).
    """

    def __init__(
        self,
        db: Path,
        log_dir: Path,
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        self.db = db
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.ready_file = log_dir / "collector-ready.json"
        argv = [
            *flopwatt_command(),
            "collector",
            "--grpc-listen",
            f"127.0.0.1:{self.grpc_port}",
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--db",
            str(db),
            "--ready-file",
            str(self.ready_file),
        ]
        super().__init__("collector", argv, log_dir, env_extra)
        self.hand_restarts = 0
        """Restarts by the harness after the first start (the SIGKILL case's restarts)."""

    @property
    def grpc_address(self) -> str:
        """``127.0.0.1:PORT`` of the gRPC side."""
        return f"127.0.0.1:{self.grpc_port}"

    def start_and_wait(self, timeout_s: float = 60.0) -> float:
        """Start and wait for the ready file; return the seconds it took.

        Raises:
            RuntimeError: it exited, or was not ready in time (the log tail is in the message).
        """
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()
        if self.runs:
            self.hand_restarts += 1
        t0 = time.monotonic()
        self.start()
        while time.monotonic() - t0 < timeout_s:
            if self.ready_file.exists():
                with contextlib.suppress(json.JSONDecodeError):
                    json.loads(self.ready_file.read_text())
                    return time.monotonic() - t0
            if not self.alive():
                break
            time.sleep(0.05)
        tail = self.stderr_paths[-1].read_text(errors="replace")[-800:]
        self.close()
        raise RuntimeError(f"collector did not become ready (rc={self.returncode()}): {tail}")

    def ready_line(self) -> str:
        """The ``ready grpc=… http=…`` line the current run printed (empty if none)."""
        if not self.stdout_paths:
            return ""
        lines = self.stdout_paths[-1].read_text(errors="replace").splitlines()
        return next((ln for ln in lines if ln.startswith("ready ")), "")

    def healthz(self, timeout_s: float = 1.0) -> int | None:
        """``/healthz`` status code; None when nothing answers."""
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, urllib.error.URLError):
            return None

    def metrics(self, timeout_s: float = 30.0) -> bytes:
        """``/metrics`` body (empty when it cannot be fetched)."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return bytes(r.read())
        except (OSError, urllib.error.URLError):
            return b""

    def writer_child(self, *, require_db_open: bool = False) -> psutil.Process | None:
        """The store-writer child: among the collector's children started by multiprocessing's
        spawn (the resource tracker is not), one that holds the database file open, else (unless
        ``require_db_open``) one that at least listens on no TCP port — the HTTP exporter child
        listens on the HTTP port and is never taken. Forked /metrics renderers carry the
        parent's command line and are not spawned."""
        fallback = None
        for child in self._spawned_children():
            if _listens(child):
                continue
            try:
                if any(f.path.startswith(str(self.db)) for f in child.open_files()):
                    return child
                if fallback is None and child.status() != psutil.STATUS_ZOMBIE:
                    fallback = child
            except psutil.Error:
                continue
        return None if require_db_open else fallback

    def _spawned_children(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        out = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(child.cmdline())
                if "multiprocessing.spawn" in cmdline or "spawn_main" in cmdline:
                    out.append(child)
        return out

    def describe_children(self) -> list[str]:
        """``pid: what it is`` for every child (to show what was found)."""
        out = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                with contextlib.suppress(psutil.Error):
                    cmdline = " ".join(child.cmdline())
                    files = [f.path for f in child.open_files() if f.path.startswith(str(self.db))]
                    what = "spawned" if "spawn_main" in cmdline else cmdline[:60]
                    if files:
                        what += " (database open)"
                    if _listens(child):
                        what += " (listens on TCP)"
                    out.append(f"{child.pid}: {what}")
        return out

    def sigkill(self, orphans_grace_s: float = 3.0) -> list[int]:
        """SIGKILL the collector's main process, as a crash would; its children are left to
        notice on their own for ``orphans_grace_s`` and then killed. Returns the pids of the
        children that had to be killed."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.kill()
        deadline = time.monotonic() + orphans_grace_s
        while time.monotonic() < deadline and any(c.is_running() for c in children):
            time.sleep(0.05)
        killed = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()
                    killed.append(child.pid)
        return killed

    def log_scan(self) -> LogScan:
        """Tracebacks and ERROR lines over every run's stderr."""
        tracebacks, errors = 0, []
        for path in self.stderr_paths:
            scan = scan_log(path)
            tracebacks += scan.tracebacks
            errors += scan.error_lines
        return LogScan(tracebacks, errors)


class FarmProcess(ManagedProcess):
    """An agent farm (:mod:`bench.faultlib.farm`) in its own process.

    Args:
        name: log name and hostname prefix of its agents (``{name}-000`` …).
        target: the collector or proxy ``HOST:PORT``.
        agents, gpus: how many agents, and simulated GPUs each.
        work_dir: spools, status file and logs.
        spool_max_bytes: each agent's spool bound (bytes).
        backoff_base_s, backoff_cap_s: the agents' reconnect backoff (s; None: the product's
            defaults).
        start_at: wall-clock start (Unix s), for a registration storm; 0 = now.
    """

    def __init__(
        self,
        name: str,
        target: str,
        agents: int,
        work_dir: Path,
        *,
        gpus: int = 8,
        spool_max_bytes: int = 256 * 1024 * 1024,
        backoff_base_s: float | None = None,
        backoff_cap_s: float | None = None,
        seed_base: int = 0,
        start_at: float = 0.0,
    ) -> None:
        self.agents = agents
        self.gpus = gpus
        self.spool_dir = work_dir / f"{name}-spools"
        self.status_path = work_dir / f"{name}-status.json"
        argv = [
            PYTHON,
            "-m",
            "bench.faultlib.farm",
            f"--target={target}",
            f"--agents={agents}",
            f"--gpus={gpus}",
            f"--prefix={name}",
            f"--seed-base={seed_base}",
            f"--dir={self.spool_dir}",
            f"--status={self.status_path}",
            f"--spool-max-bytes={spool_max_bytes}",
            f"--start-at={start_at}",
        ]
        if backoff_base_s is not None:
            argv.append(f"--backoff-base={backoff_base_s}")
        if backoff_cap_s is not None:
            argv.append(f"--backoff-cap={backoff_cap_s}")
        super().__init__(name, argv, work_dir, None)

    def status(self) -> dict[str, Any] | None:
        """The latest status file (None before the first)."""
        return read_json(self.status_path)

    def spool_paths(self) -> list[Path]:
        """Every agent's spool file."""
        return sorted(self.spool_dir.glob("spool-*.db"))


class RawLoadProcess(ManagedProcess):
    """Raw gRPC agents (:mod:`bench.faultlib.rawload`) in their own process."""

    def __init__(
        self,
        name: str,
        target: str,
        clients: int,
        work_dir: Path,
        *,
        index_base: int = 0,
        epoch_base: int = 1_000_000,
        gpus: int = 8,
        duration_s: float = 0.0,
        drain_s: float = 60.0,
        flood: bool = False,
        start_at: float = 0.0,
        ramp_s: float = 0.0,
    ) -> None:
        self.clients = clients
        self.status_path = work_dir / f"{name}-status.json"
        argv = [
            PYTHON,
            "-m",
            "bench.faultlib.rawload",
            f"--target={target}",
            f"--clients={clients}",
            f"--prefix={name.split('-')[0]}",
            f"--index-base={index_base}",
            f"--epoch-base={epoch_base}",
            f"--gpus={gpus}",
            f"--duration={duration_s}",
            f"--drain={drain_s}",
            f"--start-at={start_at}",
            f"--ramp={ramp_s}",
            f"--status={self.status_path}",
        ]
        if flood:
            argv.append("--flood")
        super().__init__(name, argv, work_dir, None)

    def status(self) -> dict[str, Any] | None:
        """The latest status file (None before the first)."""
        return read_json(self.status_path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file written atomically, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
