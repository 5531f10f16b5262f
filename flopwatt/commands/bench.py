"""``flopwatt bench``: GEMM peak (burst and sustained) and model efficiency on this machine.

Both commands measure in this process with torch; power comes from the device backend (NVML for
``cuda``, RAPL for ``cpu``) read by a :class:`~flopwatt.agent.sampler.Sampler` in the background,
so energy and mean power cover exactly each sustained GEMM run and each model's timed window.
Where the device gives no energy (a CPU without readable RAPL, most VMs) energy is ``null`` in
JSON and ``—`` in tables, never 0.

Units: FLOPs are 2 per multiply-add; every efficiency divides FLOP/s by FLOP/s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from flopwatt.agent.jobs.real_jobs import DEFAULT_CPU_SUSTAIN_S, DEFAULT_GPU_SUSTAIN_S
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.throttle import decode_throttle
from flopwatt.commands.output import (
    emit_json,
    fmt,
    parse_csv_option,
    stderr_console,
    stdout_console,
)
from flopwatt.records import Conditions

if TYPE_CHECKING:
    from flopwatt.agent.devices.base import Backend, Device
    from flopwatt.agent.jobs.gemm import GemmMeasurement, ProgressFn
    from flopwatt.agent.jobs.model_bench import ModelFailure, ModelMeasurement
    from flopwatt.agent.sampler import Sampler

#: Sustained GEMM seconds by device type (the same defaults as the agent's GEMM jobs).
DEFAULT_SUSTAIN_S = {"cuda": DEFAULT_GPU_SUSTAIN_S, "cpu": DEFAULT_CPU_SUSTAIN_S}
#: (warm-up, timed runs) of a model by device type.
DEFAULT_MODEL_RUNS = {"cuda": (10, 50), "cpu": (2, 10)}


@click.group()
def bench() -> None:
    """Measure GEMM peak and model efficiency on this machine (CPU or CUDA GPU)."""


# --- device and power ---------------------------------------------------------------------------


@dataclass
class _Target:
    """The device being measured and what reads its power."""

    device: str
    uuid: str
    name: str
    pci_device_id: int | None
    driver_version: str
    sampler: Sampler | None
    window: Any

    def conditions(self, start_ns: int, end_ns: int) -> Conditions | None:
        """Power, energy, clocks and throttle reasons between two wall-clock instants."""
        if self.sampler is None:
            return None
        return self.sampler.window_conditions(self.window, start_ns, end_ns).get(self.uuid)


def _resolve_device(text: str) -> str:
    import torch

    value = text.strip().lower()
    if value == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if value == "cuda":
        value = "cuda:0"
    try:
        kind = torch.device(value).type
    except RuntimeError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    if kind not in ("cpu", "cuda"):
        raise click.BadParameter(f"{text!r}: expected cpu, cuda or cuda:N", param_hint="--device")
    if kind == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available to torch here", param_hint="--device")
    return value


def _gpu_uuid(index: int) -> str:
    import torch

    uuid = str(torch.cuda.get_device_properties(index).uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


@contextlib.contextmanager
def _measuring(device: str, console: Console) -> Iterator[_Target]:
    """Open the device's backend and sample it in the background while the block runs."""
    from flopwatt.agent.devices import open_backend
    from flopwatt.agent.devices.base import BackendUnavailable
    from flopwatt.agent.sampler import Sampler

    backend: Backend | None = None
    found: Device | None = None
    try:
        backend = open_backend("cpu" if device == "cpu" else "nvml")
        if device == "cpu":
            found = backend.devices()[0]
        else:
            index = int(device.split(":")[1])
            found = next((d for d in backend.devices() if d.info.torch_index == index), None)
    except BackendUnavailable as exc:
        console.print(f"[yellow]no power readings: {exc}[/yellow]")
    if found is None or backend is None:
        # CUDA without NVML (or NVML without this GPU): measure, but with no power readings.
        import torch

        index = int(device.split(":")[1])
        name = torch.cuda.get_device_name(index)
        try:
            yield _Target(device, _gpu_uuid(index), name, None, "", None, None)
        finally:
            if backend is not None:
                backend.close()
        return
    sampler = Sampler([found], lambda _batch: None, interval_s=0.1)
    window = sampler.begin_window([found.info.uuid])
    sampler.start()
    try:
        yield _Target(
            device,
            found.info.uuid,
            found.info.name,
            found.info.pci_device_id,
            backend.software().driver_version,
            sampler,
            window,
        )
    finally:
        sampler.stop(flush=False)
        sampler.end_window(window, 0, 0)
        backend.close()


@contextlib.contextmanager
def _progress(console: Console, title: str) -> Iterator[ProgressFn]:
    """A progress bar on stderr (on a terminal only), driven by ``(what, done, total)``."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task(title, total=None)

    def update(what: str, done: int, total: int) -> None:
        progress.update(task, description=f"{title}: {what}", completed=done, total=total)

    with progress:
        yield update


def _iso(unix_ns: int) -> str | None:
    if not unix_ns:
        return None
    return dt.datetime.fromtimestamp(unix_ns / 1e9, tz=dt.UTC).isoformat(timespec="seconds")


def _precisions(values: tuple[str, ...]) -> list[Precision]:
    try:
        return [Precision.parse(v) for v in parse_csv_option(values)]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--precision") from None


def _cache(cache_dir: Path | None) -> Any:
    from flopwatt.agent.jobs.peak_cache import PeakCache

    return PeakCache.in_dir(cache_dir)


# --- gemm ---------------------------------------------------------------------------------------


def _spec_peak(target: _Target, precision: Precision) -> tuple[float | None, str]:
    if target.device == "cpu":
        return None, ""
    from flopwatt.analysis.registry import load_registry

    match = load_registry().match_device(target.name, target.pci_device_id)
    if match.spec is None:
        return None, ""
    peak = match.spec.best_peak(precision)
    return (peak.flops_per_s if peak else None), match.spec.sku


def _gemm_row(
    m: GemmMeasurement, target: _Target, cond: Conditions | None, spec: tuple[float | None, str]
) -> dict[str, Any]:
    from flopwatt.agent.jobs.gemm import gemm_result

    result = gemm_result(m, cond)
    c = cond or Conditions()
    run = m.sustained
    spec_peak, sku = spec
    shape = m.best_shape
    return {
        "precision": m.precision,
        "device": m.device,
        "device_name": target.name,
        "device_uuid": target.uuid,
        "burst_flops_per_s": m.burst_flops_per_s,
        "sustained_flops_per_s": result.sustained_flops_per_s,
        "best_shape": {"m": shape.m, "n": shape.n, "k": shape.k},
        "best_library": m.best_library,
        "backend": result.backend,
        "by_library_flops_per_s": dict(m.by_library),
        "burst_spread_ratio": m.burst_spread_ratio,
        "from_cache": m.from_cache,
        "cache_outcome": m.cache_outcome or None,
        "burst_measured_unix_ns": m.burst_measured_unix_ns,
        "burst_measured_at": _iso(m.burst_measured_unix_ns),
        "method": m.method,
        "timing": m.timing,
        "sustained_s": result.sustained_s,
        "sustained_flops": result.sustained_flops,
        "sustained_shape": None
        if run is None
        else {"m": run.shape.m, "n": run.shape.n, "k": run.shape.k},
        "energy_j": result.energy_j,
        "energy_per_flop_j": result.energy_per_flop_j,
        "pj_per_flop": None
        if result.energy_per_flop_j is None
        else result.energy_per_flop_j * 1e12,
        "energy_from_counter": c.energy_from_counter if c.energy_j is not None else None,
        "mean_power_w": result.mean_power_w,
        "sm_clock_min_mhz": c.sm_clock_min_mhz,
        "sm_clock_mean_mhz": c.sm_clock_mean_mhz,
        "throttle_reasons_seen": [r.value for r in decode_throttle(c.throttle_reasons_seen)],
        "temperature_max_c": c.temperature_max_c,
        "power_limit_w": c.power_limit_w,
        "spec_peak_flops_per_s": spec_peak,
        "spec_sku": sku or None,
        "burst_spec_ratio": None if not spec_peak else m.burst_flops_per_s / spec_peak,
        "torch_version": m.software.torch_version,
        "cuda_version": m.software.cuda_version or None,
        "driver_version": target.driver_version or None,
        "blas": m.software.blas,
        "threads": m.software.threads or None,
        "sweep": [
            {
                "library": t.library,
                "label": t.label,
                "m": t.shape.m,
                "n": t.shape.n,
                "k": t.shape.k,
                "flops": t.shape.flops,
                "best_flops_per_s": t.best_flops_per_s,
                "median_flops_per_s": t.shape.flops / t.median_s,
                "trial_flops_per_s": list(t.trial_flops_per_s),
                "spread_ratio": t.spread_ratio,
                "gemms_per_trial": t.gemms_per_trial,
            }
            for t in m.trials
        ],
        "notes": list(m.notes),
        "skipped": None,
    }


def _skipped_row(precision: Precision, device: str, reason: str) -> dict[str, Any]:
    return {
        "precision": precision.value,
        "device": device,
        "burst_flops_per_s": None,
        "sustained_flops_per_s": None,
        "best_shape": None,
        "energy_per_flop_j": None,
        "mean_power_w": None,
        "skipped": reason,
    }


def _tflops(value: float | None) -> str:
    return fmt(None if value is None else value / 1e12, ".4g")


def _gemm_table(rows: Sequence[dict[str, Any]], target: _Target) -> Table:
    table = Table(
        title=f"GEMM peak — {target.name} ({target.device})",
        caption="FLOPs = 2·m·n·k (OPs for int8). Burst: best short trial over the sweep; "
        "sustained: one continuous run. Energy from the device's energy counter, else "
        "integrated power; — = not available.",
        caption_justify="left",
    )
    for name in (
        "precision",
        "burst TFLOP/s",
        "best shape",
        "library",
        "spread",
        "sustained TFLOP/s",
        "sustained/burst",
        "pJ/FLOP",
        "mean W",
        "clock MHz min/mean",
        "throttle",
        "max °C",
        "measured",
    ):
        table.add_column(name, justify="left" if name in ("precision", "library") else "right")
    for r in rows:
        if r["skipped"]:
            table.add_row(r["precision"], *["—"] * 11, f"skipped: {r['skipped']}")
            continue
        shape = r["best_shape"]
        burst, sustained = r["burst_flops_per_s"], r["sustained_flops_per_s"]
        clocks = (
            "—"
            if r["sm_clock_min_mhz"] is None
            else f"{r['sm_clock_min_mhz']:.0f}/{r['sm_clock_mean_mhz']:.0f}"
        )
        measured = ("cached " if r["from_cache"] else "") + (r["burst_measured_at"] or "")
        table.add_row(
            r["precision"],
            _tflops(burst),
            f"{shape['m']}×{shape['n']}×{shape['k']}",
            r["best_library"],
            fmt(r["burst_spread_ratio"], ".0%"),
            _tflops(sustained),
            fmt(None if sustained is None else sustained / burst, ".2f"),
            fmt(r["pj_per_flop"], ".3g"),
            fmt(r["mean_power_w"], ".1f"),
            clocks,
            ",".join(r["throttle_reasons_seen"]) or "—",
            fmt(r["temperature_max_c"], ".0f"),
            measured,
        )
    return table


@bench.command()
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda or cuda:N (auto: cuda:0 when CUDA is available, else cpu).",
)
@click.option(
    "--precision",
    "precision_opts",
    multiple=True,
    help="Comma list of fp64 fp32 tf32 fp16 bf16 fp8 int8 (default: all on a GPU; fp32, fp64 "
    "and native bf16 on a CPU). Unsupported ones are reported as skipped.",
)
@click.option(
    "--sizes",
    "size_opts",
    multiple=True,
    help="Comma list of GEMM sizes, N (square) or MxNxK; all are measured (default: a sweep "
    "of squares up to --max-size, stopped at saturation, plus three LLM-like shapes).",
)
@click.option("--max-size", type=click.IntRange(min=16), default=None, help="Largest square.")
@click.option("--trials", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--sustain-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="Length of the sustained run (default 30 on a GPU, 5 on a CPU; 0 = none).",
)
@click.option("--refresh", is_flag=True, help="Re-measure the burst even when it is cached.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Peak cache directory (default $FLOPWATT_CACHE_DIR or ~/.cache/flopwatt).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def gemm(
    device: str,
    precision_opts: tuple[str, ...],
    size_opts: tuple[str, ...],
    max_size: int | None,
    trials: int,
    sustain_seconds: float | None,
    refresh: bool,
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """GEMM peak per precision: burst (best over a sweep) and sustained, with power and energy.

    JSON: a list with one object per precision: at least precision, device, burst_flops_per_s,
    sustained_flops_per_s, best_shape {m, n, k}, energy_per_flop_j and mean_power_w (null when
    unavailable); a precision the device cannot run has "skipped" with the reason.
    """
    from flopwatt.agent.jobs.gemm import (
        GemmConfig,
        UnsupportedPrecisionError,
        default_precisions,
        measure_gemm,
        parse_shape,
    )

    target_device = _resolve_device(device)
    kind = "cpu" if target_device == "cpu" else "cuda"
    try:
        shapes = tuple(parse_shape(s) for s in parse_csv_option(size_opts))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sizes") from None
    precisions = _precisions(precision_opts) or list(default_precisions(target_device))
    config = GemmConfig(
        shapes=shapes,
        max_size=max_size or 0,
        trials=trials,
        sustain_s=DEFAULT_SUSTAIN_S[kind] if sustain_seconds is None else sustain_seconds,
    )
    cache = _cache(cache_dir)
    err = stderr_console()
    rows: list[dict[str, Any]] = []
    with _measuring(target_device, err) as target, _progress(err, "GEMM") as progress:
        for precision in precisions:
            try:
                m = measure_gemm(
                    precision,
                    target_device,
                    config,
                    device_uuid=target.uuid,
                    driver_version=target.driver_version,
                    cache=cache,
                    refresh=refresh,
                    progress=progress,
                )
            except UnsupportedPrecisionError as exc:
                rows.append(_skipped_row(precision, target_device, exc.reason))
                continue
            run = m.sustained
            cond = None if run is None else target.conditions(run.start_unix_ns, run.end_unix_ns)
            rows.append(_gemm_row(m, target, cond, _spec_peak(target, precision)))
    if as_json:
        emit_json(rows)
        return
    out = stdout_console()
    out.print(_gemm_table(rows, target))
    for r in rows:
        if r["skipped"] is None:
            libs = ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in r["by_library_flops_per_s"].items())
            out.print(
                f"[dim]{r['precision']}: {r['method']}. Best per library (GFLOP/s): {libs}. "
                f"BLAS: {r['blas']}{'; threads ' + r['threads'] if r['threads'] else ''}.[/dim]"
            )
    if kind == "cpu":
        out.print(
            "A CPU's GEMM peak is the best BLAS available to it; it says nothing about GPU "
            "tensor-core peaks."
        )


# --- model --------------------------------------------------------------------------------------


def _model_row(
    item: ModelMeasurement | ModelFailure, target: _Target, cond: Conditions | None
) -> dict[str, Any]:
    from flopwatt.agent.jobs.model_bench import ModelFailure, model_result

    base: dict[str, Any] = {
        "model": item.model,
        "batch": item.batch,
        "precision": item.precision,
        "device": item.device,
        "device_name": target.name,
    }
    if isinstance(item, ModelFailure):
        return {
            **base,
            "flops": None,
            "macs": None,
            "latency_ms_p50": None,
            "delivered_flops_per_s": None,
            "peak_flops_per_s": None,
            "peak_source": None,
            "efficiency": None,
            "energy_per_inference_j": None,
            "error": item.error,
            "stage": item.stage,
        }
    r = model_result(item, cond)
    c = cond or Conditions()
    peak = item.peaks.peak
    placement = item.roofline
    return {
        **base,
        "input_size": r.input_size,
        "flops": item.flops,
        "macs": item.macs,
        "latency_ms_p50": r.latency_p50_s * 1e3,
        "latency_ms_p90": r.latency_p90_s * 1e3,
        "latency_ms_p99": r.latency_p99_s * 1e3,
        "latency_ms_mean": r.latency_mean_s * 1e3,
        "latency_ms_std": r.latency_std_s * 1e3,
        "runs": r.runs,
        "warmup": item.warmup,
        "timing": item.timing,
        "throughput_samples_per_s": r.throughput_samples_per_s,
        "delivered_flops_per_s": r.delivered_flops_per_s,
        "peak_flops_per_s": r.peak_flops_per_s,
        "peak_source": r.peak_source,
        "peak_measured_at": None if peak is None else _iso(peak.measured_unix_ns),
        "peak_method": None if peak is None else peak.method,
        "peak_library": None if peak is None else peak.library,
        "peak_note": item.peaks.peak_note or None,
        "efficiency": r.efficiency_ratio,
        "spec_peak_flops_per_s": item.peaks.spec_peak_flops_per_s,
        "spec_sku": item.peaks.spec_sku or None,
        "spec_efficiency": r.spec_efficiency_ratio,
        "energy_per_inference_j": r.energy_per_inference_j,
        "mean_power_w": r.mean_power_w,
        "energy_from_counter": c.energy_from_counter if c.energy_j is not None else None,
        "bytes_moved_estimate": item.bytes_moved_estimate,
        "arithmetic_intensity_flops_per_byte": r.arithmetic_intensity_flops_per_byte,
        "ridge_point_flops_per_byte": None if placement is None else placement.ridge_flops_per_byte,
        "roofline_bound": None if placement is None else placement.bound,
        "memory_bandwidth_bytes_per_s": item.peaks.bandwidth_bytes_per_s,
        "bandwidth_source": item.peaks.bandwidth_source or None,
        "threads": item.threads,
        "error": None,
        "stage": None,
    }


def _model_table(rows: Sequence[dict[str, Any]], target: _Target, precision: Precision) -> Table:
    gpu = target.device != "cpu"
    table = Table(
        title=f"Model efficiency — {target.name} ({target.device}), {precision.display}",
        caption="GFLOPs per forward pass of the whole batch, 2 FLOPs per MAC. Efficiency = "
        "(FLOPs ÷ p50 latency) ÷ measured GEMM burst peak of the same precision"
        + (" (spec: ÷ registry dense peak)" if gpu else "")
        + ". AI = FLOPs ÷ estimated bytes moved (parameters + activations); bound = side of "
        "the ridge point.",
        caption_justify="left",
    )
    columns = [
        "Model",
        "Batch",
        "GFLOPs",
        "Latency ms",
        "Delivered TFLOPS",
        "Peak TFLOPS",
        "Efficiency",
    ]
    columns += ["Spec eff."] if gpu else []
    columns += ["p90 ms", "J/inference", "AI FLOP/B", "Bound"]
    for name in columns:
        table.add_column(name, justify="left" if name == "Model" else "right")
    for r in rows:
        if r["error"]:
            table.add_row(
                r["model"],
                str(r["batch"]),
                *["—"] * (len(columns) - 3),
                f"failed ({r['stage']})",
            )
            continue
        cells = [
            r["model"],
            str(r["batch"]),
            f"{r['flops'] / 1e9:.2f}",
            f"{r['latency_ms_p50']:.2f}",
            f"{r['delivered_flops_per_s'] / 1e12:.4f}",
            _tflops(r["peak_flops_per_s"]),
            fmt(r["efficiency"], ".1%"),
        ]
        if gpu:
            cells.append(fmt(r["spec_efficiency"], ".1%"))
        cells += [
            f"{r['latency_ms_p90']:.2f}",
            fmt(r["energy_per_inference_j"], ".3g"),
            fmt(r["arithmetic_intensity_flops_per_byte"], ".0f"),
            r["roofline_bound"] or "—",
        ]
        table.add_row(*cells)
    return table


def finding(rows: Sequence[dict[str, Any]], target: _Target, precision: Precision) -> str:
    """One line on what the numbers show and what they do not."""
    ok = [r for r in rows if not r["error"] and r["efficiency"] is not None]
    failed = [r for r in rows if r["error"]]
    where = f"{target.name} ({'CPU' if target.device == 'cpu' else target.device})"
    if not ok:
        what = "no model produced an efficiency figure"
        if rows and not failed and rows[0].get("peak_note"):
            what += f" (no {precision.value} GEMM peak: {rows[0]['peak_note']})"
    else:
        lo = min(ok, key=lambda r: r["efficiency"])
        hi = max(ok, key=lambda r: r["efficiency"])
        peak = ok[0]["peak_flops_per_s"]
        span = f"{lo['efficiency']:.0%} ({lo['model']} b{lo['batch']})"
        if hi is not lo:
            span += f" to {hi['efficiency']:.0%} ({hi['model']} b{hi['batch']})"
        what = (
            f"the models delivered {span} of this device's own measured {precision.value} "
            f"GEMM peak ({peak / 1e12:.3g} TFLOP/s; FLOPs at 2 per MAC over FLOP/s)"
        )
    if failed:
        what += f"; {len(failed)} failed ({', '.join(sorted({r['model'] for r in failed}))})"
    scope = (
        "a CPU result says nothing about GPU tensor-core peaks"
        if target.device == "cpu"
        else f"the figures hold for this GPU, {precision.value} and this software stack only; "
        "the spec-peak ratio also depends on the clocks the GPU held under load"
    )
    return f"Finding: on {where} {what}; {scope}."


@bench.command()
@click.option(
    "--model",
    "model_opts",
    multiple=True,
    help="Comma list of torchvision models (default resnet50,vit_b_16; see --list-models).",
)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--batch", "batch_opts", multiple=True, help="Comma list of batch sizes (default 1,8)."
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"], case_sensitive=False),
    default=None,
    help="fp32 (TF32 off), fp16 or bf16 (default: fp16 on a GPU, fp32 on a CPU).",
)
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Untimed passes.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Timed passes.")
@click.option("--list-models", is_flag=True, help="List the model zoo and exit.")
@click.option("--refresh", is_flag=True, help="Re-measure the GEMM peak even when cached.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Peak cache directory (default $FLOPWATT_CACHE_DIR or ~/.cache/flopwatt).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def model(
    model_opts: tuple[str, ...],
    device: str,
    batch_opts: tuple[str, ...],
    precision: str | None,
    warmup: int | None,
    runs: int | None,
    list_models: bool,
    refresh: bool,
    cache_dir: Path | None,
    as_json: bool,
) -> None:
    """Model latency, delivered FLOP/s and efficiency against the measured GEMM peak.

    JSON: a list with one object per (model, batch): at least model, batch, precision, device,
    flops, macs, latency_ms_p50, delivered_flops_per_s, peak_flops_per_s, peak_source,
    efficiency and energy_per_inference_j (null when unavailable); a model that failed has
    "error" and "stage" and nulls elsewhere.
    """
    if list_models:
        _list_models(as_json)
        return
    from flopwatt.agent.jobs.model_bench import ModelMeasurement, bench_models, device_peaks

    target_device = _resolve_device(device)
    kind = "cpu" if target_device == "cpu" else "cuda"
    models = parse_csv_option(model_opts) or ["resnet50", "vit_b_16"]
    try:
        batches = [int(b) for b in parse_csv_option(batch_opts)] or [1, 8]
    except ValueError:
        raise click.BadParameter("batch sizes must be integers", param_hint="--batch") from None
    if any(b < 1 for b in batches):
        raise click.BadParameter("batch sizes must be ≥ 1", param_hint="--batch")
    chosen = Precision.parse(precision or ("fp32" if kind == "cpu" else "fp16"))
    default_warmup, default_runs = DEFAULT_MODEL_RUNS[kind]
    err = stderr_console()
    rows: list[dict[str, Any]] = []
    with _measuring(target_device, err) as target:
        with _progress(err, f"{chosen.value} GEMM peak") as progress:
            peaks = device_peaks(
                chosen,
                target_device,
                device_uuid=target.uuid,
                device_name=target.name,
                pci_device_id=target.pci_device_id,
                driver_version=target.driver_version,
                cache=_cache(cache_dir),
                refresh=refresh,
                progress=progress,
            )

        def on_result(item: ModelMeasurement | ModelFailure) -> None:
            cond = None
            if isinstance(item, ModelMeasurement):
                cond = target.conditions(item.window_start_unix_ns, item.window_end_unix_ns)
            rows.append(_model_row(item, target, cond))

        with _progress(err, "models") as progress:
            bench_models(
                models,
                batches,
                chosen,
                target_device,
                peaks=peaks,
                warmup=default_warmup if warmup is None else warmup,
                runs=default_runs if runs is None else runs,
                on_result=on_result,
                progress=progress,
            )
    if as_json:
        emit_json(rows)
        return
    out = stdout_console()
    out.print(_model_table(rows, target, chosen))
    if peaks.peak is not None:
        p = peaks.peak
        out.print(
            f"[dim]Peak: {chosen.value} GEMM burst {p.flops_per_s / 1e12:.4g} TFLOP/s "
            f"({p.library}; {p.source}, measured {_iso(p.measured_unix_ns)}; {p.method}).[/dim]"
        )
    else:
        out.print(f"[dim]No {chosen.value} GEMM peak: {peaks.peak_note}[/dim]")
    for r in rows:
        if r["error"]:
            out.print(f"[red]{r['model']} batch {r['batch']}: {r['error']}[/red]")
    out.print(finding(rows, target, chosen))


def _list_models(as_json: bool) -> None:
    from flopwatt.agent.jobs.zoo import zoo_entries

    entries = zoo_entries()
    if as_json:
        emit_json(
            [
                {
                    "model": e.name,
                    "input_size": e.input_size,
                    "published_macs": e.published_macs,
                    "published_flops": None if e.published_macs is None else 2 * e.published_macs,
                }
                for e in entries
            ]
        )
        return
    table = Table(title="Model zoo (torchvision, random weights, native input size)")
    for name in ("model", "input px", "published GMACs", "GFLOPs (2/MAC)"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for e in entries:
        table.add_row(
            e.name,
            str(e.input_size),
            fmt(e.published_gmacs, ".3f"),
            fmt(None if e.published_gmacs is None else 2 * e.published_gmacs, ".3f"),
        )
    stdout_console().print(table)


__all__ = ["bench", "finding"]
