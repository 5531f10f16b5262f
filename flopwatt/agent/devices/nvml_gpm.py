"""NVML GPM (GPU Performance Monitoring, Hopper and newer): pipe activity per sampling interval.

GPM works on pairs of samples: :class:`GpmReader` keeps two NVML sample buffers, takes one per
sampler tick, and asks ``nvmlGpmMetricsGet`` for the metrics between the previous sample and
this one. NVML refreshes its counters about every 100 ms and wants the two samples further apart
than that, so a tick that comes sooner (10 Hz sampling jitters around 100 ms) reports the
values of the last completed interval again rather than dropping the columns (which would
start a new telemetry series every other tick). The first tick has no interval yet: no GPM
columns on it.

Values: NVML reports percent (0.0–100.0, a double); the columns are ratios (÷ 100, clipped to
0…1). A metric whose own ``nvmlReturn`` is not success, or whose value is NaN, is absent for
that interval — never 0.

Probing (once, at open) refuses GPM clearly where it cannot be read as a whole GPU's:

* this nvidia-ml-py lacks the GPM calls, or the driver does (``NotSupported``: an old driver
  answers FUNCTION_NOT_FOUND, ARGUMENT_VERSION_MISMATCH for a struct version it does not know);
* ``nvmlGpmQueryDeviceSupport`` says the GPU has no GPM (before Hopper);
* MIG mode is on: GPM is then per GPU instance (``nvmlGpmMigSampleGet``), and flopwatt keys
  telemetry by whole GPU — refused, with that reason in the device's missing readings.

Every NVML call goes through the backend's choke point (``call``), so errors map through the
one table in :mod:`flopwatt.agent.devices.nvml`; nothing here imports ``pynvml``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

METRICS: tuple[tuple[str, str], ...] = (
    ("NVML_GPM_METRIC_SM_UTIL", "sm_active_ratio"),
    ("NVML_GPM_METRIC_SM_OCCUPANCY", "sm_occupancy_ratio"),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", "tensor_active_ratio"),
    ("NVML_GPM_METRIC_HMMA_TENSOR_UTIL", "tensor_hmma_active_ratio"),
    ("NVML_GPM_METRIC_IMMA_TENSOR_UTIL", "tensor_imma_active_ratio"),
    ("NVML_GPM_METRIC_DFMA_TENSOR_UTIL", "tensor_dfma_active_ratio"),
    ("NVML_GPM_METRIC_FP64_UTIL", "fp64_active_ratio"),
    ("NVML_GPM_METRIC_FP32_UTIL", "fp32_active_ratio"),
    ("NVML_GPM_METRIC_FP16_UTIL", "fp16_active_ratio"),
    ("NVML_GPM_METRIC_DRAM_BW_UTIL", "dram_bandwidth_ratio"),
)
"""(NVML metric constant, telemetry column); constants the installed pynvml lacks are skipped."""
MIN_INTERVAL_NS = 100_000_000
"""Shortest span between the two samples of a GPM interval (NVML's refresh period)."""


class Choke(Protocol):
    """The backend's NVML choke point (``_Nvml``), as far as GPM needs it."""

    api: Any

    def call(self, fn: Callable[..., T], *args: Any) -> T: ...

    def optional(self, name: str) -> Callable[..., Any] | None: ...


class GpmReader:
    """GPM pipe activity of one GPU (see the module docstring). Not thread-safe: the device
    calls it under its own lock."""

    def __init__(self, nvml: Choke, handle: Any, metrics: list[tuple[int, str]]) -> None:
        """Allocate the two sample buffers.

        Raises:
            DeviceError (mapped by the choke point): an allocation failed.
        """
        api = nvml.api
        self._nvml = nvml
        self._handle = handle
        self._metrics = metrics
        self._struct = api.c_nvmlGpmMetricsGet_t
        self._version = int(api.NVML_GPM_METRICS_GET_VERSION)
        self._success = int(api.NVML_SUCCESS)
        self._samples = [nvml.call(api.nvmlGpmSampleAlloc), nvml.call(api.nvmlGpmSampleAlloc)]
        self._prev: int | None = None
        self._prev_ns = 0
        self._values: dict[str, float] = {}

    @classmethod
    def probe(cls, nvml: Choke, handle: Any, missing: MutableMapping[str, str]) -> GpmReader | None:
        """A reader for this GPU, or None with the reason in ``missing["gpm"]``.

        Raises:
            DeviceLost, BackendUnavailable: as the choke point maps them (the caller's probe
                handles them as for any other reading).
        """
        from flopwatt.agent.devices.base import DeviceError, DeviceLost

        api = nvml.api
        query = nvml.optional("nvmlGpmQueryDeviceSupport")
        if query is None or getattr(api, "c_nvmlGpmMetricsGet_t", None) is None:
            missing.setdefault("gpm", "not in this nvidia-ml-py")
            return None
        mig_mode = nvml.optional("nvmlDeviceGetMigMode")
        enabled = getattr(api, "NVML_DEVICE_MIG_ENABLE", None)
        if mig_mode is not None and enabled is not None:
            try:
                current = nvml.call(mig_mode, handle)[0]
            except DeviceLost:
                raise
            except DeviceError:
                current = None  # no MIG on this GPU
            if current == enabled:
                missing.setdefault(
                    "gpm", "MIG mode is on: GPM is per GPU instance, not read by flopwatt"
                )
                return None
        try:
            support = nvml.call(query, handle)
        except DeviceLost:
            raise
        except DeviceError as e:
            missing.setdefault("gpm", f"not supported ({e})")
            return None
        if not getattr(support, "isSupportedDevice", 0):
            missing.setdefault("gpm", "not supported (NVML GPM needs Hopper or newer)")
            return None
        ids = [
            (int(value), column)
            for name, column in METRICS
            if isinstance(value := getattr(api, name, None), int)
        ]
        if not ids:
            missing.setdefault("gpm", "this nvidia-ml-py names no GPM metric")
            return None
        try:
            return cls(nvml, handle, ids)
        except DeviceLost:
            raise
        except DeviceError as e:
            missing.setdefault("gpm", f"cannot allocate samples ({e})")
            return None

    def read(self, now_ns: int) -> dict[str, float]:
        """The pipe activity ratios of the latest completed interval (column → 0…1); empty on
        the first call. ``now_ns``: a monotonic clock (ns), so that a wall-clock step neither
        stalls nor shortens an interval.

        Raises:
            DeviceError (mapped by the choke point): a sample or the metrics call failed.
        """
        api, nvml = self._nvml.api, self._nvml
        if self._prev is None:
            nvml.call(api.nvmlGpmSampleGet, self._handle, self._samples[0])
            self._prev, self._prev_ns = 0, now_ns
            return {}
        if now_ns - self._prev_ns < MIN_INTERVAL_NS:
            return dict(self._values)
        cur = 1 - self._prev
        nvml.call(api.nvmlGpmSampleGet, self._handle, self._samples[cur])
        request = self._struct()
        request.version = self._version
        request.numMetrics = len(self._metrics)
        request.sample1 = self._samples[self._prev]
        request.sample2 = self._samples[cur]
        for i, (metric_id, _) in enumerate(self._metrics):
            request.metrics[i].metricId = metric_id
        self._prev, self._prev_ns = cur, now_ns
        answer = nvml.call(api.nvmlGpmMetricsGet, request)
        values: dict[str, float] = {}
        for i, (_, column) in enumerate(self._metrics):
            m = answer.metrics[i]
            value = float(m.value)
            if int(m.nvmlReturn) != self._success or math.isnan(value):
                continue
            values[column] = min(1.0, max(0.0, value / 100.0))
        self._values = values
        return dict(values)

    def close(self) -> None:
        """Free the sample buffers (a failure is ignored: NVML may be shutting down)."""
        free = self._nvml.optional("nvmlGpmSampleFree")
        if free is None:
            return
        for sample in self._samples:
            with contextlib.suppress(Exception):  # best effort: NVML may be shutting down
                self._nvml.call(free, sample)
        self._samples = []
