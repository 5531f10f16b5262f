"""NVML process attribution (``NvmlDevice.compute_processes``) against the typed fake of
``pynvml`` (tests/test_nvml_backend.py), extended with the process calls as nvidia-ml-py 13
defines them: entries built from the real ``c_nvmlProcessInfo_t`` and turned into pynvml's
friendly objects (``usedGpuMemory`` None where NVML says NVML_VALUE_NOT_AVAILABLE), real
``c_nvmlProcessUtilizationSample_t`` samples filtered by ``lastSeenTimeStamp``, and
``NVML_ERROR_NOT_FOUND`` when no sample is newer.

Memory per process, duplicate pids merged, per-process utilisation as the mean of the samples
since the previous call (the newest timestamp passed forward), "no sample" as unknown (never 0),
old nvidia-ml-py / old drivers, not supported / no permission (None, logged once, not asked
again when not supported), a lost GPU, and the device lock shared with ``snapshot``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pynvml
import pytest

from flopwatt.agent.devices.base import DeviceLost, ProcessLister
from flopwatt.agent.devices.nvml import NvmlDevice
from flopwatt.records import GpuProcess
from tests.test_nvml_backend import FakeGpu, FakeNvml, a100, gpu, h100, open_fake

GIB = 2**30
T0 = 1_764_997_200 * 1_000_000_000
LOGGER = "flopwatt.agent.devices.nvml"
NOT_AVAILABLE_UINT = 0xFFFF_FFFF


def _process_infos(entries: list[tuple[int, int | None]]) -> list[Any]:
    """What pynvml's nvmlDeviceGetComputeRunningProcesses returns for these (pid, bytes or
    None) entries: friendly objects of the real struct, NVML_VALUE_NOT_AVAILABLE → None."""
    out: list[Any] = []
    for pid, used in entries:
        info = pynvml.c_nvmlProcessInfo_t()
        info.pid = pid
        info.usedGpuMemory = (
            pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value if used is None else used
        )
        info.gpuInstanceId = info.computeInstanceId = NOT_AVAILABLE_UINT  # not MIG
        obj = pynvml.nvmlStructToFriendlyObject(info)
        if obj.usedGpuMemory == pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
            obj.usedGpuMemory = None
        out.append(obj)
    return out


class ListOnlyFakeNvml(FakeNvml):
    """The fake with the process list but no nvmlDeviceGetProcessUtilization (an nvidia-ml-py
    that lacks it). ``processes``: GPU uuid → (pid, used bytes or None), one per context."""

    def __init__(self, gpus: list[FakeGpu], **kw: Any) -> None:
        super().__init__(gpus, **kw)
        self.processes: dict[str, list[tuple[int, int | None]]] = {}

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu, /) -> list[Any]:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return _process_infos(self.processes.get(g.uuid, []))


class ProcessFakeNvml(ListOnlyFakeNvml):
    """The fake with per-process utilisation too. ``samples``: GPU uuid → (pid, timestamp µs,
    smUtil %); ``last_seen``: every lastSeenTimeStamp the backend passed, in order."""

    def __init__(self, gpus: list[FakeGpu], **kw: Any) -> None:
        super().__init__(gpus, **kw)
        self.samples: dict[str, list[tuple[int, int, int]]] = {}
        self.last_seen: list[int] = []

    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self, handle: FakeGpu, last_seen_us: int, /
    ) -> list[Any]:
        g = self._gpu(handle, "nvmlDeviceGetProcessUtilization")
        self.last_seen.append(last_seen_us)
        newer = [s for s in self.samples.get(g.uuid, []) if s[1] > last_seen_us]
        if not newer:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        samples = (pynvml.c_nvmlProcessUtilizationSample_t * len(newer))()
        for sample, (pid, stamp, sm) in zip(samples, newer, strict=True):
            sample.pid, sample.timeStamp, sample.smUtil, sample.memUtil = pid, stamp, sm, 7
        return samples[0 : len(newer)]


class NoV3DriverFakeNvml(ProcessFakeNvml):
    """A driver older than nvidia-ml-py: pynvml's unversioned call finds no _v3 symbol and
    raises NVMLLibraryMismatchError (not an NVMLError), as ``throwOnVersionMismatch`` does."""

    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu, /) -> list[Any]:  # noqa: N802
        self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        raise pynvml.NVMLLibraryMismatchError("Unversioned function called ...")


class V2DriverFakeNvml(NoV3DriverFakeNvml):
    """That driver with nvmlDeviceGetComputeRunningProcesses_v2 (same fields)."""

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: FakeGpu, /) -> list[Any]:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses_v2")
        return _process_infos(self.processes.get(g.uuid, []))


def _device(fake: FakeNvml) -> NvmlDevice:
    return gpu(open_fake(fake), 0)


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


# --- the list ---------------------------------------------------------------------------------


def test_processes_with_memory_sorted_by_pid_names_left_to_the_caller() -> None:
    g = h100()
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(4242, 2 * GIB), (17, 512 * 2**20)]
    d = _device(fake)
    assert isinstance(d, ProcessLister)
    assert d.compute_processes() == (
        GpuProcess(pid=17, name="", used_memory_bytes=512 * 2**20),
        GpuProcess(pid=4242, name="", used_memory_bytes=2 * GIB),
    )


def test_no_processes_is_an_empty_tuple_not_none() -> None:
    d = _device(ProcessFakeNvml([h100()]))
    assert d.compute_processes() == ()


def test_memory_not_available_is_none() -> None:
    g = h100()
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(99, None)]
    (p,) = _device(fake).compute_processes() or ()
    assert p.pid == 99 and p.used_memory_bytes is None


def test_a_pid_listed_twice_is_merged_memory_summed_only_where_all_known() -> None:
    g = h100()
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(7, 1 * GIB), (8, 1 * GIB), (7, 2 * GIB), (8, None)]
    fake.samples[g.uuid] = [(7, 1_000, 40)]
    assert _device(fake).compute_processes() == (
        GpuProcess(pid=7, used_memory_bytes=3 * GIB, sm_utilization_ratio=pytest.approx(0.4)),
        GpuProcess(pid=8, used_memory_bytes=None),
    )


# --- per-process utilisation ------------------------------------------------------------------


def test_utilisation_is_the_mean_since_the_previous_call_with_last_seen_passed_forward() -> None:
    g = h100()
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(100, GIB), (200, GIB), (300, GIB)]
    # pid 100 twice (mean 60 %); pid 200 no sample; pid 300 only NVML_VALUE_NOT_AVAILABLE.
    fake.samples[g.uuid] = [(100, 1_000, 50), (100, 2_000, 70), (300, 1_500, NOT_AVAILABLE_UINT)]
    d = _device(fake)
    first = {p.pid: p.sm_utilization_ratio for p in d.compute_processes() or ()}
    assert first == {100: pytest.approx(0.6), 200: None, 300: None}
    assert fake.last_seen == [0]  # the first call asks for every buffered sample

    fake.samples[g.uuid] += [(100, 3_000, 10), (200, 3_500, 100)]
    second = {p.pid: p.sm_utilization_ratio for p in d.compute_processes() or ()}
    assert fake.last_seen == [0, 2_000]  # the newest timestamp seen, not the old samples again
    assert second == {100: pytest.approx(0.1), 200: 1.0, 300: None}

    # Nothing newer: NVML answers NOT_FOUND → unknown for every process, never 0.
    third = d.compute_processes() or ()
    assert fake.last_seen == [0, 2_000, 3_500]
    assert [p.sm_utilization_ratio for p in third] == [None, None, None]
    assert [p.used_memory_bytes for p in third] == [GIB, GIB, GIB]


def test_no_sample_at_all_is_unknown_not_idle(caplog: pytest.LogCaptureFixture) -> None:
    g = h100()
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(5, GIB)]
    d = _device(fake)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert d.compute_processes() == (GpuProcess(pid=5, used_memory_bytes=GIB),)
        d.compute_processes()
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 2  # asked again: it is not an error
    assert fake.last_seen == [0, 0]
    assert not caplog.records


def test_an_nvidia_ml_py_without_process_utilisation_still_lists(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = h100()
    fake = ListOnlyFakeNvml([g])
    fake.processes[g.uuid] = [(5, GIB)]
    d = _device(fake)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            assert d.compute_processes() == (GpuProcess(pid=5, used_memory_bytes=GIB),)
    assert _messages(caplog, "nvmlDeviceGetProcessUtilization") == 1


def test_utilisation_not_supported_is_asked_once(caplog: pytest.LogCaptureFixture) -> None:
    # What NVML answers on the parent GPU under MIG.
    g = a100(errors={"nvmlDeviceGetProcessUtilization": pynvml.NVML_ERROR_NOT_SUPPORTED})
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(5, None)]
    d = _device(fake)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            assert d.compute_processes() == (GpuProcess(pid=5),)
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 1
    assert _messages(caplog, "per-process utilisation not available") == 1


def test_utilisation_without_permission_is_unknown_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = h100(errors={"nvmlDeviceGetProcessUtilization": pynvml.NVML_ERROR_NO_PERMISSION})
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(5, GIB)]
    d = _device(fake)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            assert d.compute_processes() == (GpuProcess(pid=5, used_memory_bytes=GIB),)
    assert _messages(caplog, "process_utilization") == 1


# --- a list NVML will not give --------------------------------------------------------------


def test_list_not_supported_is_none_and_never_asked_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = h100(errors={"nvmlDeviceGetComputeRunningProcesses": pynvml.NVML_ERROR_NOT_SUPPORTED})
    fake = ProcessFakeNvml([g])
    d = _device(fake)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            assert d.compute_processes() is None
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 0
    assert _messages(caplog, "process list not available") == 1
    d.snapshot(T0)  # the rest of the GPU reads on


def test_list_not_supported_mid_run_stops_asking() -> None:
    g = h100()
    fake = ProcessFakeNvml([g])
    d = _device(fake)
    assert d.compute_processes() == ()
    g.errors["nvmlDeviceGetComputeRunningProcesses"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert d.compute_processes() is None
    assert d.compute_processes() is None
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 2


def test_list_without_permission_is_none_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = h100(errors={"nvmlDeviceGetComputeRunningProcesses": pynvml.NVML_ERROR_NO_PERMISSION})
    fake = ProcessFakeNvml([g])
    fake.processes[g.uuid] = [(5, GIB)]
    d = _device(fake)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert d.compute_processes() is None
        assert d.compute_processes() is None
    assert _messages(caplog, "compute_processes") == 1
    del g.errors["nvmlDeviceGetComputeRunningProcesses"]
    assert d.compute_processes() == (GpuProcess(pid=5, used_memory_bytes=GIB),)


def test_a_transient_failure_is_none_for_that_call_only() -> None:
    g = h100(errors={"nvmlDeviceGetComputeRunningProcesses": pynvml.NVML_ERROR_UNKNOWN})
    fake = ProcessFakeNvml([g])
    d = _device(fake)
    assert d.compute_processes() is None
    del g.errors["nvmlDeviceGetComputeRunningProcesses"]
    assert d.compute_processes() == ()


def test_a_driver_without_v3_falls_back_to_v2() -> None:
    g = a100()
    fake = V2DriverFakeNvml([g])
    fake.processes[g.uuid] = [(5, GIB)]
    fake.samples[g.uuid] = [(5, 10, 30)]
    d = _device(fake)
    for _ in range(2):
        (p,) = d.compute_processes() or ()
        assert p.used_memory_bytes == GIB
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 2


def test_a_library_mismatch_without_v2_is_not_supported_not_a_crash() -> None:
    fake = NoV3DriverFakeNvml([a100()])
    d = _device(fake)
    assert d.compute_processes() is None
    assert d.compute_processes() is None
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1


# --- a lost GPU -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn", ["nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetProcessUtilization"]
)
def test_a_lost_gpu_raises_device_lost_for_every_reader(fn: str) -> None:
    g = h100()
    fake = ProcessFakeNvml([g])
    d = _device(fake)
    d.snapshot(T0)
    g.errors[fn] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(DeviceLost, match=g.uuid):
        d.compute_processes()
    assert d.lost
    with pytest.raises(DeviceLost):
        d.snapshot(T0)  # the sampler learns it too, without asking NVML
    with pytest.raises(DeviceLost):
        d.compute_processes()


def test_a_closed_backend_reports_the_gpu_lost() -> None:
    backend = open_fake(ProcessFakeNvml([h100()]))
    d = gpu(backend, 0)
    backend.close()
    with pytest.raises(DeviceLost):
        d.compute_processes()


# --- threads ----------------------------------------------------------------------------------


class SlowListFakeNvml(ProcessFakeNvml):
    """A process list that takes a while, and a sampler call that fails if it runs meanwhile."""

    listing = False

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu, /) -> list[Any]:  # noqa: N802
        self.listing = True
        try:
            time.sleep(0.02)
            return super().nvmlDeviceGetComputeRunningProcesses(handle)
        finally:
            self.listing = False

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, type: int, /) -> int:  # noqa: N802
        assert not self.listing, "snapshot ran inside compute_processes"
        return super().nvmlDeviceGetClockInfo(handle, type)


def test_compute_processes_and_snapshot_share_the_device_lock() -> None:
    fake = SlowListFakeNvml([h100()])
    d = _device(fake)
    stop = threading.Event()
    failures: list[BaseException] = []

    def sampler() -> None:
        try:
            while not stop.is_set():
                d.snapshot(T0)
        except BaseException as e:  # reported by the test thread
            failures.append(e)

    thread = threading.Thread(target=sampler)
    thread.start()
    try:
        for _ in range(5):
            assert d.compute_processes() == ()
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert failures == []
    assert fake.calls["nvmlDeviceGetClockInfo"] > 5  # the sampler did run meanwhile
