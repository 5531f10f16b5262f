"""Validation of received telemetry: what the collector refuses to store, and how it counts it.

Bad samples are removed and counted; the good samples beside them — of the same series, the
same message, the same commit — are stored as usual. A sample is one timestamp of one device.

Every refused sample is counted once, under the FIRST reason below that applies to it (the
order of :class:`RejectReason`), in ``rejected_samples[(device_uuid, reason)]`` of its message
(stored in the ``rejected_samples`` table and exported as
``flopwatt_collector_samples_rejected_total{reason}``). "The device's limits" are the
:class:`DeviceLimits` of the device the series names, taken from the agent's registration.

Whole series (the writer's :mod:`~flopwatt.collector.telemetry_prep` applies these two):

1. ``malformed_series`` — the series is structurally broken: its ``device_uuid`` is empty; its
   ``timestamp_unix_ns`` is not a whole number of int64 (8-byte) values; it has no samples;
   it has more than ``MAX_SERIES_SAMPLES`` (1,000,000) samples; or a column is neither empty
   nor exactly one value per timestamp. Counted with the number of samples the timestamps
   claim: their byte length ÷ 8 when that is a whole positive number, else 1.
2. ``unregistered_device`` — the series names a device the sending agent did not register.
   Counted with the series' sample count.

Only such series are refused; the message's other series are validated and stored. A message
whose every series is refused is still stored (it consumes its sequence) with no telemetry. Only
bytes that are not a ``TelemetryBatch`` at all reject the whole message.

Per sample, in this order (W = watts, °C, MHz, bytes, J; "not finite" = NaN or ±infinity):

3. ``timestamp_invalid`` — ``timestamp_unix_ns`` ≤ 0.
4. ``timestamp_future`` — ``timestamp_unix_ns`` more than ``MAX_FUTURE_S`` (600 s) ahead of
   the collector's wall clock when the writer validates it.
5. ``power_not_finite`` — ``power_instant_w`` or ``power_average_1s_w`` is not finite.
6. ``power_negative`` — either power reading is < 0 W.
7. ``power_above_limit`` — either power reading is > ``POWER_LIMIT_FACTOR`` (1.5) × the
   sample's power limit: its own ``power_limit_w`` when that passes rule 8, else the device's
   registered enforced limit, else the TDP of its matched SKU; no check when none is known.
8. ``power_limit_out_of_range`` — the sample's ``power_limit_w`` is not finite, ≤ 0 W, below
   the device's ``power_limit_min_w`` − 1 W or above its ``power_limit_max_w`` + 1 W (each bound
   where the device registered it; NVML reports limits in whole mW, the 1 W slack absorbs
   rounding).
9. ``energy_invalid`` — ``energy_j`` is not finite or is < 0 J.
10. ``value_not_finite`` — any other floating-point reading (temperatures, utilisations) is not
    finite.
11. ``temperature_out_of_range`` — ``gpu_temperature_c`` or ``memory_temperature_c`` is below
    ``MIN_TEMPERATURE_C`` (−40 °C) or above ``MAX_TEMPERATURE_C`` (150 °C).
12. ``clock_out_of_range`` — ``sm_clock_mhz`` (``mem_clock_mhz``) is above ``CLOCK_FACTOR``
    (1.5) × the device's registered ``sm_clock_max_mhz`` (``mem_clock_max_mhz``), or above
    ``MAX_CLOCK_MHZ`` (10,000 MHz) when that maximum is unknown.
13. ``utilization_out_of_range`` — a utilization or GPM activity ratio (``gpu_`` /
    ``memory_utilization_ratio``, :data:`~flopwatt.records.GPM_COLUMNS`) is below 0 or above 1.
14. ``memory_used_out_of_range`` — ``memory_used_bytes`` is above the device's registered
    ``memory_total_bytes`` (when that is > 0).
15. ``energy_decreasing`` — ``energy_j`` is lower than the device's reference energy: the
    largest ``energy_j`` of its samples accepted so far in the same epoch (the agent folds
    counter resets into an offset, so energy never decreases within an epoch). Samples of one
    device are read in arrival order — message sequence, then series order within the
    message, then sample order within the series — so a decrease inside one series rejects
    the later sample(s) too. Only accepted samples (those no rule rejects) raise the
    reference; equal energy is accepted. The reference is the collector writer's memory, not
    the store's: a new epoch, the first message after the writer starts, and a message whose
    sequence is not above the last one the writer validated for the device (a resend after a
    failed commit) start without one (rule 15 then checks inside the message only).

Integer columns other than clocks and memory (``throttle_reasons``) are not checked.

Validation runs on :class:`~flopwatt.records.SeriesBlock` s — every device of a commit at
once — with one vectorised mask per rule; the energy rule works on per-series first/last
values and falls back to per-sample running maxima only for a device whose energy did
decrease (or that has other rejections).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from flopwatt.records import GPM_COLUMNS, POWER_COLUMNS, DeviceInfo, DeviceSeries, SeriesBlock

POWER_LIMIT_FACTOR = 1.5
"""Power above this multiple of the device's power limit is not a believable reading."""
POWER_LIMIT_SLACK_W = 1.0
"""A sample's power limit may lie this far outside the registered min/max range (W)."""
MAX_FUTURE_S = 600.0
"""Timestamps further ahead of the collector's clock than this are rejected (10 min)."""
MIN_TEMPERATURE_C = -40.0
"""Lowest believable GPU/memory temperature (°C): the lowest storage temperature of GPUs."""
MAX_TEMPERATURE_C = 150.0
"""Highest believable GPU/memory temperature (°C): GPU dies and HBM throttle near 85–95 °C
and shut down by about 105 °C, so a reading above this is a sensor or wire error."""
CLOCK_FACTOR = 1.5
"""A clock above this multiple of the device's registered maximum is not believable."""
MAX_CLOCK_MHZ = 10_000.0
"""Clock bound (MHz) when the device's maximum is unknown (no GPU clocks near 10 GHz)."""
ENERGY_COLUMN = "energy_j"
POWER_LIMIT_COLUMN = "power_limit_w"
TEMPERATURE_COLUMNS = ("gpu_temperature_c", "memory_temperature_c")
UTILIZATION_COLUMNS = ("gpu_utilization_ratio", "memory_utilization_ratio", *GPM_COLUMNS)
MEMORY_USED_COLUMN = "memory_used_bytes"


class RejectReason(StrEnum):
    """Why a sample was rejected (the ``reason`` label of the rejection counter). A sample
    counts under the first member that applies (see the module docstring for each rule)."""

    MALFORMED_SERIES = "malformed_series"
    UNREGISTERED_DEVICE = "unregistered_device"
    TIMESTAMP_INVALID = "timestamp_invalid"
    TIMESTAMP_FUTURE = "timestamp_future"
    POWER_NOT_FINITE = "power_not_finite"
    POWER_NEGATIVE = "power_negative"
    POWER_ABOVE_LIMIT = "power_above_limit"
    POWER_LIMIT_OUT_OF_RANGE = "power_limit_out_of_range"
    ENERGY_INVALID = "energy_invalid"
    VALUE_NOT_FINITE = "value_not_finite"
    TEMPERATURE_OUT_OF_RANGE = "temperature_out_of_range"
    CLOCK_OUT_OF_RANGE = "clock_out_of_range"
    UTILIZATION_OUT_OF_RANGE = "utilization_out_of_range"
    MEMORY_USED_OUT_OF_RANGE = "memory_used_out_of_range"
    ENERGY_DECREASING = "energy_decreasing"


REASONS: tuple[RejectReason, ...] = tuple(RejectReason)
"""Every reason in order; a reject code c > 0 (see :func:`reject_codes`) is ``REASONS[c - 1]``."""
_CODE: dict[RejectReason, int] = {r: i + 1 for i, r in enumerate(REASONS)}
ENERGY_DECREASING_CODE = _CODE[RejectReason.ENERGY_DECREASING]


@dataclass(frozen=True)
class DeviceLimits:
    """What a device's samples are checked against (from its registration); None = unknown."""

    power_limit_w: float | None = None
    """The limit power is checked against (W): the enforced limit, else the SKU's TDP."""
    power_limit_min_w: float | None = None
    """Lowest power limit the device accepts (W)."""
    power_limit_max_w: float | None = None
    """Highest power limit the device accepts (W)."""
    sm_clock_max_mhz: int | None = None
    """Maximum SM clock (MHz)."""
    mem_clock_max_mhz: int | None = None
    """Maximum memory clock (MHz)."""
    memory_total_bytes: int | None = None
    """Device memory (bytes)."""


def device_limits(info: DeviceInfo, tdp_w: float | None) -> DeviceLimits:
    """The limits of a registered device.

    Args:
        info: the device as registered.
        tdp_w: the TDP of the device's matched SKU (W), or None when unmatched or unknown;
            used when the device registered no enforced power limit.

    Zero, negative or non-finite registered values count as unknown.
    """
    return DeviceLimits(
        power_limit_w=_positive(info.power_limit_enforced_w) or _positive(tdp_w),
        power_limit_min_w=_positive(info.power_limit_min_w),
        power_limit_max_w=_positive(info.power_limit_max_w),
        sm_clock_max_mhz=_positive_int(info.sm_clock_max_mhz),
        mem_clock_max_mhz=_positive_int(info.mem_clock_max_mhz),
        memory_total_bytes=_positive_int(info.memory_total_bytes),
    )


def _positive(value: float | None) -> float | None:
    return float(value) if value is not None and 0 < value < float("inf") else None


def _positive_int(value: int | None) -> int | None:
    return int(value) if value is not None and value > 0 else None


# Columns of a threshold matrix (one row per device; see thresholds()).
_T_POWER, _T_LIMIT_LO, _T_LIMIT_HI, _T_SM_CLOCK, _T_MEM_CLOCK, _T_MEMORY = range(6)
THRESHOLD_COUNT = 6
_CLOCKS = (("sm_clock_mhz", _T_SM_CLOCK), ("mem_clock_mhz", _T_MEM_CLOCK))


def thresholds(limits: DeviceLimits | None) -> npt.NDArray[np.float64]:
    """A device's limits as the numbers the rules compare with: (registered power limit W,
    lowest and highest believable sample power limit W, highest believable SM and memory
    clock MHz, memory total bytes); ±inf where a bound is unknown."""
    lim = limits or DeviceLimits()
    inf = np.inf
    power = _positive(lim.power_limit_w)
    lo, hi = _positive(lim.power_limit_min_w), _positive(lim.power_limit_max_w)
    sm, mem = _positive(lim.sm_clock_max_mhz), _positive(lim.mem_clock_max_mhz)
    memory = _positive(lim.memory_total_bytes)
    return np.array(
        [
            inf if power is None else power,
            -inf if lo is None else lo - POWER_LIMIT_SLACK_W,
            inf if hi is None else hi + POWER_LIMIT_SLACK_W,
            MAX_CLOCK_MHZ if sm is None else CLOCK_FACTOR * sm,
            MAX_CLOCK_MHZ if mem is None else CLOCK_FACTOR * mem,
            inf if memory is None else memory,
        ],
        dtype=np.float64,
    )


def threshold_matrix(limits: Sequence[DeviceLimits | None]) -> npt.NDArray[np.float64]:
    """:func:`thresholds` of each device, one row each."""
    if not limits:
        return np.zeros((0, THRESHOLD_COUNT))
    return np.stack([thresholds(lim) for lim in limits])


class _PerRow:
    """A threshold column per sample row: a scalar when every device of the block shares it
    (the usual fleet of one SKU), else expanded over the rows."""

    def __init__(self, block: SeriesBlock, table: npt.NDArray[np.float64]) -> None:
        self._block = block
        self._table = table
        self._index: npt.NDArray[np.int64] | None = None

    def __call__(self, column: int) -> float | npt.NDArray[np.float64]:
        values = self._table[:, column]
        if values.size == 0:
            return np.inf
        first = values[0]
        if (values == first).all():
            return float(first)
        if self._index is None:
            self._index = self._block.device_index()
        return values[self._index]


def _rules(
    block: SeriesBlock, table: npt.NDArray[np.float64], now_unix_ns: int
) -> list[tuple[RejectReason, npt.NDArray[np.bool_]]]:
    """(reason, rows it rejects) for every sample rule except ``energy_decreasing``."""
    ts = block.timestamp_unix_ns
    cols = block.columns
    per_row = _PerRow(block, table)
    rules: list[tuple[RejectReason, npt.NDArray[np.bool_]]] = [
        (RejectReason.TIMESTAMP_INVALID, ts <= 0),
        (RejectReason.TIMESTAMP_FUTURE, ts > now_unix_ns + int(MAX_FUTURE_S * 1e9)),
    ]
    with np.errstate(invalid="ignore", over="ignore"):
        limit_col = cols.get(POWER_LIMIT_COLUMN)
        limit_ok: npt.NDArray[np.bool_] | None = None
        if limit_col is not None:
            limit_ok = (
                np.isfinite(limit_col)
                & (limit_col > 0)
                & (limit_col >= per_row(_T_LIMIT_LO))
                & (limit_col <= per_row(_T_LIMIT_HI))
            )
            rules.append((RejectReason.POWER_LIMIT_OUT_OF_RANGE, ~limit_ok))
        powers = [cols[c] for c in POWER_COLUMNS if c in cols]
        if powers:
            registered = per_row(_T_POWER)
            limit: Any = registered
            if limit_col is not None and limit_ok is not None:
                limit = np.where(limit_ok, limit_col, registered)
            for p in powers:
                rules.append((RejectReason.POWER_NOT_FINITE, ~np.isfinite(p)))
                rules.append((RejectReason.POWER_NEGATIVE, p < 0))
                if limit_ok is not None or not _unbounded(registered):
                    rules.append((RejectReason.POWER_ABOVE_LIMIT, p > POWER_LIMIT_FACTOR * limit))
        energy = cols.get(ENERGY_COLUMN)
        if energy is not None:
            rules.append((RejectReason.ENERGY_INVALID, ~np.isfinite(energy) | (energy < 0)))
        for name, col in cols.items():
            if col.dtype.kind == "f" and name not in _OWN_FLOAT_RULES:
                rules.append((RejectReason.VALUE_NOT_FINITE, ~np.isfinite(col)))
        for name in TEMPERATURE_COLUMNS:
            t = cols.get(name)
            if t is not None:
                bad = (t < MIN_TEMPERATURE_C) | (t > MAX_TEMPERATURE_C)
                rules.append((RejectReason.TEMPERATURE_OUT_OF_RANGE, bad))
        for name, column in _CLOCKS:
            clock = cols.get(name)
            if clock is not None:
                rules.append((RejectReason.CLOCK_OUT_OF_RANGE, clock > per_row(column)))
        for name in UTILIZATION_COLUMNS:
            u = cols.get(name)
            if u is not None:
                rules.append((RejectReason.UTILIZATION_OUT_OF_RANGE, (u < 0) | (u > 1)))
        used = cols.get(MEMORY_USED_COLUMN)
        if used is not None:
            total = per_row(_T_MEMORY)
            if not _unbounded(total):
                rules.append((RejectReason.MEMORY_USED_OUT_OF_RANGE, used > total))
    return rules


def _unbounded(threshold: float | npt.NDArray[np.float64]) -> bool:
    """Whether a :class:`_PerRow` threshold is +inf for every row (its rule cannot fire)."""
    return isinstance(threshold, float) and threshold == np.inf


_OWN_FLOAT_RULES = frozenset((*POWER_COLUMNS, ENERGY_COLUMN, POWER_LIMIT_COLUMN))
"""Float columns whose non-finite values their own rule counts (not ``value_not_finite``)."""


def reject_codes(
    block: SeriesBlock, *, now_unix_ns: int, thresholds: npt.NDArray[np.float64]
) -> npt.NDArray[np.uint8] | None:
    """Every sample rule but ``energy_decreasing`` (which needs the device's history) over
    ``block``.

    Args:
        block: the samples as received.
        now_unix_ns: the collector's wall clock (ns since the Unix epoch).
        thresholds: one :func:`thresholds` row per entry of ``block.device_uuids``.

    Returns:
        None when every sample passes (the usual case, one combined mask); else per row 0
        (accepted) or the code of the first reason that rejects it (``REASONS[code - 1]``).
    """
    rules = _rules(block, thresholds, now_unix_ns)
    bad = rules[0][1].copy()
    for _, mask in rules[1:]:
        bad |= mask
    if not bad.any():
        return None
    codes = np.zeros(len(block), dtype=np.uint8)
    for reason, mask in sorted(rules, key=lambda r: _CODE[r[0]], reverse=True):
        codes[mask] = _CODE[reason]  # the last write is the first reason in order
    return codes


@dataclass(frozen=True)
class EnergyPart:
    """One block's share of an energy check: its rows' ``energy_j`` (None when the block has
    no energy column), its series bounds, and its reject codes so far (None: all accepted)."""

    energy: npt.NDArray[np.float64] | None
    offsets: npt.NDArray[np.int64]
    codes: npt.NDArray[np.uint8] | None


@dataclass(frozen=True)
class EnergySeries:
    """Every series of the parts of an energy check, part after part: the device each
    belongs to (its slot in the :class:`EnergyTracker`), its message's epoch and sequence,
    which message carried it, and its arrival rank (message order, then order in the
    message)."""

    slot: npt.NDArray[np.int64]
    epoch: npt.NDArray[np.uint64]
    sequence: npt.NDArray[np.uint64]
    write: npt.NDArray[np.int64]
    rank: npt.NDArray[np.int64]


class EnergyTracker:
    """Rule 15 (``energy_decreasing``) with its memory: per device slot, the epoch and the
    sequence of the last message seen for the device, and the largest accepted ``energy_j``
    since the epoch's first message seen (−inf: none)."""

    def __init__(self) -> None:
        self._valid = np.zeros(0, dtype=bool)
        self._epoch = np.zeros(0, dtype=np.uint64)
        self._seq = np.zeros(0, dtype=np.uint64)
        self._energy = np.zeros(0, dtype=np.float64)

    def reset(self, slot: int) -> None:
        """Forget what slot ``slot`` remembers (its device was unregistered or moved)."""
        if slot < len(self._valid):
            self._valid[slot] = False

    def reference(self, slot: int) -> tuple[int, int, float] | None:
        """(epoch, sequence, reference energy J) remembered for ``slot``, or None."""
        if slot >= len(self._valid) or not self._valid[slot]:
            return None
        return int(self._epoch[slot]), int(self._seq[slot]), float(self._energy[slot])

    def _grow(self, size: int) -> None:
        if size <= len(self._valid):
            return
        size = max(size, 2 * len(self._valid), 16)
        pad = size - len(self._valid)
        self._valid = np.concatenate([self._valid, np.zeros(pad, dtype=bool)])
        self._epoch = np.concatenate([self._epoch, np.zeros(pad, dtype=np.uint64)])
        self._seq = np.concatenate([self._seq, np.zeros(pad, dtype=np.uint64)])
        self._energy = np.concatenate([self._energy, np.full(pad, -np.inf)])

    def check(
        self, parts: Sequence[EnergyPart], series: EnergySeries
    ) -> list[npt.NDArray[np.bool_] | None]:
        """Find the samples rule 15 rejects and remember each device's new reference.

        A device's series form one *stream* while they follow each other in one epoch with
        rising sequence (several series of one message belong together); a stream starts
        from the remembered reference when it is the device's first in this check and its
        message is in the remembered epoch with a higher sequence, else from none.

        Returns:
            per part, None or the rows rejected as ``energy_decreasing`` (never rows that
            ``codes`` already rejects).
        """
        out: list[npt.NDArray[np.bool_] | None] = [None] * len(parts)
        n = len(series.slot)
        if n == 0:
            return out
        order = np.lexsort((series.rank, series.slot))
        sl = series.slot[order]
        ep = series.epoch[order]
        sq = series.sequence[order]
        wr = series.write[order]
        same_slot = np.zeros(n, dtype=bool)
        same_slot[1:] = sl[1:] == sl[:-1]
        cont = same_slot.copy()
        cont[1:] &= (ep[1:] == ep[:-1]) & ((wr[1:] == wr[:-1]) | (sq[1:] > sq[:-1]))
        sid = np.cumsum(~cont) - 1
        ref = np.full(int(sid[-1]) + 1, -np.inf)
        heads = np.flatnonzero(~same_slot)
        self._grow(int(sl.max()) + 1)
        hs = sl[heads]
        carry = self._valid[hs] & (self._epoch[hs] == ep[heads]) & (self._seq[hs] < sq[heads])
        ref[sid[heads[carry]]] = self._energy[hs[carry]]

        facts = _series_facts(parts, n)
        if facts is not None:
            self._check_streams(parts, facts, order, sid, ref, out)

        tails = np.empty_like(heads)
        tails[:-1] = heads[1:] - 1
        tails[-1] = n - 1
        ts = sl[tails]
        self._valid[ts] = True
        self._epoch[ts] = ep[tails]
        self._seq[ts] = sq[tails]
        self._energy[ts] = ref[sid[tails]]
        return out

    @staticmethod
    def _check_streams(
        parts: Sequence[EnergyPart],
        facts: _Facts,
        order: npt.NDArray[np.intp],
        sid: npt.NDArray[np.int64],
        ref: npt.NDArray[np.float64],
        out: list[npt.NDArray[np.bool_] | None],
    ) -> None:
        has = facts.has[order]
        pos = np.flatnonzero(has)  # sorted positions of series with energy samples
        if pos.size == 0:
            return
        g = order[pos]
        streams = sid[pos]
        first, last, clean = facts.first[g], facts.last[g], facts.clean[g]
        new = np.ones(pos.size, dtype=bool)
        new[1:] = streams[1:] != streams[:-1]
        prev = np.empty(pos.size)
        prev[1:] = last[:-1]
        prev[new] = ref[streams[new]]
        with np.errstate(invalid="ignore"):
            ok = clean & (first >= prev)
        end = np.ones(pos.size, dtype=bool)
        end[:-1] = new[1:]
        if ok.all():  # the usual case: every stream rises from its reference
            ref[streams[end]] = last[end]
            return
        bad = np.unique(streams[~ok])
        fine = end & ~np.isin(streams, bad)
        ref[streams[fine]] = last[fine]
        for stream in bad.tolist():
            r = float(ref[stream])
            for k in g[streams == stream].tolist():
                p, local = facts.locate(k)
                part = parts[p]
                assert part.energy is not None
                a, b = int(part.offsets[local]), int(part.offsets[local + 1])
                e = part.energy[a:b]
                accepted = (
                    np.ones(b - a, dtype=bool) if part.codes is None else part.codes[a:b] == 0
                )
                running = np.maximum.accumulate(
                    np.concatenate(([r], np.where(accepted, e, -np.inf)))
                )
                decreasing = accepted & (e < running[:-1])
                if decreasing.any():
                    mask = out[p]
                    if mask is None:
                        mask = out[p] = np.zeros(len(part.energy), dtype=bool)
                    mask[a:b] |= decreasing
                r = float(running[-1])
            ref[stream] = r


@dataclass(frozen=True)
class _Facts:
    """Per series of an energy check (in :class:`EnergySeries` order): whether it has energy
    samples, its first and last energy, and whether it is *clean* (every sample accepted so
    far and its energy never decreasing inside it)."""

    has: npt.NDArray[np.bool_]
    first: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    clean: npt.NDArray[np.bool_]
    sizes: list[int]
    """Series per part."""

    def locate(self, k: int) -> tuple[int, int]:
        """(part, index in the part) of series ``k``."""
        for p, size in enumerate(self.sizes):
            if k < size:
                return p, k
            k -= size
        raise IndexError(k)  # pragma: no cover - callers pass k < total


def _series_facts(parts: Sequence[EnergyPart], n: int) -> _Facts | None:
    has = np.zeros(n, dtype=bool)
    first = np.zeros(n)
    last = np.zeros(n)
    clean = np.zeros(n, dtype=bool)
    sizes = [len(part.offsets) - 1 for part in parts]
    base = 0
    any_energy = False
    for part, k in zip(parts, sizes, strict=True):
        e = part.energy
        if e is not None and len(e):
            starts, ends = part.offsets[:-1], part.offsets[1:]
            nonempty = np.flatnonzero(ends > starts)
            s = starts[nonempty]
            rising = np.ones(len(e), dtype=bool)
            with np.errstate(invalid="ignore"):
                rising[1:] = e[1:] >= e[:-1]
            rising[s] = True
            ok = np.logical_and.reduceat(rising, s)
            if part.codes is not None:
                ok &= ~np.logical_or.reduceat(part.codes != 0, s)
            idx = base + nonempty
            has[idx] = True
            first[idx] = e[s]
            last[idx] = e[ends[nonempty] - 1]
            clean[idx] = ok
            any_energy = True
        base += k
    if not any_energy:
        return None
    return _Facts(has, first, last, clean, sizes)


def count_codes(block: SeriesBlock, codes: npt.NDArray[np.uint8]) -> dict[tuple[str, str], int]:
    """{(device_uuid, reason): rejected samples} for per-row reject codes of ``block``."""
    bad = np.flatnonzero(codes)
    if not bad.size:
        return {}
    rows = block.device_index()[bad]
    keys, counts = np.unique(rows * 256 + codes[bad], return_counts=True)
    out: dict[tuple[str, str], int] = {}
    for key, k in zip(keys.tolist(), counts.tolist(), strict=True):
        name = (block.device_uuids[key >> 8], REASONS[(key & 255) - 1].value)
        out[name] = out.get(name, 0) + k
    return out


def validate_block(
    block: SeriesBlock,
    *,
    now_unix_ns: int,
    limits: Sequence[DeviceLimits | None],
    energy_from: Mapping[str, float] | None = None,
) -> tuple[npt.NDArray[np.bool_] | None, dict[tuple[str, str], int]]:
    """Check every sample of ``block`` against every sample rule (3–15).

    The block's rows of one device uuid are read in row order for the energy rule, starting
    from ``energy_from[uuid]`` (J) where given, else from none.

    Args:
        block: the samples as received.
        now_unix_ns: the collector's wall clock (ns since the Unix epoch).
        limits: each device's limits (None when unknown), in ``block.device_uuids`` order.
        energy_from: reference energy per device uuid (J).

    Returns:
        (None when every sample is good, else a boolean keep-mask over the rows;
        {(device_uuid, reason): rejected sample count}).
    """
    codes = reject_codes(block, now_unix_ns=now_unix_ns, thresholds=threshold_matrix(limits))
    energy = block.columns.get(ENERGY_COLUMN)
    if energy is not None and len(block.device_uuids):
        names = {u: i for i, u in enumerate(dict.fromkeys(block.device_uuids))}
        k = len(block.device_uuids)
        tracker = EnergyTracker()
        tracker._grow(len(names))
        for uuid, value in (energy_from or {}).items():
            if uuid in names:
                s = names[uuid]
                tracker._valid[s], tracker._energy[s] = True, value
        steps = np.arange(1, k + 1, dtype=np.uint64)
        (decreasing,) = tracker.check(
            [EnergyPart(np.asarray(energy, dtype=np.float64), block.offsets, codes)],
            EnergySeries(
                np.array([names[u] for u in block.device_uuids], dtype=np.int64),
                np.zeros(k, dtype=np.uint64),
                steps,
                steps.astype(np.int64),
                steps.astype(np.int64),
            ),
        )
        if decreasing is not None:
            codes = np.zeros(len(block), dtype=np.uint8) if codes is None else codes
            codes[decreasing] = ENERGY_DECREASING_CODE
    if codes is None:
        return None, {}
    return codes == 0, count_codes(block, codes)


def validate_series(
    series: DeviceSeries,
    *,
    now_unix_ns: int,
    limits: DeviceLimits | None,
    energy_from: float | None = None,
) -> tuple[DeviceSeries, dict[str, int]]:
    """Validate one device's series on its own (see :func:`validate_block`).

    Returns:
        (the series with only valid samples, {reason: rejected sample count}).
    """
    block = SeriesBlock.concat([series])
    keep, counts = validate_block(
        block,
        now_unix_ns=now_unix_ns,
        limits=[limits],
        energy_from=None if energy_from is None else {series.device_uuid: energy_from},
    )
    by_reason = {reason: n for (_, reason), n in counts.items()}
    if keep is None:
        return series, by_reason
    return series.take(keep), by_reason


def merge_counts(into: dict[tuple[str, str], int], counts: Mapping[tuple[str, str], int]) -> None:
    """Add (device, reason) → count mappings together."""
    for key, k in counts.items():
        into[key] = into.get(key, 0) + k
