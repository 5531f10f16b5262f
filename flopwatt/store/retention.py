"""Retention policy: how long each tier of the store keeps its data, and the size cap.

Tiers (``--retention TIER=HORIZON,…``):

* ``raw`` — samples as received (fresh per-message chunks, then compact per-device chunks);
* ``10s`` and ``1m`` — rollups (:mod:`flopwatt.store.rollup`);
* ``results`` — job results, comparisons, jobs, tombstones, rejected-sample counts,
  attribution spans (who held each GPU) and the message ledger of everything but stored
  telemetry and attribution; by default as long as the longest tier.

Defaults, sized for 1,000 GPUs sampled at 10 Hz on a 500 GB disk (the per-sample sizes are the
ones ``bench/store_growth.py`` measures; see the README for the arithmetic): raw 7 days,
10 s rollups 90 days, 1 min rollups 400 days.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

RAW = "raw"
RESULTS = "results"
ROLLUP_TIERS: tuple[str, ...] = ("10s", "1m")
TIER_NAMES: tuple[str, ...] = (RAW, *ROLLUP_TIERS, RESULTS)

S_NS = 1_000_000_000
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)

DEFAULT_HORIZONS_S: dict[str, int] = {
    RAW: 7 * 86_400,
    "10s": 90 * 86_400,
    "1m": 400 * 86_400,
}
DEFAULT_DISK_SHARE = 0.8
"""``--max-db-bytes`` by default: the store's size at start plus this share of the space then
free on its file system (SQLite)."""


PARTITION_SPANS_S: tuple[int, ...] = (60, 600, 3_600, 86_400, 7 * 86_400, 30 * 86_400)
"""The spans a PostgreSQL time partition may have (s)."""
PARTITIONS_PER_HORIZON = 7
"""A tier's horizon holds about this many partitions (PostgreSQL)."""


def partition_span_s(horizon_s: int) -> int:
    """The span of a tier's PostgreSQL time partitions: the longest of
    :data:`PARTITION_SPANS_S` that fits :data:`PARTITIONS_PER_HORIZON` times into the horizon
    (at least a minute). Partitions are dropped whole once all of them is past the horizon,
    so data stays at most one span (about 1/7 of the horizon) beyond it: raw 7 d → 1 d,
    10 s 90 d → 7 d, 1 min 400 d → 30 d."""
    fits = [s for s in PARTITION_SPANS_S if s * PARTITIONS_PER_HORIZON <= horizon_s]
    return max(fits, default=PARTITION_SPANS_S[0])


class RetentionError(ValueError):
    """A retention or size setting that cannot be used (the message says which and why)."""


def parse_duration_s(text: str) -> int:
    """``"48h"`` → 172800. Units: s, m, h, d, w, y (365 days).

    Raises:
        RetentionError: not a positive duration with a unit.
    """
    m = _DURATION.match(text)
    if not m:
        raise RetentionError(f"{text!r} is not a duration like 90s, 30m, 48h, 30d, 1y")
    seconds = round(float(m.group(1)) * _UNITS_S[m.group(2)])
    if seconds <= 0:
        raise RetentionError(f"{text!r}: a duration must be longer than 0")
    return seconds


def parse_size_bytes(text: str) -> int:
    """``"500G"`` / ``"500GB"`` / ``"1.5TiB"`` / ``"1048576"`` → bytes (k, M, G, T are powers
    of 1024, as disk tools print them).

    Raises:
        RetentionError: not a size.
    """
    m = _SIZE.match(text)
    if not m:
        raise RetentionError(f"{text!r} is not a size like 500G, 80GiB or 1048576")
    unit = (m.group(2) or "b").lower()[0]
    power = {"b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit]
    value: int = round(float(m.group(1)) * float(1024**power))
    if value <= 0:
        raise RetentionError(f"{text!r}: the size must be larger than 0")
    return value


@dataclass(frozen=True)
class Retention:
    """Horizons per tier (s). Data older than its tier's horizon is pruned."""

    raw_s: int = DEFAULT_HORIZONS_S[RAW]
    rollup_10s_s: int = DEFAULT_HORIZONS_S["10s"]
    rollup_1m_s: int = DEFAULT_HORIZONS_S["1m"]
    results_s: int | None = None
    """None: the longest of the others."""

    def horizon_s(self, tier: str) -> int:
        """The tier's horizon (s)."""
        if tier == RAW:
            return self.raw_s
        if tier == "10s":
            return self.rollup_10s_s
        if tier == "1m":
            return self.rollup_1m_s
        if tier == RESULTS:
            return self.results_s or max(self.raw_s, self.rollup_10s_s, self.rollup_1m_s)
        raise KeyError(tier)

    def describe(self) -> str:
        """``raw=7d,10s=90d,1m=400d,results=400d``."""
        return ",".join(f"{t}={format_duration(self.horizon_s(t))}" for t in TIER_NAMES)

    @classmethod
    def parse(cls, text: str | None) -> Retention:
        """``"raw=48h,10s=30d,1m=400d"``; tiers not named keep their defaults.

        Raises:
            RetentionError: an unknown tier, a bad duration, a tier named twice, or a coarser
                tier kept shorter than a finer one (its data would be gone first).
        """
        horizons: dict[str, int] = {}
        for part in (text or "").split(","):
            if not part.strip():
                continue
            tier, sep, value = part.partition("=")
            tier = tier.strip()
            if not sep or tier not in TIER_NAMES:
                raise RetentionError(
                    f"{part.strip()!r}: expected TIER=HORIZON with TIER one of "
                    f"{', '.join(TIER_NAMES)}"
                )
            if tier in horizons:
                raise RetentionError(f"tier {tier} is given twice")
            horizons[tier] = parse_duration_s(value)
        r = cls(
            raw_s=horizons.get(RAW, DEFAULT_HORIZONS_S[RAW]),
            rollup_10s_s=horizons.get("10s", DEFAULT_HORIZONS_S["10s"]),
            rollup_1m_s=horizons.get("1m", DEFAULT_HORIZONS_S["1m"]),
            results_s=horizons.get(RESULTS),
        )
        order = [(RAW, r.raw_s), ("10s", r.rollup_10s_s), ("1m", r.rollup_1m_s)]
        for (fine, f), (coarse, c) in itertools.pairwise(order):
            if c < f:
                raise RetentionError(
                    f"the {coarse} tier ({format_duration(c)}) must be kept at least as long as "
                    f"the {fine} tier ({format_duration(f)})"
                )
        return r


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that divides them: 172800 → ``48h``, 2592000 → ``30d``."""
    s = round(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


def default_max_db_bytes(store_bytes: int, free_bytes: int) -> int:
    """The size cap when none is given: what the store holds now plus
    :data:`DEFAULT_DISK_SHARE` of the free space."""
    return store_bytes + int(DEFAULT_DISK_SHARE * free_bytes)
