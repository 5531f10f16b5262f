"""Per-sample validation of telemetry: bad samples are removed and counted by reason, the good
samples of the same series are kept.

A sample is one timestamp of one device. It is rejected when any power reading is not finite,
negative, or above ``POWER_LIMIT_FACTOR`` × the device's power limit; when its timestamp is not
positive or more than ``MAX_FUTURE_S`` ahead of the collector's clock; or when another float
reading is not finite. Each rejected sample counts once, under the first reason in
:class:`RejectReason` order.

Validation runs on :class:`~flopwatt.records.SeriesBlock` s — every device of a batch at once —
with one vectorised check per rule, and a fast path when nothing is wrong (the usual case).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from flopwatt.records import POWER_COLUMNS, DeviceSeries, SeriesBlock

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


def _rule_masks(
    block: SeriesBlock,
    limits_w: npt.NDArray[np.float64] | None,
    now_unix_ns: int,
) -> list[tuple[RejectReason, npt.NDArray[np.bool_]]]:
    ts = block.timestamp_unix_ns
    rules: list[tuple[RejectReason, npt.NDArray[np.bool_]]] = [
        (RejectReason.TIMESTAMP_INVALID, ts <= 0),
        (RejectReason.TIMESTAMP_FUTURE, ts > now_unix_ns + int(MAX_FUTURE_S * 1e9)),
    ]
    powers = [block.columns[c] for c in POWER_COLUMNS if c in block.columns]
    with np.errstate(invalid="ignore"):
        for p in powers:
            rules.append((RejectReason.POWER_NOT_FINITE, ~np.isfinite(p)))
        for p in powers:
            rules.append((RejectReason.POWER_NEGATIVE, p < 0))
        if limits_w is not None:
            for p in powers:
                rules.append((RejectReason.POWER_ABOVE_LIMIT, p > POWER_LIMIT_FACTOR * limits_w))
        energy = block.columns.get("energy_j")
        if energy is not None:
            rules.append((RejectReason.ENERGY_INVALID, ~np.isfinite(energy) | (energy < 0)))
    for name, col in block.columns.items():
        if name in POWER_COLUMNS or name == "energy_j" or col.dtype.kind != "f":
            continue
        rules.append((RejectReason.VALUE_NOT_FINITE, ~np.isfinite(col)))
    return rules


def _all_good(
    block: SeriesBlock, limits_w: npt.NDArray[np.float64] | None, now_unix_ns: int
) -> bool:
    """Fast path: every rule at once, one combined mask (the usual case is all good)."""
    ts = block.timestamp_unix_ns
    ok = (ts > 0) & (ts <= now_unix_ns + int(MAX_FUTURE_S * 1e9))
    with np.errstate(invalid="ignore"):
        for name, col in block.columns.items():
            if name in POWER_COLUMNS:
                ok &= np.isfinite(col) & (col >= 0)
                if limits_w is not None:
                    ok &= col <= POWER_LIMIT_FACTOR * limits_w
            elif name == "energy_j":
                ok &= np.isfinite(col) & (col >= 0)
            elif col.dtype.kind == "f":
                ok &= np.isfinite(col)
    return bool(ok.all())


def _limits(block: SeriesBlock, registered_w: Sequence[float | None]) -> npt.NDArray[np.float64]:
    """Per-sample power limit: the sample's own positive finite limit, else the device's
    registered one, else +inf (no check)."""
    per_device = np.array(
        [w if w is not None and w > 0 else np.inf for w in registered_w], dtype=np.float64
    )
    base = per_device[block.device_index()] if len(per_device) else np.zeros(0)
    col = block.columns.get("power_limit_w")
    if col is None:
        return base
    with np.errstate(invalid="ignore"):
        usable = np.isfinite(col) & (col > 0)
    return np.where(usable, col, base).astype(np.float64)


def validate_block(
    block: SeriesBlock,
    *,
    now_unix_ns: int,
    power_limits_w: Sequence[float | None],
) -> tuple[npt.NDArray[np.bool_] | None, dict[tuple[str, str], int]]:
    """Check every sample of ``block``.

    Args:
        block: the samples as received.
        now_unix_ns: the collector's wall clock (ns since the Unix epoch).
        power_limits_w: each device's registered enforced power limit (W), or None when
            unknown, in ``block.device_uuids`` order.

    Returns:
        (None when every sample is good, else a boolean keep-mask over the rows;
        {(device_uuid, reason): rejected sample count}).
    """
    has_power = any(c in block.columns for c in POWER_COLUMNS)
    limits = _limits(block, power_limits_w) if has_power else None
    if _all_good(block, limits, now_unix_ns):
        return None, {}
    rules = _rule_masks(block, limits, now_unix_ns)
    bad = np.zeros(len(block), dtype=bool)
    counts: dict[tuple[str, str], int] = {}
    device_index = block.device_index()
    n_devices = len(block.device_uuids)
    for reason, mask in rules:
        new = mask & ~bad
        if not new.any():
            continue
        per_device = np.bincount(device_index[new], minlength=n_devices)
        for i in np.flatnonzero(per_device):
            key = (block.device_uuids[i], reason.value)
            counts[key] = counts.get(key, 0) + int(per_device[i])
        bad |= new
    return ~bad, counts


def validate_series(
    series: DeviceSeries,
    *,
    now_unix_ns: int,
    power_limit_w: float | None,
) -> tuple[DeviceSeries, dict[str, int]]:
    """Validate one device's series (see :func:`validate_block`).

    Returns:
        (the series with only valid samples, {reason: rejected sample count}).
    """
    block = SeriesBlock.concat([series])
    keep, counts = validate_block(block, now_unix_ns=now_unix_ns, power_limits_w=[power_limit_w])
    by_reason = {reason: n for (_, reason), n in counts.items()}
    if keep is None:
        return series, by_reason
    return series.take(keep), by_reason


def merge_counts(into: dict[tuple[str, str], int], counts: Mapping[tuple[str, str], int]) -> None:
    """Add (device, reason) → count mappings together."""
    for key, k in counts.items():
        into[key] = into.get(key, 0) + k
