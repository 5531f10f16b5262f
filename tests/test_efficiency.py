"""Efficiency arithmetic, by hand: FLOP/s over FLOP/s, percentiles, energy per operation and the
roofline. Every expected value below is worked out in the comment next to it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flopwatt.analysis.efficiency import (
    arithmetic_intensity,
    attainable_flops_per_s,
    delivered_flops_per_s,
    efficiency_ratio,
    energy_per_operation_j,
    latency_stats,
    percentile,
    ridge_point,
    roofline,
    spread_ratio,
)


def test_efficiency_divides_flops_by_flops_not_macs() -> None:
    # ResNet-50 at batch 1: 4.089 GMACs = 8.178 GFLOPs. At a 10 ms p50 that is 817.8 GFLOP/s;
    # against a 1 TFLOP/s peak the efficiency is 0.8178. The seed divided MACs by the FLOP peak
    # and got 0.4089: exactly half.
    macs = 4.089e9
    flops = 2 * macs
    delivered = delivered_flops_per_s(flops, 0.010)
    assert delivered == pytest.approx(817.8e9)
    assert efficiency_ratio(delivered, 1e12) == pytest.approx(0.8178)
    seed_style = (macs / 0.010) / 1e12
    assert efficiency_ratio(delivered, 1e12) == pytest.approx(2 * seed_style)


def test_efficiency_absent_peak_is_absent_not_zero() -> None:
    assert efficiency_ratio(5e11, 1e12) == 0.5
    assert efficiency_ratio(5e11, None) is None
    assert efficiency_ratio(5e11, 0.0) is None
    assert efficiency_ratio(5e11, math.inf) is None
    with pytest.raises(ValueError):
        efficiency_ratio(-1.0, 1e12)
    with pytest.raises(ValueError):
        delivered_flops_per_s(1e9, 0.0)


def test_percentile_interpolates_linearly_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    # rank = q/100 × (n − 1): p50 → 1.5 → 2.5; p90 → 2.7 → 3.7; p99 → 2.97 → 3.97.
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    rng = np.random.default_rng(3)
    sample = sorted(rng.exponential(size=37).tolist())
    for q in (50, 90, 99):
        assert percentile(sample, q) == pytest.approx(float(np.percentile(sample, q)))
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_latency_stats_by_hand() -> None:
    # Sorted: 10, 11, 12, 13 ms. p50 = 11.5 ms, mean = 11.5 ms; sample std =
    # sqrt((1.5² + 0.5² + 0.5² + 1.5²) / 3) ms = sqrt(5/3) ms = 1.29099 ms.
    stats = latency_stats([0.012, 0.010, 0.013, 0.011])
    assert stats.runs == 4
    assert stats.p50_s == pytest.approx(0.0115)
    assert stats.p90_s == pytest.approx(0.0127)  # rank 2.7: 12 + 0.7 × 1 ms
    assert stats.mean_s == pytest.approx(0.0115)
    assert stats.std_s == pytest.approx(math.sqrt(5 / 3) * 1e-3)
    assert (stats.min_s, stats.max_s) == (0.010, 0.013)
    assert latency_stats([0.5]).std_s == 0.0
    with pytest.raises(ValueError):
        latency_stats([])


def test_spread_ratio() -> None:
    # A 2.8× spread between the best and worst trial: (100 − 100/2.8) / 100 = 0.642857…
    assert spread_ratio([100.0, 100.0 / 2.8, 80.0]) == pytest.approx(1 - 1 / 2.8)
    assert spread_ratio([5.0, 5.0]) == 0.0
    with pytest.raises(ValueError):
        spread_ratio([1.0, 0.0])


def test_energy_per_operation_prorates_to_the_covered_span() -> None:
    # 90 J over the 9 s the sampler's readings cover, of a 10 s run of 1e12 FLOPs: the covered
    # span holds 0.9e12 FLOPs, so 90 / 0.9e12 = 1e-10 J/FLOP = 100 pJ/FLOP — the same as the
    # 10 W mean power (90 J / 9 s) ÷ the run's 1e11 FLOP/s.
    assert energy_per_operation_j(90.0, 9.0, 1e12, 10.0) == pytest.approx(1e-10, rel=1e-6, abs=0)
    # Full coverage: plain energy ÷ operations. 12 J over 3 s for 120 inferences = 0.1 J each.
    assert energy_per_operation_j(12.0, 3.0, 120, 3.0) == pytest.approx(0.1)
    assert energy_per_operation_j(None, 9.0, 1e12, 10.0) is None
    assert energy_per_operation_j(90.0, None, 1e12, 10.0) is None
    assert energy_per_operation_j(90.0, 0.0, 1e12, 10.0) is None
    with pytest.raises(ValueError):
        energy_per_operation_j(1.0, 1.0, 1.0, 0.0)


def test_roofline_by_hand() -> None:
    # H100 SXM5 FP16: 989.5e12 FLOP/s over 3.35e12 bytes/s → ridge 295.37 FLOP/byte.
    ridge = ridge_point(989.5e12, 3.35e12)
    assert ridge == pytest.approx(295.3731, rel=1e-6)
    # 8 GFLOPs moving 100 MB: 80 FLOP/byte, below the ridge → memory-bound; the roofline there
    # is 80 × 3.35e12 = 268e12 FLOP/s; delivering 134e12 is half of it.
    assert arithmetic_intensity(8e9, 1e8) == 80.0
    low = roofline(8e9, 1e8, 989.5e12, 3.35e12, delivered_flops_per_s=134e12)
    assert low.bound == "memory"
    assert low.attainable_flops_per_s == pytest.approx(268e12)
    assert low.roofline_ratio == pytest.approx(0.5)
    # 500 FLOP/byte is above the ridge: compute-bound, the roofline is the peak itself.
    high = roofline(5e10, 1e8, 989.5e12, 3.35e12)
    assert high.bound == "compute"
    assert high.attainable_flops_per_s == 989.5e12
    assert high.roofline_ratio is None
    assert attainable_flops_per_s(0.0, 1e12, 1e11) == 0.0
    with pytest.raises(ValueError):
        ridge_point(1e12, 0.0)
    with pytest.raises(ValueError):
        arithmetic_intensity(1e9, 0.0)
