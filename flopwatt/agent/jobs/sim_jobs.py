"""GEMM and model jobs answered by simulated GPUs, with timings consistent with each simulated
device's SKU peaks and current clock (so power caps, slow-GPU faults and thermal state show up in
the results exactly as they would on hardware), and energy from the sampler's window.

Simulation assumptions (illustrative — the sim exists to exercise the pipeline, not to predict):

* a GEMM of size n reaches ``n³ / (n³ + 1536³)`` of the device's achievable rate (small GEMMs
  cannot fill the GPU);
* a model runs at a fixed fraction of the achievable rate per model family and batch
  (:data:`MODEL_EFFICIENCY`): transformers use tensor cores better than convnets, batch 1 worst;
* FLOPs per model are torchvision's published multiply-adds (``weights.meta["_ops"]``, GMACs,
  224² inputs) × 2 — the same figures flopwatt's own counter reproduces within 1 %.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from flopwatt.agent.devices.base import Device
from flopwatt.agent.devices.sim import SimDevice
from flopwatt.agent.jobs.runner import JobCancelledError, JobUnavailableError
from flopwatt.agent.sampler import Sampler
from flopwatt.analysis.efficiency import energy_per_operation_j
from flopwatt.analysis.precision import Precision
from flopwatt.records import (
    GemmPoint,
    GemmResult,
    GemmShape,
    JobResult,
    JobSpec,
    ModelResult,
)

DEFAULT_GEMM_PRECISIONS = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")
SWEEP_SIZES = (1024, 2048, 4096, 8192)
SIZE_HALF = 1536
DEFAULT_SUSTAIN_S = 5.0

#: torchvision published GMACs per sample at 224² (weights.meta["_ops"]).
PUBLISHED_GMACS: dict[str, float] = {
    "resnet18": 1.814,
    "resnet34": 3.664,
    "resnet50": 4.089,
    "resnet101": 7.801,
    "resnet152": 11.514,
    "vit_b_16": 17.564,
    "vit_b_32": 4.409,
    "vit_l_16": 61.555,
    "efficientnet_b0": 0.386,
    "mobilenet_v2": 0.301,
    "mobilenet_v3_large": 0.217,
    "convnext_tiny": 4.456,
    "swin_t": 4.491,
}
#: (model family, batch) → fraction of the achievable GEMM rate (assumption, see docstring).
MODEL_EFFICIENCY: dict[tuple[str, int], float] = {
    ("cnn", 1): 0.10,
    ("cnn", 8): 0.30,
    ("cnn", 32): 0.45,
    ("transformer", 1): 0.20,
    ("transformer", 8): 0.45,
    ("transformer", 32): 0.55,
}


def _family(model: str) -> str:
    return "transformer" if model.startswith(("vit", "swin")) else "cnn"


def _efficiency(model: str, batch: int) -> float:
    fam = _family(model)
    known = sorted(b for f, b in MODEL_EFFICIENCY if f == fam)
    nearest = min(known, key=lambda b: abs(np.log(batch / b)))
    return MODEL_EFFICIENCY[(fam, nearest)]


def _sims(devices: Sequence[Device]) -> list[SimDevice]:
    sims = [d for d in devices if isinstance(d, SimDevice)]
    if len(sims) != len(devices):
        raise JobUnavailableError("simulated jobs need simulated devices")
    return sims


def run(
    job_id: str,
    spec: JobSpec,
    devices: Sequence[Device],
    sampler: Sampler,
    options: dict[str, Any],
    cancel: threading.Event | None = None,
) -> list[JobResult]:
    """Run ``spec`` on simulated ``devices`` (all at once), recording windows with ``sampler``.

    Raises:
        JobUnavailableError: nothing in the spec can run on these devices.
        JobCancelledError: ``cancel`` was set (the agent is stopping).
    """
    sims = _sims(devices)
    pause = _Pause(cancel or threading.Event())
    if spec.gemm is not None:
        return _gemm(job_id, spec, sims, sampler, options, pause)
    if spec.model is not None:
        return _model(job_id, spec, sims, sampler, options, pause)
    raise JobUnavailableError("job names no kind")


def _rng(device: SimDevice, job_id: str, salt: str) -> np.random.Generator:
    return np.random.default_rng([abs(hash((device.info.uuid, job_id, salt))) % 2**32])


class _Pause:
    """``time.sleep`` that a cancel cuts short (raising :class:`JobCancelledError`)."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel

    def __call__(self, seconds: float) -> None:
        if self._cancel.wait(seconds):
            raise JobCancelledError("the agent stopped before the job finished")


def _gemm(
    job_id: str,
    spec: JobSpec,
    sims: list[SimDevice],
    sampler: Sampler,
    options: dict[str, Any],
    pause: _Pause,
) -> list[JobResult]:
    assert spec.gemm is not None
    names = spec.gemm.precisions or DEFAULT_GEMM_PRECISIONS
    try:
        precisions = [Precision.parse(p) for p in names]
    except ValueError as exc:
        raise JobUnavailableError(str(exc)) from None
    sustain_s = spec.gemm.sustain_s or float(options.get("sustain_s", DEFAULT_SUSTAIN_S))
    max_size = spec.gemm.max_size or SWEEP_SIZES[-1]
    sizes = [n for n in SWEEP_SIZES if n <= max_size] or [max_size]
    results: list[JobResult] = []
    for precision in precisions:
        runnable = [d for d in sims if d.achievable_flops_per_s(precision) is not None]
        if not runnable:
            continue
        started = time.time_ns()
        for d in runnable:
            d.set_load(precision, 1.0)
        pause(min(0.3, sustain_s / 4))  # the power cap engages within moments
        bursts = {d.info.uuid: _sweep(d, precision, sizes, job_id) for d in runnable}
        window = sampler.begin_window([d.info.uuid for d in runnable])
        t0 = time.time_ns()
        factors: dict[str, list[float]] = {d.info.uuid: [] for d in runnable}
        deadline = time.monotonic() + sustain_s
        while time.monotonic() < deadline:
            for d in runnable:
                factors[d.info.uuid].append(d.rate_factor())
            pause(0.1)
        t1 = time.time_ns()
        conditions = sampler.end_window(window, t0, t1)
        for d in runnable:
            d.set_load(None, 0.0)
        for d in runnable:
            uuid = d.info.uuid
            achievable = d.achievable_flops_per_s(precision) or 0.0
            sustained = achievable * statistics.fmean(factors[uuid] or [d.rate_factor()])
            seconds = (t1 - t0) / 1e9
            flops = sustained * seconds
            cond = conditions[uuid]
            points, best = bursts[uuid]
            results.append(
                JobResult(
                    job_id=job_id,
                    device_uuid=uuid,
                    gemm=GemmResult(
                        precision=precision.value,
                        backend="sim",
                        burst_flops_per_s=best.best_flops_per_s,
                        best_shape=best.shape,
                        sweep=tuple(points),
                        sustained_flops_per_s=sustained,
                        sustained_s=seconds,
                        sustained_flops=flops,
                        energy_j=cond.energy_j,
                        energy_per_flop_j=energy_per_operation_j(
                            cond.energy_j, cond.window_s, flops, seconds
                        ),
                        mean_power_w=cond.mean_power_w,
                        burst_spread_ratio=0.02,
                        measured_unix_ns=t1,
                    ),
                    conditions=_simulated(cond),
                    started_unix_ns=started,
                    finished_unix_ns=t1,
                )
            )
    if not results:
        raise JobUnavailableError(
            f"none of {', '.join(names)} has a spec peak on {sims[0].spec.sku}"
        )
    return results


def _sweep(
    d: SimDevice, precision: Precision, sizes: Sequence[int], job_id: str
) -> tuple[list[GemmPoint], GemmPoint]:
    rng = _rng(d, job_id, precision.value)
    achievable = (d.achievable_flops_per_s(precision) or 0.0) * d.rate_factor()
    points = []
    for n in sizes:
        rate = achievable * n**3 / (n**3 + SIZE_HALF**3) * (1 - abs(rng.normal(0, 0.01)))
        shape = GemmShape(n, n, n)
        best_s = shape.flops / rate
        points.append(
            GemmPoint(shape, best_s, best_s * (1 + abs(rng.normal(0, 0.02))), shape.flops / best_s)
        )
    return points, max(points, key=lambda p: p.best_flops_per_s)


def _model(
    job_id: str,
    spec: JobSpec,
    sims: list[SimDevice],
    sampler: Sampler,
    options: dict[str, Any],
    pause: _Pause,
) -> list[JobResult]:
    assert spec.model is not None
    models = spec.model.models or ("resnet50", "vit_b_16")
    unknown = [m for m in models if m not in PUBLISHED_GMACS]
    if unknown:
        raise JobUnavailableError(
            f"the simulator knows no FLOP count for {', '.join(unknown)}; "
            f"simulated models: {', '.join(PUBLISHED_GMACS)}"
        )
    batches = spec.model.batches or (1, 8)
    try:
        precision = Precision.parse(spec.model.precision or "fp16")
    except ValueError as exc:
        raise JobUnavailableError(str(exc)) from None
    runs = spec.model.runs or 50
    window_s = float(options.get("model_window_s", 1.0))
    results: list[JobResult] = []
    for model in models:
        for batch in batches:
            eff = _efficiency(model, batch)
            started = time.time_ns()
            for d in sims:
                d.set_load(precision, eff)
            window = sampler.begin_window([d.info.uuid for d in sims])
            t0 = time.time_ns()
            pause(window_s)
            t1 = time.time_ns()
            conditions = sampler.end_window(window, t0, t1)
            for d in sims:
                d.set_load(None, 0.0)
            for d in sims:
                results.append(
                    _model_result(
                        job_id,
                        d,
                        model,
                        batch,
                        precision,
                        eff,
                        runs,
                        conditions[d.info.uuid],
                        started,
                        t1,
                    )
                )
    return results


def _model_result(
    job_id: str,
    d: SimDevice,
    model: str,
    batch: int,
    precision: Precision,
    eff: float,
    runs: int,
    cond: Any,
    started: int,
    finished: int,
) -> JobResult:
    rng = _rng(d, job_id, f"{model}/{batch}")
    macs = PUBLISHED_GMACS[model] * 1e9 * batch
    flops = 2 * macs
    achievable = d.achievable_flops_per_s(precision) or 0.0
    rate = achievable * eff * d.rate_factor()
    base_s = flops / rate
    lat = np.sort(base_s * (1 + np.abs(rng.normal(0, 0.03, size=runs))))
    p50 = float(np.percentile(lat, 50))
    peak = d.spec.best_peak(precision)
    energy_per_inference = None
    if cond.mean_power_w is not None:
        energy_per_inference = cond.mean_power_w * p50 / batch
    return JobResult(
        job_id=job_id,
        device_uuid=d.info.uuid,
        model=ModelResult(
            model=model,
            batch=batch,
            precision=precision.value,
            input_size=224,
            flops=flops,
            macs=macs,
            latency_p50_s=p50,
            latency_p90_s=float(np.percentile(lat, 90)),
            latency_p99_s=float(np.percentile(lat, 99)),
            latency_mean_s=float(lat.mean()),
            latency_std_s=float(lat.std()),
            runs=runs,
            throughput_samples_per_s=batch / p50,
            delivered_flops_per_s=flops / p50,
            peak_flops_per_s=achievable,
            peak_source="sim:gemm-achievable",
            efficiency_ratio=(flops / p50) / achievable if achievable else None,
            spec_efficiency_ratio=(flops / p50) / peak.flops_per_s if peak else None,
            energy_per_inference_j=energy_per_inference,
            mean_power_w=cond.mean_power_w,
        ),
        conditions=_simulated(cond),
        started_unix_ns=started,
        finished_unix_ns=finished,
    )


def _simulated(cond: Any) -> Any:
    from dataclasses import replace

    return replace(cond, simulated=True, driver_version="sim")
