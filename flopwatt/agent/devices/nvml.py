"""NVIDIA GPUs through NVML: the one module that imports ``pynvml`` (from ``nvidia-ml-py``).

Everything NVML is owned here: NVML is initialised once per :class:`NvmlBackend` and shut down
once by :meth:`NvmlBackend.close`; every call goes through one choke point (:class:`_Nvml`) that
maps NVML error codes to our few exception types with one table (:data:`NVML_ERROR_TABLE`);
optional functions and readings are probed once per device at open, cached in
:class:`~flopwatt.records.DeviceCapabilities`, and a missing one is logged once and never
attempted again.

Per sampler tick a device reads everything in one go (:meth:`NvmlDevice.snapshot`):

* power, instant and 1-s average as separate readings, from NVML field values
  ``NVML_FI_DEV_POWER_INSTANT`` / ``NVML_FI_DEV_POWER_AVERAGE`` (mW) with GPU scope, module scope
  only where GPU scope is refused. Where a field is missing, ``nvmlDeviceGetPowerUsage`` (mW)
  fills the reading it really is: NVML documents it as a 1-s average on Ampere except GA100 and
  newer, instantaneous on GA100 (A100, A30) and older;
* energy from ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load, Volta+), folded
  through :class:`~flopwatt.agent.devices.base.EnergyAccumulator` so a driver reload does not
  produce negative energy;
* SM / memory clocks (MHz), GPU temperature and memory temperature (°C, the latter a field
  value), utilisation (percent → ratio), the clock-event (throttle) reasons bitmask, the
  enforced power limit (mW → W) and memory used (bytes).

GPM pipe activity (Hopper and newer, not under MIG) is read per tick pair by
:class:`~flopwatt.agent.devices.nvml_gpm.GpmReader`; the probe says why where it is absent.

ECC volatile error counts and XID events are read only where cheap, by :meth:`NvmlDevice.health`
(the :class:`~flopwatt.agent.devices.base.Snapshot` has no fields for them).

Which processes use a GPU (:meth:`NvmlDevice.compute_processes`, the
:class:`~flopwatt.agent.devices.base.ProcessLister` of the attribution thread, every few seconds)
comes from ``nvmlDeviceGetComputeRunningProcesses`` (memory per process) and
``nvmlDeviceGetProcessUtilization`` (SM utilisation per process since the previous call). Both
are probed on first use rather than at open, so a node that never attributes never asks.

Devices are keyed by UUID; ``CUDA_VISIBLE_DEVICES`` decides each GPU's torch index
(:func:`cuda_visible_torch_indices`). The NVML module is injected (``NvmlBackend(nvml=...)``) so
tests run against a typed fake; :meth:`NvmlBackend.open` imports the real ``pynvml``. No state
lives at module level.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from flopwatt.agent.devices.base import (
    BackendUnavailable,
    Device,
    DeviceError,
    DeviceLost,
    EnergyAccumulator,
    NotSupported,
    PermissionDenied,
    Snapshot,
)
from flopwatt.agent.devices.nvml_gpm import GpmReader
from flopwatt.records import (
    DeviceCapabilities,
    DeviceInfo,
    DeviceKind,
    GpuProcess,
    SoftwareVersions,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# --- the NVML surface we use ----------------------------------------------------------------


class NvmlFieldValue(Protocol):
    """What we read of ``c_nvmlFieldValue_t``."""

    fieldId: int  # noqa: N815 (NVML's names)
    scopeId: int  # noqa: N815
    valueType: int  # noqa: N815
    nvmlReturn: int  # noqa: N815
    value: Any
    """The ``c_nvmlValue_t`` union; the member to read depends on ``valueType``."""


class NvmlPciInfo(Protocol):
    """What we read of ``nvmlPciInfo_t``."""

    busId: bytes  # noqa: N815
    pciDeviceId: int  # noqa: N815


class NvmlMemory(Protocol):
    """What we read of ``c_nvmlMemory_t`` (bytes)."""

    total: int
    used: int


class NvmlUtilization(Protocol):
    """What we read of ``c_nvmlUtilization_t`` (percent)."""

    gpu: int
    memory: int


class NvmlEventData(Protocol):
    """What we read of ``c_nvmlEventData_t``."""

    eventType: int  # noqa: N815
    eventData: int  # noqa: N815


class NvmlProcessInfo(Protocol):
    """What we read of one entry of ``nvmlDeviceGetComputeRunningProcesses`` (pynvml's friendly
    object made from ``c_nvmlProcessInfo_t``; ``gpuInstanceId`` / ``computeInstanceId`` are not
    read)."""

    pid: int
    usedGpuMemory: int | None  # noqa: N815
    """Bytes; None where NVML says ``NVML_VALUE_NOT_AVAILABLE`` (pynvml maps it to None)."""


class NvmlProcessUtilizationSample(Protocol):
    """What we read of ``c_nvmlProcessUtilizationSample_t``."""

    pid: int
    timeStamp: int  # noqa: N815
    """CPU time of the sample (µs), comparable with the ``lastSeenTimeStamp`` argument."""
    smUtil: int  # noqa: N815
    """Percent of the sample period in which a kernel of this process ran on the SMs."""


class NvmlApi(Protocol):
    """The part of the ``pynvml`` module this backend calls (signatures as in nvidia-ml-py).

    Constants are not listed: they are resolved by name once (:class:`_Constants`), so an older
    ``pynvml`` that lacks a newer one degrades to "not supported" instead of failing. Functions
    newer than nvidia-ml-py 12.535 are looked up the same way (:meth:`_Nvml.optional`).
    """

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...  # noqa: N802 (NVML's names throughout)
    def nvmlShutdown(self) -> None: ...  # noqa: N802
    def nvmlSystemGetDriverVersion(self) -> str: ...  # noqa: N802
    def nvmlSystemGetNVMLVersion(self) -> str: ...  # noqa: N802
    def nvmlSystemGetCudaDriverVersion(self) -> int: ...  # noqa: N802
    def nvmlDeviceGetCount(self) -> int: ...  # noqa: N802
    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> Any: ...  # noqa: N802
    def nvmlDeviceGetUUID(self, handle: Any, /) -> str: ...  # noqa: N802
    def nvmlDeviceGetName(self, handle: Any, /) -> str: ...  # noqa: N802
    def nvmlDeviceGetIndex(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetPciInfo(self, handle: Any, /) -> NvmlPciInfo: ...  # noqa: N802
    def nvmlDeviceGetArchitecture(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetMemoryInfo(self, handle: Any, /) -> NvmlMemory: ...  # noqa: N802
    def nvmlDeviceGetMaxClockInfo(self, handle: Any, type: int, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetClockInfo(self, handle: Any, type: int, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetFieldValues(  # noqa: N802
        self, handle: Any, field_ids: list[tuple[int, int]], /
    ) -> Sequence[NvmlFieldValue]: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetUtilizationRates(self, handle: Any, /) -> NvmlUtilization: ...  # noqa: N802
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlDeviceGetPowerManagementLimitConstraints(  # noqa: N802
        self, handle: Any, /
    ) -> list[int]: ...
    def nvmlDeviceGetEccMode(self, handle: Any, /) -> list[int]: ...  # noqa: N802
    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: Any, error_type: int, counter_type: int, /
    ) -> int: ...
    def nvmlDeviceGetSupportedEventTypes(self, handle: Any, /) -> int: ...  # noqa: N802
    def nvmlEventSetCreate(self) -> Any: ...  # noqa: N802
    def nvmlDeviceRegisterEvents(  # noqa: N802
        self, handle: Any, event_types: int, event_set: Any, /
    ) -> None: ...
    def nvmlEventSetWait(self, event_set: Any, timeoutms: int, /) -> NvmlEventData: ...  # noqa: N802
    def nvmlEventSetFree(self, event_set: Any, /) -> None: ...  # noqa: N802
    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: Any, /
    ) -> Sequence[NvmlProcessInfo]: ...
    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self, handle: Any, last_seen_us: int, /
    ) -> Sequence[NvmlProcessUtilizationSample]: ...


# --- errors: one table ----------------------------------------------------------------------

#: NVML error-code name → our exception type. Codes not listed map to plain
#: :class:`~flopwatt.agent.devices.base.DeviceError`: "this reading failed this time".
#:
#: ``NVML_ERROR_UNKNOWN`` is deliberately not ``DeviceLost``: drivers return it for transient
#: hiccups as well as for dying GPUs, and declaring a healthy GPU lost would stop sampling it for
#: the rest of the run. A device whose every reading fails with such errors for
#: :data:`UNRESPONSIVE_TICKS` ticks in a row is declared lost instead.
NVML_ERROR_TABLE: Mapping[str, type[DeviceError]] = MappingProxyType(
    {
        "NVML_ERROR_GPU_IS_LOST": DeviceLost,
        # The GPU needs a reset (after some XIDs): nothing reads again until an operator acts.
        "NVML_ERROR_RESET_REQUIRED": DeviceLost,
        "NVML_ERROR_GPU_NOT_FOUND": DeviceLost,
        "NVML_ERROR_NOT_SUPPORTED": NotSupported,
        # The driver's libnvidia-ml lacks the symbol (older driver than nvidia-ml-py).
        "NVML_ERROR_FUNCTION_NOT_FOUND": NotSupported,
        # Older drivers answer unknown field ids / scope ids and versioned structs this way.
        "NVML_ERROR_INVALID_ARGUMENT": NotSupported,
        "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": NotSupported,
        "NVML_ERROR_DEPRECATED": NotSupported,
        "NVML_ERROR_NO_PERMISSION": PermissionDenied,
        "NVML_ERROR_OPERATING_SYSTEM": PermissionDenied,
        "NVML_ERROR_UNINITIALIZED": BackendUnavailable,
        "NVML_ERROR_LIBRARY_NOT_FOUND": BackendUnavailable,
        "NVML_ERROR_DRIVER_NOT_LOADED": BackendUnavailable,
        # Driver upgraded without a reboot: user-space library and kernel module disagree.
        "NVML_ERROR_LIB_RM_VERSION_MISMATCH": BackendUnavailable,
    }
)

#: Consecutive ticks in which every attempted reading failed with an unmapped error (e.g.
#: ``NVML_ERROR_UNKNOWN``) after which a device is declared lost.
UNRESPONSIVE_TICKS = 3

HEALTH_INTERVAL_S = 5.0
"""How often the health counters (ECC, row remapping, PCIe replays, NVLink errors, XID) are read;
between reads the last values are repeated (s)."""


def nvml_error_codes(nvml: object) -> dict[int, type[DeviceError]]:
    """:data:`NVML_ERROR_TABLE` keyed by the code values of ``nvml`` (a ``pynvml`` module or a
    fake); names the module lacks (older nvidia-ml-py) are skipped."""
    codes: dict[int, type[DeviceError]] = {}
    for name, kind in NVML_ERROR_TABLE.items():
        code = getattr(nvml, name, None)
        if isinstance(code, int):
            codes[code] = kind
    return codes


def map_nvml_error(
    code: int | None, codes: Mapping[int, type[DeviceError]], what: str
) -> DeviceError:
    """Our exception for NVML error ``code`` (from :func:`nvml_error_codes`); ``what`` names the
    call for the message. Unmapped codes give a plain :class:`DeviceError`."""
    kind = codes.get(code, DeviceError) if code is not None else DeviceError
    return kind(f"{what}: NVML error {code}")


# --- constants, resolved once by name -------------------------------------------------------


@dataclass(frozen=True)
class _Constants:
    """The NVML constants we use, read from the module (never hard-coded here)."""

    success: int
    error_timeout: int | None
    error_not_found: int | None
    fi_power_instant: int | None
    fi_power_average: int | None
    fi_memory_temp: int | None
    scope_gpu: int | None
    scope_module: int | None
    value_members: Mapping[int, str]
    clock_sm: int
    clock_mem: int
    temperature_gpu: int
    arch_ampere: int | None
    arch_unknown: int | None
    feature_enabled: int
    ecc_corrected: int
    ecc_uncorrected: int
    ecc_volatile: int
    event_xid: int | None
    nvlink_counters: tuple[tuple[str, int], ...]
    """(telemetry column, NVML_NVLINK_ERROR_DL_* counter) for each per-link error counter the
    module names: CRC flit errors, replays, recoveries."""
    nvlink_max_links: int

    @classmethod
    def resolve(cls, nvml: object) -> _Constants:
        """Read the constants from ``nvml``.

        Raises:
            BackendUnavailable: the module lacks a constant every supported version has.
        """

        def need(name: str) -> int:
            value = getattr(nvml, name, None)
            if not isinstance(value, int):
                raise BackendUnavailable(f"pynvml lacks {name}; install nvidia-ml-py >= 12.535")
            return value

        def maybe(name: str) -> int | None:
            value = getattr(nvml, name, None)
            return value if isinstance(value, int) else None

        # c_nvmlValue_t members by NVML_VALUE_TYPE_*, as laid out in nvml.h.
        members = {
            "NVML_VALUE_TYPE_DOUBLE": "dVal",
            "NVML_VALUE_TYPE_UNSIGNED_INT": "uiVal",
            "NVML_VALUE_TYPE_UNSIGNED_LONG": "ulVal",
            "NVML_VALUE_TYPE_UNSIGNED_LONG_LONG": "ullVal",
            "NVML_VALUE_TYPE_SIGNED_LONG_LONG": "sllVal",
            "NVML_VALUE_TYPE_SIGNED_INT": "siVal",
            "NVML_VALUE_TYPE_UNSIGNED_SHORT": "usVal",
        }
        value_members = {
            code: member for name, member in members.items() if (code := maybe(name)) is not None
        }
        return cls(
            success=need("NVML_SUCCESS"),
            error_timeout=maybe("NVML_ERROR_TIMEOUT"),
            error_not_found=maybe("NVML_ERROR_NOT_FOUND"),
            fi_power_instant=maybe("NVML_FI_DEV_POWER_INSTANT"),
            fi_power_average=maybe("NVML_FI_DEV_POWER_AVERAGE"),
            fi_memory_temp=maybe("NVML_FI_DEV_MEMORY_TEMP"),
            scope_gpu=maybe("NVML_POWER_SCOPE_GPU"),
            scope_module=maybe("NVML_POWER_SCOPE_MODULE"),
            value_members=MappingProxyType(value_members),
            clock_sm=need("NVML_CLOCK_SM"),
            clock_mem=need("NVML_CLOCK_MEM"),
            temperature_gpu=need("NVML_TEMPERATURE_GPU"),
            arch_ampere=maybe("NVML_DEVICE_ARCH_AMPERE"),
            arch_unknown=maybe("NVML_DEVICE_ARCH_UNKNOWN"),
            feature_enabled=need("NVML_FEATURE_ENABLED"),
            ecc_corrected=need("NVML_MEMORY_ERROR_TYPE_CORRECTED"),
            ecc_uncorrected=need("NVML_MEMORY_ERROR_TYPE_UNCORRECTED"),
            ecc_volatile=need("NVML_VOLATILE_ECC"),
            event_xid=maybe("nvmlEventTypeXidCriticalError"),
            nvlink_counters=tuple(
                (column, counter)
                for column, name in (
                    ("nvlink_crc_errors_total", "NVML_NVLINK_ERROR_DL_CRC_FLIT"),
                    ("nvlink_replay_errors_total", "NVML_NVLINK_ERROR_DL_REPLAY"),
                    ("nvlink_recovery_errors_total", "NVML_NVLINK_ERROR_DL_RECOVERY"),
                )
                if (counter := maybe(name)) is not None
            ),
            nvlink_max_links=maybe("NVML_NVLINK_MAX_LINKS") or 18,
        )


# --- the choke point ------------------------------------------------------------------------


class _Nvml:
    """One initialised NVML session: every NVML call of this backend goes through :meth:`call`,
    which maps NVML errors to ours; optional functions are looked up once."""

    def __init__(self, nvml: NvmlApi, monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.api = nvml
        self.monotonic_ns = monotonic_ns
        """Times intervals (GPM sample pairs), immune to wall-clock steps."""
        self.const = _Constants.resolve(nvml)
        self.codes = nvml_error_codes(nvml)
        # pynvml raises NVMLLibraryMismatchError, which is not an NVMLError, where an unversioned
        # call (nvmlDeviceGetComputeRunningProcesses) finds the driver lacks the versioned
        # symbol: FUNCTION_NOT_FOUND in other words, caught here so that it maps like that code.
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        self._errors: tuple[type[Exception], ...] = (nvml.NVMLError,)
        if isinstance(mismatch, type) and issubclass(mismatch, Exception):
            self._errors += (mismatch,)
        self.closed = False
        self._optional: dict[str, Callable[..., Any] | None] = {}
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` with NVML errors mapped through :data:`NVML_ERROR_TABLE`.

        Raises:
            BackendUnavailable: the backend was closed, or NVML itself is unavailable.
            DeviceLost, NotSupported, PermissionDenied, DeviceError: as the table maps.
        """
        if self.closed:
            raise BackendUnavailable("the NVML backend is closed")
        try:
            return fn(*args)
        except self._errors as e:
            raise self._error(fn, e) from e

    def call_unless(self, quiet: Collection[int], fn: Callable[..., T], *args: Any) -> T | None:
        """As :meth:`call`, but None where NVML answers one of the ``quiet`` codes: answers that
        mean "nothing to report" for this call (an empty event set, no sample since a
        timestamp), not a failure.

        Raises:
            As :meth:`call`.
        """
        if self.closed:
            raise BackendUnavailable("the NVML backend is closed")
        try:
            return fn(*args)
        except self._errors as e:
            if getattr(e, "value", None) in quiet:
                return None
            raise self._error(fn, e) from e

    def _error(self, fn: Callable[..., Any], e: Exception) -> DeviceError:
        what = f"{getattr(fn, '__name__', fn)}: {e}"
        if not isinstance(e, self.api.NVMLError):
            return NotSupported(what)  # NVMLLibraryMismatchError: the driver lacks the symbol
        code = getattr(e, "value", None)
        return map_nvml_error(code if isinstance(code, int) else None, self.codes, what)

    def wait_event(self, event_set: Any) -> NvmlEventData | None:
        """One pending event from ``event_set`` without waiting; None when there is none
        (``NVML_ERROR_TIMEOUT`` is the normal answer of an empty event set, not an error).

        Raises:
            As :meth:`call`.
        """
        timeout = self.const.error_timeout
        quiet = () if timeout is None else (timeout,)
        return self.call_unless(quiet, self.api.nvmlEventSetWait, event_set, 0)

    def shutdown(self) -> None:
        """Refuse further calls, then shut NVML down (a failure is logged, not raised)."""
        if self.closed:
            return
        # Closed first, so a sampler thread racing with close gets BackendUnavailable from
        # call() instead of calling into a library that is being shut down.
        self.closed = True
        try:
            self.api.nvmlShutdown()
        except self.api.NVMLError as e:
            log.warning("nvmlShutdown failed: %s", e)

    def field_error(self, code: int, what: str) -> DeviceError:
        """Our exception for a per-field ``nvmlReturn`` code."""
        return map_nvml_error(code, self.codes, what)

    def optional(self, name: str) -> Callable[..., Any] | None:
        """The module function ``name``, or None when this nvidia-ml-py lacks it (logged once)."""
        with self._lock:
            if name not in self._optional:
                fn = getattr(self.api, name, None)
                self._optional[name] = fn if callable(fn) else None
                if fn is None:
                    log.info("pynvml has no %s (older nvidia-ml-py); using a fallback", name)
            return self._optional[name]


# --- CUDA_VISIBLE_DEVICES -------------------------------------------------------------------


def cuda_visible_torch_indices(visible: str | None, uuids: Sequence[str]) -> dict[str, int]:
    """Map GPUs to the torch (CUDA runtime) index they get under ``CUDA_VISIBLE_DEVICES``.

    ``uuids`` are all GPUs' UUIDs in CUDA's enumeration order (the order integer entries count
    in). ``visible`` is the variable's value, None when unset. Follows CUDA's documented rules:
    entries are integer indices or UUIDs (``GPU-...``, any unique prefix of one); devices are
    numbered in the order listed; parsing stops at the first invalid entry (out of range,
    unknown or ambiguous UUID, a repeat). ``MIG-`` entries name MIG compute instances, which
    this agent does not measure: when any is present no GPU is mapped (logged).

    Returns:
        UUID → torch index for the GPUs CUDA will see; a GPU not in the result is invisible
        (its ``DeviceInfo.torch_index`` is -1).
    """
    if visible is None:
        return {u: i for i, u in enumerate(uuids)}
    entries = [e.strip() for e in visible.split(",")] if visible.strip() else []
    if any(e.upper().startswith("MIG-") for e in entries):
        log.warning(
            "CUDA_VISIBLE_DEVICES=%r names MIG instances, which are not supported: "
            "no GPU is mapped to a torch index",
            visible,
        )
        return {}
    mapped: dict[str, int] = {}
    for entry in entries:
        uuid: str | None = None
        try:
            index = int(entry)
        except ValueError:
            if entry.upper().startswith("GPU-"):
                matches = [u for u in uuids if u.lower().startswith(entry.lower())]
                uuid = matches[0] if len(matches) == 1 else None
        else:
            uuid = uuids[index] if 0 <= index < len(uuids) else None
        if uuid is None or uuid in mapped:
            # CUDA ignores this entry and every one after it.
            if entry:
                log.info("CUDA_VISIBLE_DEVICES entry %r is invalid here; later ones ignored", entry)
            break
        mapped[uuid] = len(mapped)
    return mapped


# --- devices --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NvmlHealth:
    """Error counters of one GPU, read where cheap. ``None`` = not available on this GPU."""

    ecc_corrected_volatile: int | None = None
    """Corrected ECC errors since the driver loaded (NVML volatile counter, all memories)."""
    ecc_uncorrected_volatile: int | None = None
    """Uncorrected ECC errors since the driver loaded."""
    xid_counts: Mapping[int, int] | None = None
    """XID code → critical-XID events seen since this backend opened (None: no XID events)."""


@dataclass(frozen=True)
class _Identity:
    """What the backend learns of a GPU before the torch mapping is known."""

    handle: Any
    nvml_index: int
    uuid: str
    name: str
    pci_bus_id: str
    pci_device_id: int | None


# GA100 (A100, A30, A800) PCI device ids: 0x2080-0x20FF (NVIDIA gpu-admin-tools, devid_chips.py).
# NVML documents nvmlDeviceGetPowerUsage as instantaneous on GA100 but a 1-s average on every
# other Ampere chip and everything newer.
_GA100_DEVICE_IDS = range(0x2080, 0x2100)


class _Tick:
    """Bookkeeping of one snapshot: how many readings were attempted and how many failed with
    an unmapped error (the evidence for "unresponsive")."""

    __slots__ = ("attempted", "unmapped_failures")

    def __init__(self) -> None:
        self.attempted = 0
        self.unmapped_failures = 0


class NvmlDevice:
    """One physical GPU. Probed once at construction; :meth:`snapshot` reads what the probe
    found. Thread-safe: one lock per device serialises the sampler's :meth:`snapshot`,
    :meth:`health` and the attribution thread's :meth:`compute_processes`."""

    def __init__(self, nvml: _Nvml, ident: _Identity, torch_index: int) -> None:
        self._nvml = nvml
        self._api = nvml.api
        self._c = nvml.const
        self._handle = ident.handle
        self._ident = ident
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._strikes = 0
        self._energy = EnergyAccumulator()
        self._logged: set[tuple[str, str]] = set()
        self._supported: set[str] = set()
        self._missing: dict[str, str] = {}
        # Field requests per tick, and which reading each answers.
        self._fields: list[tuple[int, int]] = []
        self._field_names: list[str] = []
        self._power_scope: str | None = None
        self._throttle_fn: Callable[[Any], int] | None = None
        self._temperature_fn: Callable[[Any, int], int] | None = None
        self._ecc = False
        self._xid_set: Any = None
        self._xid_counts: Counter[int] = Counter()
        self._gpm: GpmReader | None = None
        self._remap_fn: Callable[..., Any] | None = None
        self._replay_fn: Callable[..., Any] | None = None
        self._nvlink_fn: Callable[..., Any] | None = None
        self._nvlinks: list[int] = []
        self._xid_last: int | None = None
        self._health_cache: dict[str, int] = {}
        self._health_read_ns = 0
        # Processes, probed on first use: the list function that answered (None until one
        # has), why the list or per-process utilisation is off for good, and the newest
        # utilisation sample seen (NVML CPU timestamp, µs; 0 asks for every buffered sample).
        self._procs_fn: Callable[[Any], Sequence[NvmlProcessInfo]] | None = None
        self._procs_off: str | None = None
        self._util_off: str | None = None
        self._util_last_seen_us = 0
        self._info = self._probe(ident, torch_index)

    # -- identity --------------------------------------------------------------------------

    @property
    def info(self) -> DeviceInfo:
        """Identity, limits and capabilities (probed once at open)."""
        return self._info

    @property
    def uuid(self) -> str:
        """The key of this GPU."""
        return self._info.uuid

    @property
    def power_scope(self) -> str | None:
        """Scope of the power field values: ``"gpu"``, ``"module"`` (GPU plus an NVIDIA CPU such
        as Grace, where GPU scope is refused) or None (power from ``nvmlDeviceGetPowerUsage``
        alone, or none)."""
        return self._power_scope

    @property
    def lost(self) -> bool:
        """True once this device was reported lost; it is never read again."""
        return self._lost is not None

    def missing(self) -> Mapping[str, str]:
        """Readings the probe found unavailable → why (e.g. ``"not supported"``)."""
        return MappingProxyType(self._missing)

    # -- probing (once) --------------------------------------------------------------------

    def _try(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """One probe call: the value, or None with the reason recorded.

        Raises:
            DeviceLost: the GPU is gone (the backend skips it).
            BackendUnavailable: NVML itself failed.
        """
        try:
            return self._nvml.call(fn, *args)
        except (DeviceLost, BackendUnavailable):
            raise
        except NotSupported:
            self._missing.setdefault(what, "not supported")
        except PermissionDenied:
            self._missing.setdefault(what, "no permission")
        except DeviceError as e:
            self._missing.setdefault(what, f"failed at probe ({e})")
        return None

    def _probe_reading(self, name: str, fn: Callable[..., object], *args: Any) -> None:
        if self._try(name, fn, *args) is not None:
            self._supported.add(name)

    def _probe(self, ident: _Identity, torch_index: int) -> DeviceInfo:
        api, c, h = self._api, self._c, self._handle
        arch = self._try("architecture", api.nvmlDeviceGetArchitecture, h)
        usage_is_average = self._usage_is_average(arch, ident)

        memory = self._try("memory", api.nvmlDeviceGetMemoryInfo, h)
        if memory is not None:
            self._supported.add("memory")
        limits = self._try("power_limit_range", api.nvmlDeviceGetPowerManagementLimitConstraints, h)
        default_mw = self._try(
            "power_limit_default", api.nvmlDeviceGetPowerManagementDefaultLimit, h
        )
        enforced_mw = self._try("power_limit", api.nvmlDeviceGetEnforcedPowerLimit, h)
        if enforced_mw is not None:
            self._supported.add("power_limit")
        sm_max = self._try("sm_clock_max", api.nvmlDeviceGetMaxClockInfo, h, c.clock_sm)
        mem_max = self._try("mem_clock_max", api.nvmlDeviceGetMaxClockInfo, h, c.clock_mem)

        self._probe_fields()
        self._probe_reading("power_usage", api.nvmlDeviceGetPowerUsage, h)
        self._probe_reading("energy", api.nvmlDeviceGetTotalEnergyConsumption, h)
        self._probe_reading("sm_clock", api.nvmlDeviceGetClockInfo, h, c.clock_sm)
        self._probe_reading("mem_clock", api.nvmlDeviceGetClockInfo, h, c.clock_mem)
        self._probe_reading("utilization", api.nvmlDeviceGetUtilizationRates, h)
        self._probe_temperature()
        self._probe_throttle()
        self._probe_ecc()
        self._probe_xid()
        self._probe_health_counters()
        self._gpm = GpmReader.probe(self._nvml, h, self._missing)
        if self._gpm is not None:
            self._supported.add("gpm")

        fields = set(self._field_names)
        usage = "power_usage" in self._supported
        caps = DeviceCapabilities(
            energy_counter="energy" in self._supported,
            power_instant="power_instant" in fields or (usage and not usage_is_average),
            power_average_1s="power_average" in fields or (usage and usage_is_average),
            memory_temperature="memory_temperature" in fields,
            throttle_reasons="throttle_reasons" in self._supported,
            ecc=self._ecc,
            utilization="utilization" in self._supported,
            clocks="sm_clock" in self._supported,
            gpm=self._gpm is not None,
        )
        info = DeviceInfo(
            uuid=ident.uuid,
            index=ident.nvml_index,
            name=ident.name,
            kind=DeviceKind.GPU,
            pci_bus_id=ident.pci_bus_id,
            pci_device_id=ident.pci_device_id,
            memory_total_bytes=int(memory.total) if memory is not None else 0,
            power_limit_enforced_w=_mw_to_w(enforced_mw),
            power_limit_default_w=_mw_to_w(default_mw),
            power_limit_min_w=_mw_to_w(limits[0]) if limits is not None else None,
            power_limit_max_w=_mw_to_w(limits[1]) if limits is not None else None,
            sm_clock_max_mhz=int(sm_max) if sm_max is not None else None,
            mem_clock_max_mhz=int(mem_max) if mem_max is not None else None,
            capabilities=caps,
            torch_index=torch_index,
            power_usage_is_average=usage_is_average,
        )
        if self._missing:
            # The one log line per missing reading: the sampler never retries these.
            log.info(
                "GPU %d (%s, %s): not available: %s",
                ident.nvml_index,
                ident.name,
                ident.uuid,
                ", ".join(f"{k} ({v})" for k, v in sorted(self._missing.items())),
            )
        return info

    def _usage_is_average(self, arch: int | None, ident: _Identity) -> bool:
        """Whether ``nvmlDeviceGetPowerUsage`` is a 1-s average on this GPU (NVML: Ampere except
        GA100, and newer) or instantaneous (GA100 and older; also assumed when unknown)."""
        c = self._c
        if arch is None or c.arch_ampere is None or arch == c.arch_unknown:
            return False
        if arch > c.arch_ampere:
            return True
        if arch < c.arch_ampere:
            return False
        if ident.pci_device_id is not None:
            return (ident.pci_device_id >> 16) not in _GA100_DEVICE_IDS
        # No PCI id: fall back on the marketing names of GA100 boards.
        return not any(tag in ident.name.upper() for tag in ("A100", "A30", "A800"))

    def _probe_fields(self) -> None:
        """Find which field values answer: power instant / average, and memory temperature.

        Both power fields come from one scope, so the two readings measure the same thing: GPU
        scope when it answers either, else module scope (GPU plus an NVIDIA CPU such as Grace,
        NVML's ``scopeId`` 1), which is logged because it is a different quantity.
        """
        c = self._c
        power = [
            (name, fid)
            for name, fid in (
                ("power_instant", c.fi_power_instant),
                ("power_average", c.fi_power_average),
            )
            if fid is not None
        ]
        chosen: dict[str, tuple[int, int]] = {}
        for label, scope in (("gpu", c.scope_gpu), ("module", c.scope_module)):
            if scope is None or not power:
                continue
            answers = self._probe_field_values([(fid, scope) for _, fid in power])
            if any(answers):
                chosen = {
                    name: (fid, scope) for (name, fid), ok in zip(power, answers, strict=True) if ok
                }
                self._power_scope = label
                if label == "module":
                    log.warning(
                        "GPU %d (%s): GPU-scope power refused; power is read in module scope "
                        "(GPU + NVIDIA CPU)",
                        self._ident.nvml_index,
                        self._ident.uuid,
                    )
                break
        if c.fi_memory_temp is not None and self._probe_field_values([(c.fi_memory_temp, 0)])[0]:
            chosen["memory_temperature"] = (c.fi_memory_temp, 0)
        for name in ("power_instant", "power_average", "memory_temperature"):
            if name in chosen:
                self._field_names.append(name)
                self._fields.append(chosen[name])
            else:
                self._missing.setdefault(name + "_field", "not supported")
        if self._fields:
            self._supported.add("fields")

    def _probe_field_values(self, requests: list[tuple[int, int]]) -> list[bool]:
        """Which of ``requests`` answer with NVML_SUCCESS and a value we can decode."""
        values = self._try(
            "field_values", self._api.nvmlDeviceGetFieldValues, self._handle, requests
        )
        if values is None:
            return [False] * len(requests)
        ok: list[bool] = []
        for fv in values:
            if fv.nvmlReturn == self._c.success:
                ok.append(self._decode(fv) is not None)
                continue
            err = self._nvml.field_error(fv.nvmlReturn, f"field {fv.fieldId}/{fv.scopeId}")
            if isinstance(err, DeviceLost):
                raise err
            ok.append(False)
        return ok

    def _probe_temperature(self) -> None:
        # nvmlDeviceGetTemperatureV is the current call; nvmlDeviceGetTemperature is deprecated
        # (to be removed in CUDA 14) but is all that drivers before it offer.
        versioned = self._nvml.optional("nvmlDeviceGetTemperatureV")
        for fn in (versioned, self._api.nvmlDeviceGetTemperature):
            if fn is None:
                continue
            if self._try("gpu_temperature", fn, self._handle, self._c.temperature_gpu) is not None:
                self._temperature_fn = fn
                self._supported.add("gpu_temperature")
                self._missing.pop("gpu_temperature", None)
                return

    def _probe_throttle(self) -> None:
        # "Clocks event reasons" is the current name (R535+); the throttle-reasons call is the
        # deprecated alias that older drivers still need.
        current = self._nvml.optional("nvmlDeviceGetCurrentClocksEventReasons")
        for fn in (current, self._api.nvmlDeviceGetCurrentClocksThrottleReasons):
            if fn is None:
                continue
            if self._try("throttle_reasons", fn, self._handle) is not None:
                self._throttle_fn = fn
                self._supported.add("throttle_reasons")
                self._missing.pop("throttle_reasons", None)
                return

    def _probe_ecc(self) -> None:
        api, c, h = self._api, self._c, self._handle
        mode = self._try("ecc", api.nvmlDeviceGetEccMode, h)
        if mode is None:
            return
        if mode[0] != c.feature_enabled:
            self._missing.setdefault("ecc", "ECC disabled")
            return
        counts = self._try(
            "ecc", api.nvmlDeviceGetTotalEccErrors, h, c.ecc_uncorrected, c.ecc_volatile
        )
        if counts is not None:
            self._ecc = True
            self._supported.add("ecc")

    def _probe_xid(self) -> None:
        api, c = self._api, self._c
        if c.event_xid is None:
            self._missing.setdefault("xid_events", "not in this pynvml")
            return
        supported = self._try("xid_events", api.nvmlDeviceGetSupportedEventTypes, self._handle)
        if supported is None:
            return
        if not supported & c.event_xid:
            self._missing.setdefault("xid_events", "not supported")
            return
        # One event set per GPU, so every event drained from it belongs to this GPU.
        event_set = self._try("xid_events", api.nvmlEventSetCreate)
        if event_set is None:
            return
        try:
            self._nvml.call(api.nvmlDeviceRegisterEvents, self._handle, c.event_xid, event_set)
        except DeviceError as e:
            self._missing.setdefault("xid_events", f"cannot register ({e})")
            self._free_event_set(event_set)
            return
        self._xid_set = event_set

    def _free_event_set(self, event_set: Any) -> None:
        try:
            self._nvml.call(self._api.nvmlEventSetFree, event_set)
        except DeviceError as e:
            log.debug("nvmlEventSetFree failed: %s", e)

    # -- reading (every tick) --------------------------------------------------------------

    def _log_once(self, reading: str, err: DeviceError) -> None:
        key = (reading, type(err).__name__)
        if key not in self._logged:
            self._logged.add(key)
            log.warning("GPU %s: %s unavailable this tick: %s", self.uuid, reading, err)

    def _read(self, tick: _Tick, name: str, fn: Callable[..., T], *args: Any) -> T | None:
        """One reading inside a tick: the value, or None (logged once per kind of failure).

        Raises:
            DeviceLost: the GPU is gone, or NVML stopped working.
        """
        if name not in self._supported:
            return None
        tick.attempted += 1
        try:
            return self._nvml.call(fn, *args)
        except DeviceLost:
            raise
        except BackendUnavailable as e:
            # Driver unloaded or NVML closed: this GPU cannot be read any more.
            raise DeviceLost(str(e)) from e
        except (NotSupported, PermissionDenied) as e:
            self._log_once(name, e)
        except DeviceError as e:
            tick.unmapped_failures += 1
            self._log_once(name, e)
        return None

    def _decode(self, fv: NvmlFieldValue) -> float | None:
        member = self._c.value_members.get(fv.valueType)
        return float(getattr(fv.value, member)) if member is not None else None

    def _read_fields(self, tick: _Tick) -> dict[str, float | None]:
        out: dict[str, float | None] = dict.fromkeys(self._field_names)
        values = self._read(
            tick, "fields", self._api.nvmlDeviceGetFieldValues, self._handle, self._fields
        )
        if values is None:
            return out
        for name, fv in zip(self._field_names, values, strict=True):
            if fv.nvmlReturn == self._c.success:
                value = self._decode(fv)
                if value is None:
                    self._log_once(name, DeviceError(f"unknown NVML value type {fv.valueType}"))
                out[name] = value
                continue
            err = self._nvml.field_error(fv.nvmlReturn, f"field {name}")
            if isinstance(err, DeviceLost):
                raise err
            self._log_once(name, err)
        return out

    def snapshot(self, now_unix_ns: int) -> Snapshot:
        """Read everything this GPU supports, in one go.

        ``now_unix_ns`` stamps the snapshot (ns since the Unix epoch). A reading that fails
        this tick is None (never 0) and logged once per kind of failure.

        Raises:
            DeviceLost: the GPU is gone (NVML says lost / reset required / not found, NVML or
                its driver went away, or every reading failed for :data:`UNRESPONSIVE_TICKS`
                ticks in a row); it is never read again and every later call raises too.
        """
        return self._locked(self._snapshot, now_unix_ns)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` under the device lock; a lost GPU is remembered, logged once and never
        read again.

        Raises:
            DeviceLost: the GPU is gone (now or before).
        """
        with self._lock:
            if self._lost is not None:
                raise DeviceLost(self._lost)
            try:
                return fn(*args)
            except DeviceLost as e:
                self._lost = f"GPU {self.uuid} lost: {e}"
                log.error("%s", self._lost)
                raise DeviceLost(self._lost) from e

    def _snapshot(self, now_unix_ns: int) -> Snapshot:
        api, c, h = self._api, self._c, self._handle
        tick = _Tick()
        fields = self._read_fields(tick)
        instant_mw = fields.get("power_instant")
        average_mw = fields.get("power_average")
        if "power_usage" in self._supported and (
            ("power_instant" not in fields and not self._info.power_usage_is_average)
            or ("power_average" not in fields and self._info.power_usage_is_average)
        ):
            usage_mw = self._read(tick, "power_usage", api.nvmlDeviceGetPowerUsage, h)
            if self._info.power_usage_is_average:
                average_mw = None if usage_mw is None else float(usage_mw)
            else:
                instant_mw = None if usage_mw is None else float(usage_mw)

        energy_mj = self._read(tick, "energy", api.nvmlDeviceGetTotalEnergyConsumption, h)
        energy_j: float | None = None
        if energy_mj is not None:
            resets = self._energy.resets
            energy_j = self._energy.update(energy_mj / 1000.0)
            if self._energy.resets != resets:
                log.warning(
                    "GPU %s: energy counter went backwards (driver reload?); energy continues "
                    "from %.1f J",
                    self.uuid,
                    energy_j,
                )

        sm_mhz = self._read(tick, "sm_clock", api.nvmlDeviceGetClockInfo, h, c.clock_sm)
        mem_mhz = self._read(tick, "mem_clock", api.nvmlDeviceGetClockInfo, h, c.clock_mem)
        temp_c = (
            self._read(tick, "gpu_temperature", self._temperature_fn, h, c.temperature_gpu)
            if self._temperature_fn is not None
            else None
        )
        util = self._read(tick, "utilization", api.nvmlDeviceGetUtilizationRates, h)
        reasons = (
            self._read(tick, "throttle_reasons", self._throttle_fn, h)
            if self._throttle_fn is not None
            else None
        )
        limit_mw = self._read(tick, "power_limit", api.nvmlDeviceGetEnforcedPowerLimit, h)
        memory = self._read(tick, "memory", api.nvmlDeviceGetMemoryInfo, h)
        extra: dict[str, Any] = {}
        if self._gpm is not None:
            now_mono = self._nvml.monotonic_ns()
            extra.update(self._read(tick, "gpm", self._gpm.read, now_mono) or {})
        extra.update(self._health_columns(tick))

        if tick.attempted and tick.unmapped_failures == tick.attempted:
            self._strikes += 1
            if self._strikes >= UNRESPONSIVE_TICKS:
                raise DeviceLost(f"every reading failed for {self._strikes} ticks in a row")
            extra = {}  # an unresponsive tick repeats no earlier GPM or health values
        else:
            self._strikes = 0

        mem_temp = fields.get("memory_temperature")
        return Snapshot(
            timestamp_unix_ns=now_unix_ns,
            power_instant_w=None if instant_mw is None else instant_mw / 1000.0,
            power_average_1s_w=None if average_mw is None else average_mw / 1000.0,
            energy_j=energy_j,
            sm_clock_mhz=None if sm_mhz is None else int(sm_mhz),
            mem_clock_mhz=None if mem_mhz is None else int(mem_mhz),
            gpu_temperature_c=None if temp_c is None else float(temp_c),
            memory_temperature_c=mem_temp,
            gpu_utilization_ratio=None if util is None else util.gpu / 100.0,
            memory_utilization_ratio=None if util is None else util.memory / 100.0,
            throttle_reasons=None if reasons is None else int(reasons),
            power_limit_w=_mw_to_w(limit_mw),
            memory_used_bytes=None if memory is None else int(memory.used),
            **extra,
        )

    def _health_columns(self, tick: _Tick) -> dict[str, int]:
        """The health counters (:data:`~flopwatt.records.HEALTH_COLUMNS`), read every
        :data:`HEALTH_INTERVAL_S` and repeated in between (they change rarely; NVLink is one
        call per link). A counter that fails to read is absent until the next read."""
        now = self._nvml.monotonic_ns()
        if self._health_cache and now - self._health_read_ns < HEALTH_INTERVAL_S * 1e9:
            return dict(self._health_cache)
        api, c, h = self._api, self._c, self._handle
        # A counter that fails to read now is absent until it reads again (never its old value).
        out: dict[str, int] = {}
        if self._ecc:
            for column, kind in (
                ("ecc_corrected_volatile_total", c.ecc_corrected),
                ("ecc_uncorrected_volatile_total", c.ecc_uncorrected),
            ):
                n = self._read(
                    tick, "ecc", api.nvmlDeviceGetTotalEccErrors, h, kind, c.ecc_volatile
                )
                if n is not None:
                    out[column] = int(n)
        if "remapped_rows" in self._supported and self._remap_fn is not None:
            rows = self._read(tick, "remapped_rows", self._remap_fn, h)
            if rows is not None:
                corr, unc, pending, failed = (int(x) for x in rows[:4])
                out["remapped_rows_correctable_total"] = corr
                out["remapped_rows_uncorrectable_total"] = unc
                out["row_remap_pending"] = 1 if pending else 0
                out["row_remap_failed"] = 1 if failed else 0
        if "pcie_replay" in self._supported and self._replay_fn is not None:
            n = self._read(tick, "pcie_replay", self._replay_fn, h)
            if n is not None:
                out["pcie_replay_total"] = int(n)
        if self._nvlinks and self._nvlink_fn is not None:
            for column, counter in c.nvlink_counters:
                # A sum over some links only would read as a drop: all links, or absent.
                total = 0
                for link in self._nvlinks:
                    n = self._read(tick, "nvlink_errors", self._nvlink_fn, h, link, counter)
                    if n is None:
                        break
                    total += int(n)
                else:
                    out[column] = total
        if self._xid_set is not None:
            self._drain_xids()
            out["xid_events_total"] = sum(self._xid_counts.values())
            if self._xid_last is not None:  # absent until the first XID: no code is not 0
                out["xid_last"] = self._xid_last
        self._health_cache = out
        self._health_read_ns = now
        return dict(out)

    def _probe_health_counters(self) -> None:
        """Row remapping (Ampere and newer), the PCIe replay counter and the NVLink error
        counters: CRC flit errors, replays, recoveries (per link: every link whose first
        counter answers at probe is summed; one call per possible link, at probe only)."""
        c, h = self._c, self._handle
        self._remap_fn = self._nvml.optional("nvmlDeviceGetRemappedRows")
        if self._remap_fn is not None:
            self._probe_reading("remapped_rows", self._remap_fn, h)
        else:
            self._missing.setdefault("remapped_rows", "not in this nvidia-ml-py")
        self._replay_fn = self._nvml.optional("nvmlDeviceGetPcieReplayCounter")
        if self._replay_fn is not None:
            self._probe_reading("pcie_replay", self._replay_fn, h)
        self._nvlink_fn = self._nvml.optional("nvmlDeviceGetNvLinkErrorCounter")
        if self._nvlink_fn is None or not c.nvlink_counters:
            return
        first_counter = c.nvlink_counters[0][1]
        for link in range(c.nvlink_max_links):
            try:
                self._nvml.call(self._nvlink_fn, h, link, first_counter)
            except (DeviceLost, BackendUnavailable):
                raise
            except DeviceError:
                # NVML_NVLINK_MAX_LINKS is an upper bound, not this GPU's count, and an
                # inactive link may sit between active ones: keep every link that answers.
                continue
            self._nvlinks.append(link)
        if self._nvlinks:
            self._supported.add("nvlink_errors")
        else:
            self._missing.setdefault("nvlink_errors", "no NVLink")

    def health(self) -> NvmlHealth:
        """ECC volatile error counts and XID events since open, where this GPU offers them
        cheaply (probed once; absent ones are None). Drains pending XID events without waiting.

        Raises:
            DeviceLost: the GPU is gone; it is never read again.
        """
        return self._locked(self._health)

    def _health(self) -> NvmlHealth:
        api, c, h = self._api, self._c, self._handle
        tick = _Tick()
        corrected = uncorrected = None
        if self._ecc:
            corrected = self._read(
                tick, "ecc", api.nvmlDeviceGetTotalEccErrors, h, c.ecc_corrected, c.ecc_volatile
            )
            uncorrected = self._read(
                tick, "ecc", api.nvmlDeviceGetTotalEccErrors, h, c.ecc_uncorrected, c.ecc_volatile
            )
        xids: Mapping[int, int] | None = None
        if self._xid_set is not None:
            self._drain_xids()
            xids = MappingProxyType(dict(self._xid_counts))
        return NvmlHealth(
            ecc_corrected_volatile=None if corrected is None else int(corrected),
            ecc_uncorrected_volatile=None if uncorrected is None else int(uncorrected),
            xid_counts=xids,
        )

    def _drain_xids(self) -> None:
        xid = self._c.event_xid
        # Bounded, so a GPU in an XID storm cannot hold the caller.
        for _ in range(1024):
            try:
                event = self._nvml.wait_event(self._xid_set)
            except DeviceLost:
                raise
            except BackendUnavailable as e:
                raise DeviceLost(str(e)) from e
            except DeviceError as e:
                self._log_once("xid_events", e)
                return
            if event is None:
                return
            if xid is not None and event.eventType & xid:
                self._xid_counts[int(event.eventData)] += 1
                self._xid_last = int(event.eventData)
                log.warning("GPU %s: XID %d", self.uuid, event.eventData)

    # -- processes (the attribution thread, every few seconds) -----------------------------

    def compute_processes(self) -> tuple[GpuProcess, ...] | None:
        """The processes with a compute context on this GPU now, sorted by pid, each with the
        GPU memory it holds (bytes) and its SM utilisation since the previous call (ratio);
        ``name`` is left "" (the caller reads ``/proc``). For a thread that calls every few
        seconds, not for the sampler tick: it holds the device lock, as :meth:`snapshot` does,
        for up to four NVML calls (each function asks NVML for the size first).

        None: the list cannot be read now — unknown, never "no processes". Not supported (asked
        once, never again), no permission, or a transient failure; each logged once.

        A pid NVML lists more than once (one entry per context) is merged: its memory is the
        sum, None if any entry's is unknown (a partial sum would understate it).

        ``sm_utilization_ratio`` is the mean of the process's NVML samples since the previous
        call (percent ÷ 100, clipped to 0…1). None for every process when NVML has no sample in
        that interval (``NVML_ERROR_NOT_FOUND``: unknown, not idle), for a process without a
        sample, and where per-process utilisation cannot be read (an nvidia-ml-py without
        ``nvmlDeviceGetProcessUtilization``, not supported, no permission). The first call may
        average older samples still in the driver's buffer.

        Under MIG the list is whatever NVML gives for the whole GPU: the processes of every GPU
        instance (their instance ids are not reported here), or a refusal without privileges
        (None). Used memory may then be None, and per-process utilisation is not available
        (NVML answers NOT_SUPPORTED).

        Raises:
            DeviceLost: the GPU is gone, or NVML went away (as :meth:`snapshot`); it is never
                read again.
        """
        return self._locked(self._compute_processes)

    def _compute_processes(self) -> tuple[GpuProcess, ...] | None:
        listed = self._list_processes()
        if listed is None:
            return None
        sm = self._process_sm_ratios()
        memory: dict[int, int | None] = {}
        for p in listed:
            pid = int(p.pid)
            used = None if p.usedGpuMemory is None else int(p.usedGpuMemory)
            if pid in memory:
                known = memory[pid]
                memory[pid] = None if known is None or used is None else known + used
            else:
                memory[pid] = used
        return tuple(
            GpuProcess(
                pid=pid,
                used_memory_bytes=used,
                sm_utilization_ratio=None if sm is None else sm.get(pid),
            )
            for pid, used in sorted(memory.items())
        )

    def _list_processes(self) -> Sequence[NvmlProcessInfo] | None:
        """The raw process list, or None (logged once per kind of failure).

        Raises:
            DeviceLost: the GPU is gone, or NVML went away.
        """
        if self._procs_off is not None:
            return None
        while True:
            fn = self._procs_fn or self._api.nvmlDeviceGetComputeRunningProcesses
            try:
                listed = self._nvml.call(fn, self._handle)
            except DeviceLost:
                raise
            except BackendUnavailable as e:
                raise DeviceLost(str(e)) from e
            except NotSupported as e:
                # The unversioned call wants the driver's _v3 symbol (R510 and newer); an older
                # driver has _v2, same fields. Tried once, before anything has answered.
                fallback = None
                if self._procs_fn is None:
                    fallback = self._nvml.optional("nvmlDeviceGetComputeRunningProcesses_v2")
                if fallback is not None:
                    self._procs_fn = fallback
                    continue
                self._procs_off = f"not supported ({e})"
                log.info("GPU %s: process list not available: %s", self.uuid, self._procs_off)
                return None
            except DeviceError as e:  # no permission (under MIG: not privileged), transient
                self._log_once("compute_processes", e)
                return None
            self._procs_fn = fn
            return listed

    def _process_sm_ratios(self) -> dict[int, float] | None:
        """pid → mean SM utilisation ratio of its samples since the previous call; None when
        no process's is known.

        Raises:
            DeviceLost: the GPU is gone, or NVML went away.
        """
        if self._util_off is not None:
            return None
        fn = self._nvml.optional("nvmlDeviceGetProcessUtilization")  # logs once if missing
        if fn is None:
            self._util_off = "not in this nvidia-ml-py"
            return None
        # NOT_FOUND: no sample since last_seen. pynvml raises NVMLError(NVML_SUCCESS) where
        # NVML answers the size query with success instead: nothing to read either.
        c = self._c
        quiet = [code for code in (c.error_not_found, c.success) if code is not None]
        try:
            samples: Sequence[NvmlProcessUtilizationSample] | None = self._nvml.call_unless(
                quiet, fn, self._handle, self._util_last_seen_us
            )
        except DeviceLost:
            raise
        except BackendUnavailable as e:
            raise DeviceLost(str(e)) from e
        except NotSupported as e:
            self._util_off = f"not supported ({e})"
            log.info("GPU %s: per-process utilisation not available: %s", self.uuid, self._util_off)
            return None
        except DeviceError as e:
            self._log_once("process_utilization", e)
            return None
        if samples is None:
            return None
        percents: dict[int, list[int]] = {}
        for sample in samples:
            # The next call asks only for samples newer than this: each call covers the
            # interval since the previous one.
            self._util_last_seen_us = max(self._util_last_seen_us, int(sample.timeStamp))
            sm = int(sample.smUtil)
            if sm > 100:
                continue  # not a percent: NVML_VALUE_NOT_AVAILABLE (all bits set)
            percents.setdefault(int(sample.pid), []).append(sm)
        return {
            pid: min(1.0, max(0.0, sum(values) / len(values) / 100.0))
            for pid, values in percents.items()
        }

    def _close(self) -> None:
        with self._lock:
            if self._xid_set is not None:
                self._free_event_set(self._xid_set)
                self._xid_set = None
            if self._gpm is not None:
                self._gpm.close()
                self._gpm = None


def _mw_to_w(mw: float | None) -> float | None:
    return None if mw is None else mw / 1000.0


def _cuda_version(raw: int) -> str:
    """NVML's CUDA driver version integer (e.g. 12080) as ``"12.8"``."""
    return f"{raw // 1000}.{(raw % 1000) // 10}"


# --- the backend ----------------------------------------------------------------------------


class NvmlBackend:
    """Every NVIDIA GPU NVML can read on this node.

    Construction initialises NVML on ``nvml`` (the ``pynvml`` module, or a fake in tests),
    probes each GPU once and keeps the ones that answer; GPUs lost or refused at open are
    skipped with a log line.
    """

    name = "nvml"

    def __init__(
        self,
        nvml: NvmlApi,
        *,
        environ: Mapping[str, str] | None = None,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """``monotonic_ns`` times intervals (GPM); tests inject one.

        Raises:
            BackendUnavailable: NVML cannot initialise, the module is too old, or no GPU
                answers.
        """
        env = os.environ if environ is None else environ
        session = _Nvml(nvml, monotonic_ns)
        try:
            session.call(nvml.nvmlInit)
        except DeviceError as e:
            raise BackendUnavailable(f"NVML cannot initialise: {e}") from e
        self._nvml = session
        self._closed = False
        try:
            self._devices = self._open_devices(env)
            self._software = self._read_software()
        except BaseException:
            self.close()
            raise
        if not self._devices:
            self.close()
            raise BackendUnavailable("NVML found no usable GPU")

    @classmethod
    def open(
        cls, *, nvml: NvmlApi | None = None, environ: Mapping[str, str] | None = None
    ) -> NvmlBackend:
        """Open NVML: the real ``pynvml`` unless ``nvml`` is given.

        Raises:
            BackendUnavailable: nvidia-ml-py is not installed, NVML cannot initialise (no
                driver or library), or no GPU answers.
        """
        if nvml is None:
            try:
                import pynvml
            except ImportError as e:
                raise BackendUnavailable("nvidia-ml-py (module pynvml) is not installed") from e
            nvml = pynvml
        return cls(nvml, environ=environ)

    def _open_devices(self, env: Mapping[str, str]) -> list[NvmlDevice]:
        session, api = self._nvml, self._nvml.api
        try:
            count = session.call(api.nvmlDeviceGetCount)
        except DeviceError as e:
            raise BackendUnavailable(f"NVML cannot count GPUs: {e}") from e
        idents: list[_Identity] = []
        for i in range(count):
            try:
                idents.append(self._identify(i))
            except (DeviceLost, NotSupported, PermissionDenied) as e:
                # Lost, or hidden from this container: the agent serves the others.
                log.warning("GPU at NVML index %d skipped: %s", i, e)
            except BackendUnavailable:
                raise
            except DeviceError as e:
                log.warning("GPU at NVML index %d skipped: %s", i, e)

        torch_of = cuda_visible_torch_indices(
            env.get("CUDA_VISIBLE_DEVICES"), [d.uuid for d in self._cuda_order(idents, env)]
        )
        devices: list[NvmlDevice] = []
        for ident in idents:
            try:
                devices.append(NvmlDevice(session, ident, torch_of.get(ident.uuid, -1)))
            except DeviceLost as e:
                log.warning(
                    "GPU %d (%s) lost while probing; skipped: %s", ident.nvml_index, ident.uuid, e
                )
        return devices

    def _identify(self, i: int) -> _Identity:
        session, api = self._nvml, self._nvml.api
        handle = session.call(api.nvmlDeviceGetHandleByIndex, i)
        uuid = session.call(api.nvmlDeviceGetUUID, handle)

        def optional(fn: Callable[..., T], default: T) -> T:
            try:
                return session.call(fn, handle)
            except (DeviceLost, BackendUnavailable):
                raise
            except DeviceError:
                return default

        name = optional(api.nvmlDeviceGetName, "")
        index = optional(api.nvmlDeviceGetIndex, i)
        pci = optional(api.nvmlDeviceGetPciInfo, None)
        bus_id = ""
        device_id: int | None = None
        if pci is not None:
            raw = pci.busId
            bus_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            device_id = int(pci.pciDeviceId)
        return _Identity(handle, int(index), str(uuid), str(name), bus_id, device_id)

    @staticmethod
    def _cuda_order(idents: list[_Identity], env: Mapping[str, str]) -> list[_Identity]:
        """GPUs in the order CUDA numbers them: by PCI bus id (CUDA_DEVICE_ORDER=PCI_BUS_ID).

        CUDA's default, FASTEST_FIRST, orders identical GPUs by PCI bus id too; on a node with
        mixed models its order is CUDA's own heuristic, which we do not reproduce (logged).
        """
        if len({d.name for d in idents}) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            log.warning(
                "mixed GPU models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: torch indices assume "
                "PCI bus order; set CUDA_DEVICE_ORDER=PCI_BUS_ID to make that true"
            )
        if all(d.pci_bus_id for d in idents):
            return sorted(idents, key=lambda d: d.pci_bus_id.upper())
        return sorted(idents, key=lambda d: d.nvml_index)

    def _read_software(self) -> SoftwareVersions:
        session, api = self._nvml, self._nvml.api

        def text(fn: Callable[[], object]) -> str:
            try:
                return str(session.call(fn))
            except DeviceError:
                return ""

        cuda = ""
        for fn in (
            session.optional("nvmlSystemGetCudaDriverVersion_v2"),
            api.nvmlSystemGetCudaDriverVersion,
        ):
            if fn is None:
                continue
            try:
                cuda = _cuda_version(int(session.call(fn)))
                break
            except DeviceError:
                continue
        return SoftwareVersions(
            driver_version=text(api.nvmlSystemGetDriverVersion),
            cuda_version=cuda,
            nvml_version=text(api.nvmlSystemGetNVMLVersion),
            python_version=platform.python_version(),
            os=f"{platform.system()} {platform.release()}",
        )

    def devices(self) -> list[Device]:
        """The GPUs that answered at open, in NVML index order."""
        return list(self._devices)

    def nvml_devices(self) -> list[NvmlDevice]:
        """The same GPUs with their NVML-specific extras (:meth:`NvmlDevice.health`)."""
        return list(self._devices)

    def device(self, uuid: str) -> NvmlDevice:
        """The GPU with this UUID.

        Raises:
            KeyError: no such GPU on this backend.
        """
        for d in self._devices:
            if d.uuid == uuid:
                return d
        raise KeyError(uuid)

    def software(self) -> SoftwareVersions:
        """Driver, CUDA driver and NVML versions (read once at open)."""
        return self._software

    def close(self) -> None:
        """Free XID event sets and shut NVML down (once; later calls do nothing). Devices
        raise :class:`DeviceLost` afterwards."""
        if self._closed:
            return
        self._closed = True
        for d in getattr(self, "_devices", []):
            d._close()
        self._nvml.shutdown()


__all__ = [
    "NVML_ERROR_TABLE",
    "UNRESPONSIVE_TICKS",
    "NvmlApi",
    "NvmlBackend",
    "NvmlDevice",
    "NvmlHealth",
    "cuda_visible_torch_indices",
    "map_nvml_error",
    "nvml_error_codes",
]
