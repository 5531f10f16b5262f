"""A seeded, deterministic simulated GPU built from a registry SKU — so the whole fleet pipeline
can be demonstrated, tested and load-tested without GPUs.

Everything it reports is simulated (``DeviceInfo.simulated``; ``source="sim"`` in metrics). Its
figures come from public measurements where one was found and are marked *assumption* where not
(:data:`GEMM_SOURCES` lists every source). Its power and energy per FLOP are NOT derived from
flopwatt's physics model — that would make the demo "confirm" the model by construction.

**Large-GEMM throughput, per precision and datapath** (:class:`GemmFigure`,
:data:`ARCH_GEMM` per architecture, :data:`SKU_GEMM` where a SKU has its own measurement; one
lookup, :func:`gemm_figure`). ``fraction`` is what a nominal device of the SKU delivers on a
large square GEMM with random data at its stock power limit, ÷ the dense spec peak of the
datapath cuBLAS would use (:meth:`GpuSpec.best_peak`: FP64 on tensor cores where they exist,
FP32 on CUDA cores, TF32/FP16/BF16/FP8/INT8 on tensor cores). That fraction is the single source:
a nominal simulated device delivers exactly ``fraction × peak`` (tests check it), and a device
with a lower power limit, a fault or a different draw of silicon delivers what the same power
model says it would.

**Power per precision** (``GemmFigure.demand_ratio``): the board power the GEMM would draw at the
unthrottled clock ÷ TDP. Below 1 the part runs at full clock and draws that much (CUDA-core
FP32/FP64 GEMMs on datacenter parts: assumption 0.65 × TDP); above 1 it is
power-limited: the clock drops until the board power meets the enforced limit and
``SwPowerCap`` is raised. Dynamic power scales linearly with clock (assumption: fixed voltage),
so ``fraction`` is what remains after that drop and the unthrottled rate is ``fraction ÷`` the
nominal clock factor. Sourced limiters: the A100 on FP16/BF16 (random inputs run 13 % slower
than zeros, "thonking") and on FP64 tensor GEMMs (NVIDIA's HPL clock, "hpl-a100"), the T4 on
tensor GEMMs ("t4-forum"), the H100 on tensor GEMMs (direction sourced, "thonking"; size an
assumption). Low-TDP inference parts (T4, L4, A10, A30) are power-limited on every tensor path.

**Idle power**: the middle of the idle draw seen in nvidia-smi snapshots on real boards
(reference §7, source S18); for SKUs without a reading, 15 % of TDP (assumption).

**Device-to-device spread** (:class:`DeviceSpread`, drawn from the device's UUID, so a device
keeps its character across runs): two independent factors. ``rate`` scales the achieved GEMM
throughput at a given clock: normal, σ = 2.5 %. S. Bekman reports "5% and higher differences"
in achieved matmul FLOPS between the GPUs of one 8-GPU node ("spread-node"; 8 draws of this
factor span 5.8 % on average), and Sinha et al. measured an average 8 % performance
variation between same-SKU GPUs across five clusters ("spread-cluster"). ``power`` scales board
power at a given clock (leakage; a hotter GPU leaks more): normal, σ = 1 %, an assumption (no
per-device figure was found). The pair is drawn again until it lies within 2 σ of nominal
(assumption: factory binning cuts the tails), so ``rate`` ∈ [0.95, 1.05] and ``power`` ∈
[0.98, 1.02]; clipped, ``rate`` has σ 2.1 %. On a power-limited path the power factor also
moves the clock (a leakier GPU clocks lower at the cap), so throughput there spreads by 2.3 %.

**Thermal**: first order, 30 °C inlet, 70 °C at TDP, 30 s time constant (assumptions).
**Sensors**: noise 1 % (σ) on instant power; the 1-s average is the mean of the last second of
instant readings, as on Hopper; the energy counter integrates the noiseless power.

Faults (``--sim-fault KIND[:ARG][@INDEX]``, index = GPU index, default 0): ``slow:0.85`` (the
GPU delivers 85 % of what its clock says, no throttle reason: degraded silicon or a bad
config), ``power-cap:350`` (enforced limit lowered to 350 W), ``lost-after:30s`` (the GPU falls
off the bus after 30 s), ``stuck-power`` (the power sensor freezes at its first value).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid as uuidlib
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flopwatt.agent.devices.base import Device, DeviceLost, Snapshot
from flopwatt.agent.devices.sim_workload import (
    MEMORY_HELD_RATIO,
    PROCESS_NAMES,
    SimPod,
    SimWorkload,
    has_gpm,
    job_activity,
    parse_pod,
    parse_workload,
    with_noise,
    workload_activity,
)
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import (
    GpuSpec,
    PeakUnit,
    Registry,
    UnknownSkuError,
    load_registry,
)
from flopwatt.analysis.throttle import ThrottleReason, encode_throttle
from flopwatt.records import (
    DeviceCapabilities,
    DeviceInfo,
    DeviceKind,
    GpuProcess,
    PodRef,
    SoftwareVersions,
)

SIM_PID_BASE = 41000
"""A simulated workload's process id is this + its GPU's index (stable across runs)."""

# --- sources ------------------------------------------------------------------------------------

GEMM_SOURCES: Mapping[str, str] = {
    "H200-project": (
        "this project's lent H200: 8192³ bf16 GEMM on random data ran at 769–798 TFLOP/s, "
        "0.78–0.81 of the 989.5 dense spec (same compute as H100 SXM)"
    ),
    "MAMF": (
        "S. Bekman, Machine Learning Engineering, compute/accelerator/README.md, 'Maximum "
        "Achievable Matmul FLOPS comparison table' (torch matmul, best shape, mean of 100 "
        "iterations): BF16 A100 SXM 271.2/312, A100 PCIe 252.9/312, H100 SXM 794.5/989, "
        "B200 1745/2250, GB200 1822/2500, MI300X 668.4/1300, MI250X 147.0/191.5 (one GCD); "
        "FP8 H100 SXM 1402.6/1979, H200 1453.4/1979, B200 3432.5/4500, GB200 3615.6/5000 "
        "https://github.com/stas00/ml-engineering/blob/master/compute/accelerator/README.md"
    ),
    "thonking": (
        'H. He, \'Strangely, Matrix Multiplications on GPUs Run Faster When Given "Predictable" '
        "Data!' https://www.thonking.ai/p/strangely-matrix-multiplications : a cuBLAS 8192³ "
        "matmul at '83% flop utilization' (258 of an A100's 312 TFLOP/s); randn inputs 257 "
        "TFLOP/s, zero inputs 295 TFLOP/s (less switching power under the power limit); "
        "'matmuls on the H100 are primarily not compute or bandwidth limited, they are power "
        "limited'"
    ),
    "markidis": (
        "S. Markidis et al., 'NVIDIA Tensor Core Programmability, Performance & Precision', "
        "IPDPSW 2018, arXiv:1803.04014: cuBLAS mixed-precision GEMM up to 83 TFLOP/s on a Tesla "
        "V100 (125 TFLOP/s peak), 'seven and three times' its single- and half-precision GEMM"
    ),
    "t4-forum": (
        "NVIDIA Developer Forums, 'About GPU peak performance' "
        "https://forums.developer.nvidia.com/t/about-gpu-peak-performance/264462 : a sustained "
        "4096³ FP16 cuBLAS GEMM on a T4 runs at about 24 TFLOP/s of 65; NVIDIA (R. Crovella): "
        "'arising due to power capping of the GPU' at its 70 W limit"
    ),
    "hpl-a100": (
        "G. Lockwood, 'Peak FLOPS' https://glennklockwood.com/garden/peak-FLOPS : NVIDIA "
        "computed the A100's HPL Rpeak at 1305 MHz, 'the clock that can be sustained at a "
        "GPU's power limit while running HPL' (its peak clock is 1410 MHz)"
    ),
    "h100pcie": (
        "GOATnote-Inc/periodicdent42, H100_CEILING_FOUND.md: cuBLAS FP16-in/FP32-accumulate "
        "GEMM 8192×8192×K on an H100 PCIe sustains 627–628 TFLOP/s (756.5 dense spec)"
    ),
    "l20-hgemm": (
        "DefTruth/CUDA-Learn-Notes, hgemm/README.md: cuBLAS HGEMM 105–115 TFLOP/s on an "
        "NVIDIA L20 (Ada, 119.5 TFLOP/s FP16 tensor peak), 0.88–0.96"
    ),
    "spread-node": (
        "S. Bekman, Machine Learning Engineering, compute/accelerator/README.md, 'Not all "
        "accelerators are created equal': 'I have seen 5% and higher differences on an 8-gpu "
        "node' (silicon lottery and uneven cooling)"
    ),
    "spread-cluster": (
        "P. Sinha et al., 'Not All GPUs Are Created Equal: Characterizing Variability in "
        "Large-Scale, Accelerator-Rich Systems', SC22, arXiv:2208.11035: 8 % (max 22 %) "
        "average performance variation between GPUs of the same SKU"
    ),
    "assumption": "no public measurement found; the reasoning is in the comment beside it",
}
"""Every source a figure below cites, by key."""


@dataclass(frozen=True)
class GemmFigure:
    """Large-GEMM behaviour of one datapath at one precision (see the module docstring).

    ``fraction``: delivered FLOP/s ÷ dense spec peak for a nominal device at its stock power
    limit (random data, large square GEMM). ``demand_ratio``: board power the GEMM would draw at
    the unthrottled clock ÷ TDP (above 1: power-limited). ``source``: a key of
    :data:`GEMM_SOURCES`; ``"assumption"`` where no measurement was found.
    """

    fraction: float
    demand_ratio: float
    source: str


_A = "assumption"
_TENSOR = PeakUnit.TENSOR
_VECTOR = PeakUnit.VECTOR
_P = Precision


def _both16(fig: GemmFigure) -> dict[Precision, GemmFigure]:
    """FP16 and BF16 run the same tensor-core rate on every part in the registry (reference §3)."""
    return {_P.FP16: fig, _P.BF16: fig}


def _arch(
    name: str, tensor: Mapping[Precision, GemmFigure], vector: Mapping[Precision, GemmFigure]
) -> dict[tuple[str, Precision, PeakUnit], GemmFigure]:
    table = {(name, p, _TENSOR): f for p, f in tensor.items()}
    table.update({(name, p, _VECTOR): f for p, f in vector.items()})
    return table


# CUDA-core (vector) GEMMs on datacenter parts: assumption 0.65 × TDP at full clock — an SGEMM
# or DGEMM on CUDA cores keeps the SMs busy but leaves the tensor cores dark and moves a fraction
# of the operand bytes per clock that a tensor GEMM does, and no public reading puts them at the
# board limit. Below the delivered share, so at the measured energy per FLOP the limit could feed
# the spec peak: not power-limited in the report's sense either.
_VECTOR_DEMAND = 0.65

#: Per architecture (the registry's ``architecture``), precision and datapath.
ARCH_GEMM: Mapping[tuple[str, Precision, PeakUnit], GemmFigure] = {
    **_arch(
        "Volta",
        tensor=_both16(GemmFigure(0.66, 0.97, "markidis")),  # 83/125; demand: assumption,
        # just under the 300 W limit (no published V100 HGEMM power reading found)
        vector={
            _P.FP32: GemmFigure(0.76, _VECTOR_DEMAND, "markidis"),  # 83/7 = 11.9 of 15.7
            _P.FP64: GemmFigure(0.88, _VECTOR_DEMAND, _A),  # DGEMM ~ SGEMM's kernel quality
        },
    ),
    **_arch(
        "Turing",
        tensor={
            # 24/65; demand derived: at an assumed 0.80 per-clock efficiency the T4 ran at
            # 0.37/0.80 = 0.46 of its clock, so full clock needs 12.5 + 57.5/0.46 W = 1.96 TDP.
            _P.FP16: GemmFigure(0.37, 1.96, "t4-forum"),
            _P.INT8: GemmFigure(0.37, 1.96, _A),  # same power-bound share of the INT8 peak
        },
        vector={
            _P.FP32: GemmFigure(0.60, 1.25, _A),  # the 70 W board caps SGEMM too
            _P.FP64: GemmFigure(0.88, 0.60, _A),  # 1/32-rate units: far below the limit
        },
    ),
    **_arch(
        "Ampere",
        tensor={
            # 257/312 on random data; zeros ran 295/257 = 1.148× faster, so random data at the
            # zero-input clock would draw 60.5 + 1.148 × 339.5 W = 1.125 × 400 W (A100 SXM).
            # MAMF (best shape) corroborates: A100 SXM 0.869, A100 PCIe 0.811. GA102 parts
            # (A40) take the GA100 figures (assumption); A10/A30 have their own, in SKU_GEMM.
            **_both16(GemmFigure(0.824, 1.125, "thonking")),
            _P.TF32: GemmFigure(0.70, 1.05, _A),  # FP32 operands: twice the bytes per FLOP
            _P.INT8: GemmFigure(0.80, 1.125, _A),  # the FP16 limiter, a little less efficient
            # 1305/1410 = 0.926 of the clock under HPL at the limit × 0.95 per-clock DGEMM
            # efficiency (assumption); demand 60.5 + 339.5/0.926 W = 1.07 × 400 W.
            _P.FP64: GemmFigure(0.88, 1.07, "hpl-a100"),
        },
        vector={
            _P.FP32: GemmFigure(0.85, _VECTOR_DEMAND, _A),
            _P.FP64: GemmFigure(0.85, 0.50, _A),  # GA102's 1/64-rate FP64 units (A10, A40)
        },
    ),
    **_arch(
        "Ada Lovelace",
        tensor={
            **_both16(GemmFigure(0.92, 0.95, "l20-hgemm")),  # middle of 0.88–0.96; demand _A
            _P.TF32: GemmFigure(0.80, 0.95, _A),
            _P.FP8: GemmFigure(0.80, 1.00, _A),
            _P.INT8: GemmFigure(0.80, 1.00, _A),
        },
        vector={
            _P.FP32: GemmFigure(0.80, _VECTOR_DEMAND, _A),
            _P.FP64: GemmFigure(0.85, 0.50, _A),  # 1/64-rate units
        },
    ),
    **_arch(
        "Hopper",
        tensor={
            # 0.78–0.81 on the project's H200; MAMF H100 SXM 0.803. Power-limited (thonking);
            # how far over the limit the full clock would be is an assumption: 1.10 × TDP.
            **_both16(GemmFigure(0.80, 1.10, "H200-project")),
            _P.FP8: GemmFigure(0.709, 1.10, "MAMF"),  # H100 SXM 1402.6/1979
            _P.INT8: GemmFigure(0.709, 1.10, _A),  # as FP8 (same tensor rate)
            _P.TF32: GemmFigure(0.65, 1.05, _A),  # FP32 operands; below BF16's share
            # DGEMM on FP64 tensor cores: ~1/15 of the FP16 tensor rate per clock, so far less
            # switching; 0.75 × TDP (assumption), unlike the sourced A100 (below)
            _P.FP64: GemmFigure(0.80, 0.75, _A),
        },
        vector={
            _P.FP32: GemmFigure(0.75, _VECTOR_DEMAND, _A),
            _P.FP64: GemmFigure(0.85, _VECTOR_DEMAND, _A),
        },
    ),
    **_arch(
        "Blackwell",
        tensor={
            # MAMF B200 1745/2250 and 3432.5/4500; power-limited like Hopper (a B200 note saw
            # sw_power_cap under a sustained FP16 GEMM, reference S20) — size an assumption.
            **_both16(GemmFigure(0.776, 1.10, "MAMF")),
            _P.FP8: GemmFigure(0.763, 1.10, "MAMF"),
            _P.INT8: GemmFigure(0.763, 1.10, _A),  # as FP8
            _P.FP4: GemmFigure(0.70, 1.10, _A),
            _P.TF32: GemmFigure(0.65, 1.05, _A),
            _P.FP64: GemmFigure(0.80, _VECTOR_DEMAND, _A),  # FP64 tensor = vector rate here
        },
        vector={
            _P.FP32: GemmFigure(0.75, _VECTOR_DEMAND, _A),
            _P.FP64: GemmFigure(0.80, _VECTOR_DEMAND, _A),
        },
    ),
    **_arch(
        "CDNA 3",
        tensor={
            **_both16(GemmFigure(0.514, 1.00, "MAMF")),  # MI300X 668.4/1300, ROCm 6.3
            _P.FP8: GemmFigure(0.45, 1.00, _A),  # MAMF's MI300X FP8 row is empty
            _P.INT8: GemmFigure(0.45, 1.00, _A),
            _P.TF32: GemmFigure(0.45, 1.00, _A),
            _P.FP64: GemmFigure(0.70, 0.75, _A),
        },
        vector={
            _P.FP32: GemmFigure(0.70, _VECTOR_DEMAND, _A),
            _P.FP64: GemmFigure(0.70, _VECTOR_DEMAND, _A),
        },
    ),
    **_arch(
        "CDNA 2",
        tensor={
            **_both16(GemmFigure(0.767, 1.00, "MAMF")),  # MI250X one GCD 147.0/191.5
            _P.INT8: GemmFigure(0.70, 1.00, _A),
            _P.FP64: GemmFigure(0.75, 0.75, _A),
        },
        vector={
            _P.FP32: GemmFigure(0.75, _VECTOR_DEMAND, _A),
            _P.FP64: GemmFigure(0.75, _VECTOR_DEMAND, _A),
        },
    ),
}

# Low-TDP inference boards: power-limited on every tensor path. The demands (1.3–1.5 × TDP) and
# delivered shares below are assumptions (the T4, the one sourced board, runs at 0.37; these are
# newer parts with more work per watt); FP64/FP32 stay on the architecture's figures.
_LOW_TDP_TENSOR = (_P.TF32, _P.FP16, _P.BF16, _P.FP8, _P.INT8)


def _low_tdp(sku: str, fraction: float, demand: float) -> dict[tuple[str, Precision], GemmFigure]:
    return {(sku, p): GemmFigure(fraction, demand, _A) for p in _LOW_TDP_TENSOR}


#: Per SKU and precision, where the SKU has its own figure; overrides :data:`ARCH_GEMM`.
SKU_GEMM: Mapping[tuple[str, Precision], GemmFigure] = {
    ("H100-PCIe-80GB", _P.FP16): GemmFigure(0.83, 1.10, "h100pcie"),  # 627.5/756.5
    ("H100-PCIe-80GB", _P.BF16): GemmFigure(0.83, 1.10, "h100pcie"),
    ("H200-SXM-141GB", _P.FP8): GemmFigure(0.734, 1.10, "MAMF"),  # 1453.4/1979
    ("GB200", _P.FP16): GemmFigure(0.729, 1.10, "MAMF"),  # 1822/2500
    ("GB200", _P.BF16): GemmFigure(0.729, 1.10, "MAMF"),
    ("GB200", _P.FP8): GemmFigure(0.723, 1.10, "MAMF"),  # 3615.6/5000
    **_low_tdp("A10", 0.60, 1.30),
    **_low_tdp("A30", 0.65, 1.30),
    **_low_tdp("L4", 0.50, 1.50),  # 72 W for an AD104 with 121 TFLOP/s of FP16
}
LOW_TDP_PARTS = frozenset({"T4", "L4", "A10", "A30"})
"""Inference boards that are power-limited on every tensor path (T4 via :data:`ARCH_GEMM`)."""

FALLBACK_GEMM = GemmFigure(0.70, 1.00, _A)
"""For an architecture/precision neither table lists (a registry entry added later)."""


def gemm_figure(spec: GpuSpec, precision: Precision) -> GemmFigure | None:
    """The :class:`GemmFigure` of ``spec`` at ``precision`` (SKU entry, else architecture entry
    for the datapath :meth:`GpuSpec.best_peak` picks, else :data:`FALLBACK_GEMM`); None when the
    part has no peak at that precision."""
    peak = spec.best_peak(precision)
    if peak is None:
        return None
    return (
        SKU_GEMM.get((spec.sku, precision))
        or ARCH_GEMM.get((spec.architecture, precision, peak.unit))
        or FALLBACK_GEMM
    )


# --- device spread ------------------------------------------------------------------------------

RATE_SPREAD_SIGMA = 0.025
"""σ of the per-device throughput factor (module docstring: "spread-node", "spread-cluster")."""
POWER_SPREAD_SIGMA = 0.01
"""σ of the per-device power factor (assumption: no per-device figure was found)."""
SPREAD_CLIP_SIGMAS = 2.0
"""A device's two factors, in σ units, lie within this radius (assumption: factory binning cuts
the tails), so ``rate`` is within 1 ± 5 % and ``power`` within 1 ± 2 %."""


@dataclass(frozen=True)
class DeviceSpread:
    """How one device differs from the nominal part: ``rate`` multiplies achieved GEMM
    throughput at a given clock, ``power`` multiplies board power at a given clock (idle
    included). Both 1.0 for a nominal device."""

    rate: float = 1.0
    power: float = 1.0

    @classmethod
    def for_uuid(cls, uuid: str) -> DeviceSpread:
        """The spread of the device with this UUID (deterministic: a device keeps it). The two
        factors are independent normals, redrawn until they fall inside the clip radius."""
        digest = hashlib.sha256(f"flopwatt-sim-spread:{uuid}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        while True:
            z_rate, z_power = (float(z) for z in rng.standard_normal(2))
            if z_rate * z_rate + z_power * z_power <= SPREAD_CLIP_SIGMAS**2:
                break
        return cls(1 + RATE_SPREAD_SIGMA * z_rate, 1 + POWER_SPREAD_SIGMA * z_power)


NOMINAL = DeviceSpread()
"""No spread: the device the cited figures describe."""


#: Idle board power (W): middle of the nvidia-smi idle range seen on real boards (S18, §7).
IDLE_POWER_W: Mapping[str, float] = {
    "T4": 12.5,
    "A10": 16.0,
    "A30": 32.0,
    "L4": 14.0,
    "L40S": 28.0,
    "V100-SXM2-32GB": 42.0,
    "V100-PCIe": 29.0,
    "A100-SXM4-80GB": 60.5,
    "A100-PCIe-80GB": 47.0,
    "H100-SXM5-80GB": 79.5,
    "H100-PCIe-80GB": 47.5,
    "H100-NVL": 79.0,
    "H200-SXM-141GB": 97.5,
    "B200": 165.5,
    "GB200": 168.5,
}
IDLE_FRACTION_OF_TDP = 0.15
"""Idle power for SKUs without an observed reading (assumption)."""
INLET_C = 30.0
TEMP_AT_TDP_C = 70.0
THERMAL_TAU_S = 30.0
POWER_NOISE_SIGMA = 0.01
HW_THERMAL_LIMIT_C = 87.0
IDLE_CLOCK_MHZ = 210.0
"""SM clock reported while idle (a typical idle P-state clock; assumption)."""
MIN_CLOCK_FACTOR = 0.05
"""The lowest clock a power cap drives the simulated GPU to, as a share of its base clock."""


@dataclass(frozen=True)
class SimFault:
    """One injected fault."""

    kind: str
    value: float | None = None
    index: int = 0


def parse_fault(text: str) -> SimFault:
    """Parse ``KIND[:ARG][@INDEX]`` (``slow:0.85@2``, ``power-cap:350``, ``lost-after:30s``,
    ``stuck-power@1``, ``xid:79@2``, ``ecc:3``, ``row-remap@5``, ``nvlink:40@3``).

    Raises:
        ValueError: unknown kind or bad argument (the message lists what is accepted).
    """
    spec, _, index_text = text.strip().partition("@")
    kind, _, arg = spec.partition(":")
    try:
        index = int(index_text) if index_text else 0
    except ValueError:
        raise ValueError(f"bad GPU index in fault {text!r}") from None
    accepted = (
        "slow:FRACTION, power-cap:WATTS, lost-after:SECONDSs, stuck-power, xid:CODE, "
        "ecc:COUNT, row-remap, nvlink:COUNT (each @INDEX)"
    )
    if kind == "slow":
        value = _number(arg, text)
        if not 0 < value <= 1:
            raise ValueError(f"slow fraction must be in (0, 1], got {arg!r}")
        return SimFault("slow", value, index)
    if kind == "power-cap":
        value = _number(arg.removesuffix("W").removesuffix("w"), text)
        if value <= 0:
            raise ValueError(f"power cap must be positive watts, got {arg!r}")
        return SimFault("power-cap", value, index)
    if kind == "lost-after":
        value = _number(arg.removesuffix("s"), text)
        return SimFault("lost-after", value, index)
    if kind == "stuck-power" and not arg:
        return SimFault("stuck-power", None, index)
    if kind == "xid":
        code = _number(arg, text)
        if code != int(code) or not 0 < code < 1000:
            raise ValueError(f"an XID code is a whole number 1..999, got {arg!r}")
        return SimFault("xid", code, index)
    if kind == "ecc":
        count = _number(arg, text)
        if count != int(count) or count <= 0:
            raise ValueError(f"ecc needs a whole count of uncorrected errors > 0, got {arg!r}")
        return SimFault("ecc", count, index)
    if kind == "row-remap" and not arg:
        return SimFault("row-remap", None, index)
    if kind == "nvlink":
        count = _number(arg, text)
        if count != int(count) or count <= 0:
            raise ValueError(f"nvlink needs a whole count of link replays > 0, got {arg!r}")
        return SimFault("nvlink", count, index)
    raise ValueError(f"unknown sim fault {text!r}; accepted: {accepted}")


def _number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"fault {whole!r} needs a number, got {text!r}") from None


@dataclass
class _Load:
    """What the simulated GPU is asked to do right now."""

    precision: Precision | None = None
    intensity: float = 0.0
    """Fraction of the achievable rate the workload would use if nothing held it back."""


@dataclass(frozen=True)
class OperatingPoint:
    """Where a simulated GPU settles under a steady load: the power cap applied, before any
    thermal slowdown and without sensor noise (see :meth:`SimDevice.operating_point`)."""

    power_w: float
    clock_factor: float
    """SM clock ÷ the datapath's base clock (1.0 unless a power cap holds it back)."""
    clock_mhz: float
    throttle_reasons: int
    """Clock-event reasons bitmask (``SwPowerCap`` when capped, ``GpuIdle`` with no load)."""


@dataclass
class _State:
    t_ns: int
    temperature_c: float
    energy_j: float = 0.0
    power_w: float = 0.0
    clock_mhz: float = 0.0
    throttle: int = 0
    recent: deque[tuple[int, float]] = field(default_factory=deque)
    stuck_w: float | None = None


class SimDevice:
    """One simulated GPU (thread-safe: the sampler and a job may use it concurrently)."""

    def __init__(
        self,
        spec: GpuSpec,
        *,
        index: int,
        host: str,
        seed: int,
        faults: Sequence[SimFault] = (),
        clock_ns: Callable[[], int] = time.monotonic_ns,
        spread: DeviceSpread | None = None,
        workload: SimWorkload | None = None,
    ) -> None:
        """A GPU of ``spec``; ``spread`` None draws it from the UUID (``DeviceSpread.for_uuid``);
        ``workload``: what it is busy with while flopwatt runs no job on it (none: idle).

        Raises:
            ValueError: a ``power-cap`` fault above the SKU's TDP (NVML's maximum limit).
        """
        self.spec = spec
        self._clock_ns = clock_ns
        # The node's name is part of the seed: two simulated nodes must never share GPU UUIDs.
        self._rng = np.random.default_rng([seed, zlib.crc32(host.encode()), index])
        # GPM noise draws from its own stream: power noise stays what it was without GPM.
        self._gpm_rng = np.random.default_rng([seed, zlib.crc32(host.encode()), index, 1])
        self._lock = threading.Lock()
        self._slow = 1.0
        self._lost_after_ns: int | None = None
        self._stuck = False
        self._limit_w = spec.tdp_w or 300.0
        self._xid_last: int | None = None
        self._xid_events = 0
        self._ecc_uncorrected = 0
        self._nvlink_replays = 0
        self._remapped_uncorrectable = 0
        self._remap_pending = 0
        for f in faults:
            if f.kind == "slow" and f.value is not None:
                self._slow = f.value
            elif f.kind == "power-cap" and f.value is not None:
                if spec.tdp_w is not None and f.value > spec.tdp_w:
                    # NVML refuses a limit above the maximum, which is the TDP here.
                    raise ValueError(
                        f"power cap {f.value:g} W is above the {spec.sku}'s maximum power "
                        f"limit ({spec.tdp_w:g} W)"
                    )
                self._limit_w = f.value
            elif f.kind == "lost-after" and f.value is not None:
                self._lost_after_ns = int(f.value * 1e9)
            elif f.kind == "stuck-power":
                self._stuck = True
            elif f.kind == "xid" and f.value is not None:
                self._xid_last = int(f.value)
                self._xid_events += 1
            elif f.kind == "ecc" and f.value is not None:
                self._ecc_uncorrected += int(f.value)
            elif f.kind == "row-remap":
                self._remapped_uncorrectable += 1
                self._remap_pending = 1
            elif f.kind == "nvlink" and f.value is not None:
                if "SXM" not in spec.sku:
                    raise ValueError(f"an nvlink fault needs an SXM part; the {spec.sku} has none")
                self._nvlink_replays += int(f.value)
        uid = uuidlib.UUID(bytes=self._rng.bytes(16), version=4)
        # The spread follows the device (its UUID), not the run: the same GPU is the same draw of
        # silicon every time. Tests inject NOMINAL to see the cited figures exactly.
        self.spread = spread if spread is not None else DeviceSpread.for_uuid(f"GPU-{uid}")
        self._tdp_w = spec.tdp_w or 300.0
        self._idle_nominal_w = IDLE_POWER_W.get(spec.sku, IDLE_FRACTION_OF_TDP * self._tdp_w)
        self._idle_w = self._idle_nominal_w * self.spread.power
        self._r_th = (TEMP_AT_TDP_C - INLET_C) / self._tdp_w
        self._boost_mhz = spec.boost_clock_mhz or 1500.0
        self._tensor_mhz = spec.tensor_peak_clock_mhz or self._boost_mhz
        self._gpm = has_gpm(spec)
        self._workload = workload
        self._background = self._background_load(workload)
        self._load = self._background
        self._job = False
        now = clock_ns()
        self._start_ns = now
        self._state = _State(
            t_ns=now,
            temperature_c=INLET_C + self._r_th * self._idle_w,
            power_w=self._idle_w,
            clock_mhz=IDLE_CLOCK_MHZ,
            throttle=encode_throttle([ThrottleReason.GPU_IDLE]),
        )
        self._info = DeviceInfo(
            uuid=f"GPU-{uid}",
            index=index,
            name=spec.names[0] if spec.names else spec.sku,
            kind=DeviceKind.GPU,
            pci_bus_id=f"00000000:{0x10 + index:02X}:00.0",
            pci_device_id=((spec.pci_device_ids[0] << 16) | 0x10DE)
            if spec.pci_device_ids
            else None,
            memory_total_bytes=int(float((spec.memory_gb or "0").split("/")[-1]) * 1e9),
            power_limit_enforced_w=self._limit_w,
            power_limit_default_w=spec.tdp_w,
            power_limit_min_w=None,
            power_limit_max_w=spec.tdp_w,
            sm_clock_max_mhz=int(self._boost_mhz),
            capabilities=DeviceCapabilities(
                energy_counter=True,
                power_instant=True,
                power_average_1s=True,
                memory_temperature=False,
                throttle_reasons=True,
                ecc=True,
                utilization=True,
                clocks=True,
                gpm=self._gpm,
            ),
            simulated=True,
            sim_sku=spec.sku,
            torch_index=-1,
            power_usage_is_average=True,
        )
        self._host = host

    @property
    def info(self) -> DeviceInfo:
        """Identity (simulated; the UUID is derived from the seed, so it is stable per seed)."""
        return self._info

    # --- the physics of the simulation (sources and assumptions: module docstring) ---------

    def _base_clock_mhz(self, precision: Precision | None) -> float:
        """The clock the datapath's spec peak is quoted at: the tensor-peak clock for tensor
        paths (H100: 1830 MHz), the max boost clock for CUDA-core paths and FP64 (whose
        tensor peak NVIDIA also quotes at max boost, reference §6)."""
        peak = None if precision is None else self.spec.best_peak(precision)
        if peak is not None and peak.unit is PeakUnit.TENSOR and precision is not Precision.FP64:
            return self._tensor_mhz
        return self._boost_mhz

    def _figure(self, precision: Precision | None) -> GemmFigure:
        fig = None if precision is None else gemm_figure(self.spec, precision)
        return fig or FALLBACK_GEMM

    def _nominal_dynamic_w(self, precision: Precision | None) -> float:
        """Dynamic power (W) a nominal device would draw on a full GEMM at the unthrottled clock."""
        demand_w = self._figure(precision).demand_ratio * self._tdp_w
        return max(demand_w - self._idle_nominal_w, 1.0)

    def _nominal_clock_factor(self, precision: Precision) -> float:
        """The clock factor a nominal device settles at on a full GEMM at its stock limit."""
        dynamic = self._nominal_dynamic_w(precision)
        headroom = self._tdp_w - self._idle_nominal_w
        return max(min(1.0, headroom / dynamic), MIN_CLOCK_FACTOR)

    def operating_point(
        self, precision: Precision | None, intensity: float = 1.0, *, limit_w: float | None = None
    ) -> OperatingPoint:
        """Steady state under a load at ``precision`` using ``intensity`` (0–1) of the
        unthrottled rate, at the enforced power limit (or ``limit_w``): board power (W), clock
        and clock-event reasons. No thermal slowdown, no sensor noise. The live device
        (:meth:`snapshot`, :meth:`rate_factor`) runs on exactly this."""
        limit = self._limit_w if limit_w is None else limit_w
        intensity = max(0.0, min(1.0, intensity))
        if intensity <= 0:
            reasons = encode_throttle([ThrottleReason.GPU_IDLE])
            return OperatingPoint(self._idle_w, 1.0, IDLE_CLOCK_MHZ, reasons)
        dynamic = self._nominal_dynamic_w(precision) * self.spread.power * intensity
        clock_factor = 1.0
        reasons = 0
        if self._idle_w + dynamic > limit:
            clock_factor = max((limit - self._idle_w) / dynamic, MIN_CLOCK_FACTOR)
            reasons = encode_throttle([ThrottleReason.SW_POWER_CAP])
        base = self._base_clock_mhz(precision)
        return OperatingPoint(
            power_w=self._idle_w + dynamic * clock_factor,
            clock_factor=clock_factor,
            clock_mhz=base * clock_factor,
            throttle_reasons=reasons,
        )

    def _advance(self, now_ns: int) -> None:
        s = self._state
        dt = (now_ns - s.t_ns) / 1e9
        if dt <= 0:
            return
        load = self._load
        point = self.operating_point(load.precision, load.intensity)
        power, clock, throttle = point.power_w, point.clock_mhz, point.throttle_reasons
        if load.intensity > 0 and s.temperature_c > HW_THERMAL_LIMIT_C:
            # Slowing the clock by a fifth sheds a fifth of the dynamic power.
            power = self._idle_w + (power - self._idle_w) * 0.8
            clock *= 0.8
            throttle |= encode_throttle([ThrottleReason.HW_THERMAL_SLOWDOWN])
        s.clock_mhz = clock
        s.energy_j += 0.5 * (s.power_w + power) * dt
        target = INLET_C + self._r_th * power
        s.temperature_c += (target - s.temperature_c) * (1 - np.exp(-dt / THERMAL_TAU_S))
        s.power_w = power
        s.throttle = throttle
        s.t_ns = now_ns

    def rate_factor(self) -> float:
        """Delivered throughput ÷ :meth:`achievable_flops_per_s` right now: the clock against
        the datapath's base clock, times a ``slow`` fault."""
        with self._lock:
            self._advance(self._clock_ns())
            if self._load.intensity <= 0:
                return self._slow
            return self._slow * self._state.clock_mhz / self._base_clock_mhz(self._load.precision)

    def set_load(self, precision: Precision | None, intensity: float) -> None:
        """Start (intensity > 0) or stop (0) flopwatt's own job at ``precision``; when it
        stops, the background workload (if any) resumes."""
        with self._lock:
            self._advance(self._clock_ns())
            self._job = intensity > 0
            self._load = (
                _Load(precision, max(0.0, min(1.0, intensity))) if self._job else self._background
            )

    def _background_load(self, workload: SimWorkload | None) -> _Load:
        """The load a background workload puts on the BF16 datapath: its FLOP/s ÷ what a GEMM
        achieves there (so power and clocks follow it like any load)."""
        if workload is None or workload.mfu_ratio <= 0:
            return _Load()
        peak = self.spec.best_peak(Precision.BF16) or self.spec.best_peak(Precision.FP16)
        achievable = self.achievable_flops_per_s(Precision.BF16) or self.achievable_flops_per_s(
            Precision.FP16
        )
        if peak is None or not achievable:
            return _Load()
        return _Load(Precision.BF16, min(1.0, workload.mfu_ratio * peak.flops_per_s / achievable))

    def _health(self) -> dict[str, int]:
        """Health counters: zero on a healthy GPU, as ``xid:``, ``ecc:``, ``row-remap`` and
        ``nvlink:`` (link replays) faults set them. Row remapping exists from Ampere on, ECC
        counters on data-center parts (every simulated SKU), NVLink on SXM parts."""
        out = {
            "ecc_corrected_volatile_total": 0,
            "ecc_uncorrected_volatile_total": self._ecc_uncorrected,
            "pcie_replay_total": 0,
            "xid_events_total": self._xid_events,
        }
        if self._xid_last is not None:
            out["xid_last"] = self._xid_last
        if self.spec.architecture not in ("Volta", "Turing"):
            out["remapped_rows_correctable_total"] = 0
            out["remapped_rows_uncorrectable_total"] = self._remapped_uncorrectable
            out["row_remap_pending"] = self._remap_pending
            out["row_remap_failed"] = 0
        if "SXM" in self.spec.sku:
            out["nvlink_crc_errors_total"] = 0
            out["nvlink_replay_errors_total"] = self._nvlink_replays
            out["nvlink_recovery_errors_total"] = 0
        return out

    @property
    def workload(self) -> SimWorkload | None:
        """The background workload (None: idle unless flopwatt runs a job)."""
        return self._workload

    def compute_processes(self) -> tuple[GpuProcess, ...] | None:
        """The simulated processes: the background workload's (a fixed PID per GPU, the
        memory the snapshot shows, SM utilisation = its SM activity; 0 while flopwatt's own
        job holds the GPU). flopwatt's own job runs in the agent's process, which the
        attribution adds itself while the job runs.

        Raises:
            DeviceLost: after a ``lost-after`` fault fires.
        """
        with self._lock:
            now = self._clock_ns()
            if self._lost_after_ns is not None and now - self._start_ns >= self._lost_after_ns:
                raise DeviceLost(f"simulated GPU {self._info.index} fell off the bus")
            out = []
            total = self._info.memory_total_bytes
            if self._workload is not None:
                activity = workload_activity(self.spec, self._workload)
                out.append(
                    GpuProcess(
                        pid=SIM_PID_BASE + self._info.index,
                        name=PROCESS_NAMES[self._workload.kind],
                        used_memory_bytes=int(total * MEMORY_HELD_RATIO),
                        # A job pauses its kernels while flopwatt's GEMM holds the GPU.
                        sm_utilization_ratio=0.0 if self._job else activity["sm_active_ratio"],
                    )
                )
            return tuple(out)

    def _activity(self) -> dict[str, float]:
        """GPM columns now (the lock held): flopwatt's job, else the background workload."""
        load = self._load
        if self._job and load.precision is not None and load.intensity > 0:
            base = self._base_clock_mhz(load.precision)
            achievable = self.achievable_flops_per_s(load.precision) or 0.0
            delivered = achievable * load.intensity * self._slow * self._state.clock_mhz / base
            return job_activity(self.spec, load.precision, delivered, self._state.clock_mhz)
        if self._workload is not None:
            return workload_activity(self.spec, self._workload)
        return workload_activity(self.spec, SimWorkload("idle", 0.0))

    def achievable_flops_per_s(self, precision: Precision) -> float | None:
        """Large-GEMM throughput at ``precision`` at the unthrottled clock (FLOP/s; OP/s for
        integer formats): the cited delivered fraction ÷ the nominal clock factor, × the spec
        peak × this device's rate spread. None if the SKU has no peak at that precision."""
        peak = self.spec.best_peak(precision)
        if peak is None:
            return None
        fraction = self._figure(precision).fraction / self._nominal_clock_factor(precision)
        return fraction * peak.flops_per_s * self.spread.rate

    def sustained_flops_per_s(self, precision: Precision) -> float | None:
        """What a long GEMM at ``precision`` settles at on this device (FLOP/s): the achievable
        rate × the steady-state clock factor at the enforced limit × a ``slow`` fault — what
        the sim GEMM job reports, without the thermal model. For a nominal device at its stock
        limit this is exactly ``gemm_figure(...).fraction × spec peak``."""
        achievable = self.achievable_flops_per_s(precision)
        if achievable is None:
            return None
        return achievable * self.operating_point(precision).clock_factor * self._slow

    def snapshot(self, now_unix_ns: int) -> Snapshot:
        """One reading (see :class:`Snapshot`).

        Raises:
            DeviceLost: after a ``lost-after`` fault fires.
        """
        with self._lock:
            now = self._clock_ns()
            if self._lost_after_ns is not None and now - self._start_ns >= self._lost_after_ns:
                raise DeviceLost(f"simulated GPU {self._info.index} fell off the bus")
            self._advance(now)
            s = self._state
            measured = s.power_w * (1 + POWER_NOISE_SIGMA * float(self._rng.standard_normal()))
            if self._stuck:
                if s.stuck_w is None:
                    s.stuck_w = measured
                measured = s.stuck_w
            s.recent.append((now, measured))
            while s.recent and now - s.recent[0][0] > 1_000_000_000:
                s.recent.popleft()
            average = sum(p for _, p in s.recent) / len(s.recent)
            load = self._load.intensity
            extra: dict[str, Any] = with_noise(self._activity(), self._gpm_rng) if self._gpm else {}
            extra.update(self._health())
            held = load > 0 or self._workload is not None
            # NVML reports power in whole milliwatts and energy in whole millijoules: the sim
            # gives the same resolution, so that what the store keeps (and compresses) is what
            # a real fleet sends.
            return Snapshot(
                timestamp_unix_ns=now_unix_ns,
                power_instant_w=round(measured, 3),
                power_average_1s_w=round(average, 3),
                energy_j=round(s.energy_j, 3),
                sm_clock_mhz=round(s.clock_mhz),
                mem_clock_mhz=None,  # not modelled: the registry has no memory clock
                gpu_temperature_c=float(round(s.temperature_c, 1)),
                memory_temperature_c=None,
                gpu_utilization_ratio=1.0 if load > 0 else 0.0,
                memory_utilization_ratio=0.6 * load,
                throttle_reasons=s.throttle,
                power_limit_w=self._limit_w,
                memory_used_bytes=int(
                    self._info.memory_total_bytes * (MEMORY_HELD_RATIO if held else 0.01)
                ),
                **extra,
            )


class SimBackend:
    """``--device-backend sim``: N simulated GPUs of one registry SKU."""

    name = "sim"

    def __init__(self, devices: list[SimDevice], pods: Sequence[SimPod] = ()) -> None:
        self._devices = devices
        self._pods = {
            devices[p.index].info.uuid: PodRef(p.namespace, p.pod, p.container) for p in pods
        }

    def pod_allocations(self) -> dict[str, PodRef] | None:
        """GPU UUID → the container ``--sim-pod`` allocated it to; None when no ``--sim-pod``
        was given (the simulated node is not in Kubernetes)."""
        return dict(self._pods) if self._pods else None

    @classmethod
    def from_options(
        cls,
        *,
        sku: str = "H100-SXM5-80GB",
        gpus: int = 8,
        seed: int = 0,
        faults: Sequence[str | SimFault] = (),
        workloads: Sequence[str | SimWorkload] = (),
        pods: Sequence[str | SimPod] = (),
        host: str = "sim",
        registry: Registry | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        **_ignored: object,
    ) -> SimBackend:
        """Build the backend.

        Raises:
            ValueError: unknown SKU (the message lists them), bad GPU count or bad fault.
        """
        registry = registry or load_registry()
        try:
            spec = registry.get(sku)
        except UnknownSkuError as exc:
            raise ValueError(str(exc)) from None
        if spec.tdp_w is None or spec.best_peak(Precision.FP16) is None:
            raise ValueError(f"SKU {spec.sku} lacks the TDP or peaks a simulation needs")
        if not 1 <= gpus <= 64:
            raise ValueError(f"--sim-gpus must be 1..64, got {gpus}")
        parsed = [f if isinstance(f, SimFault) else parse_fault(f) for f in faults]
        for f in parsed:
            if not 0 <= f.index < gpus:
                raise ValueError(f"fault {f.kind} names GPU {f.index}, but there are {gpus}")
        loads = [w if isinstance(w, SimWorkload) else parse_workload(w) for w in workloads]
        for w in loads:
            if w.index is not None and not 0 <= w.index < gpus:
                raise ValueError(f"workload {w.kind} names GPU {w.index}, but there are {gpus}")

        sim_pods = [p if isinstance(p, SimPod) else parse_pod(p) for p in pods]
        for pod in sim_pods:
            if not 0 <= pod.index < gpus:
                raise ValueError(f"sim pod {pod.pod} names GPU {pod.index}, but there are {gpus}")
        if len({pod.index for pod in sim_pods}) != len(sim_pods):
            raise ValueError("two --sim-pod name the same GPU (a GPU is allocated to one pod)")

        def workload_of(i: int) -> SimWorkload | None:
            # The last one naming this GPU wins over the last one for every GPU.
            mine = [w for w in loads if w.index == i] or [w for w in loads if w.index is None]
            return mine[-1] if mine else None

        devices = [
            SimDevice(
                spec,
                index=i,
                host=host,
                seed=seed,
                faults=[f for f in parsed if f.index == i],
                clock_ns=clock_ns,
                workload=workload_of(i),
            )
            for i in range(gpus)
        ]
        return cls(devices, sim_pods)

    def devices(self) -> list[Device]:
        """The simulated GPUs."""
        return list(self._devices)

    def sim_devices(self) -> list[SimDevice]:
        """The simulated GPUs, typed (for the sim job runner)."""
        return list(self._devices)

    def software(self) -> SoftwareVersions:
        """No driver: the versions say so."""
        return SoftwareVersions(driver_version="sim", cuda_version="", nvml_version="sim")

    def close(self) -> None:
        """Nothing to release."""
