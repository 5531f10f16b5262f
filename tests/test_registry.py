"""The sourced GPU registry: every entry is consistent with its own peaks, every figure has a
source, and live devices match exactly or not at all."""

from __future__ import annotations

import math

import pytest

from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import (
    GpuSpec,
    Peak,
    PeakUnit,
    Registry,
    UnknownSkuError,
    load_registry,
)

_REGISTRY = load_registry()
_POWERS_OF_TWO = [2.0**k for k in range(-8, 14)]

# Deviations the reference itself explains; strict, so a data change that fixes them is noticed.
_KNOWN_DEVIATIONS = {
    "B200-tf32-tensor": "datasheet prints TF32 rounded to 2.2 PF sparse (1.1 dense) where "
    "the units give 1.125 (reference §6: ratio 0.49, not 0.5)",
    "GB200-fp64-tensor": "SM count and tensor clock are back-solved, not NVIDIA specs "
    "(reference S19); FP64 is quoted at an unknown clock",
}


def _nearest_power_of_two(x: float) -> float:
    return min(_POWERS_OF_TWO, key=lambda k: abs(math.log(x / k)))


def _peak_cases() -> list[object]:
    cases: list[object] = []
    for spec in _REGISTRY:
        for peak in spec.peaks.values():
            units = spec.tensor_cores if peak.unit is PeakUnit.TENSOR else spec.fp32_lanes
            clocks = [c for c in (spec.tensor_peak_clock_mhz, spec.boost_clock_mhz) if c]
            if peak.unit is PeakUnit.VECTOR:
                clocks = [c for c in (spec.boost_clock_mhz,) if c]
            reason = None
            if not units:
                reason = f"{spec.sku}: the reference gives no {peak.unit.value} unit count"
            elif not clocks:
                reason = f"{spec.sku}: the reference gives no clock for {peak.unit.value} peaks"
            case_id = f"{spec.sku}-{peak.precision}-{peak.unit}"
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            if case_id in _KNOWN_DEVIATIONS:
                marks.append(pytest.mark.xfail(reason=_KNOWN_DEVIATIONS[case_id], strict=True))
            cases.append(pytest.param(spec, peak, id=case_id, marks=marks))
    return cases


@pytest.mark.parametrize(("spec", "peak"), _peak_cases())
def test_units_times_fma_per_clk_times_clock_reproduces_each_peak(
    spec: GpuSpec, peak: Peak
) -> None:
    """units × FMA/unit/clk × 2 × clock must give the listed dense peak within 1 %, with the
    FMA rate a power of two (hardware issues whole FMAs; FP64 on GA102 is 1/64 per lane)."""
    units = spec.tensor_cores if peak.unit is PeakUnit.TENSOR else spec.fp32_lanes
    assert units
    clocks = (
        [spec.tensor_peak_clock_mhz, spec.boost_clock_mhz]
        if peak.unit is PeakUnit.TENSOR
        else [spec.boost_clock_mhz]
    )
    errors = []
    for clock in filter(None, clocks):
        rate = peak.flops_per_s / (2 * units * clock * 1e6)
        fma = _nearest_power_of_two(rate)
        errors.append(abs(units * fma * 2 * clock * 1e6 - peak.flops_per_s) / peak.flops_per_s)
    assert min(errors) <= 0.01, (spec.sku, peak.precision, errors)


def test_derived_fma_per_tensor_core_by_generation() -> None:
    expect = {
        "V100-SXM2-32GB": 64,
        "T4": 64,
        "A10": 128,
        "A100-SXM4-80GB": 256,
        "L40S": 128,
        "H100-SXM5-80GB": 512,
        "H100-PCIe-80GB": 512,
        "B200": 1024,
    }
    for sku, fma in expect.items():
        got = _REGISTRY.get(sku).tensor_fma_per_clk(Precision.FP16)
        assert got == pytest.approx(fma, rel=0.01), sku


def test_h100_tensor_and_vector_clocks_differ() -> None:
    h100 = _REGISTRY.get("H100-SXM5-80GB")
    assert (h100.tensor_peak_clock_mhz, h100.boost_clock_mhz) == (1830, 1980)


def test_every_figure_carries_a_known_source() -> None:
    keys = set(_REGISTRY.source_descriptions)
    assert len(keys) >= 40
    for spec in _REGISTRY:
        for peak in spec.peaks.values():
            # a figure with no source must be one the reference marks as derived
            assert peak.sources, (spec.sku, peak.precision, peak.unit)
            if peak.sources == ("derived",):
                assert peak.uncertain, (spec.sku, peak.precision)
            else:
                assert set(peak.sources) <= keys, (spec.sku, peak.sources)
        assert spec.sources.get("tdp"), spec.sku
        if spec.names:
            assert spec.sources["names"], spec.sku
        for field_sources in spec.sources.values():
            # "derived" marks a figure computed by the reference from sourced ones
            assert set(field_sources) <= keys | {"derived"}, (spec.sku, field_sources)


def test_volta_and_turing_have_no_bf16() -> None:
    for sku in ("V100-SXM2-32GB", "V100-PCIe", "T4"):
        assert _REGISTRY.get(sku).best_peak(Precision.BF16) is None
    assert _REGISTRY.get("A100-SXM4-80GB").best_peak(Precision.BF16) is not None


def test_best_peak_prefers_fp64_tensor_on_ga100() -> None:
    a100 = _REGISTRY.get("A100-SXM4-80GB").best_peak(Precision.FP64)
    assert a100 is not None and a100.unit is PeakUnit.TENSOR
    assert a100.flops_per_s == pytest.approx(19.5e12)


def test_uncertain_fields_are_flagged() -> None:
    b100 = _REGISTRY.get("B100")
    assert b100.is_uncertain("tdp") and b100.tdp_w == 700
    assert all(p.uncertain for p in b100.peaks.values())
    assert _REGISTRY.get("A30").peak(Precision.INT8, PeakUnit.TENSOR).uncertain  # type: ignore[union-attr]
    assert not _REGISTRY.get("H100-SXM5-80GB").peak(Precision.FP16, PeakUnit.TENSOR).uncertain  # type: ignore[union-attr]


# --- device matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sku"),
    [
        ("NVIDIA H100 PCIe", "H100-PCIe-80GB"),
        ("NVIDIA H100 80GB HBM3", "H100-SXM5-80GB"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("Tesla V100-SXM2-32GB", "V100-SXM2-32GB"),
        ("Tesla V100-PCIE-32GB", "V100-PCIe"),
        ("Tesla V100-PCIE-16GB", "V100-PCIe"),
        ("A100-SXM4-40GB", "A100-SXM4-40GB"),  # older drivers, no "NVIDIA " prefix
        ("NVIDIA A100-PCIE-80GB", "A100-PCIe-80GB"),  # older installer name
        ("  nvidia   h100 pcie ", "H100-PCIe-80GB"),  # whitespace and case only
        ("Tesla T4", "T4"),
        ("NVIDIA H200", "H200-SXM-141GB"),
    ],
)
def test_exact_name_match(registry: Registry, name: str, sku: str) -> None:
    m = registry.match_device(name)
    assert (m.sku, m.method) == (sku, "name")


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA H100",  # 0x2339, an SXM variant that is not the 80 GB HBM3 part
        "Tesla V100S-PCIE-32GB",  # V100S is not a V100
        "Tesla V100-SXM2-16GB",  # a different SKU than the 32 GB entry
        "NVIDIA H100 PCIe 94GB",
        "NVIDIA A10G",  # AWS part, not the A10
        "NVIDIA H200 NVL",
        "",
    ],
)
def test_substrings_never_match(registry: Registry, name: str) -> None:
    m = registry.match_device(name)
    assert m.spec is None and m.method == "unknown"
    assert m.raw_name == name
    assert repr(name) in m.note


def test_pci_device_id_matches_first_including_nvml_packed_form(registry: Registry) -> None:
    # NVML pciDeviceId packs device << 16 | vendor
    m = registry.match_device("NVIDIA H100 PCIe", 0x233110DE)
    assert (m.sku, m.method, m.note) == ("H100-PCIe-80GB", "pci_device_id", "")
    m = registry.match_device("something renamed", 0x2330)
    assert m.sku == "H100-SXM5-80GB" and "not one of its known names" in m.note


def test_pci_id_of_another_vendor_is_not_an_nvidia_match(registry: Registry) -> None:
    m = registry.match_device("Some AMD part", (0x2330 << 16) | 0x1002)
    assert m.spec is None


def test_unknown_pci_id_falls_back_to_exact_name(registry: Registry) -> None:
    m = registry.match_device("NVIDIA A40", 0xFFFF10DE)
    assert (m.sku, m.method) == ("A40", "name")


def test_get_unknown_sku_lists_accepted(registry: Registry) -> None:
    with pytest.raises(UnknownSkuError, match=r"accepted: .*H100-SXM5-80GB"):
        registry.get("H300")
    assert registry.get("h100-sxm5-80gb").sku == "H100-SXM5-80GB"


def test_registry_has_the_fleet_skus(registry: Registry) -> None:
    for sku in ("V100-SXM2-32GB", "A100-SXM4-80GB", "H100-SXM5-80GB", "T4"):
        assert sku in registry
    assert len(registry) == 21
