"""What a simulated GPU is busy with when flopwatt runs no job on it, and the GPM pipe activity
any load shows: the simulator's side of live efficiency.

``--sim-workload KIND[:MFU][@INDEX]`` (repeatable; without ``@INDEX`` every GPU of the node):

* ``train:0.42`` — a training job at 42 % MFU (model FLOP/s ÷ the dense BF16 spec peak at the
  clock the datapath is specified at): 97 % of its FLOPs on the BF16 matrix pipe (HMMA), 3 % on
  the FP32 pipe (optimizer, norms, softmax); SMs 92 % busy, DRAM 55 % of its bandwidth;
* ``inference:0.2`` — serving at 20 % MFU: 95 % HMMA, 5 % FP32; SMs 65 % busy, DRAM 70 %
  (decode is bandwidth-bound);
* ``idle`` — a job holds the GPU (memory allocated) and computes nothing: every pipe 0.

Activity is what NVML GPM would report: the fraction of the interval each pipe issued, so a
pipe's FLOP/s is ``activity × its spec peak × SM clock ÷ the peak's clock``. The simulator
derives activity from the workload's FLOP/s at its nominal clock, so the live-efficiency
estimate (:mod:`flopwatt.analysis.live_efficiency`, spec basis) recovers the workload's MFU by
construction, and a power-capped GPU shows the same activity delivering fewer FLOP/s. Noise:
each activity × (1 + 2 % Gaussian), clipped to 0…1. These mixes are assumptions chosen to look
like a transformer job, not measurements.

GPM exists on Hopper and newer only: other simulated SKUs report no GPM columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, PeakUnit

GPM_ARCHITECTURES = frozenset({"Hopper", "Blackwell"})
"""Architectures whose NVML offers GPM."""
ACTIVITY_NOISE = 0.02


@dataclass(frozen=True)
class WorkloadMix:
    """How a workload kind spends its FLOPs and its SMs."""

    tensor_share: float
    """Share of the FLOPs on the BF16 matrix pipe (the rest on the FP32 pipe)."""
    sm_active_ratio: float
    sm_occupancy_ratio: float
    dram_bandwidth_ratio: float


MIXES: dict[str, WorkloadMix] = {
    "train": WorkloadMix(0.97, 0.92, 0.45, 0.55),
    "inference": WorkloadMix(0.95, 0.65, 0.30, 0.70),
    "idle": WorkloadMix(1.0, 0.0, 0.0, 0.0),
}


PROCESS_NAMES: dict[str, str] = {
    "train": "python3",
    "inference": "tritonserver",
    "idle": "python3",
}
"""The command name a workload's simulated process shows (what ``/proc/PID/comm`` would)."""
MEMORY_HELD_RATIO = 0.7
"""Share of GPU memory a simulated workload holds (the snapshot's ``memory_used_bytes``)."""


@dataclass(frozen=True)
class SimWorkload:
    """A background workload on one GPU (``index``) or every GPU (None)."""

    kind: str
    mfu_ratio: float
    index: int | None = None


def parse_workload(text: str) -> SimWorkload:
    """``train:0.42``, ``inference:0.2@3``, ``idle``.

    Raises:
        ValueError: unknown kind, or an MFU outside (0, 1] (the message says what is accepted).
    """
    spec, _, index_text = text.strip().partition("@")
    kind, _, arg = spec.partition(":")
    accepted = "train:MFU, inference:MFU or idle, each optionally @GPU_INDEX (MFU in (0, 1])"
    try:
        index = int(index_text) if index_text else None
    except ValueError:
        raise ValueError(f"bad GPU index in workload {text!r}; accepted: {accepted}") from None
    if kind == "idle" and not arg:
        return SimWorkload("idle", 0.0, index)
    if kind not in ("train", "inference"):
        raise ValueError(f"unknown sim workload {text!r}; accepted: {accepted}")
    try:
        mfu = float(arg)
    except ValueError:
        raise ValueError(f"workload {text!r} needs an MFU; accepted: {accepted}") from None
    if not 0 < mfu <= 1:
        raise ValueError(f"workload MFU must be in (0, 1], got {arg!r}")
    return SimWorkload(kind, mfu, index)


@dataclass(frozen=True)
class SimPod:
    """``--sim-pod NAMESPACE/POD/CONTAINER@INDEX``: the container a simulated GPU is allocated
    to, as the kubelet's pod-resources API would say."""

    namespace: str
    pod: str
    container: str
    index: int


def parse_pod(text: str) -> SimPod:
    """``ml-train/llama-pretrain-0/trainer@3``.

    Raises:
        ValueError: not three non-empty parts and a GPU index (the message shows the form).
    """
    spec, _, index_text = text.strip().partition("@")
    parts = spec.split("/")
    accepted = "NAMESPACE/POD/CONTAINER@GPU_INDEX, e.g. ml-train/llama-pretrain-0/trainer@0"
    if len(parts) != 3 or not all(parts) or not index_text:
        raise ValueError(f"bad sim pod {text!r}; accepted: {accepted}")
    try:
        index = int(index_text)
    except ValueError:
        raise ValueError(f"bad GPU index in sim pod {text!r}; accepted: {accepted}") from None
    return SimPod(parts[0], parts[1], parts[2], index)


def has_gpm(spec: GpuSpec) -> bool:
    """Whether a GPU of ``spec`` offers NVML GPM (Hopper and newer)."""
    return spec.vendor == "NVIDIA" and spec.architecture in GPM_ARCHITECTURES


def _bf16(spec: GpuSpec) -> tuple[float, float] | None:
    peak = spec.peak(Precision.BF16, PeakUnit.TENSOR) or spec.peak(Precision.FP16, PeakUnit.TENSOR)
    clock = spec.peak_clock_mhz(Precision.BF16, PeakUnit.TENSOR)
    return (peak.flops_per_s, clock) if peak is not None and clock else None


def workload_activity(spec: GpuSpec, workload: SimWorkload) -> dict[str, float]:
    """A background workload's GPM columns (ratios, before noise), at any clock (activity
    does not depend on the clock; the FLOP/s it delivers does)."""
    mix = MIXES[workload.kind]
    out = {
        "sm_active_ratio": mix.sm_active_ratio,
        "sm_occupancy_ratio": mix.sm_occupancy_ratio,
        "dram_bandwidth_ratio": mix.dram_bandwidth_ratio,
        "tensor_hmma_active_ratio": 0.0,
        "tensor_imma_active_ratio": 0.0,
        "tensor_dfma_active_ratio": 0.0,
        "fp64_active_ratio": 0.0,
        "fp32_active_ratio": 0.0,
        "fp16_active_ratio": 0.0,
    }
    bf16 = _bf16(spec)
    fp32 = spec.peak(Precision.FP32, PeakUnit.VECTOR)
    if workload.mfu_ratio > 0 and bf16 is not None:
        # The workload's FLOP/s at the BF16 datapath's clock: mfu × peak. A pipe's activity is
        # its share of that ÷ what the pipe issues at that clock (activity 1 = its peak).
        flops = workload.mfu_ratio * bf16[0]
        out["tensor_hmma_active_ratio"] = min(1.0, mix.tensor_share * flops / bf16[0])
        fp32_clock = spec.peak_clock_mhz(Precision.FP32, PeakUnit.VECTOR)
        if fp32 is not None and fp32_clock:
            at_clock = fp32.flops_per_s * bf16[1] / fp32_clock
            out["fp32_active_ratio"] = min(1.0, (1 - mix.tensor_share) * flops / at_clock)
    out["tensor_active_ratio"] = out["tensor_hmma_active_ratio"]
    return out


def job_activity(
    spec: GpuSpec, precision: Precision, flops_per_s: float, clock_mhz: float
) -> dict[str, float]:
    """The GPM columns while flopwatt's own GEMM runs at ``precision`` delivering
    ``flops_per_s`` at SM clock ``clock_mhz``: the pipe that precision runs on is busy
    ``flops_per_s ÷ its peak at that clock`` (TF32 on the HMMA pipe at the TF32 rate)."""
    out = {
        "sm_active_ratio": 0.97,
        "sm_occupancy_ratio": 0.25,
        "dram_bandwidth_ratio": 0.15,
        "tensor_active_ratio": 0.0,
        "tensor_hmma_active_ratio": 0.0,
        "tensor_imma_active_ratio": 0.0,
        "tensor_dfma_active_ratio": 0.0,
        "fp64_active_ratio": 0.0,
        "fp32_active_ratio": 0.0,
        "fp16_active_ratio": 0.0,
    }
    peak = spec.best_peak(precision)
    if peak is None:
        return out
    clock = spec.peak_clock_mhz(precision, peak.unit)
    if not clock or clock_mhz <= 0:
        return out
    busy = min(1.0, flops_per_s / (peak.flops_per_s * clock_mhz / clock))
    if peak.unit is PeakUnit.TENSOR:
        column = {
            Precision.INT8: "tensor_imma_active_ratio",
            Precision.FP64: "tensor_dfma_active_ratio",
        }.get(precision, "tensor_hmma_active_ratio")
        if precision in (Precision.FP8, Precision.FP4, Precision.INT4):
            column = ""  # not an HMMA/IMMA/DFMA instruction: only "any tensor" sees it
        if column:
            out[column] = busy
        out["tensor_active_ratio"] = busy
    else:
        column = {Precision.FP64: "fp64_active_ratio", Precision.FP16: "fp16_active_ratio"}.get(
            precision, "fp32_active_ratio"
        )
        out[column] = busy
    return out


def with_noise(activity: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """Each ratio × (1 + 2 % Gaussian), clipped to 0…1, rounded to NVML's 0.01 % steps."""
    out = {}
    for name, value in activity.items():
        noisy = value * (1 + ACTIVITY_NOISE * float(rng.standard_normal())) if value > 0 else 0.0
        out[name] = round(min(1.0, max(0.0, noisy)), 4)
    out["tensor_active_ratio"] = max(
        out["tensor_active_ratio"],
        out["tensor_hmma_active_ratio"],
        out["tensor_imma_active_ratio"],
        out["tensor_dfma_active_ratio"],
    )
    return out
