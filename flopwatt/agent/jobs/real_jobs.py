"""GEMM and model jobs on real devices (the host CPU, NVIDIA GPUs).

The measurements themselves (:mod:`.gemm`, :mod:`.model_bench`) run in a child process started
with ``spawn``, one per device: a crash, a hang or an out-of-memory kill in torch or a driver
ends that child, never the agent and its sampler — and the agent process itself never imports
torch (its memory stays small). The child streams plain records back over a pipe as each
precision or model finishes.

Power and energy come from the agent's own sampler: the parent records one sampler window over
the device's whole job, the child reports the exact wall-clock span (``time.time_ns``) of every
sustained GEMM run and every timed model window, and the parent computes the conditions of each
span with :meth:`~flopwatt.agent.sampler.Sampler.window_conditions`. Energy per FLOP is that
span's energy ÷ the FLOPs the child executed in it.

Job options (the agent's ``job_options``): ``sustain_s`` (sustained GEMM seconds; default 30
on a GPU, 5 on a CPU), ``cache_dir`` (peak cache directory), ``job_timeout_s`` (per device,
default 3600), ``gemm_trials`` / ``gemm_min_trial_s`` / ``gemm_warmup_s`` (GEMM sweep),
``model_warmup`` / ``model_runs`` (defaults when the job names none).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from flopwatt.agent.devices.base import Backend, Device
from flopwatt.agent.jobs.runner import JobCancelledError, JobUnavailableError
from flopwatt.agent.sampler import Sampler
from flopwatt.children import become_child, start_child
from flopwatt.records import (
    Conditions,
    DeviceInfo,
    DeviceKind,
    GemmJobSpec,
    JobResult,
    JobSpec,
    ModelJobSpec,
    SoftwareVersions,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CPU_SUSTAIN_S", "DEFAULT_GPU_SUSTAIN_S", "run", "torch_device"]

DEFAULT_GPU_SUSTAIN_S = 30.0
DEFAULT_CPU_SUSTAIN_S = 5.0
_DEFAULT_TIMEOUT_S = 3600.0
_DEFAULT_MODELS = ("resnet50", "vit_b_16")
_DEFAULT_BATCHES = (1, 8)


@dataclass(frozen=True)
class _Request:
    """What the child measures (picklable, torch-free)."""

    device: str
    device_uuid: str
    device_name: str
    pci_device_id: int | None
    driver_version: str
    gemm: GemmJobSpec | None
    model: ModelJobSpec | None
    options: dict[str, Any]


def torch_device(info: DeviceInfo) -> str | None:
    """The torch device string for a device (``cpu``, ``cuda:N``), or None when torch cannot
    address it (a GPU hidden from CUDA by ``CUDA_VISIBLE_DEVICES``)."""
    if info.kind is DeviceKind.CPU:
        return "cpu"
    return f"cuda:{info.torch_index}" if info.torch_index >= 0 else None


def run(
    job_id: str,
    spec: JobSpec,
    devices: Sequence[Device],
    sampler: Sampler,
    backend: Backend,
    options: dict[str, Any],
    cancel: threading.Event | None = None,
) -> list[JobResult]:
    """Run a GEMM or model job on real devices, one device after another, each in its own
    spawned child process.

    Returns:
        One result per measured precision (GEMM) or (model, batch) per device. Precisions a
        device cannot run and models that fail are logged and left out.

    Raises:
        JobUnavailableError: torch is not installed, no device can be addressed by torch, or
            nothing in the job could run (every precision unsupported, every model failed); the
            message says why.
        RuntimeError: a child process died or timed out before producing any result.
    """
    if spec.gemm is None and spec.model is None:
        raise JobUnavailableError("job names no kind")
    if importlib.util.find_spec("torch") is None:
        raise JobUnavailableError(
            "torch is not installed on this agent; GEMM and model jobs need the agent extra "
            "(pip install 'flopwatt[agent]')"
        )
    software = backend.software()
    results: list[JobResult] = []
    reasons: list[str] = []
    for device in devices:
        target = torch_device(device.info)
        if target is None:
            reasons.append(f"{device.info.uuid}: not visible to CUDA (CUDA_VISIBLE_DEVICES)")
            continue
        request = _Request(
            device=target,
            device_uuid=device.info.uuid,
            device_name=device.info.name,
            pci_device_id=device.info.pci_device_id,
            driver_version=software.driver_version,
            gemm=spec.gemm,
            model=spec.model,
            options=dict(options),
        )
        results += _run_device(
            job_id, request, sampler, software, reasons, cancel or threading.Event()
        )
    if not results:
        raise JobUnavailableError("; ".join(reasons) or "nothing in the job produced a result")
    for reason in reasons:
        log.warning("job %s: %s", job_id, reason)
    return results


def _run_device(
    job_id: str,
    request: _Request,
    sampler: Sampler,
    software: SoftwareVersions,
    reasons: list[str],
    cancel: threading.Event,
) -> list[JobResult]:
    from flopwatt.agent.jobs.gemm import GemmMeasurement, SoftwareInfo, gemm_result
    from flopwatt.agent.jobs.model_bench import ModelFailure, ModelMeasurement, model_result

    uuid = request.device_uuid
    window = sampler.begin_window([uuid])
    started = time.time_ns()
    child_sw: SoftwareInfo | None = None
    out: list[JobResult] = []

    def conditions(t0: int, t1: int) -> Conditions:
        cond = sampler.window_conditions(window, t0, t1).get(uuid, Conditions())
        return replace(
            cond,
            driver_version=software.driver_version,
            cuda_version=software.cuda_version or (child_sw.cuda_version if child_sw else ""),
            torch_version=child_sw.torch_version if child_sw else "",
            blas=child_sw.blas if child_sw else "",
            cpu_threads=child_sw.torch_threads if child_sw and request.device == "cpu" else 0,
        )

    try:
        for kind, payload in _child_messages(request, cancel):
            if kind == "software":
                child_sw = payload
            elif kind == "gemm":
                assert isinstance(payload, GemmMeasurement)
                run_ = payload.sustained
                t0, t1 = (
                    (run_.start_unix_ns, run_.end_unix_ns) if run_ else (started, time.time_ns())
                )
                cond = conditions(t0, t1)
                out.append(
                    JobResult(
                        job_id,
                        uuid,
                        gemm=gemm_result(payload, cond),
                        conditions=cond,
                        started_unix_ns=t0,
                        finished_unix_ns=t1,
                    )
                )
            elif kind == "model":
                assert isinstance(payload, ModelMeasurement)
                t0, t1 = payload.window_start_unix_ns, payload.window_end_unix_ns
                cond = conditions(t0, t1)
                out.append(
                    JobResult(
                        job_id,
                        uuid,
                        model=model_result(payload, cond),
                        conditions=cond,
                        started_unix_ns=t0,
                        finished_unix_ns=t1,
                    )
                )
            elif kind == "failure":
                assert isinstance(payload, ModelFailure)
                reasons.append(
                    f"{uuid}: {payload.model} batch {payload.batch} failed at {payload.stage}: "
                    f"{payload.error}"
                )
            elif kind == "skip":
                reasons.append(f"{uuid}: {payload}")
    except _ChildDiedError as exc:
        if not out:
            raise RuntimeError(str(exc)) from None
        reasons.append(f"{uuid}: {exc} (results before it are kept)")
    finally:
        sampler.end_window(window, started, time.time_ns())
    return out


class _ChildDiedError(RuntimeError):
    """The measuring child exited without finishing, or ran past its time limit."""


def _child_messages(request: _Request, cancel: threading.Event) -> Iterator[tuple[str, Any]]:
    """Start the child and yield its messages until it says it is done.

    Raises:
        JobCancelledError: ``cancel`` was set (the agent is stopping); the child is killed.
    """
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child_main, args=(request, send), name="flopwatt-bench", daemon=True
    )
    start_child(child)
    send.close()  # the parent keeps only its reading end, so EOF means the child is gone
    deadline = time.monotonic() + float(request.options.get("job_timeout_s", _DEFAULT_TIMEOUT_S))
    try:
        while True:
            if cancel.is_set():
                raise JobCancelledError("the agent stopped before the job finished")
            if time.monotonic() > deadline:
                raise _ChildDiedError(f"benchmark on {request.device} ran past its time limit")
            if not receive.poll(0.5):
                continue
            try:
                kind, payload = receive.recv()
            except EOFError:
                child.join(5)
                code = child.exitcode
                why = " (killed: out of memory?)" if code == -9 else ""
                raise _ChildDiedError(
                    f"benchmark process on {request.device} exited with code {code}{why}"
                ) from None
            if kind == "done":
                return
            if kind == "error":
                raise RuntimeError(f"benchmark on {request.device} failed: {payload}")
            yield kind, payload
    finally:
        receive.close()
        if child.is_alive():
            child.kill()  # it ignores SIGTERM and SIGINT (flopwatt.children)
        child.join(10)


# --- the child ------------------------------------------------------------------------------


def _child_main(request: _Request, conn: Connection) -> None:
    """Entry point of the spawned child: measure, stream records, say done (or why not)."""
    become_child()
    try:
        from flopwatt.agent.jobs.gemm import software_info

        conn.send(("software", software_info(request.device)))
        if request.gemm is not None:
            _child_gemm(request, request.gemm, conn)
        elif request.model is not None:
            _child_model(request, request.model, conn)
        conn.send(("done", None))
    # Anything the measurement raises goes back to the parent as text; the child then exits.
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the parent may be gone: exit quietly
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _gemm_config_options(options: dict[str, Any]) -> dict[str, Any]:
    """GemmConfig overrides from the agent's job options (quick demos and tests)."""
    out: dict[str, Any] = {}
    if "gemm_trials" in options:
        out["trials"] = int(options["gemm_trials"])
    if "gemm_min_trial_s" in options:
        out["min_trial_s"] = float(options["gemm_min_trial_s"])
    if "gemm_warmup_s" in options:
        out["warmup_s"] = float(options["gemm_warmup_s"])
    return out


def _child_gemm(request: _Request, spec: GemmJobSpec, conn: Connection) -> None:
    from flopwatt.agent.jobs.gemm import (
        GemmConfig,
        UnsupportedPrecisionError,
        default_precisions,
        measure_gemm,
    )
    from flopwatt.agent.jobs.peak_cache import PeakCache
    from flopwatt.analysis.precision import Precision

    cpu = request.device == "cpu"
    default_sustain = DEFAULT_CPU_SUSTAIN_S if cpu else DEFAULT_GPU_SUSTAIN_S
    sustain_s = spec.sustain_s or float(request.options.get("sustain_s", default_sustain))
    config = GemmConfig(
        max_size=spec.max_size, sustain_s=sustain_s, **_gemm_config_options(request.options)
    )
    cache = PeakCache.in_dir(request.options.get("cache_dir"))
    names = spec.precisions or tuple(p.value for p in default_precisions(request.device))
    for name in names:
        try:
            precision = Precision.parse(name)
        except ValueError as exc:
            conn.send(("skip", str(exc)))
            continue
        try:
            measurement = measure_gemm(
                precision,
                request.device,
                config,
                device_uuid=request.device_uuid,
                driver_version=request.driver_version,
                cache=cache,
                refresh=spec.refresh,
            )
        except UnsupportedPrecisionError as exc:
            conn.send(("skip", str(exc)))
            continue
        conn.send(("gemm", measurement))


def _child_model(request: _Request, spec: ModelJobSpec, conn: Connection) -> None:
    from flopwatt.agent.jobs.gemm import GemmConfig
    from flopwatt.agent.jobs.model_bench import ModelFailure, bench_models, device_peaks
    from flopwatt.agent.jobs.peak_cache import PeakCache
    from flopwatt.analysis.precision import Precision

    cpu = request.device == "cpu"
    try:
        precision = Precision.parse(spec.precision or ("fp32" if cpu else "fp16"))
    except ValueError as exc:
        conn.send(("skip", str(exc)))
        return
    peaks = device_peaks(
        precision,
        request.device,
        device_uuid=request.device_uuid,
        device_name=request.device_name,
        pci_device_id=request.pci_device_id,
        driver_version=request.driver_version,
        cache=PeakCache.in_dir(request.options.get("cache_dir")),
        gemm_config=GemmConfig(**_gemm_config_options(request.options)),
    )
    warmup = spec.warmup or int(request.options.get("model_warmup", 2 if cpu else 10))
    runs = spec.runs or int(request.options.get("model_runs", 10 if cpu else 50))

    def forward(item: Any) -> None:
        conn.send(("failure" if isinstance(item, ModelFailure) else "model", item))

    try:
        bench_models(
            spec.models or _DEFAULT_MODELS,
            spec.batches or _DEFAULT_BATCHES,
            precision,
            request.device,
            peaks=peaks,
            warmup=warmup,
            runs=runs,
            on_result=forward,
        )
    except ValueError as exc:
        conn.send(("skip", str(exc)))
