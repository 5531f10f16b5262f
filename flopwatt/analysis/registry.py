"""The GPU spec registry: sourced per-SKU facts and live-device matching.

Facts come from ``data/gpu_specs.csv`` (a verbatim copy of the project's sourced reference
table; every figure keeps its source keys, listed in ``data/gpu_sources.csv``) plus
``data/gpu_registry.toml`` (short ids, node class, exact NVML names, PCI device ids). All peaks
are **dense** (no 2:4 sparsity) and in FLOP/s (OP/s for integer formats), base 10.

Derived figures are computed here, never stored: tensor-core FMA per clock
= dense peak / (2 × tensor cores × the clock the peak is quoted at).

Matching a live device is exact: PCI device id first, then the exact product name (whitespace
and case normalised). A substring match is never made, so "NVIDIA H100 PCIe" cannot fall into
the SXM entry and "Tesla V100S-PCIE-32GB" does not become a V100; an unmatched device is
reported as unknown with its raw name.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

from flopwatt.analysis.precision import Precision

NVIDIA_PCI_VENDOR_ID = 0x10DE


class PeakUnit(StrEnum):
    """Which datapath a peak is quoted for."""

    VECTOR = "vector"  # CUDA cores / stream processors
    TENSOR = "tensor"  # tensor cores / matrix cores


class UnknownSkuError(KeyError):
    """A SKU id that is not in the registry. ``str()`` lists the accepted ids."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown SKU"


@dataclass(frozen=True)
class Peak:
    """A dense peak throughput at one precision on one datapath.

    ``flops_per_s`` is FLOP/s for floating-point formats and OP/s for integer formats (the
    vendor's TOPS × 1e12); one FMA counts as 2.
    """

    precision: Precision
    unit: PeakUnit
    flops_per_s: float
    sources: tuple[str, ...]
    uncertain: bool

    @property
    def macs_per_s(self) -> float:
        """The same peak in multiply-accumulates per second (FLOP/s ÷ 2)."""
        return self.flops_per_s / 2


def _spec_from_fields(fields: dict[str, Any], proxies: tuple[str, ...]) -> GpuSpec:
    for k in proxies:
        fields[k] = MappingProxyType(fields[k])
    return GpuSpec(**fields)


@dataclass(frozen=True)
class GpuSpec:
    """One SKU's sourced facts. ``None`` means the reference gives no figure (never guessed)."""

    sku: str
    reference_sku: str
    vendor: str
    architecture: str
    die: str
    compute_capability: str
    process: str
    process_node_nm: float
    sm_count: int | None
    fp32_lanes: int | None
    tensor_cores: int | None
    base_clock_mhz: float | None
    boost_clock_mhz: float | None
    tensor_peak_clock_mhz: float | None
    tensor_peak_clock_derived: bool
    memory_type: str | None
    memory_gb: str | None
    memory_bw_gb_per_s: float | None
    tdp_w: float | None
    tdp_range: str
    peaks: Mapping[tuple[Precision, PeakUnit], Peak]
    names: tuple[str, ...]
    pci_device_ids: tuple[int, ...]
    sources: Mapping[str, tuple[str, ...]]
    uncertain: frozenset[str]
    notes: str
    visible_devices_per_package: int = 1

    def __reduce__(self) -> tuple[Any, ...]:
        # A spec crosses to the collector's exporter process with the devices that matched it,
        # but holds read-only mappings, which pickle refuses: pickle those as plain dicts.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        proxies = tuple(k for k, v in fields.items() if isinstance(v, MappingProxyType))
        for k in proxies:
            fields[k] = dict(fields[k])
        return _spec_from_fields, (fields, proxies)

    def is_uncertain(self, field_key: str) -> bool:
        """Whether the reference marks ``field_key`` (its key names: ``tdp``, ``fp16``, ``tcs``…)
        as uncertain or derived; ``ALL`` marks every field."""
        return "ALL" in self.uncertain or field_key in self.uncertain

    def peak(self, precision: Precision, unit: PeakUnit) -> Peak | None:
        """The dense peak at ``precision`` on ``unit``, or None when the part has none listed."""
        return self.peaks.get((precision, unit))

    def best_peak(self, precision: Precision) -> Peak | None:
        """The highest dense peak at ``precision`` over both datapaths.

        This is what a GEMM at that precision can reach at best (cuBLAS DGEMM uses FP64 tensor
        cores where they exist; FP32 with TF32 off has only the vector path).
        """
        found = [p for (prec, _), p in self.peaks.items() if prec is precision]
        return max(found, key=lambda p: p.flops_per_s) if found else None

    def peak_clock_mhz(self, precision: Precision, unit: PeakUnit) -> float | None:
        """The SM clock a peak is quoted at (MHz): the tensor-peak clock for tensor paths
        (H100: 1,830 MHz), the max boost clock for CUDA-core paths and for FP64, whose tensor
        peak NVIDIA also quotes at max boost (reference §6). None where the reference has no
        such clock."""
        if unit is PeakUnit.TENSOR and precision is not Precision.FP64:
            return self.tensor_peak_clock_mhz or self.boost_clock_mhz
        return self.boost_clock_mhz

    def tensor_fma_per_clk(self, precision: Precision = Precision.FP16) -> float | None:
        """Dense FMA per tensor core per clock at ``precision``, derived at the tensor-peak clock.

        H100 SXM5 at FP16: 989.5e12 / (2 × 528 × 1830e6) = 512.0. None where the part has no
        tensor peak at that precision, no tensor-core count, or no tensor-peak clock.
        """
        peak = self.peak(precision, PeakUnit.TENSOR)
        if peak is None or not self.tensor_cores or not self.tensor_peak_clock_mhz:
            return None
        return peak.flops_per_s / (2 * self.tensor_cores * self.tensor_peak_clock_mhz * 1e6)


MatchMethod = Literal["pci_device_id", "name", "unknown"]


@dataclass(frozen=True)
class SkuMatch:
    """The result of matching a live device to the registry.

    ``spec`` is None for an unknown device; ``raw_name`` always holds what the device reported.
    """

    spec: GpuSpec | None
    raw_name: str
    pci_device_id: int | None
    method: MatchMethod
    note: str = ""

    @property
    def sku(self) -> str | None:
        """The matched SKU id, or None when unknown."""
        return self.spec.sku if self.spec else None


def normalise_name(name: str) -> str:
    """Case-fold and collapse whitespace; the only normalisation matching applies."""
    return " ".join(name.split()).casefold()


def split_pci_device_id(value: int) -> tuple[int, int | None]:
    """Split a PCI id into (device id, vendor id).

    NVML's ``pciDeviceId`` packs ``device << 16 | vendor`` (0x233010DE for an H100 SXM5); a value
    ≤ 0xFFFF is taken as a bare device id with no vendor.
    """
    if value > 0xFFFF:
        return (value >> 16) & 0xFFFF, value & 0xFFFF
    return value, None


@dataclass(frozen=True)
class Registry:
    """An immutable, ordered collection of :class:`GpuSpec` with lookup and device matching."""

    specs: tuple[GpuSpec, ...]
    source_descriptions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.specs:
            if spec.sku in seen:
                raise ValueError(f"duplicate SKU id {spec.sku!r} in registry")
            seen.add(spec.sku)

    def __iter__(self) -> Iterator[GpuSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __contains__(self, sku: object) -> bool:
        return any(s.sku == sku for s in self.specs)

    @property
    def skus(self) -> tuple[str, ...]:
        """All SKU ids, in registry order."""
        return tuple(s.sku for s in self.specs)

    def get(self, sku: str) -> GpuSpec:
        """The spec for SKU id ``sku`` (exact, case-insensitive).

        Raises:
            UnknownSkuError: no such SKU; the message lists the accepted ids.
        """
        key = sku.strip().casefold()
        for spec in self.specs:
            if spec.sku.casefold() == key:
                return spec
        raise UnknownSkuError(f"unknown SKU {sku!r}; accepted: {', '.join(self.skus)}")

    def match_device(self, name: str, pci_device_id: int | None = None) -> SkuMatch:
        """Match a live device by PCI device id, then by exact product name.

        Args:
            name: the product name as NVML (or rocm-smi) reports it.
            pci_device_id: NVML's packed ``pciDeviceId`` (device << 16 | vendor) or a bare
                16-bit device id; None when unknown.

        Returns:
            A :class:`SkuMatch`; ``method == "unknown"`` and ``spec is None`` when nothing
            matches exactly. Never raises for an unknown device.
        """
        if pci_device_id is not None:
            device, vendor = split_pci_device_id(pci_device_id)
            if vendor in (None, NVIDIA_PCI_VENDOR_ID):
                for spec in self.specs:
                    if device in spec.pci_device_ids:
                        wanted = normalise_name(name)
                        note = ""
                        if name and all(normalise_name(n) != wanted for n in spec.names):
                            note = (
                                f"PCI device id 0x{device:04X} is {spec.sku}, but the reported "
                                f"name {name!r} is not one of its known names"
                            )
                        return SkuMatch(spec, name, pci_device_id, "pci_device_id", note)
        wanted = normalise_name(name)
        if wanted:
            for spec in self.specs:
                if any(normalise_name(n) == wanted for n in spec.names):
                    return SkuMatch(spec, name, pci_device_id, "name")
        return SkuMatch(
            None,
            name,
            pci_device_id,
            "unknown",
            f"no registry SKU has the exact name {name!r}"
            + (
                f" or PCI device id 0x{split_pci_device_id(pci_device_id)[0]:04X}"
                if pci_device_id is not None
                else ""
            ),
        )


# --- loading -------------------------------------------------------------------------------

#: CSV peak columns → (precision(s), datapath, source/uncertainty key). FP16 and BF16 share
#: one column ("FP16/BF16 tensor"); BF16 is dropped for parts without it (Volta, Turing).
_PEAK_COLUMNS: tuple[tuple[str, tuple[Precision, ...], PeakUnit, str], ...] = (
    ("fp64_tflops", (Precision.FP64,), PeakUnit.VECTOR, "fp64"),
    ("fp64_tensor_tflops", (Precision.FP64,), PeakUnit.TENSOR, "fp64tc"),
    ("fp32_tflops", (Precision.FP32,), PeakUnit.VECTOR, "fp32"),
    ("tf32_tensor_dense_tflops", (Precision.TF32,), PeakUnit.TENSOR, "tf32"),
    ("fp16_bf16_tensor_dense_tflops", (Precision.FP16, Precision.BF16), PeakUnit.TENSOR, "fp16"),
    ("fp8_tensor_dense_tflops", (Precision.FP8,), PeakUnit.TENSOR, "fp8"),
    ("int8_tensor_dense_tops", (Precision.INT8,), PeakUnit.TENSOR, "int8"),
    ("fp4_tensor_dense_tflops", (Precision.FP4,), PeakUnit.TENSOR, "fp4"),
)


def _num(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def _int(text: str) -> int | None:
    value = _num(text)
    return None if value is None else int(value)


def _parse_sources(text: str) -> dict[str, tuple[str, ...]]:
    """``"names=S2; fp16=S9,S4"`` → ``{"names": ("S2",), "fp16": ("S9", "S4")}``."""
    out: dict[str, tuple[str, ...]] = {}
    for part in text.split(";"):
        if "=" not in part:
            continue
        key, _, value = part.partition("=")
        out[key.strip()] = tuple(v.strip() for v in value.split(",") if v.strip())
    return out


def build_registry(specs_csv: str, overlay_toml: str, sources_csv: str | None = None) -> Registry:
    """Build a :class:`Registry` from the text of the three data files (pure; no file access).

    Raises:
        ValueError: an overlay entry names a reference SKU that the CSV lacks, or a row is
            malformed.
    """
    rows = {r["sku"]: r for r in csv.DictReader(io.StringIO(specs_csv))}
    overlay: dict[str, Any] = tomllib.loads(overlay_toml)
    specs: list[GpuSpec] = []
    for entry in overlay["sku"]:
        ref = entry["reference_sku"]
        if ref not in rows:
            raise ValueError(f"overlay entry {entry['id']!r} names unknown reference SKU {ref!r}")
        specs.append(_spec_from_row(rows[ref], entry))
    descriptions: dict[str, str] = {}
    if sources_csv is not None:
        reader = csv.DictReader(io.StringIO(sources_csv))
        descriptions = {r["key"]: r["description"] for r in reader}
    return Registry(tuple(specs), MappingProxyType(descriptions))


def _spec_from_row(row: Mapping[str, str], entry: Mapping[str, Any]) -> GpuSpec:
    sources = _parse_sources(row["field_sources"])
    marked = row["uncertain_or_derived_fields"].split(",")
    uncertain = frozenset(u.strip() for u in marked if u.strip())
    has_bf16 = bool(entry.get("has_bf16", True))
    peaks: dict[tuple[Precision, PeakUnit], Peak] = {}
    for column, precisions, unit, key in _PEAK_COLUMNS:
        tflops = _num(row[column])
        if tflops is None:
            continue
        for precision in precisions:
            if precision is Precision.BF16 and not has_bf16:
                continue
            is_uncertain = "ALL" in uncertain or key in uncertain
            # The reference leaves a source off only for figures it derived itself (A30 INT8 =
            # 2 × FP16); say so rather than leave the provenance blank.
            peak_sources = sources.get(key) or (("derived",) if is_uncertain else ())
            peaks[(precision, unit)] = Peak(
                precision=precision,
                unit=unit,
                flops_per_s=tflops * 1e12,
                sources=peak_sources,
                uncertain=is_uncertain,
            )
    tclk = _num(row["tensor_peak_clock_mhz"])
    derived_tclk = entry.get("tensor_peak_clock_mhz_derived")
    if tclk is None and derived_tclk is not None:
        tclk = float(derived_tclk)
    tdp = _num(row["tdp_w"])
    return GpuSpec(
        sku=str(entry["id"]),
        reference_sku=row["sku"],
        vendor=row["vendor"],
        architecture=row["architecture"],
        die=row["gpu_die"],
        compute_capability=row["compute_capability"],
        process=row["process_node"],
        process_node_nm=float(entry["process_node_nm"]),
        sm_count=_int(row["sm_or_cu_count"]),
        fp32_lanes=_int(row["fp32_lanes"]),
        tensor_cores=_int(row["tensor_or_matrix_cores"]),
        base_clock_mhz=_num(row["base_clock_mhz"]),
        boost_clock_mhz=_num(row["boost_clock_mhz"]),
        tensor_peak_clock_mhz=tclk,
        tensor_peak_clock_derived=(
            derived_tclk is not None and not row["tensor_peak_clock_mhz"].strip()
        ),
        memory_type=row["memory_type"] or None,
        memory_gb=row["memory_gb"] or None,
        memory_bw_gb_per_s=_num(row["memory_bw_gbs"]),
        tdp_w=tdp,
        tdp_range=row["tdp_range_w"],
        peaks=MappingProxyType(peaks),
        names=tuple(str(n) for n in entry.get("names", [])),
        pci_device_ids=tuple(int(i) for i in entry.get("pci_device_ids", [])),
        sources=MappingProxyType(
            {**sources, "names": tuple(str(s) for s in entry.get("names_source", []))}
        ),
        uncertain=uncertain,
        notes=row["notes"],
        visible_devices_per_package=int(entry.get("visible_devices_per_package", 1)),
    )


def load_registry() -> Registry:
    """Load the registry shipped with the package (reads three small package data files)."""
    data = resources.files("flopwatt.analysis") / "data"
    return build_registry(
        (data / "gpu_specs.csv").read_text(encoding="utf-8"),
        (data / "gpu_registry.toml").read_text(encoding="utf-8"),
        (data / "gpu_sources.csv").read_text(encoding="utf-8"),
    )
