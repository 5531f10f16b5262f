"""One case's workspace and the steps every case shares: start the collector, farms, raw load
and proxy; wait for the agents to be live; measure a steady window; wait for recovery after a
fault; stop everything in order (agents, then the collector); check the ledger — and clean up
every process, proxy, mount and directory whatever happens (:meth:`CaseContext.close`).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.faultlib.disk import SmallDisk
from bench.faultlib.ledger import Expected, check, expected_from_raw, expected_from_spool
from bench.faultlib.monitor import Monitor, health_transitions
from bench.faultlib.processes import (
    CollectorProcess,
    FarmProcess,
    ManagedProcess,
    RawLoadProcess,
    StopResult,
    scan_log,
)
from bench.faultlib.proxy import Proxy
from bench.faultlib.recovery import Recovery, compute_recovery, live_levels
from bench.faultlib.report import CaseResult

STOP_LIMIT_S = 10.0
"""A stop the user asks for must end the process within this (s)."""


class SkipCaseError(Exception):
    """The case cannot run here (the message says why)."""


def stop_summary(stop: StopResult) -> dict[str, object]:
    """A stop as JSON-able figures."""
    return {
        "returncode": stop.returncode,
        "seconds": round(stop.seconds, 2),
        "killed_after_timeout": stop.killed_after_timeout,
    }


class CaseContext:
    """Workspace of one case (see module docstring).

    Args:
        result: filled in as the case runs.
        root: parent of the case's temporary directory (None: the system's).
        keep: keep the directory (logs, spools, database) for inspection.
        say: progress output (one line per step).
    """

    def __init__(
        self,
        result: CaseResult,
        *,
        root: Path | None = None,
        keep: bool = False,
        say: Callable[[str], None] = print,
    ) -> None:
        self.result = result
        self.keep = keep
        self._say = say
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f"flopwatt-fault-{result.case}-", dir=root))
        self.t0 = time.monotonic()
        self.collector: CollectorProcess | None = None
        self.farms: list[FarmProcess] = []
        self.raws: list[RawLoadProcess] = []
        self.helpers: list[ManagedProcess] = []
        self.proxy: Proxy | None = None
        self.disk: SmallDisk | None = None
        self.monitor: Monitor | None = None
        self.farm_stops: dict[str, StopResult] = {}
        self.collector_stop: StopResult | None = None

    # --- output --------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A progress line, stamped with the seconds since the case started."""
        self._say(f"  [{self.result.case} +{time.monotonic() - self.t0:5.1f}s] {text}")

    def now(self) -> float:
        """``time.monotonic()`` (s)."""
        return time.monotonic()

    # --- starting ------------------------------------------------------------------------

    def start_collector(
        self,
        *,
        db_dir: Path | None = None,
        env_extra: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> CollectorProcess:
        """Start the collector (database in ``db_dir``, default the case directory; on
        ``cpus``, default any) and the monitor that samples it."""
        db = (db_dir or self.work) / "collector.db"
        self.collector = CollectorProcess(db, self.work, env_extra=env_extra)
        self.collector.cpus = cpus
        secs = self.collector.start_and_wait()
        self.say(f"collector ready in {secs:.1f} s: {self.collector.ready_line()}")
        self.monitor = Monitor(self.collector, self.farms, self.raws)
        self.monitor.start()
        return self.collector

    def start_proxy(self) -> Proxy:
        """A proxy in front of the collector's gRPC port."""
        assert self.collector is not None
        self.proxy = Proxy("127.0.0.1", self.collector.grpc_port)
        self.proxy.start()
        self.say(f"proxy {self.proxy.address} → {self.collector.grpc_address}")
        return self.proxy

    def start_farm(
        self,
        name: str,
        agents: int,
        *,
        gpus: int,
        via_proxy: bool = False,
        spool_max_bytes: int = 256 * 1024 * 1024,
        backoff_cap_s: float | None = None,
        start_at: float = 0.0,
        cpus: set[int] | None = None,
    ) -> FarmProcess:
        """Start an agent farm talking to the collector (or through the proxy)."""
        assert self.collector is not None
        target = self.proxy.address if via_proxy and self.proxy else self.collector.grpc_address
        farm = FarmProcess(
            name,
            target,
            agents,
            self.work,
            gpus=gpus,
            spool_max_bytes=spool_max_bytes,
            backoff_cap_s=backoff_cap_s,
            seed_base=100 * len(self.farms),
            start_at=start_at,
        )
        farm.cpus = cpus
        farm.start()
        self.farms.append(farm)
        self.result.farm_agents += agents
        self.say(f"farm {name}: {agents} agents × {gpus} GPUs → {target} (pid {farm.pid})")
        return farm

    def start_raw(
        self,
        name: str,
        clients: int,
        *,
        workers: int = 1,
        index_base: int = 0,
        count_as_agents: bool = True,
        duration_s: float = 0.0,
        drain_s: float = 60.0,
        ramp_s: float = 0.0,
        flood: bool = False,
        start_at: float = 0.0,
        cpus: set[int] | None = None,
    ) -> list[RawLoadProcess]:
        """Start ``clients`` raw gRPC agents split over ``workers`` processes (see
        :mod:`bench.faultlib.rawload` for the timing arguments, all in seconds;
        ``count_as_agents=False``: a helper load outside the ledger and the recovery)."""
        assert self.collector is not None
        procs = []
        per = -(-clients // workers)
        for w in range(workers):
            n = min(per, clients - w * per)
            if n <= 0:
                break
            proc = RawLoadProcess(
                f"{name}-{w}",
                self.collector.grpc_address,
                n,
                self.work,
                index_base=index_base + w * per,
                epoch_base=1_000_000 + index_base + w * per,
                duration_s=duration_s,
                drain_s=drain_s,
                ramp_s=ramp_s,
                flood=flood,
                start_at=start_at,
            )
            proc.cpus = cpus
            proc.start()
            procs.append(proc)
        if count_as_agents:
            self.raws.extend(procs)
            self.result.raw_agents += clients
        else:
            self.helpers.extend(procs)
        self.say(f"raw load {name}: {clients} clients in {len(procs)} processes")
        return procs

    # --- waiting -------------------------------------------------------------------------

    def wait_live(self, timeout_s: float = 90.0) -> float:
        """Wait until every agent (farm and raw) reports and has been acked at least once;
        return the seconds it took.

        Raises:
            RuntimeError: not all live in time.
        """
        assert self.monitor is not None
        expected = sum(f.agents for f in self.farms) + sum(r.clients for r in self.raws)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            s = self.monitor.latest()
            live = s is not None and len(s.agents) >= expected
            if live and s is not None and all(a.acked > 0 for a in s.agents.values()):
                secs = time.monotonic() - t0
                self.say(f"{expected} agents live in {secs:.1f} s")
                return secs
            self.check_processes()
            time.sleep(0.25)
        raise RuntimeError(f"agents not live within {timeout_s:g} s")

    def check_processes(self) -> None:
        """Raise if a farm died on its own (a harness or agent bug, not a fault)."""
        for farm in self.farms:
            if farm.proc is not None and not farm.alive():
                tail = farm.stderr_paths[-1].read_text(errors="replace")[-1500:]
                raise RuntimeError(f"farm {farm.name} exited ({farm.returncode()}): {tail}")

    def steady(self, seconds: float) -> tuple[float, float]:
        """Let the system run ``seconds``; return the window (monotonic s)."""
        t0 = time.monotonic()
        self.sleep(seconds)
        return t0, time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep, checking that the farms are still alive."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_processes()
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def levels(self, window: tuple[float, float]) -> dict[str, int]:
        """Live backlog per agent over a steady window."""
        assert self.monitor is not None
        return live_levels(self.monitor.snapshot(), *window)

    def wait_recovery(
        self,
        fault_start: float,
        fault_end: float,
        levels: dict[str, int],
        *,
        limit_s: float | None = None,
    ) -> Recovery:
        """Wait until every agent has recovered, or ``limit_s`` (default: the case's recovery
        limit) plus a little after the fault's end; store and return the figures."""
        assert self.monitor is not None
        limit = self.result.recovery_limit_s if limit_s is None else limit_s
        self.result.fault_s = fault_end - fault_start
        deadline = fault_end + limit + 2.0
        agents = self.result.farm_agents + self.result.raw_agents

        def compute() -> Recovery:
            assert self.monitor is not None
            return compute_recovery(
                self.monitor.snapshot(), fault_start, fault_end, levels, expected_agents=agents
            )

        rec = compute()
        while rec.seconds is None and time.monotonic() < deadline:
            self.sleep(0.5)
            rec = compute()
        self.result.recovery = rec
        if rec.seconds is None:
            self.say(
                f"NOT recovered {limit:g} s after the fault: {rec.recovered_agents}/{rec.agents} "
                "agents back to live"
            )
        else:
            self.say(f"recovered {rec.seconds:.1f} s after the fault")
        return rec

    # --- finishing -----------------------------------------------------------------------

    def stop_farms(self) -> None:
        """SIGTERM every farm (clean stop) and record how each ended."""
        for farm in self.farms:
            if farm.proc is None or farm.name in self.farm_stops:
                continue
            stop = farm.stop(timeout_s=30.0)
            self.farm_stops[farm.name] = stop
            self.say(
                f"farm {farm.name} stopped: rc={stop.returncode} in {stop.seconds:.1f} s"
                + (" (SIGKILLed after timeout)" if stop.killed_after_timeout else "")
            )

    def stop_raws(self) -> None:
        """Let the raw load finish its drain (SIGTERM if it is still producing)."""
        for raw in self.raws:
            if raw.alive():
                status = raw.status() or {}
                if not status.get("production_over"):
                    raw.send(signal.SIGTERM)
                assert raw.proc is not None
                with contextlib.suppress(Exception):
                    raw.proc.wait(150)
            raw.stop(timeout_s=5.0)

    def finish(self, *, expected_hand_restarts: int = 0) -> None:
        """Stop agents, then the collector; record logs, /healthz, restarts and the ledger."""
        r = self.result
        if self.monitor is not None:
            self.monitor.stop()
            samples = self.monitor.snapshot()
            r.healthz = health_transitions(samples, self.t0)
            if samples:
                r.extra_checks["/healthz 200 at the end"] = samples[-1].health == 200
        self.stop_farms()
        self.stop_raws()
        if self.collector is not None:
            crashed = not self.collector.alive()
            if crashed:
                r.notes.append(
                    f"the collector was not running at the end (rc={self.collector.returncode()})"
                )
                r.extra_checks["collector still running at the end"] = False
            else:
                self.collector_stop = self.collector.stop(timeout_s=30.0)
                r.extra["collector_stop"] = stop_summary(self.collector_stop)
            scan = self.collector.log_scan()
            r.collector_error_lines = scan.error_lines
            r.collector_tracebacks = scan.tracebacks
            r.hand_restarts = self.collector.hand_restarts
        r.expected_hand_restarts = expected_hand_restarts
        r.extra["farm_stops"] = {k: stop_summary(v) for k, v in self.farm_stops.items()}
        farm_errors = sum(len(scan_log(p).error_lines) for f in self.farms for p in f.stderr_paths)
        r.extra["farm_error_lines"] = farm_errors
        if self.raws:
            statuses = [raw.status() or {} for raw in self.raws]
            r.extra["raw_errors"] = sum(
                int(c[3]) for st in statuses for c in st.get("clients", {}).values()
            )
            r.extra["raw_register_errors"] = sum(
                int(st.get("register_errors", 0)) for st in statuses
            )
            kinds: dict[str, int] = {}
            for st in statuses:
                for kind, n in st.get("error_kinds", {}).items():
                    kinds[kind] = kinds.get(kind, 0) + int(n)
            r.extra["raw_error_kinds"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:5])
            per_second: dict[int, int] = {}
            for st in statuses:
                for second, n in st.get("acks_per_second", []):
                    per_second[int(second)] = per_second.get(int(second), 0) + int(n)
            if per_second:
                # Acks the raw agents got per second, first to last: stalls show as zeros.
                first, last = min(per_second), max(per_second)
                r.extra["raw_acks_per_second"] = [
                    per_second.get(s, 0) for s in range(first, last + 1)
                ]
            gaps = sorted(g for st in statuses for g in st.get("max_ack_gaps_s", []))
            if gaps:
                # Per raw agent, the longest wait for ack progress with messages in flight.
                r.extra["raw_max_ack_gap_s_p50_p99_max"] = [
                    gaps[len(gaps) // 2],
                    gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
                    gaps[-1],
                ]
        self.check_ledger()

    def salvage(self) -> None:
        """After a harness error: stop what runs and check the ledger anyway, if a database
        exists (never raises; the figures are best effort)."""
        with contextlib.suppress(Exception):
            if self.monitor is not None:
                self.monitor.stop()
                self.result.healthz = health_transitions(self.monitor.snapshot(), self.t0)
            self.stop_farms()
            for raw in self.raws:
                raw.stop(timeout_s=5.0)
            if self.collector is not None:
                if self.collector.alive():
                    self.collector_stop = self.collector.stop(timeout_s=30.0)
                scan = self.collector.log_scan()
                self.result.collector_error_lines = scan.error_lines
                self.result.collector_tracebacks = scan.tracebacks
                self.result.hand_restarts = self.collector.hand_restarts
                if self.collector.db.exists():
                    self.check_ledger()

    def expected(self) -> list[Expected]:
        """Every agent's own ledger (farms must have exited)."""
        out = []
        for farm in self.farms:
            for path in farm.spool_paths():
                out.append(expected_from_spool(path, path.stem.removeprefix("spool-")))
        for raw in self.raws:
            status = raw.status()
            if status is not None:
                out.extend(expected_from_raw(status))
        return out

    def check_ledger(self) -> None:
        """Run the ledger checks into the result."""
        assert self.collector is not None
        t0 = time.monotonic()
        ledger = check(self.collector.db, self.expected())
        self.result.ledger = ledger
        self.say(f"ledger checked in {time.monotonic() - t0:.1f} s")
        if ledger.missing:
            self.result.notes.append(
                f"{ledger.missing} messages are neither stored nor in a spool: the agents "
                "deleted them, which they do only on an ack, so they were acked without a commit"
            )

    def close(self) -> None:
        """Stop and remove everything this case started (idempotent, never raises)."""
        if self.monitor is not None:
            self.monitor.stop()
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        procs: list[ManagedProcess] = [*self.farms, *self.raws, *self.helpers]
        if self.collector is not None:
            procs.append(self.collector)
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.close()
        if self.disk is not None:
            with contextlib.suppress(Exception):
                self.disk.free()
            with contextlib.suppress(Exception):
                self.disk.unmount()
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)
