"""Efficiency arithmetic: delivered ÷ peak, latency statistics, energy per operation, roofline.

Pure functions, no I/O, no torch. Units follow DESIGN.md ("Units and names"): throughput is
FLOP/s (OP/s for integer formats) and efficiency always divides FLOP/s by FLOP/s — a MAC count
is never divided by a FLOP peak (the seed did, and under-reported efficiency by 2×). Bytes are
bytes (base 10 where a bandwidth is quoted in GB/s: 1 GB/s = 1e9 bytes/s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LatencyStats",
    "RooflinePlacement",
    "arithmetic_intensity",
    "attainable_flops_per_s",
    "delivered_flops_per_s",
    "efficiency_ratio",
    "energy_per_operation_j",
    "latency_stats",
    "percentile",
    "ridge_point",
    "roofline",
    "spread_ratio",
]


def delivered_flops_per_s(flops: float, seconds: float) -> float:
    """FLOP/s delivered by ``flops`` FLOPs in ``seconds`` seconds.

    Raises:
        ValueError: ``seconds`` is not positive or ``flops`` is negative.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if flops < 0:
        raise ValueError(f"flops must be ≥ 0, got {flops}")
    return flops / seconds


def efficiency_ratio(delivered_flops_per_s: float, peak_flops_per_s: float | None) -> float | None:
    """Delivered ÷ peak, both in FLOP/s (0–1 normally; above 1 means the peak was too low).

    Returns:
        The ratio, or None when there is no peak (None, zero or not finite): an absent peak
        gives an absent efficiency, never 0 or infinity.

    Raises:
        ValueError: ``delivered_flops_per_s`` is negative or not finite.
    """
    if not math.isfinite(delivered_flops_per_s) or delivered_flops_per_s < 0:
        raise ValueError(f"delivered FLOP/s must be finite and ≥ 0, got {delivered_flops_per_s}")
    if peak_flops_per_s is None or not math.isfinite(peak_flops_per_s) or peak_flops_per_s <= 0:
        return None
    return delivered_flops_per_s / peak_flops_per_s


def energy_per_operation_j(
    energy_j: float | None, covered_s: float | None, operations: float, run_s: float
) -> float | None:
    """Energy per operation (J per FLOP, or J per inference) over a timed run.

    The sampler's energy covers the span between its first and last reading inside the run
    (``covered_s``), which is up to one sampling period shorter than the run at each end. The
    operations are prorated to that span at the run's own average rate, so energy and work cover
    the same seconds: ``energy_j ÷ (operations × covered_s ÷ run_s)``, which equals mean power ÷
    operation rate.

    Args:
        energy_j: energy over ``covered_s`` (J), or None when the device gives none.
        covered_s: seconds the energy covers; None or ≤ 0 means no coverage.
        operations: operations executed over the whole run (FLOPs, inferences…).
        run_s: the run's duration (s).

    Returns:
        Joules per operation, or None when energy, coverage or work is missing.

    Raises:
        ValueError: ``run_s`` is not positive.
    """
    if not run_s > 0:
        raise ValueError(f"run_s must be > 0, got {run_s}")
    if energy_j is None or covered_s is None or covered_s <= 0 or operations <= 0:
        return None
    return energy_j / (operations * min(covered_s, run_s) / run_s)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of already sorted values, interpolating linearly between
    the two nearest ranks (numpy's default ``linear`` method): rank = q/100 × (n − 1).

    Raises:
        ValueError: no values, or ``q`` outside 0–100.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in 0–100, got {q}")
    rank = q / 100 * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-run latencies (seconds).

    ``std_s`` is the sample standard deviation (n − 1 in the denominator; 0 for one run).
    """

    runs: int
    p50_s: float
    p90_s: float
    p99_s: float
    mean_s: float
    std_s: float
    min_s: float
    max_s: float


def latency_stats(latencies_s: Sequence[float]) -> LatencyStats:
    """Percentiles (linear interpolation), mean, sample std, min and max of latencies (s).

    Raises:
        ValueError: no latencies, or a negative or non-finite one.
    """
    if not latencies_s:
        raise ValueError("no latencies")
    if any(not math.isfinite(v) or v < 0 for v in latencies_s):
        raise ValueError("latencies must be finite and ≥ 0")
    values = sorted(latencies_s)
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return LatencyStats(
        runs=n,
        p50_s=percentile(values, 50),
        p90_s=percentile(values, 90),
        p99_s=percentile(values, 99),
        mean_s=mean,
        std_s=std,
        min_s=values[0],
        max_s=values[-1],
    )


def spread_ratio(values: Sequence[float]) -> float:
    """(best − worst) ÷ best of repeated throughput measurements: 0 when all agree, 0.64 when
    the worst trial reached 36 % of the best (a 2.8× spread).

    Raises:
        ValueError: no values, or a value that is not positive and finite.
    """
    if not values:
        raise ValueError("spread of no values")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError("throughputs must be finite and > 0")
    best = max(values)
    return (best - min(values)) / best


def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """FLOPs per byte moved to or from memory.

    Raises:
        ValueError: ``bytes_moved`` is not positive or ``flops`` is negative.
    """
    if not bytes_moved > 0:
        raise ValueError(f"bytes moved must be > 0, got {bytes_moved}")
    if flops < 0:
        raise ValueError(f"flops must be ≥ 0, got {flops}")
    return flops / bytes_moved


def ridge_point(peak_flops_per_s: float, bandwidth_bytes_per_s: float) -> float:
    """The roofline's ridge point (FLOP/byte): peak FLOP/s ÷ memory bandwidth (bytes/s).

    Below it a kernel is memory-bound, above it compute-bound.

    Raises:
        ValueError: either argument is not positive.
    """
    if not peak_flops_per_s > 0 or not bandwidth_bytes_per_s > 0:
        raise ValueError("peak and bandwidth must both be > 0")
    return peak_flops_per_s / bandwidth_bytes_per_s


def attainable_flops_per_s(
    intensity_flops_per_byte: float, peak_flops_per_s: float, bandwidth_bytes_per_s: float
) -> float:
    """The roofline: min(peak, intensity × bandwidth), in FLOP/s.

    Raises:
        ValueError: a negative intensity, or a peak or bandwidth that is not positive.
    """
    if intensity_flops_per_byte < 0:
        raise ValueError(f"intensity must be ≥ 0, got {intensity_flops_per_byte}")
    if not peak_flops_per_s > 0 or not bandwidth_bytes_per_s > 0:
        raise ValueError("peak and bandwidth must both be > 0")
    return min(peak_flops_per_s, intensity_flops_per_byte * bandwidth_bytes_per_s)


@dataclass(frozen=True)
class RooflinePlacement:
    """Where a workload sits on a device's roofline.

    Attributes:
        intensity_flops_per_byte: the workload's FLOPs ÷ bytes moved.
        ridge_flops_per_byte: the device's peak ÷ bandwidth.
        bound: ``"memory"`` below the ridge point, ``"compute"`` at or above it.
        attainable_flops_per_s: the roofline at this intensity.
        roofline_ratio: delivered ÷ attainable, or None when no delivered figure was given.
    """

    intensity_flops_per_byte: float
    ridge_flops_per_byte: float
    bound: Literal["memory", "compute"]
    attainable_flops_per_s: float
    roofline_ratio: float | None


def roofline(
    flops: float,
    bytes_moved: float,
    peak_flops_per_s: float,
    bandwidth_bytes_per_s: float,
    delivered_flops_per_s: float | None = None,
) -> RooflinePlacement:
    """Place a workload of ``flops`` FLOPs moving ``bytes_moved`` bytes on the roofline of a
    device with ``peak_flops_per_s`` and ``bandwidth_bytes_per_s``.

    Raises:
        ValueError: as :func:`arithmetic_intensity` and :func:`ridge_point`.
    """
    intensity = arithmetic_intensity(flops, bytes_moved)
    ridge = ridge_point(peak_flops_per_s, bandwidth_bytes_per_s)
    attainable = attainable_flops_per_s(intensity, peak_flops_per_s, bandwidth_bytes_per_s)
    return RooflinePlacement(
        intensity_flops_per_byte=intensity,
        ridge_flops_per_byte=ridge,
        bound="memory" if intensity < ridge else "compute",
        attainable_flops_per_s=attainable,
        roofline_ratio=None
        if delivered_flops_per_s is None
        else efficiency_ratio(delivered_flops_per_s, attainable),
    )
