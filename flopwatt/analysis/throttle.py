"""Clock-event (throttle) reasons: NVML's bitmask, named once for the whole project.

Bit values are NVML's ``nvmlClocksEventReason*`` constants (formerly ``nvmlClocksThrottleReason*``),
as documented in ``nvml.h``. Labels are the lowercase snake_case forms used in Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class ThrottleReason(StrEnum):
    """A clock-event reason, by label."""

    GPU_IDLE = "gpu_idle"
    APPLICATIONS_CLOCKS_SETTING = "applications_clocks_setting"
    SW_POWER_CAP = "sw_power_cap"
    HW_SLOWDOWN = "hw_slowdown"
    SYNC_BOOST = "sync_boost"
    SW_THERMAL_SLOWDOWN = "sw_thermal_slowdown"
    HW_THERMAL_SLOWDOWN = "hw_thermal_slowdown"
    HW_POWER_BRAKE_SLOWDOWN = "hw_power_brake_slowdown"
    DISPLAY_CLOCK_SETTING = "display_clock_setting"


#: NVML bit value of each reason.
THROTTLE_BITS: Mapping[ThrottleReason, int] = MappingProxyType(
    {
        ThrottleReason.GPU_IDLE: 0x1,
        ThrottleReason.APPLICATIONS_CLOCKS_SETTING: 0x2,
        ThrottleReason.SW_POWER_CAP: 0x4,
        ThrottleReason.HW_SLOWDOWN: 0x8,
        ThrottleReason.SYNC_BOOST: 0x10,
        ThrottleReason.SW_THERMAL_SLOWDOWN: 0x20,
        ThrottleReason.HW_THERMAL_SLOWDOWN: 0x40,
        ThrottleReason.HW_POWER_BRAKE_SLOWDOWN: 0x80,
        ThrottleReason.DISPLAY_CLOCK_SETTING: 0x100,
    }
)

#: Reasons that lower clocks below what the workload asked for (idle and settings are not).
LIMITING_REASONS: tuple[ThrottleReason, ...] = (
    ThrottleReason.SW_POWER_CAP,
    ThrottleReason.HW_SLOWDOWN,
    ThrottleReason.SW_THERMAL_SLOWDOWN,
    ThrottleReason.HW_THERMAL_SLOWDOWN,
    ThrottleReason.HW_POWER_BRAKE_SLOWDOWN,
)


def decode_throttle(mask: int) -> tuple[ThrottleReason, ...]:
    """The reasons set in an NVML clock-event bitmask, in bit order (unknown bits ignored)."""
    return tuple(r for r, bit in THROTTLE_BITS.items() if mask & bit)


def encode_throttle(reasons: tuple[ThrottleReason, ...] | list[ThrottleReason]) -> int:
    """The NVML bitmask for ``reasons``."""
    mask = 0
    for r in reasons:
        mask |= THROTTLE_BITS[r]
    return mask


class Limiter(StrEnum):
    """What most likely held a device back, named from recorded throttle reasons."""

    POWER_CAP = "power cap"
    THERMAL = "thermal"
    HW_SLOWDOWN = "hw slowdown"
    NONE = "none"


def likely_limiter(mask: int) -> Limiter:
    """Name the likely limiter from the OR of clock-event reasons seen during a run.

    Power cap wins over thermal and thermal over other hardware slowdowns, because a power cap is
    the usual first cause (thermal and power-brake slowdowns follow from heat and supply).
    """
    reasons = set(decode_throttle(mask))
    if ThrottleReason.SW_POWER_CAP in reasons:
        return Limiter.POWER_CAP
    if reasons & {ThrottleReason.SW_THERMAL_SLOWDOWN, ThrottleReason.HW_THERMAL_SLOWDOWN}:
        return Limiter.THERMAL
    if reasons & {ThrottleReason.HW_SLOWDOWN, ThrottleReason.HW_POWER_BRAKE_SLOWDOWN}:
        return Limiter.HW_SLOWDOWN
    return Limiter.NONE
