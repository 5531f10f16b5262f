"""Physics vs spec-sheet TDP for real GPUs: the seed's ``compare_tdp_registry``, done right.

One set of formulas, two named input profiles:

* ``seed`` — the seed's own inputs (process nodes, unit counts, MACs per tensor core, one clock
  for everything, full-rate FP64). Kept so that its published table comes out digit for digit
  and later results stay comparable with it.
* ``spec`` (default) — inputs from the sourced registry: MACs per tensor core derived from the
  dense FP16 peak at the clock that peak is quoted at, vector work at the vector peaks (so FP64
  uses the real FP64 rate), the foundry node class, and only the precisions a part really has.

Formulas (energies in pJ, rates in per-second):

    CUDA-core W(p)   = base(node) × 1.0 × scale(p) × vector FLOP/s(p)
    TC pJ/MAC(p)     = base(node) × 0.8 × scale(p) × 2 × 1.4        (2 ops per MAC, 40 % datapath)
    TC W(p)          = TC pJ/MAC(p) × tensor MAC/s(p)
    combined W       = 0.2 × CUDA-core W(FP32) + TC W(FP16)
    ratio            = combined / spec TDP
    margin           = spec TDP / TC W(FP16)
    max pJ/MAC       = TC pJ/MAC(FP16) × margin      (the energy per MAC that would exhaust TDP)

In the seed profile the rates are built the seed's way: vector FLOP/s = cores × 2 × f at every
precision, tensor MAC/s = TCs × MACs/TC/clk × throughput multiplier(p) × f.

The **inverse view** turns the question around: TDP ÷ peak MAC/s is the all-in energy per MAC a
chip must reach to sustain its spec peak within its TDP. It is the form in which the seed's
hypothesis ("peaks exceed what power delivery can sustain") can be tested against measured
energy per FLOP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from flopwatt.analysis.physics import (
    PJ,
    UnsupportedPrecisionError,
    base_energy_pj,
    precision_energy_scale,
)
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, PeakUnit, Registry

CUDA_CORE_CIRCUIT_MULTIPLIER = 1.0
"""The seed's multiplier for CUDA-core work in the registry comparison (standard cell)."""
TENSOR_CORE_CIRCUIT_MULTIPLIER = 0.8
"""The seed's multiplier for tensor-core work (systolic MAC)."""
OPS_PER_MAC = 2
"""A multiply-accumulate is two operations."""
DATAPATH_OVERHEAD = 1.4
"""The seed's 40 % overhead for register files, data distribution and control."""
COMBINED_CUDA_SHARE = 0.2
"""Share of CUDA-core FP32 power the seed adds to tensor-core FP16 power in 'combined'."""

#: The seed's tensor-core throughput relative to FP16, per precision.
SEED_TC_THROUGHPUT_MULTIPLIER: Mapping[Precision, float] = MappingProxyType(
    {
        Precision.FP64: 0.25,
        Precision.FP32: 0.5,
        Precision.TF32: 0.5,
        Precision.BF16: 1.0,
        Precision.FP16: 1.0,
        Precision.FP8: 2.0,
        Precision.INT8: 2.0,
        Precision.INT4: 4.0,
    }
)
SEED_CUDA_PRECISIONS: tuple[Precision, ...] = (Precision.FP64, Precision.FP32, Precision.FP16)


class Profile(StrEnum):
    """Named input profiles for the comparison."""

    SEED = "seed"
    SPEC = "spec"

    @classmethod
    def parse(cls, text: str) -> Profile:
        """Parse a profile name case-insensitively.

        Raises:
            ValueError: unknown profile; the message lists the accepted ones.
        """
        for member in cls:
            if member.value == text.strip().lower():
                return member
        raise ValueError(f"unknown profile {text!r}; accepted: {', '.join(m.value for m in cls)}")


@dataclass(frozen=True)
class ChipInputs:
    """Everything the formulas need about one chip. Rates are per second; None = not known."""

    sku: str
    process_nm: float
    tdp_w: float | None
    cuda_cores: int | None
    vector_clock_mhz: float | None
    tensor_cores: int | None
    tc_clock_mhz: float | None
    tc_macs_per_clk: float | None
    """Dense FP16 MACs (FMAs) per tensor core per clock."""
    vector_flops_per_s: Mapping[Precision, float]
    tensor_macs_per_s: Mapping[Precision, float]
    flags: tuple[str, ...] = field(default=())
    """Human-readable caveats (uncertain or derived inputs)."""


# --- profiles -------------------------------------------------------------------------------

_SEED_GPUS: tuple[tuple[str, float, int, int, int, float, float], ...] = (
    # name,             nm, CUDA cores, TCs, MACs/TC/clk, clock GHz, spec TDP W
    ("B100-SXM6-192GB", 3, 16_896, 528, 512, 2.1, 1000),
    ("H100-SXM5-80GB", 4, 16_896, 528, 256, 1.98, 700),
    ("A100-SXM4-80GB", 7, 13_824, 432, 256, 1.41, 400),
    ("V100-SXM3-32GB", 12, 5_120, 640, 64, 1.53, 350),
    ("T4-PCIe-16GB", 12, 2_560, 320, 64, 1.59, 70),
)


def seed_inputs() -> list[ChipInputs]:
    """The seed's five GPUs with the seed's inputs, verbatim (including its known errors:
    B100 at 3 nm, H100 at 256 MACs/TC at 1.98 GHz, A100 with 13,824 CUDA cores, full-rate FP64)."""
    out = []
    for name, nm, cores, tcs, macs, ghz, tdp in _SEED_GPUS:
        f = ghz * 1e9
        out.append(
            ChipInputs(
                sku=name,
                process_nm=nm,
                tdp_w=tdp,
                cuda_cores=cores,
                vector_clock_mhz=ghz * 1e3,
                tensor_cores=tcs,
                tc_clock_mhz=ghz * 1e3,
                tc_macs_per_clk=macs,
                vector_flops_per_s=MappingProxyType(
                    {p: cores * 2 * f for p in SEED_CUDA_PRECISIONS}
                ),
                tensor_macs_per_s=MappingProxyType(
                    {p: tcs * macs * m * f for p, m in SEED_TC_THROUGHPUT_MULTIPLIER.items()}
                ),
                flags=("seed inputs, kept verbatim for comparability",),
            )
        )
    return out


def spec_inputs_for(spec: GpuSpec) -> ChipInputs:
    """Inputs for one registry SKU under the spec profile."""
    vector = {
        p: peak.flops_per_s for (p, unit), peak in spec.peaks.items() if unit is PeakUnit.VECTOR
    }
    tensor = {
        p: peak.macs_per_s for (p, unit), peak in spec.peaks.items() if unit is PeakUnit.TENSOR
    }
    flags: list[str] = []
    if spec.is_uncertain("tdp"):
        flags.append(f"TDP {spec.tdp_w:g} W uncertain (secondary sources)")
    if "ALL" in spec.uncertain:
        flags.append("every figure from secondary sources")
    else:
        if {"tcs", "cores"} & spec.uncertain:
            flags.append("unit counts uncertain")
        if spec.tensor_peak_clock_derived:
            flags.append(
                f"tensor clock {spec.tensor_peak_clock_mhz:g} MHz back-solved from the FP16 peak"
            )
        elif "tclk" in spec.uncertain:
            flags.append("tensor-peak clock derived/uncertain")
        if "fp16" in spec.uncertain:
            flags.append("FP16 peak derived, not printed by the vendor")
    return ChipInputs(
        sku=spec.sku,
        process_nm=spec.process_node_nm,
        tdp_w=spec.tdp_w,
        cuda_cores=spec.fp32_lanes,
        vector_clock_mhz=spec.boost_clock_mhz,
        tensor_cores=spec.tensor_cores,
        tc_clock_mhz=spec.tensor_peak_clock_mhz,
        tc_macs_per_clk=spec.tensor_fma_per_clk(Precision.FP16),
        vector_flops_per_s=MappingProxyType(vector),
        tensor_macs_per_s=MappingProxyType(tensor),
        flags=tuple(flags),
    )


def profile_inputs(
    profile: Profile, registry: Registry | None = None, skus: Sequence[str] | None = None
) -> list[ChipInputs]:
    """Inputs for ``profile``; ``skus`` filters (case-insensitive, exact).

    Raises:
        ValueError: the spec profile was asked for without a registry.
        UnknownSkuError: a spec-profile SKU is not in the registry.
        KeyError: a seed-profile name is not one of the seed's five GPUs.
    """
    if profile is Profile.SEED:
        chips = seed_inputs()
        if skus:
            wanted = {s.casefold() for s in skus}
            unknown = wanted - {c.sku.casefold() for c in chips}
            if unknown:
                raise KeyError(
                    f"not in the seed profile: {', '.join(sorted(unknown))}; "
                    f"accepted: {', '.join(c.sku for c in chips)}"
                )
            chips = [c for c in chips if c.sku.casefold() in wanted]
        return chips
    if registry is None:
        raise ValueError("the spec profile needs a registry")
    specs = [registry.get(s) for s in skus] if skus else list(registry)
    return [spec_inputs_for(s) for s in specs]


# --- formulas -------------------------------------------------------------------------------


def cuda_core_pj_per_flop(process_nm: float, precision: Precision) -> float:
    """Modelled energy per CUDA-core FLOP (pJ) = base(node) × 1.0 × scale(precision)."""
    return (
        base_energy_pj(process_nm)
        * CUDA_CORE_CIRCUIT_MULTIPLIER
        * precision_energy_scale(precision)
    )


def tensor_core_pj_per_mac(process_nm: float, precision: Precision) -> float:
    """Modelled energy per tensor-core MAC (pJ) = base × 0.8 × scale × 2 ops × 1.4 overhead.

    H100 (4 nm) at FP16: 1.3 × 0.8 × 0.5 × 2 × 1.4 = 1.456 pJ/MAC.
    """
    return (
        base_energy_pj(process_nm)
        * TENSOR_CORE_CIRCUIT_MULTIPLIER
        * precision_energy_scale(precision)
        * OPS_PER_MAC
        * DATAPATH_OVERHEAD
    )


def cuda_core_w(chip: ChipInputs, precision: Precision) -> float | None:
    """Modelled CUDA-core power (W) at the chip's vector peak for ``precision``; None if the
    chip has no vector rate at that precision or the model no constant for it."""
    rate = chip.vector_flops_per_s.get(precision)
    if rate is None:
        return None
    try:
        return cuda_core_pj_per_flop(chip.process_nm, precision) * PJ * rate
    except UnsupportedPrecisionError:
        return None


def tensor_core_w(chip: ChipInputs, precision: Precision) -> float | None:
    """Modelled tensor-core power (W) at the chip's dense tensor peak for ``precision``."""
    rate = chip.tensor_macs_per_s.get(precision)
    if rate is None:
        return None
    try:
        return tensor_core_pj_per_mac(chip.process_nm, precision) * PJ * rate
    except UnsupportedPrecisionError:
        return None


@dataclass(frozen=True)
class ComparisonRow:
    """The seed's comparison and sensitivity for one chip (W in watts, energies in pJ)."""

    sku: str
    spec_tdp_w: float | None
    cuda_fp32_w: float | None
    tc_fp16_w: float | None
    combined_w: float | None
    ratio: float | None
    """combined ÷ spec TDP."""
    tc_pj_per_mac: float
    """Modelled tensor-core FP16 energy per MAC."""
    margin: float | None
    """spec TDP ÷ TC FP16 W; below 1 the tensor cores alone exceed the TDP at peak."""
    max_pj_per_mac: float | None
    """The FP16 energy per MAC at which tensor-core work alone would exhaust the TDP."""
    tc_macs_per_clk: float | None
    tc_clock_mhz: float | None
    process_nm: float
    flags: tuple[str, ...]

    @property
    def over_budget(self) -> bool:
        """True when the modelled tensor-core FP16 power alone exceeds the spec TDP."""
        return self.margin is not None and self.margin < 1


def compare(chip: ChipInputs) -> ComparisonRow:
    """The comparison row for one chip (see the module docstring for the formulas)."""
    cuda32 = cuda_core_w(chip, Precision.FP32)
    tc16 = tensor_core_w(chip, Precision.FP16)
    combined = None if cuda32 is None or tc16 is None else COMBINED_CUDA_SHARE * cuda32 + tc16
    tdp = chip.tdp_w
    ratio = None if combined is None or not tdp else combined / tdp
    pj = tensor_core_pj_per_mac(chip.process_nm, Precision.FP16)
    margin = None if tc16 is None or not tdp else tdp / tc16
    return ComparisonRow(
        sku=chip.sku,
        spec_tdp_w=tdp,
        cuda_fp32_w=cuda32,
        tc_fp16_w=tc16,
        combined_w=combined,
        ratio=ratio,
        tc_pj_per_mac=pj,
        margin=margin,
        max_pj_per_mac=None if margin is None else pj * margin,
        tc_macs_per_clk=chip.tc_macs_per_clk,
        tc_clock_mhz=chip.tc_clock_mhz,
        process_nm=chip.process_nm,
        flags=chip.flags,
    )


class Datapath(StrEnum):
    """Which units a per-precision figure is for."""

    CUDA = "cuda"
    TENSOR = "tensor"


@dataclass(frozen=True)
class PrecisionDetail:
    """Modelled power of one datapath at one precision running at its peak rate."""

    sku: str
    precision: Precision
    datapath: Datapath
    peak_flops_per_s: float
    """FLOP/s (OP/s for integers) at the rate the power is modelled for."""
    model_pj_per_mac: float
    power_w: float
    tdp_ratio: float | None
    """power_w ÷ spec TDP."""


def precision_details(
    chip: ChipInputs, precisions: Iterable[Precision] | None = None
) -> list[PrecisionDetail]:
    """Per-precision modelled power for every rate the chip has (and the model covers)."""
    wanted = set(precisions) if precisions is not None else None
    rows: list[PrecisionDetail] = []
    for datapath, rates, per_flop in (
        (Datapath.CUDA, chip.vector_flops_per_s, True),
        (Datapath.TENSOR, chip.tensor_macs_per_s, False),
    ):
        for precision, rate in rates.items():
            if wanted is not None and precision not in wanted:
                continue
            try:
                if per_flop:
                    pj_mac = OPS_PER_MAC * cuda_core_pj_per_flop(chip.process_nm, precision)
                    flops = rate
                else:
                    pj_mac = tensor_core_pj_per_mac(chip.process_nm, precision)
                    flops = OPS_PER_MAC * rate
            except UnsupportedPrecisionError:
                continue
            power = pj_mac * PJ * flops / OPS_PER_MAC
            rows.append(
                PrecisionDetail(
                    sku=chip.sku,
                    precision=precision,
                    datapath=datapath,
                    peak_flops_per_s=flops,
                    model_pj_per_mac=pj_mac,
                    power_w=power,
                    tdp_ratio=power / chip.tdp_w if chip.tdp_w else None,
                )
            )
    return rows


@dataclass(frozen=True)
class InverseRow:
    """The inverse view for one chip, datapath and precision.

    ``ceiling_pj_per_mac`` = TDP ÷ peak MAC/s: the all-in energy per MAC (everything the board
    spends, not only the arithmetic) that sustaining the spec peak within TDP requires.
    """

    sku: str
    precision: Precision
    datapath: Datapath
    peak_flops_per_s: float
    tdp_w: float
    ceiling_pj_per_mac: float
    ceiling_pj_per_flop: float
    model_pj_per_mac: float | None
    model_over_ceiling: float | None
    """Modelled arithmetic energy ÷ ceiling; above 1 the model says the peak cannot be held at
    TDP even before memory, leakage and I/O are counted."""


def inverse_view(
    chip: ChipInputs, precisions: Iterable[Precision] | None = None
) -> list[InverseRow]:
    """The inverse view for every rate the chip has; empty when its TDP is unknown."""
    if not chip.tdp_w:
        return []
    details = {(d.precision, d.datapath): d for d in precision_details(chip, precisions)}
    wanted = set(precisions) if precisions is not None else None
    rows: list[InverseRow] = []
    for datapath, rates, factor in (
        (Datapath.CUDA, chip.vector_flops_per_s, 1),
        (Datapath.TENSOR, chip.tensor_macs_per_s, OPS_PER_MAC),
    ):
        for precision, rate in rates.items():
            if wanted is not None and precision not in wanted:
                continue
            flops = rate * factor
            ceiling_flop = chip.tdp_w / flops / PJ
            detail = details.get((precision, datapath))
            model = detail.model_pj_per_mac if detail else None
            rows.append(
                InverseRow(
                    sku=chip.sku,
                    precision=precision,
                    datapath=datapath,
                    peak_flops_per_s=flops,
                    tdp_w=chip.tdp_w,
                    ceiling_pj_per_mac=ceiling_flop * OPS_PER_MAC,
                    ceiling_pj_per_flop=ceiling_flop,
                    model_pj_per_mac=model,
                    model_over_ceiling=None if model is None else model / (ceiling_flop * 2),
                )
            )
    return rows
