"""Model efficiency: latency of torchvision models (random weights) and how much of the device's
measured GEMM peak they deliver.

Per (model, batch), on one device and precision:

- FLOPs and MACs from :func:`~flopwatt.agent.jobs.flops.count_zoo_model` (PyTorch's
  ``FlopCounterMode`` on the meta device; 1 MAC = 2 FLOPs), at the model's native input size;
- latency: the model in eval mode under ``torch.inference_mode``, cast to the precision (fp32
  with TF32 off for matmuls *and* convolutions, so fp32 means fp32; fp16/bf16 weights and
  inputs), warm-up runs, then ``runs`` timed forward passes — CUDA events around each pass with a
  synchronisation at its end on a GPU, the performance counter on a CPU — summarised as
  p50/p90/p99, mean and sample std;
- delivered FLOP/s = FLOPs ÷ p50 latency; efficiency = delivered ÷ the measured GEMM burst peak of
  the same precision on the same device (from the peak cache, measured on a miss), and on GPUs
  also ÷ the spec-sheet peak from the registry. FLOP/s over FLOP/s, always;
- energy per inference (J per sample) and mean power over the timed window, from the caller's
  sampler (:func:`model_result`), where the device gives energy;
- roofline placement: arithmetic intensity = FLOPs ÷ an *estimate* of bytes moved (see
  :func:`estimate_bytes_moved`) against the ridge point = peak ÷ memory bandwidth (registry on
  GPUs, a measured copy bandwidth on CPUs).

A model that fails to build, count or run becomes a :class:`ModelFailure` entry; the run goes on
with the next model. torch is imported only inside the functions that need it, so the agent
process can unpickle these records without loading torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flopwatt.agent.jobs.gemm import (
    GemmConfig,
    ProgressFn,
    UnsupportedPrecisionError,
    float32_math,
    gemm_peak,
)
from flopwatt.agent.jobs.peak_cache import CacheOutcome, PeakCache
from flopwatt.analysis.efficiency import (
    LatencyStats,
    RooflinePlacement,
    efficiency_ratio,
    energy_per_operation_j,
    latency_stats,
    roofline,
)
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import Registry, load_registry
from flopwatt.records import Conditions, ModelResult

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_PRECISIONS",
    "DevicePeaks",
    "ModelFailure",
    "ModelMeasurement",
    "PeakInfo",
    "bench_models",
    "device_peaks",
    "estimate_bytes_moved",
    "measure_memory_bandwidth",
    "model_result",
]

#: The precisions a model can run at.
MODEL_PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.BF16)

_DTYPE_NAMES = {Precision.FP32: "float32", Precision.FP16: "float16", Precision.BF16: "bfloat16"}


@dataclass(frozen=True)
class PeakInfo:
    """The measured GEMM burst peak a model is compared with.

    Attributes:
        flops_per_s: the burst peak (FLOP/s).
        source: ``gemm-burst:cache`` (read from the peak cache) or ``gemm-burst:measured``.
        measured_unix_ns: when the peak was measured.
        method: how, in words.
        library: which library reached it.
    """

    flops_per_s: float
    source: str
    measured_unix_ns: int
    method: str
    library: str


@dataclass(frozen=True)
class DevicePeaks:
    """What a device's models are compared with, at one precision.

    Attributes:
        peak: the measured GEMM burst peak, or None (``peak_note`` says why).
        peak_note: why there is no measured peak ("" when there is one).
        spec_peak_flops_per_s: the registry's dense peak at this precision (GPUs), or None.
        spec_sku: the registry SKU matched ("" for none).
        bandwidth_bytes_per_s: memory bandwidth for the roofline, or None.
        bandwidth_source: ``registry:<sku>`` or ``measured:copy`` ("" when None).
    """

    peak: PeakInfo | None
    peak_note: str = ""
    spec_peak_flops_per_s: float | None = None
    spec_sku: str = ""
    bandwidth_bytes_per_s: float | None = None
    bandwidth_source: str = ""


@dataclass(frozen=True)
class ModelMeasurement:
    """One model at one batch size, timed.

    Attributes:
        model / batch / precision / device: what ran where.
        input_size: the square input side (pixels).
        flops / macs: one forward pass over the whole batch (FLOPs = 2 × MACs).
        latencies_s: every timed pass, in order (seconds per whole-batch forward).
        warmup: untimed passes before them.
        timing: ``cuda-events`` or ``wall-clock``.
        window_start_unix_ns / window_end_unix_ns: wall-clock span of the timed passes, for the
            sampler's window.
        peaks: what efficiency and the roofline are computed against.
        bytes_moved_estimate: estimated bytes moved per forward pass (see
            :func:`estimate_bytes_moved`), or None.
        threads: ``torch.get_num_threads()`` while it ran.
    """

    model: str
    batch: int
    precision: str
    device: str
    input_size: int
    flops: int
    macs: int
    latencies_s: tuple[float, ...]
    warmup: int
    timing: str
    window_start_unix_ns: int
    window_end_unix_ns: int
    peaks: DevicePeaks
    bytes_moved_estimate: float | None
    threads: int

    @property
    def stats(self) -> LatencyStats:
        """Percentiles, mean and std of the latencies."""
        return latency_stats(self.latencies_s)

    @property
    def delivered_flops_per_s(self) -> float:
        """FLOPs ÷ p50 latency."""
        return self.flops / self.stats.p50_s

    @property
    def efficiency_ratio(self) -> float | None:
        """Delivered ÷ measured GEMM peak of the same precision, or None without a peak."""
        peak = self.peaks.peak
        return efficiency_ratio(self.delivered_flops_per_s, peak.flops_per_s if peak else None)

    @property
    def spec_efficiency_ratio(self) -> float | None:
        """Delivered ÷ the registry's spec peak (GPUs), or None."""
        return efficiency_ratio(self.delivered_flops_per_s, self.peaks.spec_peak_flops_per_s)

    @property
    def roofline(self) -> RooflinePlacement | None:
        """Placement against the ridge point of the measured peak (the spec peak when none was
        measured), or None without a bytes estimate, a peak or a bandwidth."""
        peak = self.peaks.peak.flops_per_s if self.peaks.peak else self.peaks.spec_peak_flops_per_s
        bw = self.peaks.bandwidth_bytes_per_s
        if not self.bytes_moved_estimate or not peak or not bw:
            return None
        return roofline(self.flops, self.bytes_moved_estimate, peak, bw, self.delivered_flops_per_s)


@dataclass(frozen=True)
class ModelFailure:
    """A model that could not be measured; reported in place of its result.

    Attributes:
        model / batch / precision / device: what was asked for.
        stage: ``lookup`` (not in the zoo), ``count``, ``build`` or ``run``.
        error: the error, as text.
    """

    model: str
    batch: int
    precision: str
    device: str
    stage: str
    error: str


# --- peaks ----------------------------------------------------------------------------------


def measure_memory_bandwidth(device: str = "cpu", *, nbytes: int = 0, trials: int = 5) -> float:
    """Copy bandwidth of ``device`` in bytes/s: best of ``trials`` copies of an ``nbytes``
    buffer (256 MiB on a CPU, 1 GiB on a GPU), counting each copy as 2 × nbytes (read + write,
    STREAM's convention; a CPU's write-allocate traffic is not counted).

    Raises:
        ValueError: ``trials`` < 1.
    """
    import torch

    if trials < 1:
        raise ValueError(f"trials must be ≥ 1, got {trials}")
    cuda = device.startswith("cuda")
    size = nbytes or (1 << 30 if cuda else 1 << 28)
    src = torch.ones(size // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(trials):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def device_peaks(
    precision: Precision,
    device: str,
    *,
    device_uuid: str,
    device_name: str = "",
    pci_device_id: int | None = None,
    driver_version: str = "",
    cache: PeakCache | None = None,
    refresh: bool = False,
    gemm_config: GemmConfig | None = None,
    registry: Registry | None = None,
    progress: ProgressFn | None = None,
) -> DevicePeaks:
    """The measured GEMM peak (cache first), the spec peak and the memory bandwidth to compare
    ``device``'s models with at ``precision``.

    A precision the device cannot run as a GEMM gives ``peak=None`` with the reason; efficiency
    against it is then absent, never guessed.
    """
    peak: PeakInfo | None = None
    note = ""
    try:
        cached, outcome, _, _ = gemm_peak(
            precision,
            device,
            device_uuid=device_uuid,
            driver_version=driver_version,
            cache=cache,
            refresh=refresh,
            config=gemm_config,
            progress=progress,
        )
        peak = PeakInfo(
            flops_per_s=cached.burst_flops_per_s,
            source="gemm-burst:cache" if outcome is CacheOutcome.HIT else "gemm-burst:measured",
            measured_unix_ns=cached.measured_unix_ns,
            method=cached.method,
            library=cached.library,
        )
    except UnsupportedPrecisionError as exc:
        note = exc.reason
    spec_peak = None
    sku = ""
    bandwidth = None
    bandwidth_source = ""
    if device.startswith("cuda"):
        reg = registry or load_registry()
        match = reg.match_device(device_name, pci_device_id)
        if match.spec is not None:
            sku = match.spec.sku
            best = match.spec.best_peak(precision)
            spec_peak = best.flops_per_s if best else None
            if match.spec.memory_bw_gb_per_s:
                bandwidth = match.spec.memory_bw_gb_per_s * 1e9
                bandwidth_source = f"registry:{sku}"
    if bandwidth is None:
        bandwidth = measure_memory_bandwidth(device)
        bandwidth_source = "measured:copy"
    return DevicePeaks(peak, note, spec_peak, sku, bandwidth, bandwidth_source)


# --- models ---------------------------------------------------------------------------------


@contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    # The fused MHA path has no meta kernel; the plain path runs the same projections.
    import torch

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _tensor_bytes(value: Any, itemsize: int) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * itemsize
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v, itemsize) for v in value)
    return 0


def estimate_bytes_moved(model: str, batch: int, precision: Precision) -> float:
    """An estimate of the bytes one forward pass moves to and from memory, at ``precision``:
    every parameter and buffer read once, the input read once, and the output of every innermost
    module that runs (convolutions, linears, norms, activations, attention…) written once and
    read once. It ignores functional operations between modules (residual adds, reshapes), cache
    reuse between layers and re-reads of weights, so it is a rough guide to where a model sits
    on the roofline, not a measurement. Computed on the meta device: no arithmetic, no memory.

    Raises:
        UnknownModelError: ``model`` is not in the zoo.
        ModelBuildError: torchvision failed to construct it.
        ValueError: ``precision`` is not a model precision.
    """
    import torch

    from flopwatt.agent.jobs.zoo import build_model, example_input, zoo_entry

    if precision not in MODEL_PRECISIONS:
        raise ValueError(f"models run at {', '.join(p.value for p in MODEL_PRECISIONS)}")
    itemsize = 4 if precision is Precision.FP32 else 2
    entry = zoo_entry(model)
    net = build_model(entry, device="meta")
    x = example_input(entry, batch=batch, device="meta")
    stack: list[list[bool]] = []
    activations = 0

    def pre(_module: nn.Module, _args: Any) -> None:
        if stack:
            stack[-1][0] = True  # the enclosing module has a child that ran
        stack.append([False])

    def post(_module: nn.Module, _args: Any, output: Any) -> None:
        nonlocal activations
        had_child = stack.pop()[0]
        if not had_child:
            activations += _tensor_bytes(output, itemsize)

    handles = []
    for module in net.modules():
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with _mha_fastpath_off(), torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    params = sum(t.numel() for t in (*net.parameters(), *net.buffers())) * itemsize
    return float(params + x.numel() * itemsize + 2 * activations)


def _time_passes(
    net: nn.Module, x: torch.Tensor, device: str, warmup: int, runs: int
) -> tuple[tuple[float, ...], int, int]:
    """(latencies, window start, window end): ``runs`` timed passes after ``warmup``."""
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        net(x)
    if cuda:
        torch.cuda.synchronize(device)
    latencies: list[float] = []
    start_ns = time.time_ns()
    if cuda:
        with torch.cuda.device(torch.device(device)):
            for _ in range(runs):
                begin = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                begin.record()
                net(x)
                end.record()
                end.synchronize()
                latencies.append(float(begin.elapsed_time(end)) / 1e3)
    else:
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            net(x)
            latencies.append((time.perf_counter_ns() - t0) / 1e9)
    return tuple(latencies), start_ns, time.time_ns()


def bench_models(
    models: Sequence[str],
    batches: Sequence[int],
    precision: Precision,
    device: str = "cpu",
    *,
    peaks: DevicePeaks,
    warmup: int = 3,
    runs: int = 20,
    on_result: Callable[[ModelMeasurement | ModelFailure], None] | None = None,
    progress: ProgressFn | None = None,
) -> list[ModelMeasurement | ModelFailure]:
    """Time every model at every batch size; a model that fails is reported, not raised.

    Args:
        models: zoo model names.
        batches: batch sizes (each ≥ 1).
        precision: ``fp32``, ``fp16`` or ``bf16``.
        device: ``cpu`` or ``cuda[:N]``.
        peaks: what to compare with (see :func:`device_peaks`).
        warmup: untimed passes before each timing (≥ 0).
        runs: timed passes (≥ 1).
        on_result: called with each entry as soon as it is done (the caller reads its sampler
            window there, while the snapshots are fresh).
        progress: called after each (model, batch).

    Returns:
        One entry per (model, batch) in order: a :class:`ModelMeasurement` or a
        :class:`ModelFailure`.

    Raises:
        ValueError: a bad precision, batch, warm-up or run count.
    """
    import torch

    from flopwatt.agent.jobs.flops import count_zoo_model
    from flopwatt.agent.jobs.zoo import (
        ModelBuildError,
        UnknownModelError,
        build_model,
        example_input,
        zoo_entry,
    )

    if precision not in MODEL_PRECISIONS:
        raise ValueError(
            f"models run at {', '.join(p.value for p in MODEL_PRECISIONS)}, not {precision.value}"
        )
    if runs < 1 or warmup < 0 or any(b < 1 for b in batches):
        raise ValueError("runs must be ≥ 1, warmup ≥ 0 and every batch ≥ 1")
    dtype = getattr(torch, _DTYPE_NAMES[precision])
    timing = "cuda-events" if device.startswith("cuda") else "wall-clock"
    out: list[ModelMeasurement | ModelFailure] = []
    total = len(models) * len(batches)

    def emit(item: ModelMeasurement | ModelFailure) -> None:
        out.append(item)
        if on_result is not None:
            on_result(item)
        if progress is not None:
            what = f"{item.model} b{item.batch}"
            if isinstance(item, ModelFailure):
                what += f": failed ({item.stage})"
            else:
                what += f": p50 {item.stats.p50_s * 1e3:.1f} ms"
            progress(what, len(out), total)

    def fail(name: str, batch: int, stage: str, exc: BaseException) -> ModelFailure:
        # Reported in the results; the log line is for agents, at info so a CLI stays quiet.
        log.info("model %s batch %d failed at %s: %s", name, batch, stage, exc)
        if isinstance(exc, ModelBuildError):
            text = exc.reason
        elif isinstance(exc, UnknownModelError):
            text = f"unknown model {name!r}: not a torchvision classification model"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return ModelFailure(name, batch, precision.value, device, stage, text)

    for name in models:
        try:
            entry = zoo_entry(name)
        except UnknownModelError as exc:
            for batch in batches:
                emit(fail(name, batch, "lookup", exc))
            continue
        try:
            net = build_model(entry, device=device).to(dtype)
        # A model that fails to construct is reported; the run goes on (issue's "done means").
        except Exception as exc:
            for batch in batches:
                emit(fail(name, batch, "build", exc))
            continue
        for batch in batches:
            try:
                count = count_zoo_model(entry, batch=batch)
                bytes_moved: float | None = estimate_bytes_moved(name, batch, precision)
            # A counter that cannot follow a model loses that model's entry, not the run.
            except Exception as exc:
                emit(fail(name, batch, "count", exc))
                continue
            try:
                x = example_input(entry, batch=batch, device=device).to(dtype)
                with float32_math(precision, convolutions=True), torch.inference_mode():
                    latencies, t0, t1 = _time_passes(net, x, device, warmup, runs)
                del x
            # Out of memory, a kernel missing for this dtype on this device…: report, go on.
            except Exception as exc:
                emit(fail(name, batch, "run", exc))
                continue
            emit(
                ModelMeasurement(
                    model=name,
                    batch=batch,
                    precision=precision.value,
                    device=device,
                    input_size=entry.input_size,
                    flops=count.flops,
                    macs=count.macs,
                    latencies_s=latencies,
                    warmup=warmup,
                    timing=timing,
                    window_start_unix_ns=t0,
                    window_end_unix_ns=t1,
                    peaks=peaks,
                    bytes_moved_estimate=bytes_moved,
                    threads=torch.get_num_threads(),
                )
            )
        del net
    return out


def model_result(m: ModelMeasurement, conditions: Conditions | None) -> ModelResult:
    """The wire record of a measurement, with energy from its timed window's conditions.

    ``energy_per_inference_j`` is joules per sample (one image): the window's energy ÷ the
    samples classified over the same span (see
    :func:`~flopwatt.analysis.efficiency.energy_per_operation_j`); None without energy.
    """
    stats = m.stats
    cond = conditions or Conditions()
    run_s = (m.window_end_unix_ns - m.window_start_unix_ns) / 1e9
    samples = len(m.latencies_s) * m.batch
    energy = (
        energy_per_operation_j(cond.energy_j, cond.window_s, samples, run_s) if run_s > 0 else None
    )
    placement = m.roofline
    return ModelResult(
        model=m.model,
        batch=m.batch,
        precision=m.precision,
        input_size=m.input_size,
        flops=float(m.flops),
        macs=float(m.macs),
        latency_p50_s=stats.p50_s,
        latency_p90_s=stats.p90_s,
        latency_p99_s=stats.p99_s,
        latency_mean_s=stats.mean_s,
        latency_std_s=stats.std_s,
        runs=stats.runs,
        throughput_samples_per_s=m.batch / stats.p50_s,
        delivered_flops_per_s=m.delivered_flops_per_s,
        peak_flops_per_s=m.peaks.peak.flops_per_s if m.peaks.peak else None,
        peak_source=m.peaks.peak.source if m.peaks.peak else "none",
        efficiency_ratio=m.efficiency_ratio,
        spec_efficiency_ratio=m.spec_efficiency_ratio,
        energy_per_inference_j=energy,
        mean_power_w=cond.mean_power_w,
        arithmetic_intensity_flops_per_byte=(
            None if placement is None else placement.intensity_flops_per_byte
        ),
    )
