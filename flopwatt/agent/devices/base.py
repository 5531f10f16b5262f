"""The one small hardware interface the agent needs, shared by the nvml, cpu and sim backends.

A backend lists devices; a device has an identity (:class:`~flopwatt.records.DeviceInfo`,
probed once) and gives one consistent :class:`Snapshot` per sampler tick. A reading the hardware
does not give is ``None`` — absent, never zero. Backend errors map to the few exception types
below; a caller handles each differently (a lost device is reported and skipped, the agent keeps
serving the others).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

from flopwatt.records import DeviceInfo, GpuProcess, SoftwareVersions


class DeviceError(Exception):
    """Base of every device-layer error."""


class DeviceLost(DeviceError):  # noqa: N818 (the name says what happened)
    """The device disappeared (fell off the bus, driver reset); skip it from now on."""


class NotSupported(DeviceError):  # noqa: N818
    """The device or driver does not provide this reading; report it as absent."""


class PermissionDenied(DeviceError):  # noqa: N818
    """The reading needs privileges the agent lacks; report it as absent and say so once."""


class BackendUnavailable(DeviceError):  # noqa: N818
    """The backend cannot run here at all (no driver, library missing, no devices)."""


@dataclass(frozen=True)
class Snapshot:
    """One reading of one device at one instant. ``None`` = not available."""

    timestamp_unix_ns: int
    power_instant_w: float | None = None
    power_average_1s_w: float | None = None
    energy_j: float | None = None
    """Energy since this agent run began (J), monotonic: counter resets are folded in."""
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    gpu_temperature_c: float | None = None
    memory_temperature_c: float | None = None
    gpu_utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    throttle_reasons: int | None = None
    power_limit_w: float | None = None
    memory_used_bytes: int | None = None
    # NVML GPM pipe activity over the interval since the previous snapshot (ratios 0–1).
    sm_active_ratio: float | None = None
    sm_occupancy_ratio: float | None = None
    tensor_active_ratio: float | None = None
    tensor_hmma_active_ratio: float | None = None
    tensor_imma_active_ratio: float | None = None
    tensor_dfma_active_ratio: float | None = None
    fp64_active_ratio: float | None = None
    fp32_active_ratio: float | None = None
    fp16_active_ratio: float | None = None
    dram_bandwidth_ratio: float | None = None
    # Health counters (see flopwatt.records.HEALTH_COLUMNS).
    ecc_corrected_volatile_total: int | None = None
    ecc_uncorrected_volatile_total: int | None = None
    remapped_rows_correctable_total: int | None = None
    remapped_rows_uncorrectable_total: int | None = None
    row_remap_pending: int | None = None
    row_remap_failed: int | None = None
    pcie_replay_total: int | None = None
    nvlink_crc_errors_total: int | None = None
    xid_events_total: int | None = None
    xid_last: int | None = None
    nvlink_replay_errors_total: int | None = None
    nvlink_recovery_errors_total: int | None = None

    def available(self) -> frozenset[str]:
        """Names of the readings present in this snapshot (timestamp excluded)."""
        return frozenset(
            f.name
            for f in fields(self)
            if f.name != "timestamp_unix_ns" and getattr(self, f.name) is not None
        )


@runtime_checkable
class Device(Protocol):
    """One device as the sampler sees it."""

    @property
    def info(self) -> DeviceInfo:
        """Identity and capabilities (probed once)."""
        ...

    def snapshot(self, now_unix_ns: int) -> Snapshot:
        """Read everything available now.

        Raises:
            DeviceLost: the device is gone; the caller stops sampling it.
        """
        ...


@runtime_checkable
class ProcessLister(Protocol):
    """A device that can say which processes use it (nvml, sim; not cpu)."""

    def compute_processes(self) -> tuple[GpuProcess, ...] | None:
        """The processes with a compute context on this device now, with what the backend
        knows of each (memory, per-process SM utilisation since the previous call); ``name``
        may be "" (the caller reads ``/proc``). None: the backend cannot tell now (not
        supported, no permission) — unknown, never "no processes".

        Raises:
            DeviceLost: the device is gone.
        """
        ...


class Backend(Protocol):
    """A source of devices: ``nvml``, ``cpu`` or ``sim``."""

    name: str

    def devices(self) -> list[Device]:
        """The devices this backend serves (probed once; order = display index)."""
        ...

    def software(self) -> SoftwareVersions:
        """Driver / library versions, for registration and result conditions."""
        ...

    def close(self) -> None:
        """Release the backend (shut NVML down, stop simulations)."""
        ...


class EnergyAccumulator:
    """Turns a hardware energy counter that may reset (driver reload, counter wrap) into energy
    since the agent run began: a drop in the raw counter starts a new segment instead of
    producing negative energy."""

    def __init__(self) -> None:
        self._first: float | None = None
        self._last: float | None = None
        self._offset = 0.0
        self.resets = 0
        """Counter resets seen (each is logged by the caller)."""

    def update(self, raw_j: float) -> float:
        """Fold one raw counter reading (J) in; return energy since the first reading (J)."""
        if self._first is None:
            self._first = raw_j
            self._last = raw_j
            return 0.0
        assert self._last is not None
        if raw_j < self._last:
            # The counter went backwards: the driver reloaded and it restarted from zero. Keep
            # what was counted up to the last good reading; the new segment counts from zero.
            self._offset += self._last - self._first
            self._first = 0.0
            self.resets += 1
        self._last = raw_j
        return self._offset + (raw_j - self._first)
