"""The seed's physics estimator, checked against hand-computed cases.

Physical reading: a chip's arithmetic power is (energy per operation) × (operations per
second). Energy per op scales with the process node's switching energy, the circuit style and the
operand width; ops/s is units × ops per unit per cycle × clock.
"""

from __future__ import annotations

import math

import pytest

from flopwatt.analysis.physics import (
    MODELLED_PRECISIONS,
    OPS_PER_ALU_PER_CYCLE,
    PRECISION_ENERGY_SCALE,
    Circuit,
    UnsupportedPrecisionError,
    base_energy_pj,
    estimate_tdp,
)
from flopwatt.analysis.precision import Precision


def test_worked_case_fp16_tensor_core_4nm() -> None:
    """10,000 ALUs × 4 FP16 ops/cycle × 1.5 GHz = 60 TOPS; 1.3 pJ × 0.85 × 0.5 = 0.5525 pJ/op;
    0.5525 pJ × 60e12 /s = 33.15 W."""
    e = estimate_tdp(10_000, 4, Circuit.TENSOR_CORE, Precision.FP16, 1.5)
    assert e.energy_per_op_pj == pytest.approx(0.5525)
    assert e.tops == pytest.approx(60.0)
    assert e.tdp_w == pytest.approx(33.15)
    assert e.tops_per_w == pytest.approx(60 / 33.15)


def test_worked_case_defaults() -> None:
    """16,384 ALUs, 5 nm (1.5 pJ), tensor_core (0.85), FP32 (×1, 2 ops/cycle), 1.5 GHz:
    1.275 pJ × 16,384 × 2 × 1.5e9 = 62.67 W."""
    e = estimate_tdp(16_384, 5, Circuit.TENSOR_CORE, Precision.FP32)
    assert e.frequency_ghz == 1.5
    assert round(e.tdp_w, 2) == 62.67


def test_worked_case_x86_uses_its_default_clock() -> None:
    """1,024 ALUs at 7 nm (1.8 pJ) × x86_performance 2.5 = 4.5 pJ/op, at the circuit's default
    4.5 GHz: 4.5 pJ × 1,024 × 2 × 4.5e9 = 41.47 W."""
    e = estimate_tdp(1_024, 7, Circuit.X86_PERFORMANCE, Precision.FP32)
    assert e.frequency_ghz == 4.5
    assert round(e.tdp_w, 2) == 41.47


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (3, 1.2),
        (4, 1.3),
        (5, 1.5),
        (7, 1.8),
        (12, 2.5),
        (28, 4.0),
        (9, 2.0),  # halfway between 8 nm (1.9) and 10 nm (2.1)
        (18, 2.7 + (3.2 - 2.7) * 2 / 6),  # 16 → 22 nm, a third of the way: 2.8667
        (2, 1.2),
        (0.5, 1.2),  # clamp below 3 nm
        (40, 4.0),
        (90, 4.0),  # clamp above 28 nm
    ],
)
def test_base_energy_interpolates_and_clamps(node: float, expected: float) -> None:
    assert base_energy_pj(node) == pytest.approx(expected)


def test_eighteen_nm_is_2_8667() -> None:
    assert round(base_energy_pj(18), 4) == 2.8667


def test_watts_are_precision_invariant_except_tf32() -> None:
    """scale × ops/cycle = 2 for all but TF32 (0.6 × 4 = 2.4): a property of the tables."""
    watts = {
        p: estimate_tdp(4096, 7, Circuit.TENSOR_CORE, p, 1.0).tdp_w for p in MODELLED_PRECISIONS
    }
    for p, w in watts.items():
        product = PRECISION_ENERGY_SCALE[p] * OPS_PER_ALU_PER_CYCLE[p]
        assert product == pytest.approx(2.4 if p is Precision.TF32 else 2.0)
        expected = watts[Precision.FP32] * (1.2 if p is Precision.TF32 else 1.0)
        assert w == pytest.approx(expected)


def test_frequency_scales_power_linearly() -> None:
    a = estimate_tdp(1000, 5, Circuit.CUDA_CORE, Precision.FP32, 1.0)
    b = estimate_tdp(1000, 5, Circuit.CUDA_CORE, Precision.FP32, 2.0)
    assert b.tdp_w == pytest.approx(2 * a.tdp_w)
    assert b.energy_per_op_pj == a.energy_per_op_pj


def test_fp4_has_no_constant() -> None:
    with pytest.raises(UnsupportedPrecisionError, match="FP4"):
        estimate_tdp(1000, 5, Circuit.TENSOR_CORE, Precision.FP4)


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_bad_process_node_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="process node"):
        base_energy_pj(bad)


def test_bad_alus_and_frequency_rejected() -> None:
    with pytest.raises(ValueError, match="ALU"):
        estimate_tdp(0, 5, Circuit.TENSOR_CORE, Precision.FP32)
    with pytest.raises(ValueError, match="frequency"):
        estimate_tdp(10, 5, Circuit.TENSOR_CORE, Precision.FP32, 0.0)


def test_parsers_are_case_insensitive_and_list_choices() -> None:
    assert Precision.parse("FP16") is Precision.FP16
    assert Circuit.parse("Tensor_Core") is Circuit.TENSOR_CORE
    with pytest.raises(ValueError, match=r"accepted: .*fp16"):
        Precision.parse("fp12")
    with pytest.raises(ValueError, match=r"accepted: .*systolic_mac"):
        Circuit.parse("magic")
