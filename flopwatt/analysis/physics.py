"""The seed's physics energy model: energy per operation from process node, circuit and precision.

The tables are the seed's constants (read from its upstream ``technology_profile.py``); they are
the specification, kept digit for digit so results stay comparable with the seed. The model is

    E_op [pJ]   = base(node) × circuit multiplier × precision scale
    ops/s       = ALUs × ops per ALU per cycle × f
    TDP [W]     = E_op × ops/s

One property of these tables is worth saying out loud wherever results are shown: precision
scale × ops per cycle = 2 for every precision except TF32 (2.4), so at a fixed ALU count and
clock the modelled watts do not depend on precision. That is a property of the model, not a
finding about hardware.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from flopwatt.analysis.precision import Precision

PJ = 1e-12
"""Joules per picojoule."""

#: Base energy per FP32 operation (pJ) by process node (nm). Source: the seed.
PROCESS_BASE_ENERGY_PJ: Mapping[float, float] = MappingProxyType(
    {
        3: 1.2,
        4: 1.3,
        5: 1.5,
        6: 1.65,
        7: 1.8,
        8: 1.9,
        10: 2.1,
        12: 2.5,
        14: 2.6,
        16: 2.7,
        22: 3.2,
        28: 4.0,
    }
)


class Circuit(StrEnum):
    """Circuit style of the arithmetic units; sets the energy multiplier and the default clock."""

    X86_PERFORMANCE = "x86_performance"
    X86_EFFICIENCY = "x86_efficiency"
    ARM_PERFORMANCE = "arm_performance"
    ARM_EFFICIENCY = "arm_efficiency"
    STANDARD_CELL = "standard_cell"
    CUDA_CORE = "cuda_core"
    SIMD_PACKED = "simd_packed"
    TENSOR_CORE = "tensor_core"
    SYSTOLIC_MAC = "systolic_mac"
    DOMAIN_FLOW = "domain_flow"

    @classmethod
    def parse(cls, text: str) -> Circuit:
        """Parse a circuit name case-insensitively.

        Raises:
            ValueError: unknown name; the message lists the accepted names.
        """
        key = text.strip().lower()
        for member in cls:
            if member.value == key:
                return member
        raise ValueError(f"unknown circuit {text!r}; accepted: {', '.join(m.value for m in cls)}")


#: Energy multiplier per circuit style (dimensionless). Source: the seed.
CIRCUIT_MULTIPLIER: Mapping[Circuit, float] = MappingProxyType(
    {
        Circuit.X86_PERFORMANCE: 2.5,
        Circuit.X86_EFFICIENCY: 1.5,
        Circuit.ARM_PERFORMANCE: 1.8,
        Circuit.ARM_EFFICIENCY: 1.0,
        Circuit.STANDARD_CELL: 1.0,
        Circuit.CUDA_CORE: 0.95,
        Circuit.SIMD_PACKED: 0.9,
        Circuit.TENSOR_CORE: 0.85,
        Circuit.SYSTOLIC_MAC: 0.8,
        Circuit.DOMAIN_FLOW: 0.75,
    }
)

#: Default clock per circuit style (GHz), used when no frequency is given. Source: the seed.
CIRCUIT_DEFAULT_CLOCK_GHZ: Mapping[Circuit, float] = MappingProxyType(
    {
        Circuit.X86_PERFORMANCE: 4.5,
        Circuit.X86_EFFICIENCY: 2.5,
        Circuit.ARM_PERFORMANCE: 3.5,
        Circuit.ARM_EFFICIENCY: 2.0,
        Circuit.STANDARD_CELL: 2.0,
        Circuit.CUDA_CORE: 1.5,
        Circuit.SIMD_PACKED: 3.0,
        Circuit.TENSOR_CORE: 1.5,
        Circuit.SYSTOLIC_MAC: 1.0,
        Circuit.DOMAIN_FLOW: 1.0,
    }
)

#: Energy of one operation at a precision relative to FP32 (dimensionless). Source: the seed.
PRECISION_ENERGY_SCALE: Mapping[Precision, float] = MappingProxyType(
    {
        Precision.FP64: 2.0,
        Precision.FP32: 1.0,
        Precision.TF32: 0.6,
        Precision.BF16: 0.5,
        Precision.FP16: 0.5,
        Precision.FP8: 0.25,
        Precision.INT8: 0.25,
        Precision.INT4: 0.125,
        Precision.INT2: 0.0625,
    }
)

#: Operations per ALU per cycle at a precision (an FMA counts 2). Source: the seed.
OPS_PER_ALU_PER_CYCLE: Mapping[Precision, int] = MappingProxyType(
    {
        Precision.FP64: 1,
        Precision.FP32: 2,
        Precision.TF32: 4,
        Precision.BF16: 4,
        Precision.FP16: 4,
        Precision.FP8: 8,
        Precision.INT8: 8,
        Precision.INT4: 16,
        Precision.INT2: 32,
    }
)

MODELLED_PRECISIONS: tuple[Precision, ...] = tuple(PRECISION_ENERGY_SCALE)
"""Precisions the seed's tables give constants for (FP4 has none and is never modelled)."""

PRECISION_INVARIANCE_NOTE = (
    "Model property, not a finding: precision scale × ops/cycle = 2 for every precision except "
    "TF32 (2.4), so at a fixed ALU count and clock the modelled watts do not change with precision."
)


class UnsupportedPrecisionError(ValueError):
    """The physics tables carry no constant for this precision (e.g. FP4)."""


def precision_energy_scale(precision: Precision) -> float:
    """Energy of one operation at ``precision`` relative to FP32.

    Raises:
        UnsupportedPrecisionError: the seed's tables have no constant for ``precision``.
    """
    try:
        return PRECISION_ENERGY_SCALE[precision]
    except KeyError:
        raise UnsupportedPrecisionError(
            f"the physics model has no energy constant for {precision.display}; "
            f"modelled: {', '.join(p.display for p in MODELLED_PRECISIONS)}"
        ) from None


def base_energy_pj(process_nm: float) -> float:
    """Base energy per FP32 operation (pJ) at a process node (nm).

    Nodes between table entries interpolate linearly (9 nm → 2.0 pJ, 18 nm → 2.8667 pJ); below
    3 nm the value clamps to 1.2 pJ and above 28 nm to 4.0 pJ, as in the seed.

    Raises:
        ValueError: ``process_nm`` is not a positive finite number.
    """
    if not process_nm > 0 or process_nm == float("inf"):
        raise ValueError(f"process node must be a positive number of nm, got {process_nm!r}")
    nodes = sorted(PROCESS_BASE_ENERGY_PJ)
    if process_nm <= nodes[0]:
        return PROCESS_BASE_ENERGY_PJ[nodes[0]]
    if process_nm >= nodes[-1]:
        return PROCESS_BASE_ENERGY_PJ[nodes[-1]]
    hi = bisect.bisect_left(nodes, process_nm)
    n1, n0 = nodes[hi], nodes[hi - 1]
    e1, e0 = PROCESS_BASE_ENERGY_PJ[n1], PROCESS_BASE_ENERGY_PJ[n0]
    if n1 == process_nm:
        return e1
    return e0 + (e1 - e0) * (process_nm - n0) / (n1 - n0)


@dataclass(frozen=True)
class TdpEstimate:
    """One evaluation of the seed's estimator. Every figure carries its unit in its name."""

    alus: int
    process_nm: float
    circuit: Circuit
    precision: Precision
    frequency_ghz: float
    base_energy_pj: float
    energy_per_op_pj: float
    ops_per_second: float
    tdp_w: float

    @property
    def tops(self) -> float:
        """Throughput in tera-operations per second (1e12 op/s, base 10)."""
        return self.ops_per_second / 1e12

    @property
    def tops_per_w(self) -> float:
        """Energy efficiency in TOPS per watt (equivalently tera-operations per joule)."""
        return self.tops / self.tdp_w


def estimate_tdp(
    alus: int,
    process_nm: float,
    circuit: Circuit,
    precision: Precision,
    frequency_ghz: float | None = None,
) -> TdpEstimate:
    """The seed's ``estimate_tdp``: power to run ``alus`` units flat out.

    Args:
        alus: number of arithmetic units (> 0).
        process_nm: process node in nm (interpolated, see :func:`base_energy_pj`).
        circuit: circuit style (energy multiplier; default clock when ``frequency_ghz`` is None).
        precision: numeric precision (energy scale and ops per cycle).
        frequency_ghz: clock in GHz; None takes the circuit's default clock.

    Returns:
        The estimate; ``tdp_w`` in watts, ``energy_per_op_pj`` in picojoules per operation.

    Raises:
        ValueError: non-positive ALU count or frequency.
        UnsupportedPrecisionError: no constant for ``precision``.
    """
    if alus <= 0:
        raise ValueError(f"ALU count must be positive, got {alus}")
    f_ghz = CIRCUIT_DEFAULT_CLOCK_GHZ[circuit] if frequency_ghz is None else frequency_ghz
    if not f_ghz > 0:
        raise ValueError(f"frequency must be a positive number of GHz, got {f_ghz!r}")
    scale = precision_energy_scale(precision)
    base = base_energy_pj(process_nm)
    e_op_pj = base * CIRCUIT_MULTIPLIER[circuit] * scale
    ops_s = alus * OPS_PER_ALU_PER_CYCLE[precision] * f_ghz * 1e9
    return TdpEstimate(
        alus=alus,
        process_nm=process_nm,
        circuit=circuit,
        precision=precision,
        frequency_ghz=f_ghz,
        base_energy_pj=base,
        energy_per_op_pj=e_op_pj,
        ops_per_second=ops_s,
        tdp_w=e_op_pj * PJ * ops_s,
    )
