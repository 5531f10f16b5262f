"""Model efficiency on the CPU with real torch and torchvision: FLOPs over FLOP/s, a model that
fails to construct reported while the run goes on, energy per inference by hand, the bytes
estimate, ``flopwatt bench model --json`` reusing a cached GEMM peak, and a model job through
:mod:`flopwatt.agent.jobs.real_jobs`. No timing asserts: latencies are whatever they are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

import torch
from click.testing import CliRunner

from flopwatt.agent.devices.cpu import CpuBackend
from flopwatt.agent.jobs import real_jobs, zoo
from flopwatt.agent.jobs.gemm import GemmConfig, gemm_peak, parse_shape
from flopwatt.agent.jobs.model_bench import (
    DevicePeaks,
    ModelFailure,
    ModelMeasurement,
    PeakInfo,
    bench_models,
    device_peaks,
    estimate_bytes_moved,
    model_result,
)
from flopwatt.agent.jobs.peak_cache import PeakCache
from flopwatt.agent.jobs.runner import JobUnavailableError
from flopwatt.agent.sampler import Sampler
from flopwatt.analysis.precision import Precision
from flopwatt.cli import cli
from flopwatt.commands.bench import finding
from flopwatt.records import Conditions, JobSpec, ModelJobSpec

PEAKS = DevicePeaks(
    peak=PeakInfo(1e11, "gemm-burst:cache", 1, "test", "torch"),
    bandwidth_bytes_per_s=2e10,
    bandwidth_source="test",
)
QUICK_GEMM = GemmConfig(shapes=(parse_shape("64"),), trials=2, min_trial_s=0.002, warmup_s=0.002)

MODEL_JSON_KEYS = {
    "model",
    "batch",
    "precision",
    "device",
    "flops",
    "macs",
    "latency_ms_p50",
    "delivered_flops_per_s",
    "peak_flops_per_s",
    "peak_source",
    "efficiency",
    "energy_per_inference_j",
}


def _measurement(**overrides: Any) -> ModelMeasurement:
    fields: dict[str, Any] = {
        "model": "m",
        "batch": 4,
        "precision": "fp32",
        "device": "cpu",
        "input_size": 224,
        "flops": 8_000_000_000,
        "macs": 4_000_000_000,
        "latencies_s": (0.03, 0.01, 0.02),
        "warmup": 1,
        "timing": "wall-clock",
        "window_start_unix_ns": 0,
        "window_end_unix_ns": 1_000_000_000,
        "peaks": PEAKS,
        "bytes_moved_estimate": 2e8,
        "threads": 2,
    }
    fields.update(overrides)
    return ModelMeasurement(**fields)


def test_efficiency_and_energy_by_hand() -> None:
    # 8 GFLOPs per batch, p50 20 ms → 400 GFLOP/s; against a 100 GFLOP/s peak: 4.0 (the peak
    # here is made up — the point is the arithmetic, FLOP/s over FLOP/s).
    m = _measurement()
    r = model_result(m, Conditions(energy_j=9.0, window_s=0.9, mean_power_w=10.0))
    assert r.latency_p50_s == pytest.approx(0.02)
    assert r.delivered_flops_per_s == pytest.approx(4e11)
    assert r.efficiency_ratio == pytest.approx(4.0)
    assert r.throughput_samples_per_s == pytest.approx(200.0)  # 4 samples / 20 ms
    assert r.flops == 2 * r.macs
    # 3 runs × 4 samples in a 1 s window; 9 J cover 0.9 s of it, i.e. 10.8 samples:
    # 9 / 10.8 = 0.8333 J per sample.
    assert r.energy_per_inference_j == pytest.approx(9.0 / 10.8)
    assert r.mean_power_w == 10.0
    # Roofline: 8e9 / 2e8 = 40 FLOP/byte; ridge 1e11 / 2e10 = 5 → compute-bound.
    assert r.arithmetic_intensity_flops_per_byte == pytest.approx(40.0)
    placement = m.roofline
    assert placement is not None and placement.bound == "compute"
    assert placement.ridge_flops_per_byte == pytest.approx(5.0)
    # No energy reading: absent, not zero. No peak: efficiency absent, source says none.
    bare = model_result(m, None)
    assert bare.energy_per_inference_j is None and bare.mean_power_w is None
    no_peak = model_result(_measurement(peaks=DevicePeaks(peak=None, peak_note="x")), None)
    assert no_peak.efficiency_ratio is None and no_peak.peak_source == "none"
    assert no_peak.peak_flops_per_s is None


def test_a_model_that_fails_to_construct_is_reported_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_get_model = zoo.get_model

    def get_model(name: str, **kwargs: Any) -> torch.nn.Module:
        if name == "alexnet":
            raise RuntimeError("simulated constructor failure")
        return real_get_model(name, **kwargs)

    monkeypatch.setattr(zoo, "get_model", get_model)
    seen: list[str] = []
    results = bench_models(
        ["alexnet", "no_such_model", "resnet18"],
        [1],
        Precision.FP32,
        "cpu",
        peaks=PEAKS,
        warmup=0,
        runs=2,
        on_result=lambda item: seen.append(item.model),
    )
    assert seen == ["alexnet", "no_such_model", "resnet18"]
    broken, unknown, ok = results
    assert isinstance(broken, ModelFailure) and broken.stage == "build"
    assert "simulated constructor failure" in broken.error
    assert isinstance(unknown, ModelFailure) and unknown.stage == "lookup"
    assert isinstance(ok, ModelMeasurement)
    # FLOPs = 2 × MACs; ResNet-18 is 1.814 GMACs per sample (torchvision's published figure).
    assert ok.flops == 2 * ok.macs
    assert ok.macs == pytest.approx(1.814e9, rel=0.01)
    assert len(ok.latencies_s) == 2 and ok.window_end_unix_ns > ok.window_start_unix_ns
    assert ok.delivered_flops_per_s == ok.flops / ok.stats.p50_s
    assert ok.efficiency_ratio == pytest.approx(ok.flops / ok.stats.p50_s / 1e11)
    assert ok.threads == torch.get_num_threads()


def test_bench_models_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        bench_models(["resnet18"], [1], Precision.FP8, "cpu", peaks=PEAKS)
    with pytest.raises(ValueError):
        bench_models(["resnet18"], [0], Precision.FP32, "cpu", peaks=PEAKS)


def test_bytes_estimate_scales_with_precision() -> None:
    fp32 = estimate_bytes_moved("resnet18", 1, Precision.FP32)
    fp16 = estimate_bytes_moved("resnet18", 1, Precision.FP16)
    params = sum(p.numel() for p in zoo.build_model("resnet18", device="meta").parameters())
    assert fp32 > 4 * params  # weights plus activations
    assert fp16 == pytest.approx(fp32 / 2)
    assert estimate_bytes_moved("resnet18", 8, Precision.FP32) > fp32


def test_device_peaks_without_a_native_gemm_has_no_peak(tmp_path: Path) -> None:
    from flopwatt.agent.jobs.gemm import unsupported_reason

    reason = unsupported_reason(Precision.BF16, "cpu")
    if reason is None:
        pytest.skip("this CPU has native bf16: the peak would be measured")
    peaks = device_peaks(
        Precision.BF16, "cpu", device_uuid="CPU-test", cache=PeakCache.in_dir(tmp_path)
    )
    assert peaks.peak is None and peaks.peak_note == reason
    assert peaks.bandwidth_bytes_per_s and peaks.bandwidth_source == "measured:copy"


def _seed_cache(cache_dir: Path, uuid: str) -> float:
    """Measure a quick fp32 peak into the cache under the CPU backend's UUID (the CLI then hits
    it instead of running the full default sweep)."""
    peak, _, _, _ = gemm_peak(
        Precision.FP32,
        "cpu",
        device_uuid=uuid,
        cache=PeakCache.in_dir(cache_dir),
        config=QUICK_GEMM,
    )
    return peak.burst_flops_per_s


def test_bench_model_json_contract(tmp_path: Path) -> None:
    backend = CpuBackend.open()
    uuid = backend.devices()[0].info.uuid
    backend.close()
    peak = _seed_cache(tmp_path, uuid)
    args = ["bench", "model", "--model", "resnet18,not_a_model", "--batch", "1"]
    args += ["--runs", "2", "--warmup", "0", "--device", "cpu", "--precision", "fp32"]
    args += ["--cache-dir", str(tmp_path), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 2
    ok, failed = rows
    assert set(ok) >= MODEL_JSON_KEYS and set(failed) >= MODEL_JSON_KEYS
    assert (ok["model"], ok["batch"], ok["precision"], ok["device"]) == (
        "resnet18",
        1,
        "fp32",
        "cpu",
    )
    assert ok["flops"] == 2 * ok["macs"] and ok["error"] is None
    # The model run reused the cached GEMM peak, and says so.
    assert ok["peak_source"] == "gemm-burst:cache" and ok["peak_flops_per_s"] == peak
    assert ok["delivered_flops_per_s"] == pytest.approx(ok["flops"] / (ok["latency_ms_p50"] / 1e3))
    assert ok["efficiency"] == pytest.approx(ok["delivered_flops_per_s"] / peak)
    assert ok["latency_ms_p90"] >= ok["latency_ms_p50"]
    assert ok["roofline_bound"] in ("memory", "compute")
    if ok["mean_power_w"] is None:  # no RAPL here: null, never 0
        assert ok["energy_per_inference_j"] is None
    assert failed["model"] == "not_a_model" and failed["error"] and failed["stage"] == "lookup"
    assert failed["efficiency"] is None and failed["flops"] is None


def test_bench_model_table_and_finding(tmp_path: Path) -> None:
    backend = CpuBackend.open()
    uuid = backend.devices()[0].info.uuid
    backend.close()
    _seed_cache(tmp_path, uuid)
    args = ["bench", "model", "--model", "resnet18", "--batch", "1", "--runs", "1"]
    args += ["--warmup", "0", "--device", "cpu", "--cache-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for column in ("Model", "GFLOPs", "Latency ms", "Delivered", "Peak", "Efficiency"):
        assert column in result.stdout
    assert "Finding:" in result.stdout and "tensor-core" in result.stdout


def test_finding_says_what_the_numbers_do_not_show() -> None:
    from flopwatt.commands.bench import _Target

    target = _Target("cpu", "CPU-x", "Test CPU", None, "", None, None)
    rows = [
        {"model": "a", "batch": 1, "efficiency": 0.05, "peak_flops_per_s": 1e11, "error": None},
        {"model": "b", "batch": 8, "efficiency": 0.25, "peak_flops_per_s": 1e11, "error": None},
        {"model": "c", "batch": 1, "efficiency": None, "error": "boom"},
    ]
    line = finding(rows, target, Precision.FP32)
    assert "5% (a b1) to 25% (b b8)" in line
    assert "1 failed (c)" in line and "says nothing about GPU tensor-core peaks" in line


def test_list_models_json() -> None:
    result = CliRunner().invoke(cli, ["bench", "model", "--list-models", "--json"])
    assert result.exit_code == 0, result.output
    by_name = {row["model"]: row for row in json.loads(result.stdout)}
    assert by_name["resnet50"]["input_size"] == 224
    assert by_name["resnet50"]["published_flops"] == pytest.approx(2 * 4.089e9)


def test_real_model_job_on_the_cpu_backend(tmp_path: Path) -> None:
    backend = CpuBackend.open()
    uuid = backend.devices()[0].info.uuid
    _seed_cache(tmp_path, uuid)
    sampler = Sampler(backend.devices(), lambda _batch: None, interval_s=0.05)
    sampler.start()
    options = {"cache_dir": str(tmp_path), "model_warmup": 0}
    try:
        spec = JobSpec(
            model=ModelJobSpec(
                models=("resnet18", "not_a_model"), batches=(1,), precision="fp32", runs=2
            )
        )
        results = real_jobs.run("job-m", spec, backend.devices(), sampler, backend, options)
        nothing = JobSpec(model=ModelJobSpec(models=("not_a_model",), batches=(1,), runs=1))
        with pytest.raises(JobUnavailableError, match="not_a_model"):
            real_jobs.run("job-n", nothing, backend.devices(), sampler, backend, options)
    finally:
        sampler.stop(flush=False)
        backend.close()
    assert len(results) == 1  # the unknown model is reported in the log, not a result
    model = results[0].model
    assert model is not None and model.model == "resnet18" and model.runs == 2
    assert model.flops == 2 * model.macs and model.peak_source == "gemm-burst:cache"
    assert model.efficiency_ratio == pytest.approx(
        model.delivered_flops_per_s / (model.peak_flops_per_s or 1)
    )
    cond = results[0].conditions
    assert cond.window_s is not None and cond.window_s > 0
    if not backend.devices()[0].info.capabilities.energy_counter:
        assert model.energy_per_inference_j is None
