"""A measured result against the spec sheet and the physics model (pure; numbers in, numbers out).

For one device (matched to a registry SKU, or not) and one precision:

* spec peak: the highest dense peak at that precision (tensor where it exists; FP32 with TF32
  off has only the vector path) and its datapath;
* ratios: burst and sustained FLOP/s ÷ spec peak, mean power ÷ spec TDP and ÷ enforced limit;
* energy per FLOP three ways: measured (energy ÷ FLOPs over the sustained window), the physics
  model's arithmetic energy per FLOP (spec profile) and the inverse-view ceiling (TDP ÷ spec
  peak) — the energy per FLOP the chip must reach to hold its spec peak within TDP.

Anything not known (no SKU, no peak at that precision, no energy reading) is None.
"""

from __future__ import annotations

from dataclasses import dataclass

from flopwatt.analysis.physics import PJ, UnsupportedPrecisionError
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, PeakUnit
from flopwatt.analysis.tdp_compare import (
    OPS_PER_MAC,
    cuda_core_pj_per_flop,
    tensor_core_pj_per_mac,
)


@dataclass(frozen=True)
class SpecComparison:
    """One result compared with its SKU's spec and the physics model."""

    sku: str | None
    precision: str
    datapath: str | None
    """"tensor" or "vector" for the spec peak used; None without one."""
    spec_peak_flops_per_s: float | None
    spec_tdp_w: float | None
    burst_over_spec_ratio: float | None
    sustained_over_spec_ratio: float | None
    mean_power_over_tdp_ratio: float | None
    mean_power_over_limit_ratio: float | None
    measured_energy_per_flop_j: float | None
    physics_energy_per_flop_j: float | None
    ceiling_energy_per_flop_j: float | None
    measured_over_physics_ratio: float | None
    measured_over_ceiling_ratio: float | None
    """Above 1: the device spent more energy per FLOP than holding its spec peak at TDP allows."""
    physics_tdp_w: float | None
    """Modelled power of the datapath at the spec peak (the physics TDP for this precision)."""
    physics_power_at_measured_w: float | None
    """Modelled power at the measured sustained rate."""


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def physics_energy_per_flop_j(spec: GpuSpec, precision: Precision, unit: PeakUnit) -> float | None:
    """The physics model's arithmetic energy per FLOP (J) for ``precision`` on ``unit`` at the
    SKU's node; None where the model has no constant (FP4)."""
    try:
        if unit is PeakUnit.TENSOR:
            return tensor_core_pj_per_mac(spec.process_node_nm, precision) / OPS_PER_MAC * PJ
        return cuda_core_pj_per_flop(spec.process_node_nm, precision) * PJ
    except UnsupportedPrecisionError:
        return None


def compare_to_spec(
    spec: GpuSpec | None,
    precision: str,
    *,
    burst_flops_per_s: float | None = None,
    sustained_flops_per_s: float | None = None,
    energy_per_flop_j: float | None = None,
    mean_power_w: float | None = None,
    power_limit_w: float | None = None,
) -> SpecComparison:
    """Compare a measurement at ``precision`` with ``spec`` (None = unknown device).

    ``precision`` that is not a known name compares as unknown (every spec figure None) rather
    than raising: a result is stored whatever the registry knows.
    """
    try:
        prec: Precision | None = Precision.parse(precision)
    except ValueError:
        prec = None
    peak = spec.best_peak(prec) if spec is not None and prec is not None else None
    tdp = spec.tdp_w if spec is not None else None
    physics = (
        physics_energy_per_flop_j(spec, prec, peak.unit)
        if spec is not None and prec is not None and peak is not None
        else None
    )
    peak_flops = peak.flops_per_s if peak is not None else None
    ceiling = _ratio(tdp, peak_flops)
    return SpecComparison(
        sku=spec.sku if spec is not None else None,
        precision=precision,
        datapath=peak.unit.value if peak is not None else None,
        spec_peak_flops_per_s=peak_flops,
        spec_tdp_w=tdp,
        burst_over_spec_ratio=_ratio(burst_flops_per_s, peak_flops),
        sustained_over_spec_ratio=_ratio(sustained_flops_per_s, peak_flops),
        mean_power_over_tdp_ratio=_ratio(mean_power_w, tdp),
        mean_power_over_limit_ratio=_ratio(mean_power_w, power_limit_w),
        measured_energy_per_flop_j=energy_per_flop_j,
        physics_energy_per_flop_j=physics,
        ceiling_energy_per_flop_j=ceiling,
        measured_over_physics_ratio=_ratio(energy_per_flop_j, physics),
        measured_over_ceiling_ratio=_ratio(energy_per_flop_j, ceiling),
        physics_tdp_w=None if physics is None or peak_flops is None else physics * peak_flops,
        physics_power_at_measured_w=(
            None
            if physics is None or sustained_flops_per_s is None
            else physics * sustained_flops_per_s
        ),
    )
