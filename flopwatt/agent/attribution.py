"""Who uses each GPU: the processes NVML lists on it and, in Kubernetes, the container the
kubelet allocated it to. Read every few seconds on its own thread (never on the sampler's tick),
sent as an :class:`~flopwatt.records.Attribution` message when the owners change and at least
every ``refresh_s`` (so the collector's per-process utilisation stays fresh).

"Owners" are, per device: the pod, whether the process list is known, and the set of
(pid, name). A change in memory or utilisation alone does not send a message; the refresh does.

Each source fails on its own: a device whose process list cannot be read says so
(``processes_known`` false), a kubelet that does not answer leaves every pod unknown and is
retried at the next read, and a lost device is skipped. A read never raises.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from flopwatt.agent.devices.base import Backend, Device, DeviceError, ProcessLister
from flopwatt.agent.kubelet import (
    DEFAULT_POD_RESOURCES_SOCKET,
    PodResourcesClient,
    PodResourcesUnavailable,
)
from flopwatt.records import (
    ATTRIBUTION_MAX_PROCESSES,
    ATTRIBUTION_MAX_TEXT,
    FLOPWATT_PROCESS,
    Attribution,
    DeviceAttribution,
    GpuProcess,
    PodRef,
    busiest,
)

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
"""How often the processes and pods are read (s)."""
DEFAULT_REFRESH_S = 60.0
"""Longest time between two attribution messages, changed or not (s)."""


class PodSource(Protocol):
    """Where the pod holding each GPU comes from: the kubelet (:mod:`flopwatt.agent.kubelet`)
    or a fixed map (:class:`StaticPods`, the simulator's)."""

    def gpu_allocations(self) -> dict[str, PodRef]:
        """Device id (GPU or MIG UUID) → the container it is allocated to.

        Raises:
            PodResourcesUnavailable: the source cannot answer now (the message says why).
        """
        ...

    def close(self) -> None:
        """Release the source."""
        ...


class StaticPods:
    """A fixed device → pod map (the simulator's ``--sim-pod``)."""

    def __init__(self, allocations: dict[str, PodRef]) -> None:
        self._allocations = dict(allocations)

    def gpu_allocations(self) -> dict[str, PodRef]:
        """The fixed map (a copy)."""
        return dict(self._allocations)

    def close(self) -> None:
        """Nothing to release."""


def open_pod_source(kubelet_socket: str, backend: Backend) -> PodSource | None:
    """The pod source ``--kubelet-socket`` names: ``none`` → None; a path → the kubelet there;
    ``auto`` → the simulator's ``--sim-pod`` map on a sim backend that has one, else the
    kubelet at :data:`DEFAULT_POD_RESOURCES_SOCKET` when that socket exists, else None.

    Raises:
        ValueError: an explicit path that does not exist.
    """
    if kubelet_socket == "none":
        return None
    if kubelet_socket == "auto":
        sim = getattr(backend, "pod_allocations", None)
        allocations = sim() if callable(sim) else None
        if isinstance(allocations, dict):
            return StaticPods(allocations)
        if DEFAULT_POD_RESOURCES_SOCKET.exists():
            return PodResourcesClient(DEFAULT_POD_RESOURCES_SOCKET)
        return None
    path = Path(kubelet_socket)
    if not path.exists():
        raise ValueError(f"kubelet pod-resources socket {path} does not exist")
    return PodResourcesClient(path)


def clean_text(text: str) -> str:
    """``text`` as the collector accepts it: control characters (a process may name itself
    anything) as ``?``, at most :data:`ATTRIBUTION_MAX_TEXT` characters."""
    return "".join("?" if ord(ch) < 32 else ch for ch in text)[:ATTRIBUTION_MAX_TEXT]


def clean_pod(ref: PodRef | None) -> PodRef | None:
    """``ref`` with clean names; None when it names no namespace or pod (not a pod)."""
    if ref is None or not ref.namespace or not ref.pod:
        return None
    return PodRef(clean_text(ref.namespace), clean_text(ref.pod), clean_text(ref.container))


def read_ppid(proc_root: Path, pid: int) -> int | None:
    """The parent of ``pid`` (``/proc/PID/stat``), None when unreadable."""
    try:
        stat = (proc_root / str(pid) / "stat").read_text(errors="replace")
        # "PID (comm) STATE PPID …": comm may hold spaces and parentheses; the last ")" ends it.
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def read_comm(proc_root: Path, pid: int) -> str:
    """The command name of ``pid`` (``/proc/PID/comm``, at most 15 characters), "" when the
    process is gone or not readable (another PID namespace, no permission)."""
    try:
        return (proc_root / str(pid) / "comm").read_text(errors="replace").removesuffix("\n")
    except OSError:
        return ""


def _owners(d: DeviceAttribution) -> tuple[object, ...]:
    return (d.pod, d.processes_known, frozenset((p.pid, p.name) for p in d.processes))


class Attributor:
    """Reads attribution for ``devices`` and hands changed (or due) snapshots to ``emit``.

    Args:
        devices: the node's devices; those that are not :class:`ProcessLister` report
            ``processes_known`` false.
        emit: called with each :class:`Attribution` to send (on the attributor's thread).
        pods: the pod source (None: not in Kubernetes, every pod absent).
        interval_s: how often to read.
        refresh_s: longest gap between two messages.
        proc_root: where ``/proc`` is (injectable for tests).
        own_pid: the agent's process id. Its benchmark jobs run in a child of it (or in it),
            so while a job runs on a device (:meth:`job_started` … :meth:`job_finished`) those
            processes are named ``flopwatt`` (the agent itself stands in while no child is
            listed yet); otherwise they are left out.
        wall_ns / mono_ns: clocks (injectable).
    """

    def __init__(
        self,
        devices: Sequence[Device],
        emit: Callable[[Attribution], object],
        *,
        pods: PodSource | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        refresh_s: float = DEFAULT_REFRESH_S,
        proc_root: Path = Path("/proc"),
        own_pid: int | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if interval_s <= 0 or refresh_s < interval_s:
            raise ValueError(
                f"attribution interval must be > 0 and ≤ the refresh ({interval_s}, {refresh_s})"
            )
        self._devices = list(devices)
        self._emit = emit
        self._pods = pods
        self.interval_s = interval_s
        self._refresh_ns = int(refresh_s * 1e9)
        self._proc_root = proc_root
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._wall_ns = wall_ns
        self._mono_ns = mono_ns
        self._lost: set[str] = set()
        self._last_owners: dict[str, tuple[object, ...]] | None = None
        self._last_sent_ns: int | None = None
        self._pods_failing = False
        self._jobs: set[str] = set()
        self._jobs_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent_total = 0
        """Attribution messages emitted."""

    # --- reading -------------------------------------------------------------------------

    def _pod_map(self) -> dict[str, PodRef]:
        if self._pods is None:
            return {}
        try:
            allocations = self._pods.gpu_allocations()
        except PodResourcesUnavailable as exc:
            if not self._pods_failing:
                log.warning("pods unknown until the kubelet answers again: %s", exc)
            self._pods_failing = True
            return {}
        if self._pods_failing:
            log.info("the kubelet answers again; pods known")
        self._pods_failing = False
        return allocations

    def job_started(self, uuids: Sequence[str]) -> None:
        """flopwatt's own job now runs on ``uuids``: read at once (the job's span starts
        now, not at the next read)."""
        with self._jobs_lock:
            self._jobs.update(uuids)
        self._wake.set()

    def job_finished(self, uuids: Sequence[str]) -> None:
        """flopwatt's own job on ``uuids`` ended: read at once."""
        with self._jobs_lock:
            self._jobs.difference_update(uuids)
        self._wake.set()

    def _is_ours(self, pid: int) -> bool:
        """The agent itself or one of its children (a job's measuring process)."""
        return pid == self._own_pid or read_ppid(self._proc_root, pid) == self._own_pid

    def _processes(self, device: Device) -> tuple[tuple[GpuProcess, ...], bool]:
        with self._jobs_lock:
            job = device.info.uuid in self._jobs
        listed: tuple[GpuProcess, ...] | None = None
        if isinstance(device, ProcessLister):
            listed = device.compute_processes()
        ours = [p for p in listed or () if self._is_ours(p.pid)]
        others = tuple(p for p in listed or () if not self._is_ours(p.pid))
        if job:
            # The job runs in a child of this process (or in it): it holds the GPU now, listed
            # by NVML or not (a backend without processes, a child still starting).
            jobs = tuple(GpuProcess(p.pid, FLOPWATT_PROCESS, *_figures(p)) for p in ours)
            listed = (*others, *(jobs or (GpuProcess(self._own_pid, FLOPWATT_PROCESS),)))
        elif listed is not None:
            listed = others  # a job's child on its way out is no workload
        if listed is None:
            return (), False
        total = device.info.memory_total_bytes
        named: list[GpuProcess] = []
        seen: set[int] = set()
        for p in listed:
            if p.pid <= 0 or p.pid in seen:
                continue
            seen.add(p.pid)
            memory = p.used_memory_bytes
            if memory is not None and (memory < 0 or (total and memory > total)):
                memory = None  # not a reading this GPU can give: absent rather than wrong
            ratio = p.sm_utilization_ratio
            if ratio is not None and not (math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
                ratio = None
            name = clean_text(p.name or read_comm(self._proc_root, p.pid))
            named.append(GpuProcess(p.pid, name, memory, ratio))
        # Past the limit, keep the busiest: the ones that explain the GPU's activity.
        kept = busiest(named, ATTRIBUTION_MAX_PROCESSES)
        return tuple(sorted(kept, key=lambda p: p.pid)), True

    def read(self) -> Attribution:
        """Read every live device now (never raises: what cannot be read is unknown)."""
        pods = self._pod_map()
        out = []
        for device in self._devices:
            uuid = device.info.uuid
            if uuid in self._lost:
                continue
            try:
                processes, known = self._processes(device)
            except DeviceError as exc:
                # A lost device: the sampler reports it; attribution stops reading it.
                log.info("attribution stops reading %s: %s", uuid, exc)
                self._lost.add(uuid)
                continue
            out.append(DeviceAttribution(uuid, processes, known, clean_pod(pods.get(uuid))))
        return Attribution(self._wall_ns(), tuple(out))

    def tick(self) -> Attribution | None:
        """Read, and emit when the owners changed or the refresh is due; returns what was
        emitted (None: nothing)."""
        snapshot = self.read()
        owners = {d.device_uuid: _owners(d) for d in snapshot.devices}
        now = self._mono_ns()
        due = self._last_sent_ns is None or now - self._last_sent_ns >= self._refresh_ns
        if not due and owners == self._last_owners:
            return None
        self._emit(snapshot)
        self._last_owners = owners
        self._last_sent_ns = now
        self.sent_total += 1
        return snapshot

    # --- thread --------------------------------------------------------------------------

    def start(self) -> None:
        """Read on a daemon thread every ``interval_s`` until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="attribution", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (waits for a read in progress) and close the pod source."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pods is not None:
            self._pods.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the read: a wake during it reads again at once
            try:
                self.tick()
            except Exception:  # never let attribution take the agent down
                log.exception("attribution read failed; next try in %.0f s", self.interval_s)
            self._wake.wait(self.interval_s)


def _figures(p: GpuProcess) -> tuple[int | None, float | None]:
    return p.used_memory_bytes, p.sm_utilization_ratio
