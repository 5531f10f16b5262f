"""GEMM peak on the CPU with real torch and numpy, the peak cache, ``flopwatt bench gemm --json``
and a GEMM job through :mod:`flopwatt.agent.jobs.real_jobs` with a real sampler.

Sizes are tiny so the file runs in seconds; nothing here asserts a duration or a speed — only
accounting (2·m·n·k), structure (the burst is the best trial) and contracts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch
from click.testing import CliRunner

from flopwatt.agent.devices.cpu import CpuBackend
from flopwatt.agent.jobs import real_jobs
from flopwatt.agent.jobs.gemm import (
    GEMM_PRECISIONS,
    GemmConfig,
    GemmMeasurement,
    ShapeTrials,
    SoftwareInfo,
    SustainedRun,
    UnsupportedPrecisionError,
    default_precisions,
    default_shapes,
    float32_math,
    gemm_peak,
    gemm_result,
    measure_burst,
    measure_gemm,
    parse_shape,
    peak_key,
    software_info,
    unsupported_reason,
)
from flopwatt.agent.jobs.peak_cache import (
    CachedPeak,
    CacheOutcome,
    PeakCache,
    PeakKey,
    default_cache_path,
)
from flopwatt.agent.jobs.runner import JobUnavailableError
from flopwatt.agent.sampler import Sampler
from flopwatt.analysis.precision import Precision
from flopwatt.cli import cli
from flopwatt.records import Conditions, GemmJobSpec, GemmShape, JobSpec

#: Tiny, quick sweeps: two shapes, short trials. Real sweeps use the defaults.
QUICK = GemmConfig(
    shapes=(parse_shape("64"), parse_shape("96x128x32")),
    trials=3,
    min_trial_s=0.002,
    warmup_s=0.002,
)


# --- shapes and accounting --------------------------------------------------------------------


def test_gemm_flops_are_two_m_n_k() -> None:
    assert GemmShape(2, 3, 5).flops == 2 * 2 * 3 * 5
    trials = ShapeTrials("torch", "custom", GemmShape(96, 128, 32), 4, (0.002, 0.001, 0.004))
    flops = 2 * 96 * 128 * 32
    assert trials.best_s == 0.001 and trials.median_s == 0.002
    assert trials.best_flops_per_s == flops / 0.001
    assert trials.trial_flops_per_s == (flops / 0.002, flops / 0.001, flops / 0.004)
    assert trials.spread_ratio == pytest.approx(0.75)  # (best − worst)/best = 1 − 1/4
    point = trials.point()
    assert (point.shape, point.best_s, point.median_s) == (GemmShape(96, 128, 32), 0.001, 0.002)


def test_parse_shape_and_default_sweep() -> None:
    assert parse_shape("1024").shape == GemmShape(1024, 1024, 1024)
    assert parse_shape("2048x3072x1024").shape == GemmShape(2048, 3072, 1024)
    for bad in ("", "0", "1x2", "axb", "-4"):
        with pytest.raises(ValueError):
            parse_shape(bad)
    cpu = default_shapes("cpu")
    squares = [s.shape.m for s in cpu if s.label == "square"]
    assert squares == [256, 512, 1024, 2048, 4096]
    # LLM-like: T = 2048 tokens, h = 1024: QKV T×3h×h, MLP up T×4h×h, down T×h×4h.
    llm = {s.label: s.shape for s in cpu if s.label != "square"}
    assert llm == {
        "llm-qkv": GemmShape(2048, 3072, 1024),
        "llm-mlp-up": GemmShape(2048, 4096, 1024),
        "llm-mlp-down": GemmShape(2048, 1024, 4096),
    }
    gpu = default_shapes("cuda")
    assert [s.shape.m for s in gpu if s.label == "square"][-1] == 16384
    assert [s.shape.m for s in default_shapes("cpu", 128)] == [128]


def test_supported_precisions_on_this_cpu() -> None:
    assert unsupported_reason(Precision.FP32, "cpu") is None
    assert unsupported_reason(Precision.FP64, "cpu") is None
    assert "TF32" in (unsupported_reason(Precision.TF32, "cpu") or "")
    assert "fp8" in (unsupported_reason(Precision.FP8, "cpu") or "")
    no_bf16 = unsupported_reason(Precision.BF16, "cpu", flags=frozenset({"avx2"}))
    assert no_bf16 is not None and "emulate" in no_bf16
    assert unsupported_reason(Precision.BF16, "cpu", flags=frozenset({"avx512_bf16"})) is None
    assert default_precisions("cpu", flags=frozenset()) == (Precision.FP32, Precision.FP64)
    assert Precision.BF16 in default_precisions("cpu", flags=frozenset({"amx_bf16"}))
    assert default_precisions("cuda:0") == GEMM_PRECISIONS
    with pytest.raises(UnsupportedPrecisionError) as info:
        measure_burst(Precision.TF32, "cpu", QUICK)
    assert info.value.precision is Precision.TF32 and "TF32" in info.value.reason


def test_float32_math_sets_and_restores_tf32() -> None:
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with float32_math(Precision.TF32):
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before
    with float32_math(Precision.FP32):
        assert matmul.fp32_precision == "ieee"
    assert matmul.fp32_precision == before


# --- measuring ---------------------------------------------------------------------------------


def test_burst_is_the_best_trial_and_both_blas_builds_are_measured() -> None:
    trials, notes, method = measure_burst(Precision.FP32, "cpu", QUICK)
    assert notes == ()
    assert {t.library for t in trials} == {"torch", "numpy"}
    assert {t.shape for t in trials} == {GemmShape(64, 64, 64), GemmShape(96, 128, 32)}
    for t in trials:
        assert len(t.trial_s) == 3 and t.gemms_per_trial >= 1
        assert t.best_flops_per_s == t.shape.flops / min(t.trial_s)
        assert all(t.best_flops_per_s >= f for f in t.trial_flops_per_s)
    assert "wall-clock" in method and "torch, numpy" in method

    peak, outcome, fresh, _ = gemm_peak(Precision.FP32, "cpu", device_uuid="CPU-test", config=QUICK)
    assert outcome is None  # no cache given
    best = max(fresh, key=lambda t: t.best_flops_per_s)
    assert peak.burst_flops_per_s == best.best_flops_per_s
    assert all(peak.burst_flops_per_s >= t.best_flops_per_s for t in fresh)
    assert (peak.library, peak.best_shape) == (best.library, best.shape)
    # The winner is reported next to each library's own best.
    assert set(peak.by_library) == {"torch", "numpy"}
    assert peak.by_library[peak.library] == peak.burst_flops_per_s
    assert max(peak.by_library.values()) == peak.burst_flops_per_s


def test_square_sweep_stops_once_larger_squares_stop_helping() -> None:
    # A 100× improvement is never reached, so after the first square every square "does not
    # help"; with patience 1 the sweep stops after 512³ and skips 1024³ — but still measures the
    # LLM-like shapes.
    config = GemmConfig(
        max_size=1024,
        trials=1,
        min_trial_s=0.001,
        warmup_s=0.001,
        saturation_ratio=100.0,
        saturation_patience=1,
        libraries=("torch",),
    )
    events: list[str] = []
    trials, _, _ = measure_burst(
        Precision.FP32, "cpu", config, progress=lambda what, _done, _total: events.append(what)
    )
    squares = [t.shape.m for t in trials if t.label == "square"]
    assert squares == [256, 512]
    assert {t.label for t in trials} == {"square", "llm-qkv", "llm-mlp-up", "llm-mlp-down"}
    assert any("1024³: skipped (saturated)" in e for e in events)


def test_int8_and_fp64_on_cpu() -> None:
    trials, _, _ = measure_burst(Precision.INT8, "cpu", QUICK)
    assert {t.library for t in trials} == {"torch"}  # numpy has no int8 BLAS
    trials64, _, _ = measure_burst(Precision.FP64, "cpu", QUICK)
    assert {t.library for t in trials64} == {"torch", "numpy"}


def test_measure_gemm_sustained_run_accounting() -> None:
    config = GemmConfig(shapes=QUICK.shapes, trials=2, min_trial_s=0.002, sustain_s=0.2)
    m = measure_gemm(Precision.FP32, "cpu", config)
    run = m.sustained
    assert run is not None
    assert run.flops == run.gemms * m.best_shape.flops and run.shape == m.best_shape
    assert run.library == m.best_library
    assert run.flops_per_s == run.flops / run.seconds
    assert run.seconds >= 0.2 and run.end_unix_ns > run.start_unix_ns
    assert m.timing == "wall-clock" and m.cache_outcome == "" and not m.from_cache
    assert m.software.torch_threads == torch.get_num_threads()
    assert "torch=" in m.software.threads and "numpy=" in m.software.threads
    assert "numpy" in m.software.blas and "torch" in m.software.blas


def _measurement(sustained: SustainedRun | None) -> GemmMeasurement:
    sw = SoftwareInfo("2.x", "", "blas", "torch=2 numpy=2", 2, "CPU", "", {"torch": "MKL"})
    trial = ShapeTrials("torch", "square", GemmShape(10, 10, 10), 1, (1e-6,))
    return GemmMeasurement(
        precision="fp32",
        device="cpu",
        timing="wall-clock",
        burst_flops_per_s=2e9,
        best_shape=GemmShape(10, 10, 10),
        best_library="torch",
        burst_spread_ratio=0.0,
        by_library={"torch": 2e9},
        trials=(trial,),
        method="m",
        burst_measured_unix_ns=5,
        cache_outcome="hit",
        sustained=sustained,
        software=sw,
    )


def test_gemm_result_energy_per_flop_by_hand() -> None:
    # 10 s of GEMMs, 1e12 FLOPs; the sampler covered 9 s of it with 90 J: 100 pJ/FLOP.
    run = SustainedRun("torch", GemmShape(10, 10, 10), 0, 10_000_000_000, 500, 10**12, 10.0)
    cond = Conditions(energy_j=90.0, mean_power_w=10.0, window_s=9.0, energy_from_counter=True)
    result = gemm_result(_measurement(run), cond)
    assert result.energy_per_flop_j == pytest.approx(1e-10, rel=1e-6, abs=0)
    assert result.sustained_flops_per_s == 1e11 and result.sustained_flops == 1e12
    assert result.mean_power_w == 10.0 and result.energy_j == 90.0
    assert result.from_cache and result.backend == "torch: MKL"
    assert [p.shape for p in result.sweep] == [GemmShape(10, 10, 10)]
    # No energy from the device: absent, not zero.
    bare = gemm_result(_measurement(run), Conditions(window_s=10.0))
    assert bare.energy_j is None and bare.energy_per_flop_j is None and bare.mean_power_w is None
    assert gemm_result(_measurement(None), cond).energy_per_flop_j is None


# --- the peak cache ----------------------------------------------------------------------------


def _peak(key: PeakKey, flops_per_s: float) -> CachedPeak:
    return CachedPeak(key, flops_per_s, GemmShape(64, 64, 64), "torch", "test", 123, 0.1)


def test_cache_hit_miss_refresh_and_version_keys(tmp_path: Path) -> None:
    cache = PeakCache(tmp_path / "peaks.json")
    key = PeakKey("CPU-abc", "fp32", "", "2.14.1", "MKL", "torch=2 numpy=2")
    calls: list[float] = []

    def measure(value: float) -> CachedPeak:
        calls.append(value)
        return _peak(key, value)

    first, outcome = cache.get_or_measure(key, lambda: measure(1e11))
    assert outcome is CacheOutcome.MISS and first.burst_flops_per_s == 1e11 and calls == [1e11]
    again, outcome = cache.get_or_measure(key, lambda: measure(2e11))
    assert outcome is CacheOutcome.HIT and again == first and calls == [1e11]
    fresh, outcome = cache.get_or_measure(key, lambda: measure(3e11), refresh=True)
    assert outcome is CacheOutcome.REFRESH and fresh.burst_flops_per_s == 3e11
    assert cache.get(key) == fresh  # the refresh replaced the entry

    # A different torch, driver, BLAS or thread count is a different key: a miss.
    for field, value in (
        ("torch_version", "2.15.0"),
        ("driver_version", "580.1"),
        ("blas", "OpenBLAS"),
        ("threads", "torch=8"),
    ):
        other = PeakKey(**{**key.__dict__, field: value})
        assert cache.get(other) is None
    assert len(cache.entries()) == 1
    # Entries survive a new PeakCache object (they are on disk) and say when and how.
    stored = PeakCache.in_dir(tmp_path).get(key)
    assert stored is not None and stored.measured_unix_ns == 123 and stored.method == "test"
    with pytest.raises(ValueError):
        cache.get_or_measure(key, lambda: _peak(PeakKey("other", "fp32"), 1.0), refresh=True)


def test_cache_ignores_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "peaks.json"
    path.write_text("{not json")
    cache = PeakCache(path)
    key = PeakKey("CPU-abc", "fp64")
    assert cache.get(key) is None
    cache.put(_peak(key, 5e10))
    assert cache.get(key) is not None
    assert json.loads(path.read_text())["version"] == 1


def test_an_unwritable_cache_costs_reuse_not_the_run(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    cache = PeakCache(tmp_path / "a-file" / "peaks.json")  # its directory cannot exist
    key = PeakKey("CPU-abc", "fp32")
    with pytest.raises(OSError):
        cache.put(_peak(key, 1.0))
    peak, outcome = cache.get_or_measure(key, lambda: _peak(key, 2.0))
    assert outcome is CacheOutcome.MISS and peak.burst_flops_per_s == 2.0


def test_default_cache_path() -> None:
    assert default_cache_path({"FLOPWATT_CACHE_DIR": "/x/y"}) == Path("/x/y/peaks.json")
    assert default_cache_path({"XDG_CACHE_HOME": "/c"}) == Path("/c/flopwatt/peaks.json")
    assert default_cache_path({}).parts[-3:] == (".cache", "flopwatt", "peaks.json")


def test_gemm_peak_uses_the_cache(tmp_path: Path) -> None:
    cache = PeakCache.in_dir(tmp_path)

    def peak(refresh: bool = False) -> tuple[CachedPeak, CacheOutcome | None, tuple[object, ...]]:
        found, outcome, trials, _ = gemm_peak(
            Precision.FP32,
            "cpu",
            device_uuid="CPU-test",
            cache=cache,
            config=QUICK,
            refresh=refresh,
        )
        return found, outcome, trials

    first, outcome, trials = peak()
    assert outcome is CacheOutcome.MISS and trials
    key = peak_key(Precision.FP32, "CPU-test", "", software_info("cpu"))
    assert first.key == key and cache.get(key) == first
    hit, outcome, trials = peak()
    assert outcome is CacheOutcome.HIT and trials == () and hit == first
    new, outcome, trials = peak(refresh=True)
    assert outcome is CacheOutcome.REFRESH and trials
    assert new.measured_unix_ns >= first.measured_unix_ns and cache.get(key) == new


# --- the command -------------------------------------------------------------------------------

GEMM_JSON_KEYS = {
    "precision",
    "device",
    "burst_flops_per_s",
    "sustained_flops_per_s",
    "best_shape",
    "energy_per_flop_j",
    "mean_power_w",
}


def test_bench_gemm_json_contract(tmp_path: Path) -> None:
    args = ["bench", "gemm", "--device", "cpu", "--precision", "fp32,tf32"]
    args += ["--sizes", "64,96x128x32", "--trials", "2", "--sustain-seconds", "0.2"]
    args += ["--cache-dir", str(tmp_path), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["precision"] for r in rows] == ["fp32", "tf32"]
    fp32, tf32 = rows
    assert set(fp32) >= GEMM_JSON_KEYS and set(tf32) >= GEMM_JSON_KEYS
    assert fp32["device"] == "cpu" and fp32["skipped"] is None
    shape = fp32["best_shape"]
    assert set(shape) == {"m", "n", "k"}
    best = max(fp32["sweep"], key=lambda p: p["best_flops_per_s"])
    assert fp32["burst_flops_per_s"] == best["best_flops_per_s"]
    assert (best["m"], best["n"], best["k"]) == (shape["m"], shape["n"], shape["k"])
    assert best["flops"] == 2 * shape["m"] * shape["n"] * shape["k"]
    assert {p["library"] for p in fp32["sweep"]} == {"torch", "numpy"}
    assert fp32["best_library"] in ("torch", "numpy") and fp32["threads"]
    assert fp32["sustained_flops_per_s"] > 0 and fp32["cache_outcome"] == "miss"
    if fp32["energy_j"] is None:  # no RAPL here: null, never 0
        assert fp32["energy_per_flop_j"] is None and fp32["mean_power_w"] is None
    assert tf32["skipped"] and tf32["burst_flops_per_s"] is None
    # A second run reuses the cached burst and says so.
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    cached = json.loads(again.stdout)[0]
    assert cached["from_cache"] is True and cached["cache_outcome"] == "hit"
    assert cached["burst_flops_per_s"] == fp32["burst_flops_per_s"]
    assert cached["burst_measured_at"] == fp32["burst_measured_at"]


def test_bench_gemm_table_runs(tmp_path: Path) -> None:
    args = ["bench", "gemm", "--device", "cpu", "--precision", "fp64", "--sizes", "64"]
    args += ["--trials", "1", "--sustain-seconds", "0", "--cache-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "GEMM peak" in result.stdout and "tensor-core" in result.stdout


def test_bench_gemm_rejects_bad_sizes() -> None:
    result = CliRunner().invoke(cli, ["bench", "gemm", "--device", "cpu", "--sizes", "1x2"])
    assert result.exit_code == 2 and "MxNxK" in result.output


# --- as an agent job ---------------------------------------------------------------------------


def test_agent_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import flopwatt.agent.jobs.real_jobs, flopwatt.agent.jobs.gemm\n"
        "import flopwatt.agent.jobs.model_bench, flopwatt.agent.jobs.peak_cache\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_gemm_job_on_the_cpu_backend(tmp_path: Path) -> None:
    backend = CpuBackend.open()
    sampler = Sampler(backend.devices(), lambda _batch: None, interval_s=0.05)
    sampler.start()
    options = {
        "cache_dir": str(tmp_path),
        "gemm_trials": 2,
        "gemm_min_trial_s": 0.002,
        "gemm_warmup_s": 0.002,
    }
    try:
        spec = JobSpec(gemm=GemmJobSpec(precisions=("fp32", "tf32"), max_size=128, sustain_s=0.5))
        results = real_jobs.run("job-1", spec, backend.devices(), sampler, backend, options)
        only_tf32 = JobSpec(gemm=GemmJobSpec(precisions=("tf32",), max_size=128))
        with pytest.raises(JobUnavailableError, match="TF32"):
            real_jobs.run("job-2", only_tf32, backend.devices(), sampler, backend, options)
    finally:
        sampler.stop(flush=False)
        backend.close()
    assert len(results) == 1  # tf32 is skipped with a reason, fp32 measured
    result = results[0]
    device = backend.devices()[0]
    assert result.job_id == "job-1" and result.device_uuid == device.info.uuid
    gemm = result.gemm
    assert gemm is not None and gemm.precision == "fp32"
    assert gemm.best_shape == GemmShape(128, 128, 128)
    assert gemm.sustained_flops is not None and gemm.sustained_flops % gemm.best_shape.flops == 0
    cond = result.conditions
    assert cond.window_s is not None and cond.window_s > 0
    assert result.finished_unix_ns > result.started_unix_ns
    assert cond.torch_version == torch.__version__ and cond.cpu_threads > 0 and cond.blas
    if not device.info.capabilities.energy_counter:  # this VM: no RAPL
        assert cond.energy_j is None and gemm.energy_per_flop_j is None
    # The child stored the burst in the cache the job was pointed at.
    assert PeakCache.in_dir(tmp_path).entries()


# --- on a GPU (skipped with a reason where torch sees none) ------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none")
def test_every_supported_precision_on_cuda() -> None:
    config = GemmConfig(
        shapes=(parse_shape("1024"), parse_shape("2048x1024x512")),
        trials=2,
        min_trial_s=0.01,
        warmup_s=0.05,
        sustain_s=0.5,
    )
    measured = []
    for precision in GEMM_PRECISIONS:
        if unsupported_reason(precision, "cuda:0") is not None:
            continue
        m = measure_gemm(precision, "cuda:0", config)
        run = m.sustained
        assert m.timing == "cuda-events" and m.software.compute_capability
        assert {t.library for t in m.trials} == {"torch"}
        assert run is not None and run.flops == run.gemms * m.best_shape.flops
        assert run.end_unix_ns > run.start_unix_ns and run.seconds > 0
        measured.append(precision)
    assert {Precision.FP64, Precision.FP32, Precision.FP16} <= set(measured)
