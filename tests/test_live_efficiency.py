"""The live-efficiency estimator against hand-computed cases.

Physics: a pipe busy a fraction ``a`` of the interval at SM clock ``f`` delivers at most
``a × peak × f ÷ f_peak`` (a peak is quoted at one clock: H100 SXM5's 989.5 TFLOP/s BF16 dense
at its 1,830 MHz tensor-peak clock, 67 TFLOP/s FP32 at its 1,980 MHz boost clock)."""

from __future__ import annotations

import pytest

from flopwatt.analysis.live_efficiency import (
    MeasuredPeak,
    PeakBasis,
    estimate,
    pipe_peaks,
)
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import Registry

H100 = "H100-SXM5-80GB"


def test_half_busy_tensor_pipe_at_the_peak_clock_is_half_the_spec_peak(registry: Registry) -> None:
    spec = registry.get(H100)
    peaks = pipe_peaks(spec)
    est = estimate({"tensor_hmma_active_ratio": 0.5}, 1830, peaks, spec)
    assert est is not None
    assert est.flops_per_s == pytest.approx(0.5 * 989.5e12)
    assert est.mfu_ratio == pytest.approx(0.5)
    assert (est.precision, est.basis) == (Precision.BF16, PeakBasis.SPEC)


def test_a_lower_clock_delivers_proportionally_less(registry: Registry) -> None:
    """Power-capped to 1,464 MHz (0.8 × 1,830): the same activity is 0.8 × the FLOP/s."""
    spec = registry.get(H100)
    est = estimate({"tensor_hmma_active_ratio": 0.5}, 1464, pipe_peaks(spec), spec)
    assert est is not None
    assert est.mfu_ratio == pytest.approx(0.4)


def test_a_measured_peak_is_the_basis_where_the_device_has_one(registry: Registry) -> None:
    """BF16 GEMM measured at 700 TFLOP/s with the SM clock at 1,755 MHz: fully busy at that
    clock is 700 TFLOP/s; MFU stays against the spec peak (700 ÷ 989.5)."""
    spec = registry.get(H100)
    peaks = pipe_peaks(spec, {Precision.BF16: MeasuredPeak(700e12, 1755.0)})
    est = estimate({"tensor_hmma_active_ratio": 1.0}, 1755, peaks, spec)
    assert est is not None
    assert est.flops_per_s == pytest.approx(700e12)
    assert est.mfu_ratio == pytest.approx(700 / 989.5)
    assert est.basis is PeakBasis.MEASURED


def test_pipes_add_up_and_the_largest_names_the_precision(registry: Registry) -> None:
    """HMMA 0.3 on a measured 700 TFLOP/s at 1,755 MHz plus FP32 0.2 on the spec 67 TFLOP/s at
    1,980 MHz, both at 1,980 MHz: 0.3 × 700e12 × 1980/1755 + 0.2 × 67e12 = 250.3 TFLOP/s,
    dominated by BF16; the basis is mixed."""
    spec = registry.get(H100)
    peaks = pipe_peaks(spec, {Precision.BF16: MeasuredPeak(700e12, 1755.0)})
    est = estimate({"tensor_hmma_active_ratio": 0.3, "fp32_active_ratio": 0.2}, 1980, peaks, spec)
    assert est is not None
    hmma = 0.3 * 700e12 * 1980 / 1755
    assert est.flops_per_s_by_pipe["tensor_hmma_active_ratio"] == pytest.approx(hmma)
    assert est.flops_per_s_by_pipe["fp32_active_ratio"] == pytest.approx(0.2 * 67e12)
    assert est.flops_per_s == pytest.approx(hmma + 0.2 * 67e12)
    assert est.precision is Precision.BF16 and est.basis is PeakBasis.MIXED
    assert est.mfu_ratio == pytest.approx((hmma + 0.2 * 67e12) / 989.5e12)


def test_a_measured_fp64_gemm_belongs_to_the_fp64_tensor_pipe(registry: Registry) -> None:
    """DGEMM runs on the FP64 tensor path on H100: its measured peak is the DFMA pipe's, and
    the FP64 vector pipe keeps the spec peak (33.5 TFLOP/s)."""
    spec = registry.get(H100)
    peaks = pipe_peaks(spec, {Precision.FP64: MeasuredPeak(55e12, 1830.0)})
    assert peaks["tensor_dfma_active_ratio"].basis is PeakBasis.MEASURED
    assert peaks["fp64_active_ratio"].flops_per_s == 33.5e12
    assert peaks["fp64_active_ratio"].basis is PeakBasis.SPEC


def test_volta_counts_hmma_at_its_fp16_peak(registry: Registry) -> None:
    """V100 has no BF16: HMMA is FP16, 125 TFLOP/s at 1,530 MHz."""
    spec = registry.get("V100-SXM2-32GB")
    est = estimate({"tensor_hmma_active_ratio": 0.2}, 1530, pipe_peaks(spec), spec)
    assert est is not None
    assert est.flops_per_s == pytest.approx(25e12)
    assert est.mfu_ratio == pytest.approx(0.2)


def test_no_activity_reported_is_no_estimate_never_zero(registry: Registry) -> None:
    """No GPM on the device (or NaN: a metric that failed): absent, not 0 FLOP/s."""
    spec = registry.get(H100)
    peaks = pipe_peaks(spec)
    assert estimate({}, 1980, peaks, spec) is None
    assert estimate({"tensor_hmma_active_ratio": None}, 1980, peaks, spec) is None
    assert estimate({"tensor_hmma_active_ratio": float("nan")}, 1980, peaks, spec) is None
    idle = estimate({"tensor_hmma_active_ratio": 0.0}, 210, peaks, spec)
    assert idle is not None and idle.flops_per_s == 0.0  # reported idle is a real zero


def test_fp64_tensor_peaks_hold_at_max_boost(registry: Registry) -> None:
    """H100's 67 TFLOP/s FP64 tensor peak is quoted at the 1,980 MHz boost clock, not the
    1,830 MHz tensor-peak clock of the FP16 path: fully busy at 1,980 MHz is 67 TFLOP/s."""
    spec = registry.get(H100)
    est = estimate({"tensor_dfma_active_ratio": 1.0}, 1980, pipe_peaks(spec), spec)
    assert est is not None
    assert est.flops_per_s == pytest.approx(67e12)
    assert est.precision is Precision.FP64 and est.mfu_ratio == pytest.approx(1.0)
