"""NVML GPM against the typed fake of ``pynvml`` (see tests/test_nvml_backend.py), extended with
the GPM calls as nvidia-ml-py 13 defines them: the real ``c_nvmlGpmSupport_t`` /
``c_nvmlGpmMetricsGet_t`` structures, opaque sample pointers, per-metric ``nvmlReturn`` codes.

Supported (Hopper), unsupported (A100 answers isSupportedDevice 0; an old driver answers
FUNCTION_NOT_FOUND; an old nvidia-ml-py has no GPM calls), MIG mode (refused, with the reason),
per-metric errors and NaN (that column absent, never 0), and a GPU lost mid-read.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import pynvml
import pytest

from flopwatt.agent.devices.base import DeviceLost
from flopwatt.agent.devices.nvml import NvmlBackend, NvmlDevice
from flopwatt.agent.devices.nvml_gpm import MIN_INTERVAL_NS
from tests.test_nvml_backend import FakeGpu, FakeNvml, a100, gpu, h100, open_fake

MS = 1_000_000
T0 = 1_764_997_200 * 1_000_000_000

PERCENT = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: 92.5,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 44.0,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 41.0,
    pynvml.NVML_GPM_METRIC_HMMA_TENSOR_UTIL: 40.75,
    pynvml.NVML_GPM_METRIC_IMMA_TENSOR_UTIL: 0.0,
    pynvml.NVML_GPM_METRIC_DFMA_TENSOR_UTIL: 0.0,
    pynvml.NVML_GPM_METRIC_FP64_UTIL: 0.0,
    pynvml.NVML_GPM_METRIC_FP32_UTIL: 19.0,
    pynvml.NVML_GPM_METRIC_FP16_UTIL: 1.5,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 55.25,
}


def _address(sample: Any) -> int:
    return int(ctypes.cast(sample, ctypes.c_void_p).value or 0)


class GpmFakeNvml(FakeNvml):
    """The fake with GPM: each GPU answers the percent values in ``gpu.gpm_percent`` (set
    as an attribute on the FakeGpu), ``gpu.gpm_supported`` and ``gpu.mig``."""

    def __init__(self, gpus: list[FakeGpu], **kw: Any) -> None:
        super().__init__(gpus, **kw)
        self.taken: dict[int, FakeGpu] = {}
        self.freed: list[int] = []
        self._buffers: list[Any] = []

    def nvmlDeviceGetMigMode(self, handle: FakeGpu, /) -> list[int]:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetMigMode")
        mode = 1 if getattr(g, "mig", False) else 0
        return [mode, mode]

    def nvmlGpmQueryDeviceSupport(self, handle: FakeGpu, /) -> Any:  # noqa: N802
        g = self._gpu(handle, "nvmlGpmQueryDeviceSupport")
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if getattr(g, "gpm_supported", False) else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:  # noqa: N802
        self._system("nvmlGpmSampleAlloc")
        buffer = pynvml.struct_c_nvmlGpmSample_t()
        self._buffers.append(buffer)
        return pynvml.c_nvmlGpmSample_t(buffer)

    def nvmlGpmSampleFree(self, sample: Any, /) -> None:  # noqa: N802
        self._system("nvmlGpmSampleFree")
        self.freed.append(_address(sample))

    def nvmlGpmSampleGet(self, handle: FakeGpu, sample: Any, /) -> Any:  # noqa: N802
        g = self._gpu(handle, "nvmlGpmSampleGet")
        self.taken[_address(sample)] = g
        return sample

    def nvmlGpmMetricsGet(self, request: Any, /) -> Any:  # noqa: N802
        self._system("nvmlGpmMetricsGet")
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION
        first, second = _address(request.sample1), _address(request.sample2)
        assert first != second and first in self.taken and second in self.taken
        g = self.taken[second]
        errors: dict[int, int] = getattr(g, "gpm_errors", {})
        for i in range(request.numMetrics):
            m = request.metrics[i]
            if m.metricId in errors:
                m.nvmlReturn = errors[m.metricId]
                m.value = 0.0
            else:
                m.nvmlReturn = pynvml.NVML_SUCCESS
                m.value = getattr(g, "gpm_percent", {}).get(m.metricId, math.nan)
        return request

    # the struct classes and constants the reader reads from the module
    c_nvmlGpmMetricsGet_t = pynvml.c_nvmlGpmMetricsGet_t  # noqa: N815 (pynvml's name)


class Clock:
    """The monotonic clock GPM intervals are timed with, moved by hand."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def _open(fake: FakeNvml, clock: Clock) -> NvmlBackend:
    return NvmlBackend(fake, environ={}, monotonic_ns=clock)


def _at(d: NvmlDevice, clock: Clock, ms: int) -> Any:
    """A snapshot with the monotonic clock at ``ms`` (and the wall clock stamped T0 + ms)."""
    clock.ns = ms * MS
    return d.snapshot(T0 + ms * MS)


def _hopper(**kw: Any) -> FakeGpu:
    g = h100(**kw)
    g.gpm_supported = True  # type: ignore[attr-defined]
    g.gpm_percent = dict(PERCENT)  # type: ignore[attr-defined]
    return g


def test_hopper_reports_pipe_activity_per_interval_as_ratios() -> None:
    fake = GpmFakeNvml([_hopper()])
    clock = Clock()
    backend = _open(fake, clock)
    d = gpu(backend, 0)
    assert d.info.capabilities.gpm is True
    first = _at(d, clock, 0)
    assert first.tensor_hmma_active_ratio is None  # no interval yet: absent, not 0
    second = _at(d, clock, 100)
    assert second.tensor_hmma_active_ratio == pytest.approx(0.4075)
    assert second.sm_active_ratio == pytest.approx(0.925)
    assert second.fp32_active_ratio == pytest.approx(0.19)
    assert second.dram_bandwidth_ratio == pytest.approx(0.5525)
    assert second.tensor_imma_active_ratio == 0.0  # a reported idle pipe is a real 0
    # A tick sooner than NVML's 100 ms refresh repeats the last interval (no new sample).
    third = _at(d, clock, 150)
    assert third.tensor_hmma_active_ratio == second.tensor_hmma_active_ratio
    assert fake.calls["nvmlGpmMetricsGet"] == 1 and fake.calls["nvmlGpmSampleGet"] == 2
    _at(d, clock, 200)
    assert fake.calls["nvmlGpmMetricsGet"] == 2
    # A wall clock stepped back an hour does not stall the intervals (they run on the
    # monotonic clock).
    clock.ns = 300 * MS
    d.snapshot(T0 - 3600 * 1_000_000_000)
    assert fake.calls["nvmlGpmMetricsGet"] == 3
    assert MIN_INTERVAL_NS == 100 * MS
    backend.close()
    assert len(fake.freed) == 2


def test_a_gpu_without_gpm_says_so_and_reports_no_columns() -> None:
    g = a100()
    g.gpm_supported = False  # type: ignore[attr-defined]
    clock = Clock()
    d = gpu(_open(GpmFakeNvml([g]), clock), 0)
    assert d.info.capabilities.gpm is False
    assert "Hopper" in d.missing()["gpm"]
    _at(d, clock, 0)
    assert _at(d, clock, 200).tensor_active_ratio is None


def test_an_old_driver_without_gpm_is_not_supported() -> None:
    g = _hopper(errors={"nvmlGpmQueryDeviceSupport": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
    d = gpu(open_fake(GpmFakeNvml([g])), 0)
    assert d.info.capabilities.gpm is False
    assert d.missing()["gpm"].startswith("not supported")


def test_an_old_nvidia_ml_py_without_gpm_calls() -> None:
    d = gpu(open_fake(FakeNvml([h100()])), 0)
    assert d.info.capabilities.gpm is False
    assert d.missing()["gpm"] == "not in this nvidia-ml-py"


def test_mig_mode_is_refused_with_the_reason() -> None:
    g = _hopper()
    g.mig = True  # type: ignore[attr-defined]
    fake = GpmFakeNvml([g])
    d = gpu(open_fake(fake), 0)
    assert d.info.capabilities.gpm is False
    assert "MIG" in d.missing()["gpm"]
    assert fake.calls["nvmlGpmSampleAlloc"] == 0


def test_a_metric_that_fails_or_is_nan_is_absent_the_others_stay() -> None:
    g = _hopper()
    g.gpm_errors = {pynvml.NVML_GPM_METRIC_FP16_UTIL: pynvml.NVML_ERROR_NOT_SUPPORTED}  # type: ignore[attr-defined]
    del g.gpm_percent[pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL]  # type: ignore[attr-defined]
    clock = Clock()
    d = gpu(_open(GpmFakeNvml([g]), clock), 0)
    _at(d, clock, 0)
    s = _at(d, clock, 100)
    assert s.fp16_active_ratio is None and s.dram_bandwidth_ratio is None
    assert s.tensor_hmma_active_ratio == pytest.approx(0.4075)


def test_a_gpu_lost_during_a_gpm_read_is_lost() -> None:
    g = _hopper()
    clock = Clock()
    d = gpu(_open(GpmFakeNvml([g]), clock), 0)
    _at(d, clock, 0)
    g.errors["nvmlGpmSampleGet"] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(DeviceLost):
        _at(d, clock, 100)
