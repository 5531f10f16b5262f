"""A seeded, deterministic simulated GPU built from a registry SKU — so the whole fleet pipeline
can be demonstrated, tested and load-tested without GPUs.

Everything it reports is simulated (``DeviceInfo.simulated``; ``source="sim"`` in metrics), and
its parameters are documented assumptions with their sources below, never data. In particular
its power and energy per FLOP are NOT derived from flopwatt's physics model — that would make
the demo "confirm" the model by construction. They come from public observations:

* achievable fraction of the dense spec peak for a large GEMM: 0.80 — an 8192³ bf16 GEMM on an
  H200 (same compute as H100 SXM) ran at 769–798 TFLOP/s on random data, 0.78–0.81 of the
  989.5 dense spec, with the SM clock at 1980 MHz right after (measured on this project's lent
  H200; assumed to carry over to other SKUs);
* idle board power: the middle of the idle draw seen in nvidia-smi snapshots on real boards
  (reference §7, source S18); for SKUs without a reading, 15 % of TDP (assumption);
* power demanded at the full achievable tensor rate: 0.95 × TDP for datacenter SXM/PCIe parts
  (assumption: large GEMMs run close to but under the board limit), 1.15 × TDP for low-TDP
  inference parts (T4, L4, A10, A30: they are expected to hit their power cap under sustained
  tensor load — reference §6 and the issue). Dynamic power scales linearly with clock at fixed
  voltage (assumption), so a capped device lowers its clock until demand meets the limit and
  raises ``SwPowerCap``;
* thermal: first order, 30 °C inlet, 70 °C at TDP, 30 s time constant (assumptions);
* sensor noise 1 % (σ) on instant power; the 1-s average is the mean of the last second of
  instant readings, as on Hopper; the energy counter integrates the noiseless power.

Faults (``--sim-fault KIND[:ARG][@INDEX]``, index = GPU index, default 0): ``slow:0.85`` (the
GPU delivers 85 % of what its clock says, no throttle reason: degraded silicon or a bad
config), ``power-cap:350`` (enforced limit lowered to 350 W), ``lost-after:30s`` (the GPU falls
off the bus after 30 s), ``stuck-power`` (the power sensor freezes at its first value).
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flopwatt.agent.devices.base import Device, DeviceLost, Snapshot
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, Registry, UnknownSkuError, load_registry
from flopwatt.analysis.throttle import ThrottleReason, encode_throttle
from flopwatt.records import DeviceCapabilities, DeviceInfo, DeviceKind, SoftwareVersions

GEMM_ACHIEVABLE_FRACTION = 0.80
"""Large-GEMM throughput ÷ dense spec peak (measured on an H200; see module docstring)."""

#: Idle board power (W): middle of the nvidia-smi idle range seen on real boards (S18, §7).
IDLE_POWER_W: Mapping[str, float] = {
    "T4": 12.5,
    "A10": 16.0,
    "A30": 32.0,
    "L4": 14.0,
    "L40S": 28.0,
    "V100-SXM2-32GB": 42.0,
    "V100-PCIe": 29.0,
    "A100-SXM4-80GB": 60.5,
    "A100-PCIe-80GB": 47.0,
    "H100-SXM5-80GB": 79.5,
    "H100-PCIe-80GB": 47.5,
    "H100-NVL": 79.0,
    "H200-SXM-141GB": 97.5,
    "B200": 165.5,
    "GB200": 168.5,
}
IDLE_FRACTION_OF_TDP = 0.15
"""Idle power for SKUs without an observed reading (assumption)."""
LOW_TDP_PARTS = frozenset({"T4", "L4", "A10", "A30"})
DEMAND_AT_FULL_LOAD_RATIO = 0.95
"""Power demanded at the full achievable tensor rate ÷ TDP, datacenter parts (assumption)."""
DEMAND_AT_FULL_LOAD_RATIO_LOW_TDP = 1.15
"""The same for low-TDP inference parts, which cap under sustained tensor load (assumption)."""
INLET_C = 30.0
TEMP_AT_TDP_C = 70.0
THERMAL_TAU_S = 30.0
POWER_NOISE_SIGMA = 0.01
HW_THERMAL_LIMIT_C = 87.0
IDLE_CLOCK_MHZ = 210.0
"""SM clock reported while idle (a typical idle P-state clock; assumption)."""


@dataclass(frozen=True)
class SimFault:
    """One injected fault."""

    kind: str
    value: float | None = None
    index: int = 0


def parse_fault(text: str) -> SimFault:
    """Parse ``KIND[:ARG][@INDEX]`` (``slow:0.85@2``, ``power-cap:350``, ``lost-after:30s``,
    ``stuck-power@1``).

    Raises:
        ValueError: unknown kind or bad argument (the message lists what is accepted).
    """
    spec, _, index_text = text.strip().partition("@")
    kind, _, arg = spec.partition(":")
    try:
        index = int(index_text) if index_text else 0
    except ValueError:
        raise ValueError(f"bad GPU index in fault {text!r}") from None
    accepted = "slow:FRACTION, power-cap:WATTS, lost-after:SECONDSs, stuck-power (each @INDEX)"
    if kind == "slow":
        value = _number(arg, text)
        if not 0 < value <= 1:
            raise ValueError(f"slow fraction must be in (0, 1], got {arg!r}")
        return SimFault("slow", value, index)
    if kind == "power-cap":
        value = _number(arg.removesuffix("W").removesuffix("w"), text)
        if value <= 0:
            raise ValueError(f"power cap must be positive watts, got {arg!r}")
        return SimFault("power-cap", value, index)
    if kind == "lost-after":
        value = _number(arg.removesuffix("s"), text)
        return SimFault("lost-after", value, index)
    if kind == "stuck-power" and not arg:
        return SimFault("stuck-power", None, index)
    raise ValueError(f"unknown sim fault {text!r}; accepted: {accepted}")


def _number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"fault {whole!r} needs a number, got {text!r}") from None


@dataclass
class _Load:
    """What the simulated GPU is asked to do right now."""

    precision: Precision | None = None
    intensity: float = 0.0
    """Fraction of the achievable rate the workload would use if nothing held it back."""


@dataclass
class _State:
    t_ns: int
    temperature_c: float
    energy_j: float = 0.0
    power_w: float = 0.0
    clock_mhz: float = 0.0
    throttle: int = 0
    recent: deque[tuple[int, float]] = field(default_factory=deque)
    stuck_w: float | None = None


class SimDevice:
    """One simulated GPU (thread-safe: the sampler and a job may use it concurrently)."""

    def __init__(
        self,
        spec: GpuSpec,
        *,
        index: int,
        host: str,
        seed: int,
        faults: Sequence[SimFault] = (),
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.spec = spec
        self._clock_ns = clock_ns
        # The node's name is part of the seed: two simulated nodes must never share GPU UUIDs.
        self._rng = np.random.default_rng([seed, zlib.crc32(host.encode()), index])
        self._lock = threading.Lock()
        self._slow = 1.0
        self._lost_after_ns: int | None = None
        self._stuck = False
        self._limit_w = spec.tdp_w or 300.0
        for f in faults:
            if f.kind == "slow" and f.value is not None:
                self._slow = f.value
            elif f.kind == "power-cap" and f.value is not None:
                if spec.tdp_w is not None and f.value > spec.tdp_w:
                    # NVML refuses a limit above the maximum, which is the TDP here.
                    raise ValueError(
                        f"power cap {f.value:g} W is above the {spec.sku}'s maximum power "
                        f"limit ({spec.tdp_w:g} W)"
                    )
                self._limit_w = f.value
            elif f.kind == "lost-after" and f.value is not None:
                self._lost_after_ns = int(f.value * 1e9)
            elif f.kind == "stuck-power":
                self._stuck = True
        self._idle_w = IDLE_POWER_W.get(spec.sku, IDLE_FRACTION_OF_TDP * (spec.tdp_w or 300.0))
        tdp = spec.tdp_w or 300.0
        ratio = (
            DEMAND_AT_FULL_LOAD_RATIO_LOW_TDP
            if spec.sku in LOW_TDP_PARTS
            else DEMAND_AT_FULL_LOAD_RATIO
        )
        self._dynamic_full_w = max(tdp * ratio - self._idle_w, 1.0)
        self._r_th = (TEMP_AT_TDP_C - INLET_C) / tdp
        self._boost_mhz = spec.boost_clock_mhz or 1500.0
        self._tensor_mhz = spec.tensor_peak_clock_mhz or self._boost_mhz
        self._load = _Load()
        now = clock_ns()
        self._start_ns = now
        self._state = _State(
            t_ns=now,
            temperature_c=INLET_C + self._r_th * self._idle_w,
            power_w=self._idle_w,
            clock_mhz=IDLE_CLOCK_MHZ,
            throttle=encode_throttle([ThrottleReason.GPU_IDLE]),
        )
        uid = uuidlib.UUID(bytes=self._rng.bytes(16), version=4)
        self._info = DeviceInfo(
            uuid=f"GPU-{uid}",
            index=index,
            name=spec.names[0] if spec.names else spec.sku,
            kind=DeviceKind.GPU,
            pci_bus_id=f"00000000:{0x10 + index:02X}:00.0",
            pci_device_id=((spec.pci_device_ids[0] << 16) | 0x10DE)
            if spec.pci_device_ids
            else None,
            memory_total_bytes=int(float((spec.memory_gb or "0").split("/")[-1]) * 1e9),
            power_limit_enforced_w=self._limit_w,
            power_limit_default_w=spec.tdp_w,
            power_limit_min_w=None,
            power_limit_max_w=spec.tdp_w,
            sm_clock_max_mhz=int(self._boost_mhz),
            capabilities=DeviceCapabilities(
                energy_counter=True,
                power_instant=True,
                power_average_1s=True,
                memory_temperature=False,
                throttle_reasons=True,
                ecc=False,
                utilization=True,
                clocks=True,
            ),
            simulated=True,
            sim_sku=spec.sku,
            torch_index=-1,
            power_usage_is_average=True,
        )
        self._host = host

    @property
    def info(self) -> DeviceInfo:
        """Identity (simulated; the UUID is derived from the seed, so it is stable per seed)."""
        return self._info

    # --- the physics of the simulation (assumptions; see module docstring) -----------------

    def _advance(self, now_ns: int) -> None:
        s = self._state
        dt = (now_ns - s.t_ns) / 1e9
        if dt <= 0:
            return
        load = self._load
        demand_dyn = self._dynamic_full_w * load.intensity
        clock_factor = 1.0
        throttle = 0 if load.intensity > 0 else encode_throttle([ThrottleReason.GPU_IDLE])
        if self._idle_w + demand_dyn > self._limit_w and demand_dyn > 0:
            clock_factor = max((self._limit_w - self._idle_w) / demand_dyn, 0.05)
            throttle |= encode_throttle([ThrottleReason.SW_POWER_CAP])
        if s.temperature_c > HW_THERMAL_LIMIT_C:
            clock_factor *= 0.8
            throttle |= encode_throttle([ThrottleReason.HW_THERMAL_SLOWDOWN])
        power = self._idle_w + demand_dyn * clock_factor
        base_clock = (
            self._tensor_mhz
            if load.precision not in (None, Precision.FP32, Precision.FP64)
            else self._boost_mhz
        )
        s.clock_mhz = base_clock * clock_factor if load.intensity > 0 else IDLE_CLOCK_MHZ
        s.energy_j += 0.5 * (s.power_w + power) * dt
        target = INLET_C + self._r_th * power
        s.temperature_c += (target - s.temperature_c) * (1 - np.exp(-dt / THERMAL_TAU_S))
        s.power_w = power
        s.throttle = throttle
        s.t_ns = now_ns

    def rate_factor(self) -> float:
        """Delivered throughput ÷ unconstrained achievable throughput, right now."""
        with self._lock:
            self._advance(self._clock_ns())
            base = (
                self._tensor_mhz
                if self._load.precision not in (None, Precision.FP32, Precision.FP64)
                else self._boost_mhz
            )
            clock = self._state.clock_mhz if self._load.intensity > 0 else base
            return self._slow * clock / base

    def set_load(self, precision: Precision | None, intensity: float) -> None:
        """Start (intensity > 0) or stop (0) a workload at ``precision``."""
        with self._lock:
            self._advance(self._clock_ns())
            self._load = _Load(precision, max(0.0, min(1.0, intensity)))

    def achievable_flops_per_s(self, precision: Precision) -> float | None:
        """Unconstrained large-GEMM throughput at ``precision`` (FLOP/s), None if the SKU has
        no peak at that precision."""
        peak = self.spec.best_peak(precision)
        return None if peak is None else GEMM_ACHIEVABLE_FRACTION * peak.flops_per_s

    def snapshot(self, now_unix_ns: int) -> Snapshot:
        """One reading (see :class:`Snapshot`).

        Raises:
            DeviceLost: after a ``lost-after`` fault fires.
        """
        with self._lock:
            now = self._clock_ns()
            if self._lost_after_ns is not None and now - self._start_ns >= self._lost_after_ns:
                raise DeviceLost(f"simulated GPU {self._info.index} fell off the bus")
            self._advance(now)
            s = self._state
            measured = s.power_w * (1 + POWER_NOISE_SIGMA * float(self._rng.standard_normal()))
            if self._stuck:
                if s.stuck_w is None:
                    s.stuck_w = measured
                measured = s.stuck_w
            s.recent.append((now, measured))
            while s.recent and now - s.recent[0][0] > 1_000_000_000:
                s.recent.popleft()
            average = sum(p for _, p in s.recent) / len(s.recent)
            load = self._load.intensity
            return Snapshot(
                timestamp_unix_ns=now_unix_ns,
                power_instant_w=measured,
                power_average_1s_w=average,
                energy_j=s.energy_j,
                sm_clock_mhz=round(s.clock_mhz),
                mem_clock_mhz=None,  # not modelled: the registry has no memory clock
                gpu_temperature_c=float(round(s.temperature_c, 1)),
                memory_temperature_c=None,
                gpu_utilization_ratio=1.0 if load > 0 else 0.0,
                memory_utilization_ratio=0.6 * load,
                throttle_reasons=s.throttle,
                power_limit_w=self._limit_w,
                memory_used_bytes=int(self._info.memory_total_bytes * (0.7 if load else 0.01)),
            )


class SimBackend:
    """``--device-backend sim``: N simulated GPUs of one registry SKU."""

    name = "sim"

    def __init__(self, devices: list[SimDevice]) -> None:
        self._devices = devices

    @classmethod
    def from_options(
        cls,
        *,
        sku: str = "H100-SXM5-80GB",
        gpus: int = 8,
        seed: int = 0,
        faults: Sequence[str | SimFault] = (),
        host: str = "sim",
        registry: Registry | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        **_ignored: object,
    ) -> SimBackend:
        """Build the backend.

        Raises:
            ValueError: unknown SKU (the message lists them), bad GPU count or bad fault.
        """
        registry = registry or load_registry()
        try:
            spec = registry.get(sku)
        except UnknownSkuError as exc:
            raise ValueError(str(exc)) from None
        if spec.tdp_w is None or spec.best_peak(Precision.FP16) is None:
            raise ValueError(f"SKU {spec.sku} lacks the TDP or peaks a simulation needs")
        if not 1 <= gpus <= 64:
            raise ValueError(f"--sim-gpus must be 1..64, got {gpus}")
        parsed = [f if isinstance(f, SimFault) else parse_fault(f) for f in faults]
        for f in parsed:
            if not 0 <= f.index < gpus:
                raise ValueError(f"fault {f.kind} names GPU {f.index}, but there are {gpus}")
        devices = [
            SimDevice(
                spec,
                index=i,
                host=host,
                seed=seed,
                faults=[f for f in parsed if f.index == i],
                clock_ns=clock_ns,
            )
            for i in range(gpus)
        ]
        return cls(devices)

    def devices(self) -> list[Device]:
        """The simulated GPUs."""
        return list(self._devices)

    def sim_devices(self) -> list[SimDevice]:
        """The simulated GPUs, typed (for the sim job runner)."""
        return list(self._devices)

    def software(self) -> SoftwareVersions:
        """No driver: the versions say so."""
        return SoftwareVersions(driver_version="sim", cuda_version="", nvml_version="sim")

    def close(self) -> None:
        """Nothing to release."""
