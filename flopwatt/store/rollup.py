"""Rollups: one device's telemetry summarised per interval (10 s, 1 min), mergeable.

A rollup *window* (one row of ``telemetry_rollups``) holds a tier's buckets for one device over
a fixed span of time (:attr:`RollupTier.window_ns`), as named arrays with one value per
non-empty bucket:

* ``bucket`` — the bucket's start (ns since the Unix epoch); ``samples``; ``t_first`` /
  ``t_last`` — the first and last sample time in it (ns);
* for every column but the throttle reasons: ``<col>:n`` (samples with a value), ``:sum``,
  ``:min``, ``:max``, ``:last`` (the value of the latest sample with one). The mean is
  ``sum ÷ n``, so means merge sample-weighted;
* ``energy_j:delta`` — the energy counter's increase (J) over the pairs of consecutive samples
  whose later sample falls in the bucket (the pair that straddles a bucket boundary counts in
  the later bucket, so the deltas of adjacent buckets add up to the exact counter delta from
  the first sample to the last); a decrease (the counter restarted) counts 0, never negative;
  ``energy_j:delta_s`` the seconds those pairs span;
* ``interval_s`` — the seconds from each sample's predecessor to it (each gap capped at
  :data:`MAX_INTERVAL_S`: a device that was not reporting is not counted), summed;
  ``throttle_reasons:or`` (every reason seen), ``throttle_reasons:last``, and
  ``throttle_s:<bit>`` — of ``interval_s``, the seconds a sample reported reason bit ``<bit>``
  (each interval is attributed to the reasons its closing sample reports).

Raw samples and stored windows are the same thing to :func:`reduce_entries` (a sample is a
bucket of one), so building a rollup from raw data and merging a late arrival into a stored
window are one operation, and merging is associative: the result does not depend on how the
raw data was split across maintenance passes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from flopwatt.records import TELEMETRY_COLUMNS
from flopwatt.store.packing import (
    DELTA,
    decode_words,
    delta_rows,
    encode_floats,
    shuffle_rows,
    unshuffle,
)

Arrays = dict[str, npt.NDArray[Any]]

MAX_INTERVAL_S = 5.0
"""Longest gap between two samples that counts as observed time in ``interval_s`` (s)."""

THROTTLE = "throttle_reasons"
ENERGY = "energy_j"
STAT_COLUMNS: tuple[str, ...] = tuple(c.name for c in TELEMETRY_COLUMNS if c.name != THROTTLE)
"""Columns summarised by n / sum / min / max / last (all but the throttle bitmask)."""

_MAGIC = b"FWR2"
_HEADER = struct.Struct("<4sIH")
_LEVEL = 3
"""zstd level: windows are rewritten when late data merges in, so favour speed."""


@dataclass(frozen=True)
class RollupTier:
    """A rollup resolution: buckets of ``bucket_s`` seconds, stored ``window_buckets`` to a
    row."""

    name: str
    bucket_s: int
    window_buckets: int

    @property
    def bucket_ns(self) -> int:
        return self.bucket_s * 1_000_000_000

    @property
    def window_ns(self) -> int:
        return self.bucket_ns * self.window_buckets


TIERS: tuple[RollupTier, ...] = (RollupTier("10s", 10, 60), RollupTier("1m", 60, 60))
"""The rollup tiers: 10 s buckets in 10-minute rows, 1 min buckets in 1-hour rows."""
TIER_BY_NAME: dict[str, RollupTier] = {t.name: t for t in TIERS}


@dataclass(frozen=True)
class Previous:
    """A device's last sample before the ones being rolled up (from the previous pass)."""

    t_unix_ns: int
    energy_j: float | None


def sample_entries(
    timestamps_unix_ns: npt.NDArray[np.int64],
    columns: Mapping[str, npt.NDArray[Any]],
    previous: Previous | None,
) -> Arrays:
    """Raw samples of one device (time order) as entries for :func:`reduce_entries`, each a
    bucket of one sample (``bucket`` left for :func:`rollup` to fill).

    ``columns`` maps a column to its values (NaN where a sample has none); ``previous`` is the
    device's sample before the first one here, which the first interval and energy delta are
    measured from (None: the first sample opens no interval).
    """
    ts = np.asarray(timestamps_unix_ns, dtype=np.int64)
    n = ts.shape[0]
    out: Arrays = {
        "samples": np.ones(n, dtype=np.int64),
        "t_first": ts.copy(),
        "t_last": ts.copy(),
    }
    prev_t = np.empty(n, dtype=np.int64)
    prev_t[1:] = ts[:-1]
    has_prev = np.ones(n, dtype=bool)
    if previous is not None and n and previous.t_unix_ns < ts[0]:
        prev_t[0] = previous.t_unix_ns
    else:
        has_prev[0] = False
        prev_t[0] = ts[0] if n else 0
    dt_s = np.where(has_prev, (ts - prev_t) / 1e9, 0.0)
    dt_s = np.where(dt_s < 0, 0.0, dt_s)
    interval = np.minimum(dt_s, MAX_INTERVAL_S)
    out["interval_s"] = interval
    for name in STAT_COLUMNS:
        col = columns.get(name)
        if col is None:
            continue
        v = np.asarray(col, dtype=np.float64)
        ok = np.isfinite(v)
        out[f"{name}:n"] = ok.astype(np.int64)
        out[f"{name}:sum"] = np.where(ok, v, 0.0)
        out[f"{name}:min"] = np.where(ok, v, np.nan)
        out[f"{name}:max"] = out[f"{name}:min"]
        out[f"{name}:last"] = out[f"{name}:min"]
    energy = columns.get(ENERGY)
    if energy is not None:
        e = np.asarray(energy, dtype=np.float64)
        prev_e = np.empty(n, dtype=np.float64)
        prev_e[1:] = e[:-1]
        if n:
            first_prev = previous.energy_j if previous is not None else None
            prev_e[0] = first_prev if first_prev is not None and has_prev[0] else np.nan
        step = e - prev_e
        counted = has_prev & np.isfinite(step) & (step >= 0)
        out[f"{ENERGY}:delta"] = np.where(counted, step, 0.0)
        out[f"{ENERGY}:delta_s"] = np.where(counted, dt_s, 0.0)
    throttle = columns.get(THROTTLE)
    if throttle is not None:
        bits = np.asarray(throttle).astype(np.uint64)
        out[f"{THROTTLE}:n"] = np.ones(n, dtype=np.int64)
        out[f"{THROTTLE}:or"] = bits
        out[f"{THROTTLE}:last"] = bits
        seen = int(np.bitwise_or.reduce(bits)) if n else 0
        for bit in range(64):
            if seen >> bit & 1:
                on = (bits >> np.uint64(bit)) & np.uint64(1)
                out[f"throttle_s:{bit}"] = np.where(on.astype(bool), interval, 0.0)
    return out


_ADD_PREFIXES = ("throttle_s:",)
_ADD_SUFFIXES = (":n", ":sum", ":delta", ":delta_s")


def _kind(name: str) -> str:
    """How entries of array ``name`` combine: add, min, max, or, last."""
    if name in ("samples", "interval_s") or name.startswith(_ADD_PREFIXES):
        return "add"
    if name.endswith(_ADD_SUFFIXES):
        return "add"
    if name in ("t_first",) or name.endswith(":min"):
        return "min"
    if name in ("t_last",) or name.endswith(":max"):
        return "max"
    if name.endswith(":or"):
        return "or"
    if name.endswith(":last"):
        return "last"
    if name == "bucket":
        return "key"
    raise ValueError(f"unknown rollup array {name!r}")


def _fill(name: str, n: int) -> npt.NDArray[Any]:
    """What an entry without array ``name`` contributes (nothing)."""
    kind = _kind(name)
    if name.startswith(THROTTLE + ":") and kind in ("or", "last"):
        return np.zeros(n, dtype=np.uint64)
    if kind == "add":
        return np.zeros(n, dtype=np.int64 if name.endswith(":n") else np.float64)
    return np.full(n, np.nan)


def _count_name(name: str) -> str:
    return name.rsplit(":", 1)[0] + ":n"


def reduce_entries(entries: Arrays) -> Arrays:
    """Combine entries with the same ``bucket`` (see module): sorted by bucket on return.

    Raises:
        ValueError: arrays of different lengths, or an unknown array name.
    """
    buckets = entries["bucket"]
    n = buckets.shape[0]
    if any(a.shape != (n,) for a in entries.values()):
        raise ValueError("rollup arrays differ in length")
    order = np.lexsort((entries["t_last"], buckets))
    sorted_ = {k: v[order] for k, v in entries.items()}
    b = sorted_["bucket"]
    if n == 0:
        return sorted_
    starts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    ends = np.concatenate((starts[1:], [n])) - 1
    out: Arrays = {"bucket": b[starts]}
    positions = np.arange(n)
    for name, values in sorted_.items():
        kind = _kind(name)
        if kind == "key":
            continue
        if kind == "add":
            out[name] = np.add.reduceat(values, starts)
        elif kind == "min":
            out[name] = (
                np.minimum.reduceat(values, starts)
                if values.dtype.kind == "i"
                else np.fmin.reduceat(values, starts)
            )
        elif kind == "max":
            out[name] = (
                np.maximum.reduceat(values, starts)
                if values.dtype.kind == "i"
                else np.fmax.reduceat(values, starts)
            )
        elif kind == "or":
            out[name] = np.bitwise_or.reduceat(values, starts)
        else:  # last: the latest entry of the bucket that has a value
            counts = sorted_.get(_count_name(name))
            has = counts > 0 if counts is not None else np.ones(n, dtype=bool)
            latest = np.maximum.accumulate(np.where(has, positions, -1))[ends]
            valid = latest >= starts
            picked = values[np.where(valid, latest, ends)]
            if values.dtype.kind == "f":
                picked = np.where(valid, picked, np.nan)
            out[name] = picked
    return out


def concat(parts: list[Arrays]) -> Arrays:
    """Entries of several windows (or samples) as one set; arrays missing from a part are
    filled with what contributes nothing."""
    names = sorted({k for p in parts for k in p})
    out: Arrays = {}
    for name in names:
        pieces = []
        for p in parts:
            size = p["t_last"].shape[0]
            pieces.append(p[name] if name in p else _fill(name, size))
        out[name] = np.concatenate(pieces)
    return out


def rollup(tier: RollupTier, entries: Arrays) -> dict[int, Arrays]:
    """Sample entries (:func:`sample_entries`) as this tier's windows: window start (ns) →
    reduced buckets."""
    bucket = (entries["t_last"] // tier.bucket_ns) * tier.bucket_ns
    windows = (bucket // tier.window_ns) * tier.window_ns
    out: dict[int, Arrays] = {}
    for start in np.unique(windows).tolist():
        mask = windows == start
        part = {k: v[mask] for k, v in entries.items()}
        part["bucket"] = bucket[mask]
        out[int(start)] = reduce_entries(part)
    return out


def merge(a: Arrays, b: Arrays) -> Arrays:
    """Two windows of one device and tier as one (bucket by bucket)."""
    return reduce_entries(concat([a, b]))


_STATS = ("n", "sum", "min", "max", "last")
_FIRST_STAT_COLUMNS = STAT_COLUMNS[:11]
"""The summarised columns of the first rollup format: their array indexes are fixed."""
KNOWN_ARRAYS: tuple[str, ...] = (
    "bucket",
    "samples",
    "t_first",
    "t_last",
    "interval_s",
    *(f"{c}:{stat}" for c in _FIRST_STAT_COLUMNS for stat in _STATS),
    f"{ENERGY}:delta",
    f"{ENERGY}:delta_s",
    f"{THROTTLE}:n",
    f"{THROTTLE}:or",
    f"{THROTTLE}:last",
    *(f"throttle_s:{bit}" for bit in range(64)),
    # Columns added later are appended, never inserted: stored windows name arrays by index.
    *(f"{c}:{stat}" for c in STAT_COLUMNS[11:] for stat in _STATS),
)
"""Array names written as one byte (their index) rather than spelled out: a window's header
would otherwise be ~1.3 KB of names, more than its data while it holds a few buckets. Only
ever appended to."""
_KNOWN_INDEX = {name: i for i, name in enumerate(KNOWN_ARRAYS)}
_SPELLED = 255
assert len(KNOWN_ARRAYS) < _SPELLED


def encode(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """A window as a blob: header, array names with their dtype and encoding, then the
    arrays, each transformed as compact chunks transform columns (integers: delta; floats:
    exact short decimals scaled and delta, else XOR with the previous value; see
    :mod:`flopwatt.store.packing`), byte-shuffled and compressed together with zstd. Lossless.

    All arrays of a kind are transformed as one matrix (a window holds ~70 arrays of at most
    60 values: per-array numpy calls were most of the maintenance pass's time).

    Raises:
        ValueError: arrays of different lengths.
    """
    names = sorted(arrays)
    n = int(arrays["bucket"].shape[0])
    for name in names:
        if arrays[name].shape != (n,):
            raise ValueError(f"rollup array {name} has {arrays[name].shape} values for {n} buckets")
    kinds = [arrays[name].dtype.kind for name in names]
    floats = [i for i, k in enumerate(kinds) if k == "f"]
    words = np.empty((len(names), n), dtype=np.uint64)
    encodings = np.full(len(names), DELTA, dtype=np.uint8)
    scales = np.zeros(len(names), dtype=np.uint8)
    for i, (code, k, w) in zip(
        floats, encode_floats([arrays[names[i]].astype("<f8") for i in floats]), strict=True
    ):
        words[i] = w
        encodings[i] = code
        scales[i] = k
    ints = [i for i, k in enumerate(kinds) if k != "f"]
    if ints:
        words[ints] = delta_rows(np.stack([arrays[names[i]].astype(np.int64) for i in ints]))
    head = bytearray(_HEADER.pack(_MAGIC, n, len(names)))
    for i, name in enumerate(names):
        index = _KNOWN_INDEX.get(name)
        if index is None:
            raw = name.encode()
            head += bytes((_SPELLED, len(raw))) + raw
        else:
            head += bytes((index,))
        head += {"i": b"i", "u": b"u", "f": b"f"}[kinds[i]]
        head += bytes((int(encodings[i]), int(scales[i])))
    body = shuffle_rows(words)
    return bytes(head) + zstandard.ZstdCompressor(level=_LEVEL).compress(body)


def decode(blob: bytes) -> Arrays:
    """Inverse of :func:`encode`.

    Raises:
        ValueError: not a rollup blob, or corrupt.
    """
    magic, n, count = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("not a flopwatt rollup window")
    pos = _HEADER.size
    specs = []
    for _ in range(count):
        index = blob[pos]
        if index == _SPELLED:
            size = blob[pos + 1]
            name = bytes(blob[pos + 2 : pos + 2 + size]).decode()
            pos += 2 + size
        elif index < len(KNOWN_ARRAYS):
            name = KNOWN_ARRAYS[index]
            pos += 1
        else:
            raise ValueError(f"rollup window names an unknown array {index}")
        code = chr(blob[pos])
        encoding, k = blob[pos + 1], blob[pos + 2]
        specs.append((name, {"i": "<i8", "u": "<u8", "f": "<f8"}[code], encoding, k))
        pos += 3
    try:
        raw = zstandard.ZstdDecompressor().decompress(bytes(blob[pos:]))
    except zstandard.ZstdError as exc:
        raise ValueError(f"rollup window is corrupt: {exc}") from exc
    if len(raw) != 8 * n * count:
        raise ValueError("rollup window has the wrong size")
    out: Arrays = {}
    for j, (name, dtype, encoding, k) in enumerate(specs):
        words = unshuffle(raw[8 * n * j : 8 * n * (j + 1)], n, "<u8")
        out[name] = decode_words(words, encoding, k, np.dtype(dtype))
    return out


def mean(arrays: Mapping[str, npt.NDArray[Any]], column: str) -> npt.NDArray[np.float64]:
    """Per bucket, the sample-weighted mean of ``column`` (NaN where it had no value)."""
    n = arrays[f"{column}:n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, arrays[f"{column}:sum"] / np.maximum(n, 1), np.nan)
