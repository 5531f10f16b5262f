#!/usr/bin/env bash
# GPU check of the NVML backend (flopwatt/agent/devices/nvml.py) on a real NVIDIA GPU.
#
# Opens the nvml backend, samples every GPU at 10 Hz for 30 s in a background thread while a
# sustained bf16 GEMM (8192^3, torch) runs for ~20 s on torch device 0, then prints: each GPU's
# identity and one snapshot, the energy-counter delta against trapezoid-integrated power (instant
# and 1-s average) with their ratios, min/mean SM clock, the throttle reasons seen, and the
# achieved TFLOP/s, and (on Hopper and newer) the live-efficiency estimate from GPM pipe activity
# against the GEMM's measured FLOP/s (target ±10 %), and whether NVML lists this process on
# GPU 0 with its memory and per-process SM utilisation (attribution). Exits non-zero with a clear message when
# there is no GPU or NVML. Then, unless
# BENCH=0, runs `flopwatt bench gemm` (bf16/fp16/fp8, 30-s sustained) and `flopwatt bench model`
# (resnet50/vit_b_16, fp16), each skipped with the reason when a dependency is missing there.
#
# Needs only python3, torch (CUDA build), nvidia-ml-py and numpy; the repository is used in place
# (PYTHONPATH), not installed. About 45-60 s of wall time for the NVML check (torch start-up
# included), 3-5 min with the benchmark stage.
#
# Usage: bench/gpu_check.sh            (from anywhere; writes samples.npz to $OUT when set)
#        SAMPLE_S=10 GEMM_S=5 BENCH=0 bench/gpu_check.sh   (a shorter run)
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export SAMPLE_S="${SAMPLE_S:-30}" GEMM_S="${GEMM_S:-20}" SAMPLE_HZ="${SAMPLE_HZ:-10}"

python3 - <<'PY'
import dataclasses
import logging
import os
import sys
import threading
import time


def fail(message: str) -> None:
    print(f"gpu_check: FAIL: {message}", file=sys.stderr)
    sys.exit(2)


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 72 - len(title)))


# The backend's own lines (what the probe found missing, lost GPUs, counter resets) belong in
# the output of a check.
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="  log %(levelname)s: %(message)s")

SAMPLE_S = float(os.environ["SAMPLE_S"])
GEMM_S = float(os.environ["GEMM_S"])
HZ = float(os.environ["SAMPLE_HZ"])
N = 8192

try:
    import numpy as np
except ImportError:
    fail("numpy is not installed")
try:
    import pynvml  # noqa: F401  (only to give a clear message; the backend imports it itself)
except ImportError:
    fail("nvidia-ml-py (module pynvml) is not installed: pip install nvidia-ml-py")

from flopwatt.agent.devices.base import BackendUnavailable, DeviceLost
from flopwatt.agent.devices.nvml import NvmlBackend
from flopwatt.analysis.throttle import decode_throttle
from flopwatt.records import HEALTH_COLUMNS

heavy = sorted({m.split(".")[0] for m in sys.modules} & {"grpc", "pandas", "google", "matplotlib"})
if heavy:
    fail(f"importing the nvml backend pulled in {heavy}; it must need only numpy and pynvml")

try:
    backend = NvmlBackend.open()
except BackendUnavailable as e:
    fail(f"no NVIDIA GPU usable through NVML: {e}")

try:
    import torch
except ImportError:
    fail("torch is not installed")
if not torch.cuda.is_available():
    fail("torch sees no CUDA GPU (torch.cuda.is_available() is False)")

devices = backend.nvml_devices()
section("software")
for k, v in dataclasses.asdict(backend.software()).items():
    print(f"  {k:16s} {v}")
print(f"  {'torch':16s} {torch.__version__} (CUDA {torch.version.cuda})")

section("devices (probed once at open)")
for d in devices:
    info = dataclasses.asdict(d.info)
    caps = info.pop("capabilities")
    print(f"- GPU {d.info.index}: {d.info.name}  {d.info.uuid}")
    for k, v in info.items():
        print(f"    {k:26s} {v}")
    print(f"    {'power_scope':26s} {d.power_scope}")
    print("    capabilities: " + ", ".join(f"{k}={v}" for k, v in caps.items()))
    print(f"    missing: {dict(d.missing()) or 'nothing'}")

gemm_dev = next((d for d in devices if d.info.torch_index == 0), None)
if gemm_dev is None:
    print("WARN: no NVML GPU maps to torch index 0; analysing NVML GPU 0 instead")
    gemm_dev = devices[0]

# --- sampler ----------------------------------------------------------------------------------
samples: dict[str, list] = {d.uuid: [] for d in devices}
tick_cost_s: list[float] = []
errors: list[str] = []
stop = threading.Event()


def sampler() -> None:
    period = 1.0 / HZ
    start = time.monotonic()
    k = 0
    while not stop.is_set() and time.monotonic() - start < SAMPLE_S:
        t0 = time.perf_counter()
        for d in devices:
            if d.lost:
                continue
            try:
                samples[d.uuid].append(d.snapshot(time.time_ns()))
            except DeviceLost as e:
                errors.append(f"{d.uuid}: {e}")
        tick_cost_s.append(time.perf_counter() - t0)
        k += 1
        time.sleep(max(0.0, start + k * period - time.monotonic()))


# --- GEMM ---------------------------------------------------------------------------------------
torch.cuda.set_device(0)
a = torch.randn(N, N, device="cuda:0", dtype=torch.bfloat16)
b = torch.randn(N, N, device="cuda:0", dtype=torch.bfloat16)
c = torch.empty(N, N, device="cuda:0", dtype=torch.bfloat16)
for _ in range(5):  # warm-up: cuBLAS heuristics, clocks out of idle
    torch.matmul(a, b, out=c)
torch.cuda.synchronize()

# Attribution (issue 14): the process list before the GEMM (this process holds a context) and
# after it (per-process SM utilisation over the GEMM).
processes_before = None
processes_error = ""
try:
    processes_before = gemm_dev.compute_processes()
except Exception as exc:  # reported below; the NVML check stands on its own
    processes_error = f"{type(exc).__name__}: {exc}"

thread = threading.Thread(target=sampler, name="sampler", daemon=True)
thread.start()
time.sleep(min(3.0, max(0.0, (SAMPLE_S - GEMM_S) / 3)))  # an idle stretch before the load

gemm_start_ns = time.time_ns()
ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
ev0.record()
iters = 0
t_end = time.monotonic() + GEMM_S
while time.monotonic() < t_end:
    for _ in range(20):
        torch.matmul(a, b, out=c)
    iters += 20
    torch.cuda.synchronize()  # keeps the host loop honest about wall time
ev1.record()
torch.cuda.synchronize()
gemm_end_ns = time.time_ns()
gemm_s = ev0.elapsed_time(ev1) / 1000.0
processes_after = None
try:
    processes_after = gemm_dev.compute_processes()
except Exception as exc:
    processes_error = f"{type(exc).__name__}: {exc}"
thread.join(timeout=SAMPLE_S + 10)
stop.set()

# --- report -------------------------------------------------------------------------------------


def column(snaps: list, name: str) -> "np.ndarray":
    return np.array([np.nan if getattr(s, name) is None else getattr(s, name) for s in snaps], float)


def trapezoid_j(t_s: "np.ndarray", p_w: "np.ndarray") -> float:
    ok = ~np.isnan(p_w)
    if ok.sum() < 2:
        return float("nan")
    t, p = t_s[ok], p_w[ok]
    return float(np.sum((p[1:] + p[:-1]) * np.diff(t)) / 2.0)


def energy_report(label: str, snaps: list) -> None:
    if len(snaps) < 2:
        print(f"  {label}: fewer than 2 samples")
        return
    t = np.array([s.timestamp_unix_ns for s in snaps], float) / 1e9
    e = column(snaps, "energy_j")
    counter = float(e[-1] - e[0]) if not np.isnan(e[[0, -1]]).any() else float("nan")
    print(f"  {label}: {len(snaps)} samples over {t[-1] - t[0]:.2f} s")
    print(f"    energy counter delta           {counter:10.1f} J")
    for name in ("power_instant_w", "power_average_1s_w"):
        p = column(snaps, name)
        integ = trapezoid_j(t, p)
        ratio = integ / counter if counter and not np.isnan(counter) else float("nan")
        mean_w = float(np.nanmean(p)) if not np.isnan(p).all() else float("nan")
        print(
            f"    ∫{name:22s}       {integ:10.1f} J   ratio to counter {ratio:6.3f}"
            f"   mean {mean_w:7.1f} W"
        )


section("one snapshot per GPU")
mid_ns = (gemm_start_ns + gemm_end_ns) // 2
for d in devices:
    snaps = samples[d.uuid]
    if not snaps:
        print(f"- GPU {d.info.index}: no samples")
        continue
    s = min(snaps, key=lambda x: abs(x.timestamp_unix_ns - mid_ns))
    print(f"- GPU {d.info.index} ({d.info.name}) at mid-GEMM:")
    for k, v in dataclasses.asdict(s).items():
        print(f"    {k:26s} {v}")

section("sampling")
costs = np.array(tick_cost_s) * 1e3
n_ticks = len(tick_cost_s)
print(f"  ticks {n_ticks} in {SAMPLE_S:.0f} s (target {HZ:.0f} Hz, {n_ticks / SAMPLE_S:.1f} Hz achieved)")
if n_ticks:
    print(
        f"  one tick over {len(devices)} GPU(s): mean {costs.mean():.2f} ms, "
        f"p99 {np.percentile(costs, 99):.2f} ms, max {costs.max():.2f} ms"
    )
for msg in errors:
    print(f"  lost: {msg}")

section(f"energy vs integrated power — GPU {gemm_dev.info.index} (GEMM)")
print(f"  nvmlDeviceGetPowerUsage is a 1-s average here: {gemm_dev.info.power_usage_is_average}")
g = samples[gemm_dev.uuid]
energy_report("whole window (idle, load, idle)", g)
energy_report("GEMM window", [s for s in g if gemm_start_ns <= s.timestamp_unix_ns <= gemm_end_ns])
for d in devices:
    if d is not gemm_dev:
        energy_report(f"GPU {d.info.index} whole window (idle)", samples[d.uuid])

section("clocks and throttle reasons during the GEMM")
in_gemm = [s for s in g if gemm_start_ns <= s.timestamp_unix_ns <= gemm_end_ns]
sm = column(in_gemm, "sm_clock_mhz")
if in_gemm and not np.isnan(sm).all():
    print(
        f"  SM clock: min {np.nanmin(sm):.0f} MHz, mean {np.nanmean(sm):.0f} MHz "
        f"(max supported {gemm_dev.info.sm_clock_max_mhz} MHz)"
    )
temp = column(in_gemm, "gpu_temperature_c")
mtemp = column(in_gemm, "memory_temperature_c")
if in_gemm and not np.isnan(temp).all():
    print(f"  GPU temperature max {np.nanmax(temp):.0f} °C", end="")
    print(f", memory temperature max {np.nanmax(mtemp):.0f} °C" if not np.isnan(mtemp).all() else "")
seen = 0
counts: dict[str, int] = {}
for s in in_gemm:
    if s.throttle_reasons is not None:
        seen |= s.throttle_reasons
        for r in decode_throttle(s.throttle_reasons):
            counts[r.value] = counts.get(r.value, 0) + 1
print(f"  reasons seen (OR 0x{seen:x}): {[r.value for r in decode_throttle(seen)] or 'none'}")
for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
    print(f"    {name:26s} in {n}/{len(in_gemm)} samples")

section("GEMM throughput")
flops = 2.0 * N**3 * iters
print(f"  bf16 {N}^3 x {iters} in {gemm_s:.2f} s (CUDA events): {flops / gemm_s / 1e12:.1f} TFLOP/s")

# The live-efficiency estimate (flopwatt/analysis/live_efficiency.py) against a GEMM of known
# FLOP/s: mean GPM pipe activity and SM clock over the GEMM window, spec peaks as the basis
# (a measured basis would be circular here). Issue 14 asks for ±10 %.
section("live efficiency: GPM estimate vs the GEMM's measured FLOP/s")
live_verdict = "skipped"
if not gemm_dev.info.capabilities.gpm:
    print(f"  no GPM on this GPU: {dict(gemm_dev.missing()).get('gpm', 'not supported')}")
else:
    from flopwatt.analysis.live_efficiency import PIPES, estimate, pipe_peaks
    from flopwatt.analysis.registry import load_registry

    spec = load_registry().match_device(gemm_dev.info.name, gemm_dev.info.pci_device_id).spec
    # Skip the first second of the window: the pipe ramps up and GPM intervals straddle it.
    steady = [s for s in in_gemm if s.timestamp_unix_ns >= gemm_start_ns + 1_000_000_000]
    means = {}
    for pipe in PIPES:
        v = column(steady, pipe.column)
        if steady and not np.isnan(v).all():
            means[pipe.column] = float(np.nanmean(v))
    clock = column(steady, "sm_clock_mhz")
    clock_mean = float(np.nanmean(clock)) if steady and not np.isnan(clock).all() else None
    est = estimate(means, clock_mean, pipe_peaks(spec), spec) if spec is not None else None
    measured = flops / gemm_s
    print(f"  spec: {spec.sku if spec else 'unmatched'}; mean activity {means}; SM clock {clock_mean}")
    if est is None:
        print("  no estimate (no pipe activity reported)")
        live_verdict = "no estimate"
    else:
        ratio = est.flops_per_s / measured
        live_verdict = "PASS" if abs(ratio - 1) <= 0.10 else "OUTSIDE ±10 %"
        print(
            f"  estimated {est.flops_per_s / 1e12:.1f} TFLOP/s ({est.precision.value}, basis "
            f"{est.basis.value}, MFU {est.mfu_ratio:.3f}) vs measured {measured / 1e12:.1f} "
            f"TFLOP/s: ratio {ratio:.3f} — {live_verdict}"
        )

section("health (ECC volatile counts, XID events since open)")
for d in devices:
    try:
        h = d.health()
        xids = "n/a" if h.xid_counts is None else (dict(h.xid_counts) or "none")
        print(
            f"  GPU {d.info.index}: ECC corrected {h.ecc_corrected_volatile}, "
            f"uncorrected {h.ecc_uncorrected_volatile}; XIDs {xids}"
        )
    except DeviceLost as e:
        print(f"  GPU {d.info.index}: lost ({e})")

section("health telemetry columns (absent: the GPU does not offer the counter)")
for d in devices:
    try:
        snap = d.snapshot(time.time_ns())
    except DeviceLost as e:
        print(f"  GPU {d.info.index}: lost ({e})")
        continue
    values = {c: getattr(snap, c) for c in HEALTH_COLUMNS}
    print(f"  GPU {d.info.index}: " + ", ".join(f"{c}={v}" for c, v in values.items()))

section("attribution: this process on the GEMM GPU (nvmlDeviceGetComputeRunningProcesses)")
if processes_error:
    print(f"  error: {processes_error}")
for label, listed in (("before the GEMM", processes_before), ("after the GEMM", processes_after)):
    if listed is None:
        print(f"  {label}: unknown (NVML cannot list processes here)")
        continue
    mine = [p for p in listed if p.pid == os.getpid()]
    print(f"  {label}: {len(listed)} process(es); this one (pid {os.getpid()}) listed: {bool(mine)}")
    for p in mine:
        mem = "n/a" if p.used_memory_bytes is None else f"{p.used_memory_bytes / 2**30:.2f} GiB"
        util = "n/a" if p.sm_utilization_ratio is None else f"{100 * p.sm_utilization_ratio:.0f} %"
        print(f"    memory {mem}, SM utilisation since the previous read {util}")
if processes_after is not None and not any(p.pid == os.getpid() for p in processes_after):
    print("  NOTE: this process is not listed (another PID namespace? run with the host's PIDs)")

out = os.environ.get("OUT")
if out:
    cols = {}
    for d in devices:
        snaps = samples[d.uuid]
        key = f"gpu{d.info.index}"
        cols[f"{key}_t_ns"] = np.array([s.timestamp_unix_ns for s in snaps], np.int64)
        for f in dataclasses.fields(snaps[0]) if snaps else ():
            if f.name != "timestamp_unix_ns":
                cols[f"{key}_{f.name}"] = column(snaps, f.name)
    cols["gemm_window_ns"] = np.array([gemm_start_ns, gemm_end_ns], np.int64)
    np.savez(os.path.join(out, "samples.npz"), **cols)
    print(f"\nsamples written to {out}/samples.npz")

backend.close()
if not g:
    fail("no samples from the GEMM GPU")
if errors:
    fail(f"{len(errors)} GPU(s) lost during the run")
print(f"\ngpu_check: done (live-efficiency check: {live_verdict})")
PY

# Second stage (BENCH=0 skips it): the benchmark commands as an operator runs them — GEMM burst
# and 30-s sustained with energy for bf16/fp16/fp8, then resnet50/vit_b_16 at fp16. Each needs
# flopwatt's own dependencies (click, rich, pandas; fvcore and torchvision for models); a missing
# one is reported and skipped, so the NVML check above always stands on its own.
if [ "${BENCH:-1}" != "0" ]; then
  echo
  echo "=== flopwatt bench gemm (bf16, fp16, fp8; 30 s sustained) ==================="
  if python3 -c "import flopwatt.commands.bench" 2>/tmp/gpu_check_import.err; then
    python3 -m flopwatt bench gemm --device cuda:0 --precision bf16,fp16,fp8 \
      --sustain-seconds "${SUSTAIN_S:-30}" --cache-dir "${OUT:-/tmp}/peak-cache" \
      || echo "gpu_check: bench gemm failed (rc $?)"
  else
    echo "skipped: $(tail -1 /tmp/gpu_check_import.err)"
  fi
  echo
  echo "=== flopwatt bench model (resnet50, vit_b_16; fp16; batch 1, 8) ============"
  if python3 -c "import flopwatt.commands.bench, fvcore, torchvision" 2>/tmp/gpu_check_import.err; then
    python3 -m flopwatt bench model --device cuda:0 --precision fp16 \
      --model resnet50,vit_b_16 --batch 1,8 --cache-dir "${OUT:-/tmp}/peak-cache" \
      || echo "gpu_check: bench model failed (rc $?)"
  else
    echo "skipped: $(tail -1 /tmp/gpu_check_import.err)"
  fi
fi
