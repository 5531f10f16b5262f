"""Live efficiency of whatever runs on a GPU, estimated from its pipe activity (GPM).

An **estimate**, not a measurement. NVML's GPM metrics (Hopper and newer) give, per sampling
interval, the fraction of time each math pipe of the SMs was active: the tensor pipes by
instruction kind (HMMA: FP16/BF16/TF32 matrix; IMMA: INT8 matrix; DFMA: FP64 matrix) and the
non-tensor FP16 / FP32 / FP64 pipes. The estimate is

    FLOP/s ≈ Σ over pipes  activity(pipe) × peak(pipe) × SM clock ÷ peak clock

with ``peak(pipe)`` the device's **measured** sustained GEMM FLOP/s at that pipe's precision
where the device has a GEMM result (held at the SM clock it ran at), else the **spec** dense peak
(held at the spec's peak clock). MFU is the estimate ÷ the dense spec peak of the dominant
precision (the pipe that contributes most).

Assumptions and limits (also in the README):

* Activity counts issue slots, not useful FLOPs: padded tiles, tails and masked lanes keep a
  pipe busy without useful work, so the estimate is an upper bound of useful FLOP/s.
* The counter does not know the data type inside a pipe: HMMA activity is counted at the
  FP16/BF16 peak (TF32 work, at half that rate, is over-counted 2×; FP8 on Hopper is not
  HMMA and is not seen).
* Peaks scale linearly with the SM clock (a power-capped GPU delivers less per busy cycle).
* A measured GEMM peak already includes how busy a GEMM keeps the pipe; counting it at
  activity 1 makes the estimate relative to what this GPU really achieves, which is the point.
* Under MIG the activity is the instance's; flopwatt refuses GPM on MIG devices for now.

Pure: no I/O, units in every name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, PeakUnit


@dataclass(frozen=True)
class Pipe:
    """One math pipe GPM reports activity for."""

    column: str
    """The telemetry column holding its activity (ratio 0–1)."""
    precision: Precision
    """The precision its peak is taken at."""
    unit: PeakUnit


PIPES: tuple[Pipe, ...] = (
    Pipe("tensor_hmma_active_ratio", Precision.BF16, PeakUnit.TENSOR),
    Pipe("tensor_imma_active_ratio", Precision.INT8, PeakUnit.TENSOR),
    Pipe("tensor_dfma_active_ratio", Precision.FP64, PeakUnit.TENSOR),
    Pipe("fp16_active_ratio", Precision.FP16, PeakUnit.VECTOR),
    Pipe("fp32_active_ratio", Precision.FP32, PeakUnit.VECTOR),
    Pipe("fp64_active_ratio", Precision.FP64, PeakUnit.VECTOR),
)
"""The pipes whose activity turns into FLOP/s (``tensor_active_ratio``, any tensor pipe, is
their union and is not added again)."""


class PeakBasis(StrEnum):
    """Where a pipe's peak came from."""

    MEASURED = "measured"
    SPEC = "spec"
    MIXED = "mixed"
    """Some pipes from measured GEMM peaks, some from the spec."""


@dataclass(frozen=True)
class PipePeak:
    """A pipe's peak and the SM clock it holds at."""

    flops_per_s: float
    clock_mhz: float | None
    """None: the clock is unknown, and the peak is taken as is (no clock scaling)."""
    basis: PeakBasis


@dataclass(frozen=True)
class MeasuredPeak:
    """A sustained GEMM result of this device: FLOP/s at a precision, at a mean SM clock."""

    flops_per_s: float
    sm_clock_mean_mhz: float | None


@dataclass(frozen=True)
class LiveEstimate:
    """Estimated delivered FLOP/s of one interval and what it rests on."""

    flops_per_s: float
    mfu_ratio: float | None
    """Estimate ÷ the dense spec peak of ``precision`` (None where the spec has none)."""
    precision: Precision
    """The dominant precision (the pipe contributing most)."""
    basis: PeakBasis
    flops_per_s_by_pipe: Mapping[str, float]


def _spec_peak(spec: GpuSpec, pipe: Pipe) -> tuple[float, float | None] | None:
    peak = spec.peak(pipe.precision, pipe.unit)
    if peak is None and pipe.precision is Precision.BF16:
        peak = spec.peak(Precision.FP16, pipe.unit)  # parts without BF16 list FP16 (Volta)
    if peak is None:
        return None
    return peak.flops_per_s, spec.peak_clock_mhz(peak.precision, pipe.unit)


def pipe_peaks(
    spec: GpuSpec | None, measured: Mapping[Precision, MeasuredPeak] | None = None
) -> dict[str, PipePeak]:
    """Each pipe's peak: the measured GEMM peak at its precision where there is one (for a
    tensor pipe only where the spec says that precision has a tensor path), else the spec's
    dense peak; pipes with neither are left out."""
    out: dict[str, PipePeak] = {}
    measured = measured or {}
    for pipe in PIPES:
        spec_peak = _spec_peak(spec, pipe) if spec is not None else None
        m = measured.get(pipe.precision)
        if m is None and pipe.precision is Precision.BF16:
            m = measured.get(Precision.FP16)  # the same HMMA pipe and dense rate
        if m is not None and m.flops_per_s > 0 and (pipe.unit is PeakUnit.VECTOR or spec_peak):
            # A GEMM runs on the tensor path where one exists: a measured peak belongs to the
            # tensor pipe then, never to the vector pipe of the same precision as well.
            on_tensor = spec is not None and spec.peak(pipe.precision, PeakUnit.TENSOR)
            if (pipe.unit is PeakUnit.TENSOR) == bool(on_tensor):
                out[pipe.column] = PipePeak(m.flops_per_s, m.sm_clock_mean_mhz, PeakBasis.MEASURED)
                continue
        if spec_peak is not None:
            out[pipe.column] = PipePeak(spec_peak[0], spec_peak[1], PeakBasis.SPEC)
    return out


def estimate(
    activity: Mapping[str, float | None],
    sm_clock_mhz: float | None,
    peaks: Mapping[str, PipePeak],
    spec: GpuSpec | None,
) -> LiveEstimate | None:
    """The estimate for one interval (see the module docstring).

    Args:
        activity: pipe activity ratios (0–1) by telemetry column; None or absent: not reported.
        sm_clock_mhz: the SM clock over the interval (None: peaks are taken unscaled).
        peaks: :func:`pipe_peaks` of the device.
        spec: the device's spec (for MFU's denominator); None: no MFU.

    Returns:
        None where no pipe with a peak reported activity (no GPM on this device).
    """
    by_pipe: dict[str, float] = {}
    bases: set[PeakBasis] = set()
    for pipe in PIPES:
        a = activity.get(pipe.column)
        p = peaks.get(pipe.column)
        if a is None or p is None or a != a:  # NaN: not reported
            continue
        scale = sm_clock_mhz / p.clock_mhz if sm_clock_mhz and p.clock_mhz else 1.0
        by_pipe[pipe.column] = max(0.0, min(1.0, a)) * p.flops_per_s * scale
        bases.add(p.basis)
    if not by_pipe:
        return None
    dominant = max(PIPES, key=lambda p: by_pipe.get(p.column, -1.0))
    total = sum(by_pipe.values())
    denominator = _spec_peak(spec, dominant) if spec is not None else None
    basis = bases.pop() if len(bases) == 1 else PeakBasis.MIXED
    return LiveEstimate(
        flops_per_s=total,
        mfu_ratio=total / denominator[0] if denominator else None,
        precision=dominant.precision,
        basis=basis,
        flops_per_s_by_pipe=by_pipe,
    )
