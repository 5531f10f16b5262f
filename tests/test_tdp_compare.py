"""Physics vs spec TDP: the seed's published table digit for digit, and the spec profile's fixes.

The comparison models tensor-core power as energy per MAC × MAC/s at the dense peak. If that
exceeds the board's TDP, the spec peak cannot be sustained at TDP (the seed's hypothesis).
"""

from __future__ import annotations

import pytest

from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import Registry
from flopwatt.analysis.tdp_compare import (
    Datapath,
    Profile,
    compare,
    inverse_view,
    precision_details,
    profile_inputs,
    seed_inputs,
    spec_inputs_for,
    tensor_core_pj_per_mac,
)

# The seed's published table: spec TDP, CUDA FP32 W, TC FP16 W, combined W, ratio, margin.
SEED_TABLE = {
    "B100-SXM6-192GB": ("1000", "85.2", "763.0", "780.0", "0.78", "1.31"),
    "H100-SXM5-80GB": ("700", "87.0", "389.7", "407.1", "0.58", "1.80"),
    "A100-SXM4-80GB": ("400", "70.2", "314.4", "328.4", "0.82", "1.27"),
    "V100-SXM3-32GB": ("350", "39.2", "175.5", "183.3", "0.52", "1.99"),
    "T4-PCIe-16GB": ("70", "20.4", "91.2", "95.2", "1.36", "0.77"),
}


def test_seed_profile_reproduces_the_seed_table_digit_for_digit() -> None:
    rows = {r.sku: r for r in map(compare, seed_inputs())}
    assert list(rows) == list(SEED_TABLE)
    for sku, expected in SEED_TABLE.items():
        r = rows[sku]
        got = (
            f"{r.spec_tdp_w:.0f}",
            f"{r.cuda_fp32_w:.1f}",
            f"{r.tc_fp16_w:.1f}",
            f"{r.combined_w:.1f}",
            f"{r.ratio:.2f}",
            f"{r.margin:.2f}",
        )
        assert got == expected, sku
    assert [s for s, r in rows.items() if r.over_budget] == ["T4-PCIe-16GB"]


def test_seed_h100_by_hand() -> None:
    """H100 seed: 1.3 pJ × 0.8 × 0.5 × 2 × 1.4 = 1.456 pJ/MAC; 528 TCs × 256 MAC × 1.98 GHz
    = 267.6 T MAC/s → 389.67 W; CUDA 1.3 pJ × 16,896 × 2 × 1.98 GHz = 86.98 W."""
    h100 = next(c for c in seed_inputs() if c.sku == "H100-SXM5-80GB")
    r = compare(h100)
    assert r.tc_pj_per_mac == pytest.approx(1.456)
    assert r.tc_fp16_w == pytest.approx(1.456e-12 * 528 * 256 * 1.98e9)
    assert r.cuda_fp32_w == pytest.approx(1.3e-12 * 16_896 * 2 * 1.98e9)
    assert r.max_pj_per_mac == pytest.approx(1.456 * 700 / r.tc_fp16_w)


def test_spec_profile_h100_uses_512_macs_at_1830_mhz(registry: Registry) -> None:
    """Spec H100 SXM5: MACs/TC/clk = 989.5e12 / (2 × 528 × 1.83e9) = 512; TC FP16 power =
    1.456 pJ × 494.75e12 MAC/s = 720.4 W, above the 700 W TDP."""
    r = compare(spec_inputs_for(registry.get("H100-SXM5-80GB")))
    assert r.tc_macs_per_clk == pytest.approx(512, rel=1e-3)
    assert r.tc_clock_mhz == 1830
    assert r.tc_fp16_w == pytest.approx(1.456e-12 * 989.5e12 / 2)
    assert round(r.tc_fp16_w) == 720
    assert r.over_budget
    assert r.cuda_fp32_w == pytest.approx(1.3e-12 * 67e12)  # vector at the 1980 MHz peak


def test_spec_profile_a100_uses_6912_lanes_and_real_fp64(registry: Registry) -> None:
    chip = spec_inputs_for(registry.get("A100-SXM4-80GB"))
    assert chip.cuda_cores == 6_912
    assert chip.vector_flops_per_s[Precision.FP64] == pytest.approx(9.7e12)  # half rate
    fp64 = next(d for d in precision_details(chip, [Precision.FP64]) if d.datapath is Datapath.CUDA)
    assert fp64.power_w == pytest.approx(1.8e-12 * 2 * 9.7e12)  # base × FP64 scale × rate
    assert Precision.FP8 not in chip.tensor_macs_per_s  # no FP8 row on A100


def test_spec_profile_node_class_and_blackwell_flags(registry: Registry) -> None:
    b100 = spec_inputs_for(registry.get("B100"))
    assert b100.process_nm == 4  # 4NP is a 4 nm-class node; 3 nm stays in the seed profile
    assert b100.tdp_w == 700
    assert any("TDP 700 W uncertain" in f for f in b100.flags)
    b200 = spec_inputs_for(registry.get("B200"))
    assert any("unit counts uncertain" in f for f in b200.flags)
    assert compare(b100).cuda_fp32_w is None  # no FP32 figure: absent, never invented


def test_inverse_view_h100_fp16_by_hand(registry: Registry) -> None:
    """700 W ÷ 494.75e12 MAC/s = 1.4149 pJ/MAC (0.7074 pJ/FLOP): the all-in energy per MAC the
    H100 must reach to hold its dense FP16 peak at TDP."""
    chip = spec_inputs_for(registry.get("H100-SXM5-80GB"))
    row = next(r for r in inverse_view(chip, [Precision.FP16]) if r.datapath is Datapath.TENSOR)
    assert row.ceiling_pj_per_mac == pytest.approx(700 / 494.75e12 * 1e12)
    assert row.ceiling_pj_per_flop == pytest.approx(row.ceiling_pj_per_mac / 2)
    assert row.model_pj_per_mac == pytest.approx(1.456)
    assert row.model_over_ceiling == pytest.approx(1.456 / row.ceiling_pj_per_mac)


def test_model_over_ceiling_equals_power_over_tdp(registry: Registry) -> None:
    for spec in registry:
        chip = spec_inputs_for(spec)
        details = {(d.precision, d.datapath): d for d in precision_details(chip)}
        for inv in inverse_view(chip):
            if inv.model_pj_per_mac is None:  # FP4: the model has no constant
                assert inv.precision is Precision.FP4
                continue
            d = details[(inv.precision, inv.datapath)]
            assert inv.model_over_ceiling == pytest.approx(d.power_w / chip.tdp_w)


def test_tensor_pj_per_mac_formula() -> None:
    assert tensor_core_pj_per_mac(12, Precision.FP16) == pytest.approx(2.5 * 0.8 * 0.5 * 2 * 1.4)
    assert tensor_core_pj_per_mac(4, Precision.FP8) == pytest.approx(1.3 * 0.8 * 0.25 * 2.8)


def test_profile_filters_and_errors(registry: Registry) -> None:
    assert [c.sku for c in profile_inputs(Profile.SEED, skus=["t4-pcie-16gb"])] == ["T4-PCIe-16GB"]
    with pytest.raises(KeyError, match="not in the seed profile"):
        profile_inputs(Profile.SEED, skus=["H200"])
    with pytest.raises(KeyError, match="accepted"):
        profile_inputs(Profile.SPEC, registry, ["H300"])
    with pytest.raises(ValueError, match="registry"):
        profile_inputs(Profile.SPEC, None)
