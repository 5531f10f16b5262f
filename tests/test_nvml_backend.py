"""The NVML backend against a typed fake of the ``pynvml`` module.

The fake implements the functions the backend calls with nvidia-ml-py's signatures, returns the
real ctypes structures of ``pynvml`` (field values, PCI info, memory, utilisation, event data)
and raises real ``pynvml.NVMLError`` subclasses (``pynvml.NVMLError(code)`` builds
``NVMLError_NotSupported`` and friends), so a backend that calls a function the fake lacks, or
reads a structure wrongly, fails here. Constants are copied from the installed ``pynvml``.
No GPU or NVML library is needed.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from flopwatt.agent.devices import open_backend
from flopwatt.agent.devices.base import (
    BackendUnavailable,
    Device,
    DeviceError,
    DeviceLost,
    NotSupported,
    PermissionDenied,
)
from flopwatt.agent.devices.nvml import (
    NVML_ERROR_TABLE,
    UNRESPONSIVE_TICKS,
    NvmlApi,
    NvmlBackend,
    NvmlDevice,
    cuda_visible_torch_indices,
    map_nvml_error,
    nvml_error_codes,
)

NVIDIA = 0x10DE
FI_INSTANT = pynvml.NVML_FI_DEV_POWER_INSTANT
FI_AVERAGE = pynvml.NVML_FI_DEV_POWER_AVERAGE
FI_MEM_TEMP = pynvml.NVML_FI_DEV_MEMORY_TEMP
SCOPE_GPU = pynvml.NVML_POWER_SCOPE_GPU
SCOPE_MODULE = pynvml.NVML_POWER_SCOPE_MODULE


# --- the fake -------------------------------------------------------------------------------


@dataclass
class FakeGpu:
    """One simulated GPU: its state, and which calls fail with which NVML error code."""

    uuid: str
    name: str
    bus_id: str
    device_id: int
    arch: int
    usage_is_average: bool
    """What nvmlDeviceGetPowerUsage returns on this chip: the 1-s average or instant power."""
    fields: set[tuple[int, int]]
    """(field id, scope) pairs this GPU answers; others answer per-field NOT_SUPPORTED."""
    index: int = 0
    memory_total: int = 80 * 2**30
    memory_used: int = 3 * 2**30
    instant_mw: int = 412_345
    average_mw: int = 398_000
    energy_mj: int = 5_000_000
    sm_mhz: int = 1980
    mem_mhz: int = 2619
    sm_max_mhz: int = 1980
    mem_max_mhz: int = 2619
    temp_c: int = 51
    mem_temp_c: int = 58
    util_gpu: int = 97
    util_mem: int = 41
    reasons: int = 0x4
    limit_mw: int = 700_000
    default_limit_mw: int = 700_000
    min_limit_mw: int = 200_000
    max_limit_mw: int = 700_000
    ecc_enabled: bool = True
    ecc_corrected: int = 3
    ecc_uncorrected: int = 0
    xids: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    """NVML function name → error code it raises."""
    field_errors: dict[tuple[int, int], int] = field(default_factory=dict)
    """(field id, scope) → per-field nvmlReturn other than success."""
    fail_all: int | None = None
    """When set, every call on this GPU raises this code (GPU_IS_LOST, UNKNOWN, ...)."""


class FakeEventSet:
    def __init__(self) -> None:
        self.gpus: list[FakeGpu] = []


class FakeNvml:
    """A typed stand-in for the ``pynvml`` module (see the module docstring)."""

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        init_error: int | None = None,
        driver: str = "570.86.15",
        cuda: int = 12080,
    ) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.driver = driver
        self.cuda = cuda
        self.system_errors: dict[str, int] = {}
        self.calls: Counter[str] = Counter()

    def _system(self, fn: str) -> None:
        self.calls[fn] += 1
        if fn in self.system_errors:
            raise pynvml.NVMLError(self.system_errors[fn])

    def _gpu(self, handle: FakeGpu, fn: str) -> FakeGpu:
        self.calls[fn] += 1
        self.calls[f"{fn}@{handle.uuid}"] += 1
        if handle.fail_all is not None:
            raise pynvml.NVMLError(handle.fail_all)
        if fn in handle.errors:
            raise pynvml.NVMLError(handle.errors[fn])
        return handle

    # system
    def nvmlInit(self) -> None:  # noqa: N802
        self._system("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._system("nvmlShutdown")

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._system("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetNVMLVersion(self) -> str:  # noqa: N802
        self._system("nvmlSystemGetNVMLVersion")
        return "12." + self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        self._system("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:  # noqa: N802
        self._system("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._system("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> FakeGpu:  # noqa: N802
        return self._gpu(self.gpus[index], "nvmlDeviceGetHandleByIndex")

    # identity
    def nvmlDeviceGetUUID(self, handle: FakeGpu, /) -> str:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeGpu, /) -> str:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetIndex(self, handle: FakeGpu, /) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetIndex").index

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu, /) -> Any:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetPciInfo")
        info = pynvml.nvmlPciInfo_t()
        info.busId = g.bus_id.encode()
        info.pciDeviceId = g.device_id << 16 | NVIDIA
        return info

    def nvmlDeviceGetArchitecture(self, handle: FakeGpu, /) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetArchitecture").arch

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu, /) -> Any:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        mem = pynvml.c_nvmlMemory_t()
        mem.total, mem.used, mem.free = (
            g.memory_total,
            g.memory_used,
            g.memory_total - g.memory_used,
        )
        return mem

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeGpu, type: int, /) -> int:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetMaxClockInfo")
        return g.sm_max_mhz if type == pynvml.NVML_CLOCK_SM else g.mem_max_mhz

    # readings
    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, type: int, /) -> int:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetClockInfo")
        return g.sm_mhz if type == pynvml.NVML_CLOCK_SM else g.mem_mhz

    def nvmlDeviceGetFieldValues(  # noqa: N802
        self, handle: FakeGpu, field_ids: list[tuple[int, int]], /
    ) -> Any:
        g = self._gpu(handle, "nvmlDeviceGetFieldValues")
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        for fv, (fid, scope) in zip(values, field_ids, strict=True):
            fv.fieldId, fv.scopeId = fid, scope
            if (fid, scope) in g.field_errors:
                fv.nvmlReturn = g.field_errors[(fid, scope)]
            elif (fid, scope) not in g.fields:
                fv.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            elif fid == FI_MEM_TEMP:
                fv.nvmlReturn = pynvml.NVML_SUCCESS
                fv.valueType = pynvml.NVML_VALUE_TYPE_SIGNED_INT
                fv.value.siVal = g.mem_temp_c
            else:
                fv.nvmlReturn = pynvml.NVML_SUCCESS
                fv.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
                fv.value.uiVal = g.instant_mw if fid == FI_INSTANT else g.average_mw
        return values

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu, /) -> int:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetPowerUsage")
        return g.average_mw if g.usage_is_average else g.instant_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu, /) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int, /) -> int:  # noqa: N802
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperature").temp_c

    def nvmlDeviceGetTemperatureV(self, handle: FakeGpu, sensor: int, /) -> int:  # noqa: N802
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperatureV").temp_c

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu, /) -> Any:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        util = pynvml.c_nvmlUtilization_t()
        util.gpu, util.memory = g.util_gpu, g.util_mem
        return util

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeGpu, /) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeGpu, /) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").reasons

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu, /) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: FakeGpu, /) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetPowerManagementDefaultLimit").default_limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(  # noqa: N802
        self, handle: FakeGpu, /
    ) -> list[int]:
        g = self._gpu(handle, "nvmlDeviceGetPowerManagementLimitConstraints")
        return [g.min_limit_mw, g.max_limit_mw]

    # health
    def nvmlDeviceGetEccMode(self, handle: FakeGpu, /) -> list[int]:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetEccMode")
        mode = pynvml.NVML_FEATURE_ENABLED if g.ecc_enabled else pynvml.NVML_FEATURE_DISABLED
        return [mode, mode]

    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: FakeGpu, error_type: int, counter_type: int, /
    ) -> int:
        g = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return g.ecc_corrected
        return g.ecc_uncorrected

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeGpu, /) -> int:  # noqa: N802
        self._gpu(handle, "nvmlDeviceGetSupportedEventTypes")
        return int(pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeClock)

    def nvmlEventSetCreate(self) -> FakeEventSet:  # noqa: N802
        self._system("nvmlEventSetCreate")
        return FakeEventSet()

    def nvmlDeviceRegisterEvents(  # noqa: N802
        self, handle: FakeGpu, event_types: int, event_set: FakeEventSet, /
    ) -> None:
        self._gpu(handle, "nvmlDeviceRegisterEvents")
        assert event_types == pynvml.nvmlEventTypeXidCriticalError
        event_set.gpus.append(handle)

    def nvmlEventSetWait(self, event_set: FakeEventSet, timeoutms: int, /) -> Any:  # noqa: N802
        self._system("nvmlEventSetWait")
        assert timeoutms == 0, "the agent must never block on events"
        for g in event_set.gpus:
            if g.fail_all is not None:
                raise pynvml.NVMLError(g.fail_all)
            if g.xids:
                data = pynvml.c_nvmlEventData_t()
                data.eventType = pynvml.nvmlEventTypeXidCriticalError
                data.eventData = g.xids.pop(0)
                return data
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: FakeEventSet, /) -> None:  # noqa: N802
        self._system("nvmlEventSetFree")


# The module's constants, by value, exactly as the installed nvidia-ml-py defines them.
for _name in dir(pynvml):
    if _name.startswith(("NVML_", "nvmlEventType")) and isinstance(getattr(pynvml, _name), int):
        setattr(FakeNvml, _name, getattr(pynvml, _name))


# --- GPUs -----------------------------------------------------------------------------------


def make_gpu(defaults: dict[str, Any], overrides: dict[str, Any]) -> FakeGpu:
    return FakeGpu(**{**defaults, **overrides})


def h100(i: int = 0, **kw: Any) -> FakeGpu:
    """H100 SXM (Hopper, PCI 0x2330): power fields in GPU scope; PowerUsage is the 1-s average."""
    return make_gpu(
        {
            "uuid": f"GPU-{i:x}1111111-aaaa-bbbb-cccc-00000000000{i}",
            "name": "NVIDIA H100 80GB HBM3",
            "bus_id": f"00000000:{0x18 + i:02X}:00.0",
            "device_id": 0x2330,
            "arch": pynvml.NVML_DEVICE_ARCH_HOPPER,
            "usage_is_average": True,
            "fields": {(FI_INSTANT, SCOPE_GPU), (FI_AVERAGE, SCOPE_GPU), (FI_MEM_TEMP, 0)},
            "index": i,
        },
        kw,
    )


def a100(i: int = 0, **kw: Any) -> FakeGpu:
    """A100 SXM4 (GA100, PCI 0x20B2): no POWER_AVERAGE field; PowerUsage is instantaneous."""
    return make_gpu(
        {
            "uuid": f"GPU-{i:x}2222222-aaaa-bbbb-cccc-00000000000{i}",
            "name": "NVIDIA A100-SXM4-80GB",
            "bus_id": f"00000000:{0x18 + i:02X}:00.0",
            "device_id": 0x20B2,
            "arch": pynvml.NVML_DEVICE_ARCH_AMPERE,
            "usage_is_average": False,
            "fields": {(FI_INSTANT, SCOPE_GPU), (FI_MEM_TEMP, 0)},
            "index": i,
            "limit_mw": 400_000,
            "default_limit_mw": 400_000,
            "max_limit_mw": 400_000,
        },
        kw,
    )


def v100(i: int = 0, **kw: Any) -> FakeGpu:
    """V100 (Volta) on an old driver: no power fields, no memory temperature, no event-reasons
    call; PowerUsage is instantaneous."""
    return make_gpu(
        {
            "uuid": f"GPU-{i:x}3333333-aaaa-bbbb-cccc-00000000000{i}",
            "name": "Tesla V100-SXM2-32GB",
            "bus_id": f"00000000:{0x18 + i:02X}:00.0",
            "device_id": 0x1DB5,
            "arch": pynvml.NVML_DEVICE_ARCH_VOLTA,
            "usage_is_average": False,
            "fields": set(),
            "index": i,
            "errors": {
                "nvmlDeviceGetCurrentClocksEventReasons": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
            },
        },
        kw,
    )


def open_fake(fake: FakeNvml, **environ: str) -> NvmlBackend:
    api: NvmlApi = fake  # the fake must satisfy the protocol the backend is typed against
    return NvmlBackend(api, environ=environ)


def gpu(backend: NvmlBackend, i: int) -> NvmlDevice:
    return backend.nvml_devices()[i]


# --- architectures and power ----------------------------------------------------------------


def test_h100_reads_every_field_and_labels_power_usage_as_average() -> None:
    g = h100()
    backend = open_fake(FakeNvml([g]))
    dev = gpu(backend, 0)
    info = dev.info
    assert isinstance(dev, Device)
    assert info.uuid == g.uuid and info.index == 0 and info.name == g.name
    assert info.pci_bus_id == "00000000:18:00.0"
    assert info.pci_device_id == 0x2330 << 16 | NVIDIA
    assert info.memory_total_bytes == 80 * 2**30
    assert info.power_usage_is_average is True
    assert (info.power_limit_enforced_w, info.power_limit_default_w) == (700.0, 700.0)
    assert (info.power_limit_min_w, info.power_limit_max_w) == (200.0, 700.0)
    assert (info.sm_clock_max_mhz, info.mem_clock_max_mhz) == (1980, 2619)
    assert info.torch_index == 0
    caps = info.capabilities
    assert caps.power_instant and caps.power_average_1s and caps.energy_counter
    assert caps.memory_temperature and caps.throttle_reasons and caps.ecc
    assert caps.utilization and caps.clocks
    assert dev.power_scope == "gpu"

    s = dev.snapshot(123)
    assert s.timestamp_unix_ns == 123
    assert s.power_instant_w == pytest.approx(412.345)
    assert s.power_average_1s_w == pytest.approx(398.0)
    assert s.energy_j == 0.0  # energy since the run began
    assert (s.sm_clock_mhz, s.mem_clock_mhz) == (1980, 2619)
    assert (s.gpu_temperature_c, s.memory_temperature_c) == (51.0, 58.0)
    assert s.gpu_utilization_ratio == pytest.approx(0.97)
    assert s.memory_utilization_ratio == pytest.approx(0.41)
    assert s.throttle_reasons == 0x4
    assert s.power_limit_w == 700.0
    assert s.memory_used_bytes == 3 * 2**30

    g.energy_mj += 2500
    assert dev.snapshot(200).energy_j == pytest.approx(2.5)
    backend.close()


def test_h100_with_both_fields_never_calls_power_usage_per_tick() -> None:
    fake = FakeNvml([h100()])
    dev = gpu(open_fake(fake), 0)
    probes = fake.calls["nvmlDeviceGetPowerUsage"]
    for t in range(5):
        dev.snapshot(t)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == probes
    assert fake.calls["nvmlDeviceGetFieldValues"] >= 5


def test_a100_power_usage_is_instant_and_average_is_absent() -> None:
    fake = FakeNvml([a100()])
    dev = gpu(open_fake(fake), 0)
    assert dev.info.power_usage_is_average is False
    assert dev.info.capabilities.power_instant is True
    assert dev.info.capabilities.power_average_1s is False
    s = dev.snapshot(1)
    assert s.power_instant_w == pytest.approx(412.345)  # from the INSTANT field
    assert s.power_average_1s_w is None  # absent, not 0 and not the instant value
    assert s.power_limit_w == 400.0


def test_volta_without_fields_falls_back_to_power_usage_as_instant() -> None:
    fake = FakeNvml([v100()])
    dev = gpu(open_fake(fake), 0)
    assert dev.power_scope is None
    assert dev.info.capabilities.power_instant is True
    assert dev.info.capabilities.power_average_1s is False
    assert dev.info.capabilities.memory_temperature is False
    s = dev.snapshot(1)
    assert s.power_instant_w == pytest.approx(412.345)
    assert s.power_average_1s_w is None
    # Event-reasons is missing from this driver: the deprecated throttle call answers.
    assert s.throttle_reasons == 0x4
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] >= 2


def test_missing_memory_temperature_is_none_not_zero() -> None:
    g = h100()
    g.fields.discard((FI_MEM_TEMP, 0))
    fake = FakeNvml([g])
    dev = gpu(open_fake(fake), 0)
    assert dev.info.capabilities.memory_temperature is False
    assert "memory_temperature_field" in dev.missing()
    s = dev.snapshot(1)
    assert s.memory_temperature_c is None
    assert "memory_temperature_c" not in s.available()
    assert s.gpu_temperature_c == 51.0


@pytest.mark.parametrize(
    ("device_id", "arch", "name", "expected"),
    [
        (0x2330, pynvml.NVML_DEVICE_ARCH_HOPPER, "NVIDIA H100 80GB HBM3", True),
        (0x2B85, pynvml.NVML_DEVICE_ARCH_BLACKWELL, "NVIDIA B200", True),
        (0x26B9, pynvml.NVML_DEVICE_ARCH_ADA, "NVIDIA L40S", True),
        (0x2235, pynvml.NVML_DEVICE_ARCH_AMPERE, "NVIDIA A40", True),  # GA102: average
        (0x20B2, pynvml.NVML_DEVICE_ARCH_AMPERE, "NVIDIA A100-SXM4-80GB", False),  # GA100
        (0x20B7, pynvml.NVML_DEVICE_ARCH_AMPERE, "NVIDIA A30", False),  # GA100
        (0x1DB5, pynvml.NVML_DEVICE_ARCH_VOLTA, "Tesla V100-SXM2-32GB", False),
        (0x1EB8, pynvml.NVML_DEVICE_ARCH_TURING, "Tesla T4", False),
        (0x2330, pynvml.NVML_DEVICE_ARCH_UNKNOWN, "?", False),
    ],
)
def test_power_usage_label_follows_nvml_documentation(
    device_id: int, arch: int, name: str, expected: bool
) -> None:
    g = v100(device_id=device_id, arch=arch, name=name, usage_is_average=expected)
    dev = gpu(open_fake(FakeNvml([g])), 0)
    assert dev.info.power_usage_is_average is expected
    s = dev.snapshot(1)
    if expected:
        assert s.power_instant_w is None
        assert s.power_average_1s_w == pytest.approx(398.0)
    else:
        assert s.power_instant_w == pytest.approx(412.345)
        assert s.power_average_1s_w is None


def test_ampere_without_pci_id_recognises_ga100_by_name() -> None:
    g = a100(errors={"nvmlDeviceGetPciInfo": pynvml.NVML_ERROR_NO_PERMISSION})
    dev = gpu(open_fake(FakeNvml([g])), 0)
    assert dev.info.pci_device_id is None and dev.info.pci_bus_id == ""
    assert dev.info.power_usage_is_average is False


# --- field values with per-field errors -----------------------------------------------------


def test_gpu_scope_refused_per_field_falls_back_to_module_scope() -> None:
    g = h100(
        field_errors={
            (FI_INSTANT, SCOPE_GPU): pynvml.NVML_ERROR_INVALID_ARGUMENT,
            (FI_AVERAGE, SCOPE_GPU): pynvml.NVML_ERROR_NO_PERMISSION,
        }
    )
    g.fields |= {(FI_INSTANT, SCOPE_MODULE), (FI_AVERAGE, SCOPE_MODULE)}
    dev = gpu(open_fake(FakeNvml([g])), 0)
    assert dev.power_scope == "module"
    s = dev.snapshot(1)
    assert s.power_instant_w == pytest.approx(412.345)
    assert s.power_average_1s_w == pytest.approx(398.0)


def test_power_fields_never_mix_scopes() -> None:
    # GPU scope answers only the instant field; module scope would answer both. Mixing them
    # would put GPU-only and GPU+CPU power side by side, so the average comes from
    # nvmlDeviceGetPowerUsage (a 1-s average on Hopper) instead.
    g = h100()
    g.fields = {(FI_INSTANT, SCOPE_GPU), (FI_INSTANT, SCOPE_MODULE), (FI_AVERAGE, SCOPE_MODULE)}
    g.average_mw = 390_000
    fake = FakeNvml([g])
    dev = gpu(open_fake(fake), 0)
    assert dev.power_scope == "gpu"
    s = dev.snapshot(1)
    assert s.power_instant_w == pytest.approx(412.345)
    assert s.power_average_1s_w == pytest.approx(390.0)
    assert dev.info.capabilities.power_average_1s is True


def test_per_field_error_during_a_tick_gives_none_for_that_tick_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = h100()
    dev = gpu(open_fake(FakeNvml([g])), 0)
    g.field_errors[(FI_INSTANT, SCOPE_GPU)] = pynvml.NVML_ERROR_UNKNOWN
    with caplog.at_level(logging.WARNING, logger="flopwatt.agent.devices.nvml"):
        s1 = dev.snapshot(1)
        s2 = dev.snapshot(2)
    assert s1.power_instant_w is None and s2.power_instant_w is None
    assert s1.power_average_1s_w == pytest.approx(398.0)
    assert sum("power_instant" in r.getMessage() for r in caplog.records) == 1  # logged once
    del g.field_errors[(FI_INSTANT, SCOPE_GPU)]
    assert dev.snapshot(3).power_instant_w == pytest.approx(412.345)


def test_per_field_gpu_lost_raises_device_lost() -> None:
    g = h100()
    dev = gpu(open_fake(FakeNvml([g])), 0)
    g.field_errors[(FI_AVERAGE, SCOPE_GPU)] = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(DeviceLost):
        dev.snapshot(1)
    assert dev.lost


def test_field_values_call_missing_in_driver_falls_back() -> None:
    g = h100(errors={"nvmlDeviceGetFieldValues": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
    fake = FakeNvml([g])
    dev = gpu(open_fake(fake), 0)
    assert dev.power_scope is None
    assert dev.info.capabilities.power_instant is False  # Hopper PowerUsage is the average
    assert dev.info.capabilities.power_average_1s is True
    calls = fake.calls["nvmlDeviceGetFieldValues"]
    s = dev.snapshot(1)
    assert s.power_instant_w is None
    assert s.power_average_1s_w == pytest.approx(398.0)
    assert s.memory_temperature_c is None
    assert fake.calls["nvmlDeviceGetFieldValues"] == calls  # not retried per tick


# --- lost GPUs, resets, permissions ---------------------------------------------------------


def test_gpu_lost_mid_run_others_keep_working() -> None:
    gpus = [h100(0), h100(1), h100(2)]
    fake = FakeNvml(gpus)
    backend = open_fake(fake)
    devs = backend.nvml_devices()
    for d in devs:
        d.snapshot(1)
    gpus[1].fail_all = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(DeviceLost, match=gpus[1].uuid):
        devs[1].snapshot(2)
    calls = fake.calls[f"nvmlDeviceGetClockInfo@{gpus[1].uuid}"]
    with pytest.raises(DeviceLost):
        devs[1].snapshot(3)  # stays lost without touching NVML again
    with pytest.raises(DeviceLost):
        devs[1].health()
    assert fake.calls[f"nvmlDeviceGetClockInfo@{gpus[1].uuid}"] == calls
    for d in (devs[0], devs[2]):
        assert d.snapshot(4).power_instant_w == pytest.approx(412.345)
    assert [d.lost for d in devs] == [False, True, False]


def test_gpu_lost_at_open_is_skipped() -> None:
    gpus = [h100(0), h100(1)]
    gpus[0].errors["nvmlDeviceGetUUID"] = pynvml.NVML_ERROR_GPU_IS_LOST
    backend = open_fake(FakeNvml(gpus))
    assert [d.info.uuid for d in backend.devices()] == [gpus[1].uuid]
    assert backend.device(gpus[1].uuid).info.index == 1
    with pytest.raises(KeyError):
        backend.device(gpus[0].uuid)


def test_gpu_lost_while_probing_is_skipped() -> None:
    gpus = [h100(0), h100(1)]
    gpus[1].errors["nvmlDeviceGetTotalEnergyConsumption"] = pynvml.NVML_ERROR_GPU_IS_LOST
    backend = open_fake(FakeNvml(gpus))
    assert [d.info.uuid for d in backend.devices()] == [gpus[0].uuid]


def test_gpu_hidden_by_permission_is_skipped() -> None:
    gpus = [h100(0), h100(1)]
    gpus[0].errors["nvmlDeviceGetHandleByIndex"] = pynvml.NVML_ERROR_NO_PERMISSION
    backend = open_fake(FakeNvml(gpus))
    assert [d.info.uuid for d in backend.devices()] == [gpus[1].uuid]


def test_energy_counter_reset_after_driver_reload_is_folded_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = h100(energy_mj=1_000_000)
    dev = gpu(open_fake(FakeNvml([g])), 0)
    readings: list[float | None] = []
    with caplog.at_level(logging.WARNING, logger="flopwatt.agent.devices.nvml"):
        for raw_mj in (1_000_000, 1_500_000, 10_000, 30_000):  # driver reloaded before the 3rd
            g.energy_mj = raw_mj
            readings.append(dev.snapshot(len(readings)).energy_j)
    assert readings == pytest.approx([0.0, 500.0, 510.0, 530.0])
    assert any("energy counter went backwards" in r.getMessage() for r in caplog.records)


def test_no_permission_at_probe_leaves_reading_absent_and_never_retried() -> None:
    g = h100(errors={"nvmlDeviceGetTotalEnergyConsumption": pynvml.NVML_ERROR_NO_PERMISSION})
    fake = FakeNvml([g])
    dev = gpu(open_fake(fake), 0)
    assert dev.info.capabilities.energy_counter is False
    assert dev.missing()["energy"] == "no permission"
    for t in range(3):
        s = dev.snapshot(t)
        assert s.energy_j is None
        assert s.power_instant_w is not None
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1  # the probe only


def test_no_permission_mid_run_gives_none_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    g = h100()
    dev = gpu(open_fake(FakeNvml([g])), 0)
    g.errors["nvmlDeviceGetUtilizationRates"] = pynvml.NVML_ERROR_NO_PERMISSION
    with caplog.at_level(logging.WARNING, logger="flopwatt.agent.devices.nvml"):
        snaps = [dev.snapshot(t) for t in range(3)]
    assert all(s.gpu_utilization_ratio is None for s in snaps)
    assert all(s.memory_utilization_ratio is None for s in snaps)
    assert all(s.sm_clock_mhz == 1980 for s in snaps)
    assert sum("utilization" in r.getMessage() for r in caplog.records) == 1


def test_unknown_error_is_transient_until_every_reading_fails_repeatedly() -> None:
    g = h100()
    dev = gpu(open_fake(FakeNvml([g])), 0)
    # One reading failing with UNKNOWN: absent this tick, the GPU is not lost.
    g.errors["nvmlDeviceGetClockInfo"] = pynvml.NVML_ERROR_UNKNOWN
    for t in range(UNRESPONSIVE_TICKS + 1):
        assert dev.snapshot(t).sm_clock_mhz is None
    # Everything failing with UNKNOWN: lost after UNRESPONSIVE_TICKS ticks, not before.
    g.fail_all = pynvml.NVML_ERROR_UNKNOWN
    for t in range(UNRESPONSIVE_TICKS - 1):
        assert dev.snapshot(t).available() == frozenset()
    with pytest.raises(DeviceLost, match="every reading failed"):
        dev.snapshot(99)


def test_driver_gone_during_a_tick_reports_the_gpu_lost() -> None:
    g = h100()
    dev = gpu(open_fake(FakeNvml([g])), 0)
    g.fail_all = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(DeviceLost):
        dev.snapshot(1)


def test_readings_not_supported_at_probe_are_not_attempted_per_tick() -> None:
    g = h100(
        errors={
            "nvmlDeviceGetUtilizationRates": pynvml.NVML_ERROR_NOT_SUPPORTED,
            "nvmlDeviceGetTemperatureV": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        }
    )
    fake = FakeNvml([g])
    dev = gpu(open_fake(fake), 0)
    assert dev.info.capabilities.utilization is False
    before = Counter(fake.calls)
    for t in range(4):
        s = dev.snapshot(t)
        assert s.gpu_utilization_ratio is None
        assert s.gpu_temperature_c == 51.0  # the deprecated call answers instead
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == before["nvmlDeviceGetUtilizationRates"]
    assert fake.calls["nvmlDeviceGetTemperatureV"] == before["nvmlDeviceGetTemperatureV"]
    assert fake.calls["nvmlDeviceGetTemperature"] == before["nvmlDeviceGetTemperature"] + 4


# --- health: ECC and XID --------------------------------------------------------------------


def test_health_reads_ecc_and_drains_xid_events() -> None:
    g = h100(ecc_corrected=7, ecc_uncorrected=1)
    dev = gpu(open_fake(FakeNvml([g])), 0)
    h = dev.health()
    assert (h.ecc_corrected_volatile, h.ecc_uncorrected_volatile) == (7, 1)
    assert h.xid_counts == {}
    g.xids += [79, 48, 48]
    assert dict(dev.health().xid_counts or {}) == {79: 1, 48: 2}
    assert dict(dev.health().xid_counts or {}) == {79: 1, 48: 2}  # counts since open


def test_health_without_ecc_or_events_is_absent() -> None:
    g = a100(
        ecc_enabled=False,
        errors={"nvmlDeviceGetSupportedEventTypes": pynvml.NVML_ERROR_NOT_SUPPORTED},
    )
    dev = gpu(open_fake(FakeNvml([g])), 0)
    assert dev.info.capabilities.ecc is False
    h = dev.health()
    assert (h.ecc_corrected_volatile, h.ecc_uncorrected_volatile, h.xid_counts) == (None,) * 3
    assert dev.missing()["ecc"] == "ECC disabled"


def test_health_reports_a_lost_gpu() -> None:
    g = h100()
    dev = gpu(open_fake(FakeNvml([g])), 0)
    g.fail_all = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(DeviceLost):
        dev.health()
    with pytest.raises(DeviceLost):
        dev.snapshot(1)


# --- CUDA_VISIBLE_DEVICES -------------------------------------------------------------------

UUIDS = [
    "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6",
    "GPU-8932aaaa-0000-0000-0000-000000000001",
    "GPU-1234bbbb-0000-0000-0000-000000000002",
]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, {UUIDS[0]: 0, UUIDS[1]: 1, UUIDS[2]: 2}),
        ("", {}),
        ("2,0", {UUIDS[2]: 0, UUIDS[0]: 1}),
        (" 1 ", {UUIDS[1]: 0}),
        (UUIDS[1], {UUIDS[1]: 0}),
        ("GPU-1234,GPU-8932f", {UUIDS[2]: 0, UUIDS[0]: 1}),  # unique prefixes
        ("GPU-8932aaaa-0000-0000-0000-000000000001".upper(), {UUIDS[1]: 0}),
        ("0,2,-1,1", {UUIDS[0]: 0, UUIDS[2]: 1}),  # CUDA's own example: stop at -1
        ("0,7,1", {UUIDS[0]: 0}),  # out of range
        ("GPU-8932,2", {}),  # ambiguous prefix stops parsing
        ("1,1,2", {UUIDS[1]: 0}),  # a repeat stops parsing
        ("0,foo,1", {UUIDS[0]: 0}),
        ("MIG-GPU-8932f937-d72c-4106-c12f-20bd9faed9f6/1/0", {}),
        ("0,MIG-a1b2c3d4-0000-0000-0000-000000000000", {}),
    ],
)
def test_cuda_visible_devices_mapping(visible: str | None, expected: dict[str, int]) -> None:
    assert cuda_visible_torch_indices(visible, UUIDS) == expected


def test_backend_applies_cuda_visible_devices_by_index_and_uuid() -> None:
    gpus = [h100(0), h100(1), h100(2)]
    by_index = open_fake(FakeNvml(gpus), CUDA_VISIBLE_DEVICES="2,1")
    assert [d.info.torch_index for d in by_index.devices()] == [-1, 1, 0]
    by_uuid = open_fake(FakeNvml(gpus), CUDA_VISIBLE_DEVICES=gpus[2].uuid[:12])
    assert [d.info.torch_index for d in by_uuid.devices()] == [-1, -1, 0]
    unset = open_fake(FakeNvml(gpus))
    assert [d.info.torch_index for d in unset.devices()] == [0, 1, 2]


def test_cuda_order_is_pci_bus_order_not_nvml_order() -> None:
    gpus = [h100(0), h100(1)]
    gpus[0].bus_id, gpus[1].bus_id = "00000000:9A:00.0", "00000000:18:00.0"
    backend = open_fake(FakeNvml(gpus), CUDA_VISIBLE_DEVICES="0")
    assert [d.info.torch_index for d in backend.devices()] == [-1, 0]


# --- opening, closing, software -------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH,
        pynvml.NVML_ERROR_UNKNOWN,
    ],
)
def test_init_failure_is_backend_unavailable(code: int) -> None:
    fake = FakeNvml([h100()], init_error=code)
    with pytest.raises(BackendUnavailable, match="cannot initialise"):
        open_fake(fake)
    assert fake.calls["nvmlShutdown"] == 0


def test_zero_gpus_is_backend_unavailable_and_shuts_down() -> None:
    fake = FakeNvml([])
    with pytest.raises(BackendUnavailable, match="no usable GPU"):
        NvmlBackend.open(nvml=fake, environ={})
    assert fake.calls["nvmlShutdown"] == 1


def test_every_gpu_lost_at_open_is_backend_unavailable() -> None:
    fake = FakeNvml([h100(0, fail_all=pynvml.NVML_ERROR_GPU_IS_LOST)])
    with pytest.raises(BackendUnavailable):
        open_fake(fake)
    assert fake.calls["nvmlShutdown"] == 1


def test_open_without_nvidia_ml_py_is_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(BackendUnavailable, match="not installed"):
        NvmlBackend.open()


def test_open_with_the_real_pynvml_opens_or_is_unavailable() -> None:
    """On a machine without the NVML library (CI), the real module fails cleanly."""
    try:
        backend = open_backend("nvml")
    except BackendUnavailable:
        return
    try:
        assert backend.devices()
    finally:
        backend.close()


def test_close_shuts_nvml_down_once_and_frees_event_sets() -> None:
    fake = FakeNvml([h100(0), h100(1)])
    backend = open_fake(fake)
    dev = gpu(backend, 0)
    backend.close()
    backend.close()
    assert fake.calls["nvmlShutdown"] == 1
    assert fake.calls["nvmlEventSetFree"] == 2
    with pytest.raises(DeviceLost):
        dev.snapshot(1)


def test_software_versions() -> None:
    fake = FakeNvml([h100()], driver="570.86.15", cuda=12080)
    sw = open_fake(fake).software()
    assert sw.driver_version == "570.86.15"
    assert sw.cuda_version == "12.8"
    assert sw.nvml_version == "12.570.86.15"
    assert sw.python_version


def test_software_falls_back_to_unversioned_cuda_call() -> None:
    fake = FakeNvml([h100()], cuda=11040)
    fake.system_errors["nvmlSystemGetCudaDriverVersion_v2"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    assert open_fake(fake).software().cuda_version == "11.4"


# --- the error table ------------------------------------------------------------------------

EXPECTED = {
    "NVML_ERROR_GPU_IS_LOST": DeviceLost,
    "NVML_ERROR_RESET_REQUIRED": DeviceLost,
    "NVML_ERROR_GPU_NOT_FOUND": DeviceLost,
    "NVML_ERROR_NOT_SUPPORTED": NotSupported,
    "NVML_ERROR_FUNCTION_NOT_FOUND": NotSupported,
    "NVML_ERROR_INVALID_ARGUMENT": NotSupported,
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": NotSupported,
    "NVML_ERROR_DEPRECATED": NotSupported,
    "NVML_ERROR_NO_PERMISSION": PermissionDenied,
    "NVML_ERROR_OPERATING_SYSTEM": PermissionDenied,
    "NVML_ERROR_UNINITIALIZED": BackendUnavailable,
    "NVML_ERROR_LIBRARY_NOT_FOUND": BackendUnavailable,
    "NVML_ERROR_DRIVER_NOT_LOADED": BackendUnavailable,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": BackendUnavailable,
}


def test_error_table_is_the_documented_one_and_names_real_constants() -> None:
    assert dict(NVML_ERROR_TABLE) == EXPECTED
    for name in NVML_ERROR_TABLE:
        assert isinstance(getattr(pynvml, name), int), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_mapped_code(name: str) -> None:
    code = getattr(pynvml, name)
    err = pynvml.NVMLError(code)
    assert type(err) is not pynvml.NVMLError  # nvidia-ml-py's per-code subclass
    mapped = map_nvml_error(err.value, nvml_error_codes(pynvml), "call")
    assert type(mapped) is EXPECTED[name]

    # And through a live tick: lost and unavailable stop the GPU; the rest leave a gap.
    g = h100()
    dev = gpu(open_fake(FakeNvml([g])), 0)
    g.errors["nvmlDeviceGetClockInfo"] = code
    if EXPECTED[name] in (DeviceLost, BackendUnavailable):
        with pytest.raises(DeviceLost):
            dev.snapshot(1)
    else:
        s = dev.snapshot(1)
        assert s.sm_clock_mhz is None and s.power_instant_w is not None


@pytest.mark.parametrize(
    "name", ["NVML_ERROR_UNKNOWN", "NVML_ERROR_TIMEOUT", "NVML_ERROR_MEMORY", "NVML_ERROR_NO_DATA"]
)
def test_unmapped_codes_are_plain_device_errors(name: str) -> None:
    mapped = map_nvml_error(getattr(pynvml, name), nvml_error_codes(pynvml), "call")
    assert type(mapped) is DeviceError
    assert type(map_nvml_error(None, {}, "call")) is DeviceError


def test_error_table_skips_names_an_old_pynvml_lacks() -> None:
    class OldModule:
        NVML_ERROR_GPU_IS_LOST = 15

    assert nvml_error_codes(OldModule()) == {15: DeviceLost}


def test_field_value_structure_is_pynvmls() -> None:
    # The fake hands out real ctypes structures; make sure their layout is what we decode.
    fv = pynvml.c_nvmlFieldValue_t()
    names = {n for n, *_ in fv._fields_}
    assert {"fieldId", "scopeId", "valueType", "nvmlReturn", "value"} <= names
    assert isinstance(fv.value, ctypes.Union)
