"""The host CPU as a device: identity from the OS, power and energy from RAPL when readable.

RAPL (``/sys/class/powercap/intel-rapl:N``) gives a package energy counter in µJ that wraps at
``max_energy_range_uj``; power is its derivative between readings. Where RAPL is absent or
unreadable (most VMs, non-root), power and energy are reported as unavailable — absent, never
invented. Utilisation comes from ``/proc/stat``, the clock from cpufreq, temperature from the
package thermal zone when present, memory from ``/proc/meminfo``.

Every path is relative to an injectable root, so tests run against a real directory tree.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from flopwatt.agent.devices.base import Device, EnergyAccumulator, Snapshot
from flopwatt.records import DeviceCapabilities, DeviceInfo, DeviceKind, SoftwareVersions

log = logging.getLogger(__name__)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class _Rapl:
    """One RAPL package domain: energy counter with wrap handling."""

    def __init__(self, domain: Path) -> None:
        self.domain = domain
        self.max_uj = _read_int(domain / "max_energy_range_uj") or 0
        self._last_uj: int | None = None
        self._wrapped_j = 0.0

    def energy_j(self) -> float | None:
        raw = _read_int(self.domain / "energy_uj")
        if raw is None:
            return None
        if self._last_uj is not None and raw < self._last_uj and self.max_uj:
            self._wrapped_j += self.max_uj / 1e6  # the counter wrapped once since last read
        self._last_uj = raw
        return self._wrapped_j + raw / 1e6

    def power_limit_w(self) -> float | None:
        uw = _read_int(self.domain / "constraint_0_power_limit_uw")
        return None if uw is None else uw / 1e6


class CpuDevice:
    """The host CPU (all packages together)."""

    def __init__(
        self,
        root: Path = Path("/"),
        *,
        hostname: str | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._root = root
        self._clock_ns = clock_ns
        self._rapl = [
            _Rapl(d)
            for d in sorted((root / "sys/class/powercap").glob("intel-rapl:[0-9]"))
            if _read_int(d / "energy_uj") is not None
        ]
        if not self._rapl:
            log.info("RAPL energy counters not readable: CPU power and energy are unavailable")
        self._energy = EnergyAccumulator()
        self._power_window: deque[tuple[int, float]] = deque()
        self._last_stat: tuple[int, int] | None = None
        self._thermal = self._find_thermal()
        host = hostname or socket.gethostname()
        machine_id = _read(root / "etc/machine-id") or host
        model = self._model_name()
        self._info = DeviceInfo(
            uuid=f"CPU-{machine_id[:12]}",
            index=0,
            name=model,
            kind=DeviceKind.CPU,
            memory_total_bytes=self._meminfo().get("MemTotal", 0),
            power_limit_enforced_w=self._rapl[0].power_limit_w() if self._rapl else None,
            sm_clock_max_mhz=self._max_mhz(),
            capabilities=DeviceCapabilities(
                energy_counter=bool(self._rapl),
                power_instant=bool(self._rapl),
                power_average_1s=bool(self._rapl),
                memory_temperature=False,
                throttle_reasons=False,
                ecc=False,
                utilization=(root / "proc/stat").exists(),
                clocks=self._cur_mhz() is not None,
            ),
        )

    @property
    def info(self) -> DeviceInfo:
        """Identity from the OS."""
        return self._info

    def _model_name(self) -> str:
        text = _read(self._root / "proc/cpuinfo") or ""
        for line in text.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
        return platform.processor() or "CPU"

    def _meminfo(self) -> dict[str, int]:
        out = {}
        for line in (_read(self._root / "proc/meminfo") or "").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        return out

    def _cur_mhz(self) -> int | None:
        khz = _read_int(self._root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
        return None if khz is None else khz // 1000

    def _max_mhz(self) -> int | None:
        khz = _read_int(self._root / "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        return None if khz is None else khz // 1000

    def _find_thermal(self) -> Path | None:
        for zone in sorted((self._root / "sys/class/thermal").glob("thermal_zone*")):
            if (_read(zone / "type") or "").startswith(("x86_pkg_temp", "k10temp", "cpu")):
                return zone / "temp"
        return None

    def _utilization(self) -> float | None:
        first = (_read(self._root / "proc/stat") or "").split("\n", 1)[0].split()
        if not first or first[0] != "cpu":
            return None
        values = [int(v) for v in first[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values[:8])
        last, self._last_stat = self._last_stat, (total, idle)
        if last is None or total == last[0]:
            return None
        return 1.0 - (idle - last[1]) / (total - last[0])

    def snapshot(self, now_unix_ns: int) -> Snapshot:
        """Read the CPU now (power from the change in RAPL energy since the previous reading)."""
        now = self._clock_ns()
        instant = average = energy = None
        if self._rapl:
            raws = [r.energy_j() for r in self._rapl]
            if all(v is not None for v in raws):
                energy = self._energy.update(sum(v for v in raws if v is not None))
                window = self._power_window
                window.append((now, energy))
                while len(window) > 2 and now - window[1][0] >= 1_000_000_000:
                    window.popleft()
                if len(window) >= 2:
                    (t0, e0), (t1, e1) = window[-2], window[-1]
                    if t1 > t0:
                        instant = (e1 - e0) / ((t1 - t0) / 1e9)
                    ta, ea = window[0]
                    if t1 > ta:
                        average = (e1 - ea) / ((t1 - ta) / 1e9)
        temp_mc = _read_int(self._thermal) if self._thermal else None
        mem = self._meminfo()
        used = None
        if "MemTotal" in mem and "MemAvailable" in mem:
            used = mem["MemTotal"] - mem["MemAvailable"]
        return Snapshot(
            timestamp_unix_ns=now_unix_ns,
            power_instant_w=instant,
            power_average_1s_w=average,
            energy_j=energy,
            sm_clock_mhz=self._cur_mhz(),
            gpu_temperature_c=None if temp_mc is None else temp_mc / 1000,
            gpu_utilization_ratio=self._utilization(),
            power_limit_w=self._info.power_limit_enforced_w,
            memory_used_bytes=used,
        )


class CpuBackend:
    """``--device-backend cpu``: the host CPU as one device."""

    name = "cpu"

    def __init__(self, device: CpuDevice) -> None:
        self._device = device

    @classmethod
    def open(cls, root: Path = Path("/"), hostname: str | None = None) -> CpuBackend:
        """Open the CPU backend (always available)."""
        return cls(CpuDevice(root, hostname=hostname))

    def devices(self) -> list[Device]:
        """The CPU."""
        return [self._device]

    def software(self) -> SoftwareVersions:
        """Kernel and Python versions (no GPU driver)."""
        return SoftwareVersions(
            python_version=platform.python_version(),
            os=f"{platform.system()} {platform.release()}",
            blas=os.environ.get("FLOPWATT_BLAS", ""),
        )

    def close(self) -> None:
        """Nothing to release."""
