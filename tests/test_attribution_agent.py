"""The agent's attribution reader (``flopwatt.agent.attribution``) with typed fake devices and
pod sources: what it sends and when (owners changed, or the refresh due), names from /proc,
what it cleans before the collector could refuse it, and how each source fails alone."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flopwatt.agent.attribution import (
    Attributor,
    StaticPods,
    clean_text,
    open_pod_source,
)
from flopwatt.agent.devices.base import DeviceLost, ProcessLister, Snapshot
from flopwatt.agent.devices.sim import SimBackend
from flopwatt.agent.kubelet import PodResourcesClient, PodResourcesUnavailable
from flopwatt.records import (
    ATTRIBUTION_MAX_PROCESSES,
    Attribution,
    DeviceInfo,
    DeviceKind,
    GpuProcess,
    PodRef,
)

S = 1_000_000_000


class FakeGpu:
    """A device with processes (a :class:`ProcessLister`)."""

    def __init__(self, uuid: str, processes: tuple[GpuProcess, ...] | None = ()) -> None:
        self._info = DeviceInfo(uuid, 0, "GPU", DeviceKind.GPU, memory_total_bytes=1000)
        self.processes = processes
        self.lost = False

    @property
    def info(self) -> DeviceInfo:
        return self._info

    def snapshot(self, now_unix_ns: int) -> Snapshot:
        return Snapshot(now_unix_ns)

    def compute_processes(self) -> tuple[GpuProcess, ...] | None:
        if self.lost:
            raise DeviceLost("fell off the bus")
        return self.processes


class FakeCpu:
    """A device without processes (not a :class:`ProcessLister`)."""

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo("cpu-0", 0, "CPU", DeviceKind.CPU)

    def snapshot(self, now_unix_ns: int) -> Snapshot:
        return Snapshot(now_unix_ns)


class FlakyPods:
    def __init__(self) -> None:
        self.up = False
        self.closed = False

    def gpu_allocations(self) -> dict[str, PodRef]:
        if not self.up:
            raise PodResourcesUnavailable("kubelet.sock: connection refused")
        return {"GPU-a": PodRef("ml", "p-0", "c")}

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t


def _attributor(devices: list[object], sent: list[Attribution], **kw: object) -> Attributor:
    return Attributor(devices, sent.append, wall_ns=lambda: 42, **kw)  # type: ignore[arg-type]


def test_it_sends_on_change_and_on_refresh_only(tmp_path: Path) -> None:
    gpu = FakeGpu("GPU-a", (GpuProcess(7, "train", 10, 0.5),))
    mono = Clock()
    sent: list[Attribution] = []
    a = _attributor([gpu], sent, mono_ns=mono, interval_s=5, refresh_s=60, proc_root=tmp_path)
    assert a.tick() is not None  # the first read is always sent
    mono.t = 5 * S
    gpu.processes = (GpuProcess(7, "train", 20, 0.9),)  # utilisation alone: not a change
    assert a.tick() is None
    mono.t = 10 * S
    gpu.processes = (GpuProcess(7, "train", 20, 0.9), GpuProcess(8, "eval", 1, 0.0))
    assert a.tick() is not None  # a new process: a change
    mono.t = 69 * S
    assert a.tick() is None
    mono.t = 70 * S
    refreshed = a.tick()  # a minute since the last message: the refresh
    assert refreshed is not None and len(sent) == 3
    assert refreshed.devices[0].processes == (
        GpuProcess(7, "train", 20, 0.9),
        GpuProcess(8, "eval", 1, 0.0),
    )


def test_names_come_from_proc_and_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "comm").write_text("pt_main_thread\n")
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "comm").write_text("evil\x1b[2Jname\n")
    gpu = FakeGpu("GPU-a", (GpuProcess(7), GpuProcess(8), GpuProcess(9)))
    sent: list[Attribution] = []
    (d,) = _attributor([gpu], sent, proc_root=tmp_path).read().devices
    assert [(p.pid, p.name) for p in d.processes] == [
        (7, "pt_main_thread"),
        (8, "evil?[2Jname"),
        (9, ""),  # gone, or another PID namespace: unknown, not invented
    ]
    assert clean_text("x" * 300) == "x" * 253


def test_impossible_values_become_absent_and_duplicates_go(tmp_path: Path) -> None:
    gpu = FakeGpu(
        "GPU-a",
        (
            GpuProcess(1, "a", 5000, 1.5),  # more memory than the GPU has; utilisation > 1
            GpuProcess(1, "a", 10, 0.1),  # the same pid again
            GpuProcess(0, "kernel"),
            GpuProcess(2, "b", -1, float("nan")),
        ),
    )
    (d,) = _attributor([gpu], [], proc_root=tmp_path).read().devices
    assert d.processes == (GpuProcess(1, "a", None, None), GpuProcess(2, "b", None, None))


def test_at_most_the_busiest_processes_are_kept(tmp_path: Path) -> None:
    n = ATTRIBUTION_MAX_PROCESSES + 6
    gpu = FakeGpu("GPU-a", tuple(GpuProcess(i, "w", 1, i / n) for i in range(1, n + 1)))
    (d,) = _attributor([gpu], [], proc_root=tmp_path).read().devices
    assert len(d.processes) == ATTRIBUTION_MAX_PROCESSES
    assert min(p.pid for p in d.processes) == 7  # the six idlest are left out


def test_unknown_processes_lost_devices_and_devices_without_processes(tmp_path: Path) -> None:
    unknown = FakeGpu("GPU-u", None)  # NVML cannot list them (not supported, no permission)
    lost = FakeGpu("GPU-l")
    lost.lost = True
    sent: list[Attribution] = []
    a = _attributor([unknown, lost, FakeCpu()], sent, proc_root=tmp_path)
    first = a.read()
    assert [(d.device_uuid, d.processes_known) for d in first.devices] == [
        ("GPU-u", False),
        ("cpu-0", False),
    ]
    lost.lost = False  # a lost device stays lost: it is not read again
    assert [d.device_uuid for d in a.read().devices] == ["GPU-u", "cpu-0"]


def test_a_kubelet_that_fails_leaves_pods_unknown_and_is_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pods = FlakyPods()
    gpu = FakeGpu("GPU-a")
    caplog.set_level(logging.INFO)
    a = _attributor([gpu], [], pods=pods, proc_root=tmp_path)
    assert a.read().devices[0].pod is None
    assert a.read().devices[0].pod is None
    pods.up = True
    assert a.read().devices[0].pod == PodRef("ml", "p-0", "c")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "connection refused" in warnings[0].getMessage()
    a.stop()
    assert pods.closed


def test_a_pod_without_a_name_is_no_pod(tmp_path: Path) -> None:
    pods = StaticPods({"GPU-a": PodRef("", "", "")})
    (d,) = _attributor([FakeGpu("GPU-a")], [], pods=pods, proc_root=tmp_path).read().devices
    assert d.pod is None


def test_the_pod_source_follows_kubelet_socket(tmp_path: Path) -> None:
    plain = SimBackend.from_options(gpus=2, host="n")
    with_pods = SimBackend.from_options(gpus=2, host="n", pods=["ml/p-0/c@1"])
    assert open_pod_source("none", with_pods) is None
    assert open_pod_source("auto", plain) is None  # no kubelet socket on this machine
    source = open_pod_source("auto", with_pods)
    assert isinstance(source, StaticPods)
    uuid = with_pods.devices()[1].info.uuid
    assert source.gpu_allocations() == {uuid: PodRef("ml", "p-0", "c")}
    with pytest.raises(ValueError, match="does not exist"):
        open_pod_source(str(tmp_path / "nope.sock"), plain)
    sock = tmp_path / "kubelet.sock"
    sock.touch()
    assert isinstance(open_pod_source(str(sock), plain), PodResourcesClient)


def test_sim_devices_list_their_workload() -> None:
    backend = SimBackend.from_options(gpus=3, host="n", workloads=["train:0.4@0", "idle@1"])
    train, idle, free = backend.sim_devices()
    assert isinstance(train, ProcessLister)
    (p,) = train.compute_processes() or ()
    assert (p.name, p.sm_utilization_ratio) == ("python3", 0.92)
    (q,) = idle.compute_processes() or ()
    assert q.sm_utilization_ratio == 0.0 and q.used_memory_bytes
    assert free.compute_processes() == ()
    from flopwatt.analysis.precision import Precision

    train.set_load(Precision.BF16, 1.0)  # flopwatt's GEMM holds it: the job's kernels wait
    (p,) = train.compute_processes() or ()
    assert p.sm_utilization_ratio == 0.0


def test_sim_pod_grammar() -> None:
    from flopwatt.agent.devices.sim_workload import parse_pod

    assert parse_pod("ml/p-0/c@3").index == 3
    for bad in ("ml/p-0@1", "ml/p-0/c", "ml//c@1", "ml/p/c@x"):
        with pytest.raises(ValueError, match="accepted"):
            parse_pod(bad)
    with pytest.raises(ValueError, match="same GPU"):
        SimBackend.from_options(gpus=2, pods=["a/b/c@0", "d/e/f@0"])


def test_the_agents_own_process_is_flopwatt_while_its_job_runs(tmp_path: Path) -> None:
    """flopwatt's benchmark runs in the agent's process: while a job runs on a GPU the agent
    lists itself there as ``flopwatt`` (listed by NVML or not) and the GPU's job is flopwatt's,
    whichever pod holds it; between jobs the CUDA context it keeps is no workload: left out.
    Each change is read at once (the span starts when the job does)."""
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "comm").write_text("python3\n")
    gpu = FakeGpu("GPU-a", (GpuProcess(5, "", 1, 0.9), GpuProcess(6, "train", 1, 0.0)))
    bare = FakeGpu("GPU-b", None)  # cannot list processes
    pods = StaticPods({"GPU-a": PodRef("ml", "p-0", "c")})
    a = _attributor([gpu, bare], [], pods=pods, proc_root=tmp_path, own_pid=5)
    d, b = a.read().devices
    assert [p.name for p in d.processes] == ["train"] and d.job == "ml/p-0/c"
    assert b.job == "(unknown)"
    a.job_started(["GPU-a", "GPU-b"])
    assert a._wake.is_set()
    d, b = a.read().devices
    assert [(p.pid, p.name) for p in d.processes] == [(5, "flopwatt"), (6, "train")]
    assert d.processes[0].used_memory_bytes == 1  # NVML's figures for it are kept
    assert d.job == "flopwatt"
    assert b.processes_known and [p.name for p in b.processes] == ["flopwatt"]
    a.job_finished(["GPU-a", "GPU-b"])
    d, b = a.read().devices
    assert d.job == "ml/p-0/c" and b.job == "(unknown)"


def test_a_jobs_measuring_child_is_flopwatt(tmp_path: Path) -> None:
    """Real jobs measure in a spawned child of the agent: NVML lists the child (with its
    memory and utilisation), not the agent; the child is the ``flopwatt`` process, once."""
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "stat").write_text("8 (python3 (x)) S 5 8 8 0 -1\n")  # parent: the agent
    (tmp_path / "8" / "comm").write_text("python3\n")
    gpu = FakeGpu("GPU-a", (GpuProcess(8, "", 3, 0.95), GpuProcess(6, "train", 1, 0.0)))
    a = _attributor([gpu], [], proc_root=tmp_path, own_pid=5)
    a.job_started(["GPU-a"])
    (d,) = a.read().devices
    assert d.processes == (GpuProcess(6, "train", 1, 0.0), GpuProcess(8, "flopwatt", 3, 0.95))
    assert d.job == "flopwatt"
    a.job_finished(["GPU-a"])  # the child on its way out is no workload
    (d,) = a.read().devices
    assert [p.pid for p in d.processes] == [6]


def test_busiest_ranks_unknown_utilisation_last() -> None:
    from flopwatt.records import busiest

    idle = GpuProcess(1, "idle", 10, None)
    procs = [idle, GpuProcess(2, "busy", 1, 0.9), GpuProcess(3, "mid", 1, 0.5)]
    assert [p.name for p in busiest(procs, 2)] == ["busy", "mid"]


def test_job_names() -> None:
    from flopwatt.records import DeviceAttribution

    pod = PodRef("ml", "p-0", "c")
    assert DeviceAttribution("G", (GpuProcess(1, "train"),), True, pod).job == "ml/p-0/c"
    two = (GpuProcess(1, "vllm"), GpuProcess(2, ""), GpuProcess(3, "vllm"))
    assert DeviceAttribution("G", two, True).job == "pid 2+vllm"
    assert DeviceAttribution("G", (), True).job == "(no process)"
    assert DeviceAttribution("G", (), False).job == "(unknown)"
    assert DeviceAttribution("G", (), False, pod).job == "ml/p-0/c"
