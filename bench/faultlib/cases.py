"""The fault cases. Each is a function of a :class:`~bench.faultlib.harness.CaseContext` and a
``fast`` flag (small agent counts and short faults, for tests); :func:`run_case` runs one with
its workspace and cleanup and returns the :class:`~bench.faultlib.report.CaseResult`.

Full sizes are chosen so that every case together fits in about 20 minutes on a 2-core machine.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.faultlib.disk import MountError, SmallDisk
from bench.faultlib.harness import STOP_LIMIT_S, CaseContext, SkipCaseError
from bench.faultlib.lock import LockHolder
from bench.faultlib.monitor import health_label, health_transitions, wal_max_bytes
from bench.faultlib.processes import PYTHON, ManagedProcess, RawLoadProcess, scan_log
from bench.faultlib.recovery import MESSAGES_PER_S
from bench.faultlib.report import CaseResult
from bench.faultlib.shim import ShimUnavailableError, build_shim, shim_env
from flopwatt.agent.uplink import UPLINK_WINDOW

T = TypeVar("T")


def pick(fast: bool, full: T, small: T) -> T:
    """``small`` in fast mode, else ``full``."""
    return small if fast else full


def gpus(fast: bool) -> int:
    """Simulated GPUs per farm agent: 8 like a real node, 2 in fast mode."""
    return pick(fast, 8, 2)


def backoff_cap(fast: bool) -> float | None:
    """Agents' reconnect backoff cap (s): the product's default (None), 5 in fast mode."""
    return pick(fast, None, 5.0)


# --- 1. collector SIGKILL ----------------------------------------------------------------------


def case_collector_kill(ctx: CaseContext, fast: bool) -> None:
    """SIGKILL the collector under load, restart it on the same ports and database a few
    seconds later — twice (once in fast mode)."""
    kills = pick(fast, 2, 1)
    collector = ctx.start_collector()
    ctx.start_farm("kill", pick(fast, 20, 4), gpus=gpus(fast), backoff_cap_s=backoff_cap(fast))
    ctx.wait_live()
    window = ctx.steady(pick(fast, 4.0, 2.0))
    fault_start = ctx.now()
    down_s = []
    for k in range(kills):
        orphans = collector.sigkill()
        t_kill = ctx.now()
        ctx.say(f"collector SIGKILLed ({k + 1}/{kills}); children killed afterwards: {orphans}")
        ctx.sleep(3.0)
        collector.start_and_wait()
        down_s.append(round(ctx.now() - t_kill, 1))
        ctx.say("collector restarted on the same ports and database")
        if k + 1 < kills:
            ctx.sleep(12.0)
    fault_end = ctx.now()
    ctx.wait_recovery(fault_start, fault_end, ctx.levels(window))
    ctx.sleep(2.0)
    ctx.result.extra["down_s"] = down_s
    ctx.finish(expected_hand_restarts=kills)


# --- 2. store-writer SIGKILL -------------------------------------------------------------------


def case_writer_kill(ctx: CaseContext, fast: bool) -> None:
    """SIGKILL only the collector's store-writer child: the collector should notice, answer
    /healthz 503 while it has no writer, start a new one and recover by itself."""
    collector = ctx.start_collector()
    ctx.start_farm("wkill", pick(fast, 10, 3), gpus=gpus(fast), backoff_cap_s=backoff_cap(fast))
    ctx.wait_live()
    window = ctx.steady(pick(fast, 4.0, 2.0))
    writer = collector.writer_child()
    ctx.say("collector children: " + "; ".join(collector.describe_children()))
    if writer is None:
        raise RuntimeError(
            "no store-writer child found (no spawned child of the collector that is not the "
            "HTTP exporter)"
        )
    old_pid = writer.pid
    ctx.say(f"store writer: pid {old_pid}: {' '.join(writer.cmdline())[:120]}")
    writer.kill()
    t_kill = ctx.now()
    ctx.say("store writer SIGKILLed")
    # Poll /healthz fast for a while: a NOT_SERVING spell of a fraction of a second would fall
    # between the monitor's samples.
    seen: list[tuple[float, str]] = []
    polled: list[tuple[float, str]] = []
    new_pid = None
    restarted_after = None
    while ctx.now() - t_kill < 15.0:
        label = health_label(collector.healthz(timeout_s=0.5))
        polled.append((ctx.now(), label))
        if not seen or seen[-1][1] != label:
            seen.append((round(ctx.now() - t_kill, 2), label))
        child = collector.writer_child(require_db_open=True)
        if child is not None and child.pid != old_pid and new_pid is None:
            new_pid, restarted_after = child.pid, round(ctx.now() - t_kill, 2)
            ctx.say(f"new store writer pid {new_pid} after {restarted_after} s")
        time.sleep(0.1)
    rec = ctx.wait_recovery(t_kill, t_kill, ctx.levels(window))
    if new_pid is None:
        child = collector.writer_child(require_db_open=True)
        if child is not None and child.pid != old_pid:
            new_pid = child.pid
    r = ctx.result
    r.extra["writer_pid_killed"] = old_pid
    r.extra["writer_pid_new"] = new_pid
    r.extra["writer_restarted_after_s"] = restarted_after
    r.extra["healthz_after_kill"] = seen
    r.extra_checks["writer restarted by the collector"] = new_pid is not None
    r.extra_checks["recovered by itself"] = rec.seconds is not None
    ctx.sleep(2.0)
    ctx.finish(expected_hand_restarts=0)
    if ctx.monitor is not None:
        r.healthz = health_transitions(ctx.monitor.snapshot(), ctx.t0, polled)
    r.extra_checks["/healthz 503 while no writer"] = "503" in {s for _, s in r.healthz}


# --- 3. write lock held ------------------------------------------------------------------------


def case_lock_held(ctx: CaseContext, fast: bool) -> None:
    """Another process holds the database's write lock (``BEGIN IMMEDIATE``) for 12 s (6 s in
    fast mode); the collector must ride it out and catch up."""
    seconds = pick(fast, 12.0, 6.0)
    collector = ctx.start_collector()
    ctx.start_farm("lock", pick(fast, 5, 3), gpus=gpus(fast), backoff_cap_s=backoff_cap(fast))
    ctx.wait_live()
    window = ctx.steady(pick(fast, 4.0, 2.0))
    holder = LockHolder(collector.db, seconds, ctx.work)
    ctx.helpers.append(holder)
    holder.start()
    locked = holder.wait_locked()
    ctx.say(f"write lock held by pid {holder.pid} for {seconds:g} s")
    released = holder.wait_released(seconds + 60)
    ctx.say("write lock released")
    ctx.wait_recovery(locked, released, ctx.levels(window))
    ctx.sleep(2.0)
    ctx.result.extra["lock_s"] = round(released - locked, 1)
    ctx.finish()


# --- 4. slow fsync + registration storm --------------------------------------------------------


def _commit_latency(body: bytes) -> dict[str, float]:
    """Mean and count of the collector's commit-latency histogram (s) from a /metrics body."""
    name = b"flopwatt_collector_commit_latency_seconds"
    total = count = 0.0
    for line in body.splitlines():
        if line.startswith(name + b"_sum"):
            total = float(line.rsplit(b" ", 1)[1])
        elif line.startswith(name + b"_count"):
            count = float(line.rsplit(b" ", 1)[1])
    return {"commits": count, "mean_s": round(total / count, 4) if count else 0.0}


def case_fsync_storm(ctx: CaseContext, fast: bool) -> None:
    """fsync slowed to 100 ms (LD_PRELOAD shim in the collector and its writer) while 200 agents
    register at once: 10 farm agents and 190 raw gRPC clients. Recovery = from the storm's start
    until every agent is registered and acked at its live level. Records the WAL size."""
    delay_ms = 100.0
    try:
        shim = build_shim()
    except ShimUnavailableError as exc:
        raise SkipCaseError(str(exc)) from None
    ctx.start_collector(env_extra=shim_env(shim, delay_ms))
    start_at = time.time() + 6.0
    start_mono = ctx.now() + 6.0
    farm_agents, raw_clients = pick(fast, (10, 190), (3, 20))
    ctx.start_farm(
        "storm", farm_agents, gpus=gpus(fast), backoff_cap_s=backoff_cap(fast), start_at=start_at
    )
    ctx.start_raw(
        "raw",
        raw_clients,
        workers=1,
        duration_s=pick(fast, 45.0, 15.0),
        drain_s=60.0,
        start_at=start_at,
    )
    ctx.say(f"fsync delayed {delay_ms:g} ms; {farm_agents + raw_clients} agents start together")
    ctx.sleep(max(0.0, start_mono - ctx.now()))
    rec = ctx.wait_recovery(start_mono, start_mono, {})
    ctx.sleep(pick(fast, 10.0, 3.0))
    assert ctx.collector is not None and ctx.monitor is not None
    r = ctx.result
    r.extra["fsync_delay_ms"] = delay_ms
    r.extra["commit_latency"] = _commit_latency(ctx.collector.metrics())
    r.extra["all_live_after_s"] = None if rec.seconds is None else round(rec.seconds, 1)
    ctx.finish()
    r.fault_s = None  # the disk is slow for the whole case

    r.extra["wal_max_bytes"] = wal_max_bytes(ctx.monitor.snapshot())


# --- 5./6. network faults through the proxy ----------------------------------------------------


def _proxy_case(ctx: CaseContext, fast: bool, mode: str, seconds: float) -> None:
    ctx.start_collector()
    proxy = ctx.start_proxy()
    ctx.start_farm(
        mode, pick(fast, 10, 3), gpus=gpus(fast), via_proxy=True, backoff_cap_s=backoff_cap(fast)
    )
    ctx.wait_live()
    window = ctx.steady(pick(fast, 4.0, 2.0))
    proxy.set_mode(mode)  # type: ignore[arg-type]
    fault_start = ctx.now()
    ctx.say(f"proxy: {mode} for {seconds:g} s")
    ctx.sleep(seconds)
    proxy.set_mode("pass")
    fault_end = ctx.now()
    ctx.say("proxy: pass")
    ctx.wait_recovery(fault_start, fault_end, ctx.levels(window))
    ctx.sleep(2.0)
    ctx.result.extra["proxy_connections"] = proxy.stats.accepted
    ctx.result.extra["proxy_resets"] = proxy.stats.reset
    ctx.finish()


def case_rst_cut(ctx: CaseContext, fast: bool) -> None:
    """Every agent connection reset (RST) and new ones refused for 30 s (10 s fast)."""
    _proxy_case(ctx, fast, "reset", pick(fast, 30.0, 10.0))


def case_blackhole(ctx: CaseContext, fast: bool) -> None:
    """Every agent connection black-holed (nothing forwarded, nothing answered) for 60 s (20 s
    fast)."""
    _proxy_case(ctx, fast, "blackhole", pick(fast, 60.0, 20.0))


# --- 7. disk full ------------------------------------------------------------------------------


def case_disk_full(ctx: CaseContext, fast: bool) -> None:
    """The database's filesystem (a 64 MiB tmpfs) full for 60 s (20 s fast), then freed; the
    collector must resume by itself."""
    seconds = pick(fast, 60.0, 20.0)
    disk = SmallDisk(ctx.work / "dbdisk", size_mb=64)
    try:
        disk.mount()
    except MountError as exc:
        raise SkipCaseError(str(exc)) from None
    ctx.disk = disk
    ctx.start_collector(db_dir=disk.path)
    ctx.start_farm("disk", pick(fast, 10, 3), gpus=gpus(fast), backoff_cap_s=backoff_cap(fast))
    ctx.wait_live()
    window = ctx.steady(pick(fast, 4.0, 2.0))
    added = disk.fill()
    fault_start = ctx.now()
    ctx.say(f"disk full: filler {added / 2**20:.1f} MiB, {disk.free_bytes()} bytes left")
    deadline = fault_start + seconds
    while ctx.now() < deadline:
        ctx.sleep(min(1.0, deadline - ctx.now()))
        disk.fill()  # keep it full: whatever SQLite freed is taken again
    disk.free()
    fault_end = ctx.now()
    ctx.say(f"space returned: {disk.free_bytes() / 2**20:.1f} MiB free")
    ctx.wait_recovery(fault_start, fault_end, ctx.levels(window))
    ctx.sleep(2.0)
    ctx.result.extra["filler_mib"] = round(disk.filled_bytes / 2**20, 1)
    ctx.finish(expected_hand_restarts=0)


# --- 8. agent spool full -----------------------------------------------------------------------


def case_spool_full(ctx: CaseContext, fast: bool) -> None:
    """Agents with a tiny spool (0.05 MB; 4 KiB fast) and the collector stopped long enough to
    overflow it: the overflow must be counted as tombstones, nothing else missing.

    The outage is sized from the uplink's window: the oldest ``UPLINK_WINDOW`` unacked messages
    of an epoch are never replaced (they may be in flight), so a spool overflows only after that
    many seconds plus what ``spool_max_bytes`` holds."""
    spool_bytes = pick(fast, 50_000, 4096)
    outage = UPLINK_WINDOW / MESSAGES_PER_S + pick(fast, 20.0, 8.0)
    collector = ctx.start_collector()
    ctx.start_farm(
        "spool",
        pick(fast, 10, 4),
        gpus=gpus(fast),
        spool_max_bytes=spool_bytes,
        backoff_cap_s=backoff_cap(fast),
    )
    ctx.wait_live()
    window = ctx.steady(pick(fast, 4.0, 2.0))
    stop = collector.stop(timeout_s=30.0)
    fault_start = ctx.now()
    ctx.say(
        f"collector stopped (rc={stop.returncode}) for {outage:g} s; spools {spool_bytes} B, "
        f"the oldest {UPLINK_WINDOW} unacked never dropped"
    )
    ctx.sleep(outage)
    collector.start_and_wait()
    fault_end = ctx.now()
    ctx.say("collector restarted")
    ctx.wait_recovery(fault_start, fault_end, ctx.levels(window))
    ctx.sleep(2.0)
    ctx.result.extra["spool_max_bytes"] = spool_bytes
    ctx.result.extra["uplink_window_messages"] = UPLINK_WINDOW
    ctx.result.extra["outage_s"] = outage
    ctx.finish(expected_hand_restarts=1)
    lg = ctx.result.ledger
    ctx.result.extra_checks["spools overflowed (tombstones stored)"] = bool(lg and lg.tombstones)


# --- 9. SIGTERM --------------------------------------------------------------------------------


def _clean_stop_checks(ctx: CaseContext, what: str, rc: int | None, secs: float, log: Path) -> None:
    scan = scan_log(log)
    ctx.result.extra[f"{what}_sigterm"] = {
        "returncode": rc,
        "seconds": round(secs, 2),
        "tracebacks": scan.tracebacks,
        "error_lines": scan.error_lines[:3],
    }
    ctx.result.extra_checks[f"{what} SIGTERM: exit 0 within {STOP_LIMIT_S:g} s"] = (
        rc == 0 and secs <= STOP_LIMIT_S
    )
    ctx.result.extra_checks[f"{what} SIGTERM: no Traceback / ERROR in stderr"] = (
        scan.tracebacks == 0 and not scan.error_lines
    )


def case_sigterm(ctx: CaseContext, fast: bool) -> None:
    """SIGTERM the collector under load and restart it; later SIGTERM an agent farm. Both must
    exit 0 within 10 s with no traceback and no ERROR line in their stderr."""
    collector = ctx.start_collector()
    farm = ctx.start_farm(
        "term", pick(fast, 20, 4), gpus=gpus(fast), backoff_cap_s=backoff_cap(fast)
    )
    ctx.start_raw("rterm", pick(fast, 200, 20), duration_s=0.0, drain_s=30.0)
    ctx.wait_live()
    window = ctx.steady(pick(fast, 5.0, 2.0))
    stop = collector.stop(timeout_s=30.0)
    fault_start = ctx.now()
    ctx.say(f"collector SIGTERM: rc={stop.returncode} in {stop.seconds:.2f} s")
    _clean_stop_checks(ctx, "collector", stop.returncode, stop.seconds, collector.stderr_paths[-1])
    ctx.sleep(2.0)
    collector.start_and_wait()
    fault_end = ctx.now()
    ctx.wait_recovery(fault_start, fault_end, ctx.levels(window))
    ctx.sleep(3.0)
    fstop = farm.stop(timeout_s=30.0)
    ctx.farm_stops[farm.name] = fstop
    ctx.say(f"farm SIGTERM: rc={fstop.returncode} in {fstop.seconds:.2f} s")
    _clean_stop_checks(ctx, "farm", fstop.returncode, fstop.seconds, farm.stderr_paths[-1])
    ctx.finish(expected_hand_restarts=1)


# --- 10. overload ------------------------------------------------------------------------------


def _acked_total(procs: list[RawLoadProcess]) -> int:
    return sum(int(c[2]) for p in procs for c in (p.status() or {}).get("clients", {}).values())


def _measure_capacity(ctx: CaseContext, calib: list[RawLoadProcess], ramp_s: float) -> float:
    """Messages per second the collector acks at most under a load of the overload's own shape
    (streams of one message a second, their number rising over ``ramp_s``): the highest ack
    rate over any 3 s of the ramp. Below capacity the acks follow the offered load; above it
    they level off."""
    points: list[tuple[float, int]] = []
    deadline = ctx.now() + ramp_s + 3.0
    while ctx.now() < deadline and all(p.alive() for p in calib):
        points.append((ctx.now(), _acked_total(calib)))
        time.sleep(0.5)
    for proc in calib:
        proc.close()  # measured: its backlog is of no interest (kept out of the ledger)
    best = 0.0
    for i, (t0, a0) in enumerate(points):
        for t1, a1 in points[i + 1 :]:
            if t1 - t0 >= 3.0:
                best = max(best, (a1 - a0) / (t1 - t0))
                break
    if best <= 0:
        raise RuntimeError("the calibration load was never acked: cannot size the overload")
    return best


def case_overload(ctx: CaseContext, fast: bool) -> None:
    """Twice the load the collector keeps up with, for 30 s: its capacity is measured first,
    then 2 × capacity raw agents, each sending one batch of 8 GPUs × 10 Hz a second, plus a
    small farm. Nothing may be lost, and the collector must push back (slower acks) rather
    than fail streams.

    On a machine with two or more CPUs the collector (with its children) runs on CPU 0 and the
    load on the others, so that the load generator is not what saturates; on this 2-core
    machine a whole core lets the collector keep up with more streams than one core of load
    generator can offer cleanly (about 1,500), so a busy-loop process shares CPU 0 with it (a
    noisy neighbour: the collector gets about half a core). Capacity: streams of one message
    a second, rising from 0 to ``FLOPWATT_FAULTS_MAX_STREAMS`` over 20 s; the highest ack rate
    seen. The overload's agents connect over 10 s and keep the agent's uplink window of
    unacked messages; its 30 s start once they are all connected."""
    load_s = pick(fast, 30.0, 10.0)
    ncpu = os.cpu_count() or 1
    collector_cpus = {0} if ncpu >= 2 else None
    load_cpus = set(range(1, ncpu)) if ncpu >= 2 else None
    max_streams = int(os.environ.get("FLOPWATT_FAULTS_MAX_STREAMS", pick(fast, "1500", "200")))
    if collector_cpus:
        hog = ManagedProcess("cpu-hog", [PYTHON, "-c", "while True: pass"], ctx.work)
        hog.cpus = collector_cpus
        ctx.helpers.append(hog)
        hog.start()
    ctx.start_collector(cpus=collector_cpus)
    cal_ramp = pick(fast, 20.0, 8.0)
    calib = ctx.start_raw(
        "calib",
        max_streams,
        count_as_agents=False,
        index_base=90_000,
        ramp_s=cal_ramp,
        duration_s=60.0,
        cpus=load_cpus,
    )
    capacity = _measure_capacity(ctx, calib, cal_ramp)
    streams = max(pick(fast, 50, 10), min(max_streams, int(2 * capacity)))
    ctx.say(
        f"capacity ≈ {capacity:.0f} messages/s (streams of 1 message/s) → overload with "
        f"{streams} raw agents; collector on CPUs {collector_cpus or 'any'}, load on "
        f"{load_cpus or 'any'}"
    )
    ctx.sleep(5.0)  # let the collector finish the calibration's backlog
    ctx.start_farm(
        "ofarm", pick(fast, 5, 2), gpus=gpus(fast), backoff_cap_s=backoff_cap(fast), cpus=load_cpus
    )
    ctx.wait_live()
    window = ctx.steady(3.0)
    t_start = ctx.now()
    ramp_s = pick(fast, 10.0, 2.0)
    raws = ctx.start_raw(
        "over",
        streams,
        workers=pick(fast, 2, 1),
        duration_s=load_s,
        ramp_s=ramp_s,
        drain_s=120.0,
        cpus=load_cpus,
    )
    ctx.sleep(ramp_s + load_s + 2.0)
    t_end = t_start + ramp_s + load_s + 2.0
    assert ctx.monitor is not None
    samples = ctx.monitor.snapshot()
    during = [s for s in samples if t_start + ramp_s + 5 <= s.t <= t_end]
    acked_rate = None
    if len(during) >= 2:
        a0 = sum(a.acked for n, a in during[0].agents.items() if n.startswith("over-"))
        a1 = sum(a.acked for n, a in during[-1].agents.items() if n.startswith("over-"))
        acked_rate = (a1 - a0) / (during[-1].t - during[0].t)
    levels = ctx.levels(window)
    ctx.wait_recovery(t_start, t_end, levels)
    for raw in raws:
        assert raw.proc is not None
        raw.proc.wait(180)
    r = ctx.result
    r.extra["capacity_messages_per_s"] = round(capacity, 1)
    r.extra["overload_streams"] = streams
    r.extra["offered_messages_per_s"] = streams
    r.extra["acked_messages_per_s_during_load"] = None if acked_rate is None else round(acked_rate)
    if acked_rate:
        # What the collector really got through, against what was offered: the overload factor.
        r.extra["overload_factor"] = round(streams / acked_rate, 2)
    r.extra["collector_cpus"] = (
        f"{sorted(collector_cpus)} shared with a busy loop" if collector_cpus else "any"
    )
    ctx.finish()
    r.extra_checks["no errors on the raw agents (backpressure, not errors)"] = (
        r.extra.get("raw_errors", 0) == 0
    )


# --- registry and runner -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A case: its function and one-line description (the docstring's first line)."""

    name: str
    fn: Callable[[CaseContext, bool], None]

    @property
    def description(self) -> str:
        """First sentence of the function's docstring."""
        doc = " ".join((self.fn.__doc__ or "").split())
        return doc.split(". ")[0].rstrip(".")


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("collector-kill", case_collector_kill),
        Case("writer-kill", case_writer_kill),
        Case("lock-held", case_lock_held),
        Case("fsync-storm", case_fsync_storm),
        Case("rst-cut", case_rst_cut),
        Case("blackhole", case_blackhole),
        Case("disk-full", case_disk_full),
        Case("spool-full", case_spool_full),
        Case("sigterm", case_sigterm),
        Case("overload", case_overload),
    )
}

FAST_SUBSET = ("writer-kill", "lock-held", "collector-kill", "spool-full")


def run_case(
    name: str,
    *,
    fast: bool = False,
    root: Path | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> CaseResult:
    """Run one case in its own workspace; everything it started is gone when this returns."""
    case = CASES[name]
    result = CaseResult(name, case.description)
    ctx = CaseContext(result, root=root, keep=keep, say=say)
    t0 = time.monotonic()
    say(f"=== {name}{' (fast)' if fast else ''}: {case.description} — {ctx.work}")
    try:
        case.fn(ctx, fast)
    except SkipCaseError as exc:
        result.skipped = str(exc)
        say(f"  skipped: {exc}")
    except Exception as exc:
        result.extra_checks["case ran to the end"] = False
        result.notes.append(f"harness error: {type(exc).__name__}: {str(exc)[-600:]}")
        result.extra["harness_traceback"] = traceback.format_exc()[-2000:]
        say(f"  harness error: {type(exc).__name__}: {str(exc)[-600:]}")
        ctx.salvage()
    finally:
        ctx.close()
        result.duration_s = time.monotonic() - t0
    if keep:
        result.extra["work_dir"] = str(ctx.work)
    return result
