"""Per-sample validation of telemetry: bad samples are removed and counted by reason, the good
samples of the same series are kept.

A sample is one timestamp of one device. It is rejected when any power reading is not finite,
negative, or above ``POWER_LIMIT_FACTOR`` × the device's power limit; when its timestamp is not
positive or more than ``MAX_FUTURE_S`` ahead of the collector's clock; or when another float
reading is not finite. Each rejected sample counts once, under the first reason in
:class:`RejectReason` order.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from flopwatt.records import POWER_COLUMNS, DeviceSeries

POWER_LIMIT_FACTOR = 1.5
"""Power above this multiple of the device's power limit is not a believable reading."""
MAX_FUTURE_S = 600.0
"""Timestamps further ahead of the collector's clock than this are rejected (10 min)."""


class RejectReason(StrEnum):
    """Why a sample was rejected (the ``reason`` label of the rejection counter)."""

    TIMESTAMP_INVALID = "timestamp_invalid"
    TIMESTAMP_FUTURE = "timestamp_future"
    POWER_NOT_FINITE = "power_not_finite"
    POWER_NEGATIVE = "power_negative"
    POWER_ABOVE_LIMIT = "power_above_limit"
    ENERGY_INVALID = "energy_invalid"
    VALUE_NOT_FINITE = "value_not_finite"


def validate_series(
    series: DeviceSeries,
    *,
    now_unix_ns: int,
    power_limit_w: float | None,
) -> tuple[DeviceSeries, dict[str, int]]:
    """Split ``series`` into its valid samples and per-reason rejection counts.

    Args:
        series: the samples as received.
        now_unix_ns: the collector's wall clock (ns since the Unix epoch).
        power_limit_w: the device's enforced power limit (W) when known; a per-sample
            ``power_limit_w`` column takes precedence where it holds a positive finite value.

    Returns:
        (the series with only valid samples, {reason: rejected sample count}).
    """
    n = len(series)
    bad: npt.NDArray[np.bool_] = np.zeros(n, dtype=bool)
    counts: dict[str, int] = {}

    def reject(reason: RejectReason, mask: npt.NDArray[np.bool_]) -> None:
        new = mask & ~bad
        k = int(new.sum())
        if k:
            counts[reason.value] = counts.get(reason.value, 0) + k
            bad[:] = bad | new

    ts = series.timestamp_unix_ns
    reject(RejectReason.TIMESTAMP_INVALID, ts <= 0)
    reject(RejectReason.TIMESTAMP_FUTURE, ts > now_unix_ns + int(MAX_FUTURE_S * 1e9))

    limit = _limit_per_sample(series, power_limit_w)
    powers = [series.columns[c] for c in POWER_COLUMNS if c in series.columns]
    for p in powers:
        reject(RejectReason.POWER_NOT_FINITE, ~np.isfinite(p))
    for p in powers:
        with np.errstate(invalid="ignore"):
            reject(RejectReason.POWER_NEGATIVE, p < 0)
    if limit is not None:
        for p in powers:
            with np.errstate(invalid="ignore"):
                reject(RejectReason.POWER_ABOVE_LIMIT, p > POWER_LIMIT_FACTOR * limit)
    energy = series.columns.get("energy_j")
    if energy is not None:
        with np.errstate(invalid="ignore"):
            reject(RejectReason.ENERGY_INVALID, ~np.isfinite(energy) | (energy < 0))
    for name, col in series.columns.items():
        if name in POWER_COLUMNS or name == "energy_j" or col.dtype.kind != "f":
            continue
        reject(RejectReason.VALUE_NOT_FINITE, ~np.isfinite(col))

    if not bad.any():
        return series, counts
    return series.take(~bad), counts


def _limit_per_sample(
    series: DeviceSeries, registered_w: float | None
) -> npt.NDArray[np.float64] | None:
    col = series.columns.get("power_limit_w")
    base = registered_w if registered_w is not None and registered_w > 0 else np.nan
    if col is None:
        return None if np.isnan(base) else np.full(len(series), base)
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(col) & (col > 0)
    limit = np.where(usable, col, base).astype(np.float64)
    # Samples with no usable limit at all compare against +inf (never "above the limit").
    return np.where(np.isnan(limit), np.inf, limit)


def merge_counts(
    into: dict[tuple[str, str], int], device_uuid: str, counts: Mapping[str, int]
) -> None:
    """Add per-reason ``counts`` for ``device_uuid`` into a (device, reason) → count mapping."""
    for reason, k in counts.items():
        into[(device_uuid, reason)] = into.get((device_uuid, reason), 0) + k
