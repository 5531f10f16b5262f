"""GEMM peak on one device: a burst figure (best over a size sweep) and a sustained figure (one
continuous run), per precision.

Accounting: a GEMM C[m×n] = A[m×k]·B[k×n] is 2·m·n·k FLOPs (OP/s for int8), whatever the
library. Timing: CUDA events around the queued GEMMs on a GPU (device time, no host overhead),
``time.perf_counter_ns`` around the calls on a CPU (whose BLAS calls are synchronous), always
after a warm-up. Burst = the best of several short trials at each shape, best over the shapes
and, on a CPU, over both BLAS builds available here: torch (MKL on x86 wheels) and numpy
(OpenBLAS) — a CPU's peak is the best BLAS it has, not one library's, and on some machines numpy
wins. The spread over the trials is kept: on a shared machine the same GEMM varies by 2× and
more between runs, and the best short trial is the least disturbed one.

Precisions: ``fp64``; ``fp32`` with TF32 off; ``tf32`` (TF32 on for float32 matmuls, GPUs with
compute capability ≥ 8.0); ``fp16``; ``bf16``; ``fp8`` (e4m3 through ``torch._scaled_mm`` with
unit scales, bf16 output, fast accumulation; compute capability ≥ 8.9); ``int8``
(``torch._int_mm``, int32 output). A precision a device cannot run natively is refused with a
reason (:class:`UnsupportedPrecisionError`) rather than measured as an emulation: a CPU without
bf16 matrix instructions would time torch's emulation, which is no peak.

Everything here returns plain data (:class:`GemmMeasurement`); the caller adds the power and
energy its sampler saw over the sustained run's wall-clock span (``start_unix_ns`` …
``end_unix_ns``) and turns the lot into a :class:`~flopwatt.records.GemmResult` with
:func:`gemm_result`. torch is imported only inside the functions that measure, so the agent
process can import this module (and unpickle its records) without loading torch.
"""

from __future__ import annotations

import ctypes
import math
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from flopwatt.agent.jobs.peak_cache import CachedPeak, CacheOutcome, PeakCache, PeakKey
from flopwatt.analysis.efficiency import energy_per_operation_j, spread_ratio
from flopwatt.analysis.precision import Precision
from flopwatt.records import Conditions, GemmPoint, GemmResult, GemmShape

if TYPE_CHECKING:
    import torch

__all__ = [
    "CPU_MAX_SIZE",
    "GEMM_PRECISIONS",
    "GPU_MAX_SIZE",
    "GemmConfig",
    "GemmMeasurement",
    "Library",
    "ProgressFn",
    "ShapeTrials",
    "SoftwareInfo",
    "SustainedRun",
    "SweepShape",
    "UnsupportedPrecisionError",
    "cpu_flags",
    "default_precisions",
    "default_shapes",
    "float32_math",
    "gemm_peak",
    "gemm_result",
    "measure_burst",
    "measure_gemm",
    "measure_sustained",
    "numpy_blas",
    "parse_shape",
    "peak_key",
    "software_info",
    "torch_blas",
    "unsupported_reason",
]

Library = Literal["torch", "numpy"]

#: Called as work progresses: (what is being measured, steps done, steps planned).
ProgressFn = Callable[[str, int, int], None]

#: Every precision ``bench gemm`` knows, in the order it measures them.
GEMM_PRECISIONS: tuple[Precision, ...] = (
    Precision.FP64,
    Precision.FP32,
    Precision.TF32,
    Precision.FP16,
    Precision.BF16,
    Precision.FP8,
    Precision.INT8,
)

CPU_MAX_SIZE = 4096
GPU_MAX_SIZE = 16384
_CPU_MIN_SIZE = 256
_GPU_MIN_SIZE = 1024
# fp8 and int8 kernels need every dimension a multiple of 16 (cuBLASLt's alignment rule).
_ALIGN = 16


class UnsupportedPrecisionError(ValueError):
    """A precision the device cannot run natively (the message says why).

    Attributes:
        precision: the precision refused.
        device: the torch device string (``cpu``, ``cuda:0``).
        reason: why, in words.
    """

    def __init__(self, precision: Precision, device: str, reason: str) -> None:
        super().__init__(f"{precision.value} GEMM on {device}: {reason}")
        self.precision = precision
        self.device = device
        self.reason = reason


# --- what to measure ------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepShape:
    """A GEMM shape in the sweep, with a label (``square``, ``llm-qkv``, ``llm-mlp-up``…)."""

    label: str
    shape: GemmShape

    def __str__(self) -> str:
        s = self.shape
        if s.m == s.n == s.k:
            return f"{s.m}³"
        return f"{s.m}×{s.n}×{s.k} ({self.label})"


def parse_shape(text: str) -> SweepShape:
    """``"1024"`` (square) or ``"2048x3072x1024"`` (m×n×k) as a sweep shape.

    Raises:
        ValueError: not one or three positive integers separated by ``x``.
    """
    parts = [p for p in re.split(r"[x×]", text.strip().lower())]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"bad GEMM size {text!r}: expected N or MxNxK") from None
    if len(dims) not in (1, 3) or any(d < 1 for d in dims):
        raise ValueError(f"bad GEMM size {text!r}: expected N or MxNxK with positive integers")
    if len(dims) == 1:
        return SweepShape("square", GemmShape(dims[0], dims[0], dims[0]))
    return SweepShape("custom", GemmShape(dims[0], dims[1], dims[2]))


def default_shapes(device_type: str, max_size: int = 0) -> tuple[SweepShape, ...]:
    """The default sweep: powers-of-two squares up to ``max_size`` (4096 on a CPU, 16384 on a
    GPU by default), then three LLM-like shapes with tokens T = max/2 and hidden size h = max/4:
    the QKV projection (T×3h×h), the MLP up (T×4h×h) and down (T×h×4h) projections.

    Raises:
        ValueError: ``max_size`` is negative.
    """
    if max_size < 0:
        raise ValueError(f"max size must be ≥ 0, got {max_size}")
    cpu = device_type == "cpu"
    top = max_size or (CPU_MAX_SIZE if cpu else GPU_MAX_SIZE)
    n = min(_CPU_MIN_SIZE if cpu else _GPU_MIN_SIZE, top)
    squares: list[int] = []
    while n < top:
        squares.append(n)
        n *= 2
    squares.append(top)
    shapes = [SweepShape("square", GemmShape(s, s, s)) for s in squares]
    tokens = top // 2 // _ALIGN * _ALIGN
    hidden = top // 4 // _ALIGN * _ALIGN
    if hidden >= 64:
        shapes += [
            SweepShape("llm-qkv", GemmShape(tokens, 3 * hidden, hidden)),
            SweepShape("llm-mlp-up", GemmShape(tokens, 4 * hidden, hidden)),
            SweepShape("llm-mlp-down", GemmShape(tokens, hidden, 4 * hidden)),
        ]
    return tuple(shapes)


@dataclass(frozen=True)
class GemmConfig:
    """How to measure. Zero / empty values mean the device's default.

    Attributes:
        shapes: explicit shapes, all measured; empty = :func:`default_shapes`, swept in order
            and stopped once larger squares stop helping.
        max_size: the largest square of the default sweep (4096 CPU, 16384 GPU).
        trials: timed trials per shape; burst is the best.
        min_trial_s: each trial times enough GEMMs to last at least this long (0.1 s CPU,
            0.05 s GPU), and at least one.
        warmup_s: untimed work before the trials of each shape (0.3 s CPU, 0.5 s GPU).
        saturation_ratio: a larger square "helps" if it beats the best so far by this fraction.
        saturation_patience: stop the square sweep after this many squares in a row that do
            not help (3 on a CPU, whose short sweep a noisy neighbour can stall; 2 on a GPU).
        libraries: which libraries to time; empty = every one the device has (CPU: torch and
            numpy for fp32/fp64; GPU: torch).
        sustain_s: length of the sustained run (0 = none).
    """

    shapes: tuple[SweepShape, ...] = ()
    max_size: int = 0
    trials: int = 5
    min_trial_s: float = 0.0
    warmup_s: float = 0.0
    saturation_ratio: float = 0.03
    saturation_patience: int = 0
    libraries: tuple[Library, ...] = ()
    sustain_s: float = 0.0

    def resolved(self, device_type: str) -> GemmConfig:
        """This config with every default filled in for a ``cpu`` or ``cuda`` device.

        Raises:
            ValueError: a count or duration is out of range.
        """
        if self.trials < 1:
            raise ValueError(f"trials must be ≥ 1, got {self.trials}")
        if self.min_trial_s < 0 or self.warmup_s < 0 or self.sustain_s < 0:
            raise ValueError("durations must be ≥ 0")
        cpu = device_type == "cpu"
        return replace(
            self,
            shapes=self.shapes or default_shapes(device_type, self.max_size),
            min_trial_s=self.min_trial_s or (0.1 if cpu else 0.05),
            warmup_s=self.warmup_s or (0.3 if cpu else 0.5),
            saturation_patience=self.saturation_patience or (3 if cpu else 2),
        )


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeTrials:
    """The timed trials of one library at one shape.

    Attributes:
        library: ``torch`` or ``numpy``.
        label: the shape's label.
        shape: the GEMM shape (2·m·n·k FLOPs each).
        gemms_per_trial: GEMMs timed together in each trial.
        trial_s: seconds per GEMM in each trial, in order.
    """

    library: Library
    label: str
    shape: GemmShape
    gemms_per_trial: int
    trial_s: tuple[float, ...]

    @property
    def best_s(self) -> float:
        """The fastest trial's seconds per GEMM."""
        return min(self.trial_s)

    @property
    def median_s(self) -> float:
        """The median trial's seconds per GEMM."""
        return statistics.median(self.trial_s)

    @property
    def trial_flops_per_s(self) -> tuple[float, ...]:
        """FLOP/s of each trial."""
        return tuple(self.shape.flops / s for s in self.trial_s)

    @property
    def best_flops_per_s(self) -> float:
        """FLOP/s of the fastest trial; ≥ every entry of ``trial_flops_per_s``."""
        return self.shape.flops / self.best_s

    @property
    def spread_ratio(self) -> float:
        """(best − worst) ÷ best over the trials."""
        return spread_ratio(self.trial_flops_per_s)

    def point(self) -> GemmPoint:
        """This shape as a sweep point of a :class:`~flopwatt.records.GemmResult`."""
        return GemmPoint(self.shape, self.best_s, self.median_s, self.best_flops_per_s)


@dataclass(frozen=True)
class SustainedRun:
    """One continuous run of GEMMs of one shape.

    Attributes:
        library: the library that ran it.
        shape: the GEMM shape.
        start_unix_ns / end_unix_ns: wall-clock span of the run (``time.time_ns``), for the
            sampler's window.
        gemms: GEMMs completed.
        flops: FLOPs executed (gemms × 2·m·n·k).
        seconds: the run's duration on the device's own clock (CUDA events on a GPU, the
            monotonic performance counter on a CPU).
    """

    library: Library
    shape: GemmShape
    start_unix_ns: int
    end_unix_ns: int
    gemms: int
    flops: int
    seconds: float

    @property
    def flops_per_s(self) -> float:
        """FLOP/s over the run."""
        return self.flops / self.seconds

    @property
    def wall_s(self) -> float:
        """The run's wall-clock span (s)."""
        return (self.end_unix_ns - self.start_unix_ns) / 1e9


@dataclass(frozen=True)
class SoftwareInfo:
    """The software a measurement ran on.

    Attributes:
        torch_version: ``torch.__version__``.
        cuda_version: the CUDA toolkit torch was built with (``torch.version.cuda``), or "".
        blas: the BLAS builds measured, in words.
        threads: thread counts on a CPU (``torch=2 numpy=2``); "" on a GPU.
        torch_threads: ``torch.get_num_threads()``.
        device_name: the device's name as torch or /proc/cpuinfo reports it.
        compute_capability: ``"9.0"`` on a GPU, "" on a CPU.
        library_blas: the BLAS behind each library (``{"numpy": "OpenBLAS 0.3.31 Haswell"}``).
    """

    torch_version: str
    cuda_version: str
    blas: str
    threads: str
    torch_threads: int
    device_name: str
    compute_capability: str = ""
    library_blas: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GemmMeasurement:
    """GEMM peak of one precision on one device.

    Attributes:
        precision: the precision label.
        device: the torch device string (``cpu``, ``cuda:0``).
        timing: ``cuda-events`` or ``wall-clock``.
        burst_flops_per_s: best FLOP/s over the sweep (OP/s for int8).
        best_shape / best_library: where the burst was reached.
        burst_spread_ratio: (best − worst) ÷ best over the trials at the best shape.
        by_library: best FLOP/s of each library timed.
        trials: every shape's trials (empty when the burst came from the cache).
        method: how the burst was measured, in words.
        burst_measured_unix_ns: when the burst was measured (earlier than now on a cache hit).
        cache_outcome: ``hit``, ``miss``, ``refresh``, or "" when no cache was used.
        sustained: the sustained run, or None when none was asked for.
        software: the software it ran on.
        notes: anything skipped and why (a shape out of memory, misaligned…).
    """

    precision: str
    device: str
    timing: str
    burst_flops_per_s: float
    best_shape: GemmShape
    best_library: str
    burst_spread_ratio: float | None
    by_library: Mapping[str, float]
    trials: tuple[ShapeTrials, ...]
    method: str
    burst_measured_unix_ns: int
    cache_outcome: str
    sustained: SustainedRun | None
    software: SoftwareInfo
    notes: tuple[str, ...] = ()

    @property
    def from_cache(self) -> bool:
        """Whether the burst figure was read from the peak cache rather than measured now."""
        return self.cache_outcome == CacheOutcome.HIT.value


# --- device and software probing ------------------------------------------------------------


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty when unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


_CPU_NATIVE: dict[Precision, frozenset[str]] = {
    # x86 AVX-512 BF16 / AMX, Arm's BF16 extension (Neoverse V1/V2, Graviton 3+).
    Precision.BF16: frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
    Precision.FP16: frozenset({"avx512_fp16", "amx_fp16", "fphp"}),
}


def default_precisions(device: str, flags: frozenset[str] | None = None) -> tuple[Precision, ...]:
    """What ``bench gemm`` measures when no precision is named: every GEMM precision on a GPU
    (unsupported ones are then reported as skipped); fp32, fp64 and — where the CPU has native
    bf16 matrix instructions — bf16 on a CPU."""
    if not device.startswith("cpu"):
        return GEMM_PRECISIONS
    have = cpu_flags() if flags is None else flags
    extra = (Precision.BF16,) if have & _CPU_NATIVE[Precision.BF16] else ()
    return (Precision.FP32, Precision.FP64, *extra)


def _cuda_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index else 0


def unsupported_reason(
    precision: Precision, device: str, *, flags: frozenset[str] | None = None
) -> str | None:
    """Why ``precision`` cannot be measured on ``device`` (``cpu``, ``cuda``, ``cuda:N``), or
    None when it can.

    Args:
        precision: the precision.
        device: a torch device string.
        flags: the CPU's feature flags (default: read from /proc/cpuinfo).

    Raises:
        ImportError: torch is not installed.
        ValueError: ``device`` is neither a CPU nor a CUDA device.
    """
    import torch

    if precision not in GEMM_PRECISIONS:
        return f"flopwatt does not measure {precision.value} GEMMs"
    kind = torch.device(device).type
    if kind == "cpu":
        if precision in (Precision.FP64, Precision.FP32):
            return None
        if precision is Precision.TF32:
            return "TF32 is an NVIDIA tensor-core format; CPUs have no TF32 GEMM"
        if precision is Precision.FP8:
            return "torch has no fp8 GEMM on CPUs"
        if precision is Precision.INT8:
            return _probe(precision, "cpu")
        have = cpu_flags() if flags is None else flags
        native = _CPU_NATIVE[precision]
        if not have & native:
            return (
                f"this CPU has no native {precision.value} matrix instructions "
                f"({'/'.join(sorted(native))}); torch would emulate {precision.value}, "
                "which measures the emulation, not a peak"
            )
        return None
    if kind != "cuda":
        raise ValueError(f"GEMM peak runs on cpu or cuda devices, not {device!r}")
    if not torch.cuda.is_available():
        return "CUDA is not available to torch here"
    index = _cuda_index(device)
    if not 0 <= index < torch.cuda.device_count():
        return f"no CUDA device {index} (torch sees {torch.cuda.device_count()})"
    cc = torch.cuda.get_device_capability(index)
    need = {
        Precision.TF32: (8, 0),
        Precision.BF16: (8, 0),
        Precision.FP8: (8, 9),
        Precision.INT8: (7, 5),
    }.get(precision)
    if need is not None and cc < need:
        return (
            f"{precision.value} tensor-core GEMMs need compute capability ≥ {need[0]}.{need[1]}; "
            f"this GPU is {cc[0]}.{cc[1]}"
        )
    if precision in (Precision.FP8, Precision.INT8):
        return _probe(precision, device)
    return None


def _probe(precision: Precision, device: str) -> str | None:
    """Run one tiny GEMM; its error, if any, is the reason the precision is unsupported."""
    try:
        _make_kernel(precision, GemmShape(32, 32, 32), device, "torch")()
    # Whatever the kernel raises (missing op, unsupported arch) is the answer, as text.
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip()
    return None


def torch_blas() -> str:
    """The BLAS torch was built with (``MKL 2024.2 (AVX2)``), from ``torch.__config__``."""
    import torch

    text = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version (\S+?)-", text)
    info = re.search(r"BLAS_INFO=(\w+)", text)
    name = f"MKL {mkl.group(1)}" if mkl else (info.group(1) if info else "unknown BLAS")
    capability = re.search(r"CPU capability usage: (\w+)", text)
    return f"{name} ({capability.group(1)})" if capability else name


def _loaded_openblas() -> list[Path]:
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    return sorted(Path(p) for p in paths if ".so" in p)


def numpy_blas() -> tuple[str, int | None]:
    """numpy's BLAS in words (``OpenBLAS 0.3.31 (Haswell kernels)``) and its thread count (None
    when it cannot be read).

    The running OpenBLAS is asked directly (with ``DYNAMIC_ARCH`` it picks its kernels for this
    CPU at run time, and says which); numpy's build-time configuration is the fallback.
    """
    try:
        libraries = _loaded_openblas()
    except OSError:
        libraries = []
    for path in libraries:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for prefix, suffix in (("openblas", ""), ("scipy_openblas", "64_"), ("openblas", "64_")):
            config = getattr(lib, f"{prefix}_get_config{suffix}", None)
            threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if config is None:
                continue
            config.restype = ctypes.c_char_p
            text = config().decode(errors="replace")
            version = re.search(r"OpenBLAS (\S+)", text)
            core = getattr(lib, f"{prefix}_get_corename{suffix}", None)
            label = f"OpenBLAS {version.group(1) if version else '?'}"
            if core is not None:
                core.restype = ctypes.c_char_p
                label += f" ({core().decode(errors='replace')} kernels)"
            count = int(threads()) if threads is not None else None
            return label, count
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{deps.get('name', 'BLAS')} {deps.get('version', '')}".strip(), None
    # numpy's config layout is not an API; an unreadable one only loses the label.
    except Exception:
        return "unknown BLAS", None


def software_info(device: str) -> SoftwareInfo:
    """torch, CUDA and BLAS versions, thread counts and the device's name.

    Raises:
        ImportError: torch is not installed.
    """
    import torch

    cuda = torch.version.cuda or ""
    if torch.device(device).type == "cuda":
        index = _cuda_index(device)
        major, minor = torch.cuda.get_device_capability(index)
        blas = f"cuBLAS (CUDA {cuda})"
        return SoftwareInfo(
            torch_version=torch.__version__,
            cuda_version=cuda,
            blas=blas,
            threads="",
            torch_threads=torch.get_num_threads(),
            device_name=torch.cuda.get_device_name(index),
            compute_capability=f"{major}.{minor}",
            library_blas={"torch": blas},
        )
    tb = torch_blas()
    nb, numpy_threads = numpy_blas()
    threads = torch.get_num_threads()
    return SoftwareInfo(
        torch_version=torch.__version__,
        cuda_version=cuda,
        blas=f"torch: {tb}; numpy {np.__version__}: {nb}",
        threads=f"torch={threads} numpy={'?' if numpy_threads is None else numpy_threads}",
        torch_threads=threads,
        device_name=_cpu_name(),
        library_blas={"torch": tb, "numpy": nb},
    )


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU"
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU"


def peak_key(
    precision: Precision, device_uuid: str, driver_version: str, software: SoftwareInfo
) -> PeakKey:
    """The cache key of a peak measured with ``software`` on the device ``device_uuid``."""
    return PeakKey(
        device_uuid=device_uuid,
        precision=precision.value,
        driver_version=driver_version,
        torch_version=software.torch_version,
        blas=software.blas,
        threads=software.threads,
    )


# --- kernels and timers ---------------------------------------------------------------------


@contextmanager
def float32_math(precision: Precision, *, convolutions: bool = False) -> Iterator[None]:
    """Set how float32 matmuls (and, with ``convolutions``, cuDNN convolutions) compute while
    the block runs: TF32 for ``tf32``, full IEEE fp32 for ``fp32``; untouched otherwise. The
    previous settings are restored afterwards.

    Why the per-backend ``fp32_precision`` attributes and not ``allow_tf32`` /
    ``set_float32_matmul_precision``: torch ≥ 2.9 raises a RuntimeError when a process mixes the
    legacy and the new switches, so the new ones are used wherever they exist.
    """
    import torch

    if precision not in (Precision.FP32, Precision.TF32):
        yield
        return
    tf32 = precision is Precision.TF32
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):  # torch < 2.9
        old_allow, old_conv = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        old_precision = torch.get_float32_matmul_precision()
        matmul.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        if convolutions:
            torch.backends.cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            matmul.allow_tf32 = old_allow
            torch.backends.cudnn.allow_tf32 = old_conv
            torch.set_float32_matmul_precision(old_precision)
        return
    # torch's stubs do not declare the per-backend ``conv`` / ``matmul`` namespaces.
    mkldnn: Any = torch.backends.mkldnn
    cudnn: Any = torch.backends.cudnn
    targets: list[Any] = [matmul]
    if not tf32:
        targets.append(mkldnn.matmul)  # oneDNN may otherwise compute in bf16/tf32
    if convolutions:
        targets.append(cudnn.conv)
        if not tf32:
            targets.append(mkldnn.conv)
    saved = [(t, t.fp32_precision) for t in targets]
    try:
        for t in targets:
            t.fp32_precision = "tf32" if tf32 else "ieee"
        yield
    finally:
        for t, old in saved:
            t.fp32_precision = old


_TORCH_DTYPES = {
    Precision.FP64: "float64",
    Precision.FP32: "float32",
    Precision.TF32: "float32",
    Precision.FP16: "float16",
    Precision.BF16: "bfloat16",
}


def _make_kernel(
    precision: Precision, shape: GemmShape, device: str, library: Library
) -> Callable[[], object]:
    """A closure that runs one GEMM of ``shape`` at ``precision`` on operands it keeps alive.

    Operands are random (normal, or uniform int8): zeros would draw less power than real data.

    Raises:
        ValueError: the shape or library does not suit the precision.
        torch.cuda.OutOfMemoryError / MemoryError: the operands do not fit.
    """
    m, n, k = shape.m, shape.n, shape.k
    if library == "numpy":
        if precision not in (Precision.FP32, Precision.FP64) or not device.startswith("cpu"):
            raise ValueError("numpy measures fp32 and fp64 GEMMs on the CPU only")
        dtype = np.float32 if precision is Precision.FP32 else np.float64
        rng = np.random.default_rng(0)
        a_np = rng.standard_normal((m, k), dtype=dtype)
        b_np = rng.standard_normal((k, n), dtype=dtype)
        c_np = np.empty((m, n), dtype=dtype)
        return lambda: np.matmul(a_np, b_np, out=c_np)

    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    if precision is Precision.INT8:
        if device.startswith("cuda") and (m <= 16 or k % 8 or n % 8):
            raise ValueError("int8 GEMM needs m > 16 and k, n multiples of 8")
        a8 = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=device, generator=gen)
        b8 = torch.randint(-128, 128, (k, n), dtype=torch.int8, device=device, generator=gen)
        return lambda: torch._int_mm(a8, b8)
    if precision is Precision.FP8:
        if m % _ALIGN or n % _ALIGN or k % _ALIGN:
            raise ValueError(f"fp8 GEMM needs every dimension a multiple of {_ALIGN}")
        f8 = torch.float8_e4m3fn
        a_f8 = torch.randn((m, k), device=device, generator=gen).to(f8)
        # _scaled_mm wants B column-major: the transpose of a row-major (n, k) tensor.
        b_f8 = torch.randn((n, k), device=device, generator=gen).to(f8).t()
        one = torch.ones((), dtype=torch.float32, device=device)
        return lambda: torch._scaled_mm(
            a_f8, b_f8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True
        )
    dt = getattr(torch, _TORCH_DTYPES[precision])
    a = torch.randn((m, k), device=device, generator=gen).to(dt)
    b = torch.randn((k, n), device=device, generator=gen).to(dt)
    c = torch.empty((m, n), device=device, dtype=dt)
    return lambda: torch.matmul(a, b, out=c)


class _Timer:
    """Seconds for ``calls`` back-to-back calls, the work included (wall clock on a CPU)."""

    name = "wall-clock"

    def time(self, fn: Callable[[], object], calls: int) -> float:
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        return (time.perf_counter_ns() - start) / 1e9


class _CudaTimer(_Timer):
    """Device time between two CUDA events around the queued calls."""

    name = "cuda-events"

    def __init__(self, device: str) -> None:
        import torch

        self._torch = torch
        self._device = torch.device(device)

    def time(self, fn: Callable[[], object], calls: int) -> float:
        cuda = self._torch.cuda
        with cuda.device(self._device):
            start = cuda.Event(enable_timing=True)
            end = cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / 1e3


def _timer(device: str) -> _Timer:
    return _CudaTimer(device) if device.startswith("cuda") else _Timer()


def _oom_types() -> tuple[type[BaseException], ...]:
    import torch

    return (MemoryError, torch.cuda.OutOfMemoryError)


def _time_shape(
    fn: Callable[[], object], timer: _Timer, config: GemmConfig, n_trials: int
) -> tuple[int, tuple[float, ...]]:
    """Warm up, then time ``n_trials`` trials; (GEMMs per trial, seconds per GEMM per trial)."""
    calls, spent, per_call = 1, 0.0, math.inf
    while True:  # geometric batches: cheap for tiny GEMMs, a single call for huge ones
        took = timer.time(fn, calls)
        spent += took
        per_call = took / calls
        if spent >= config.warmup_s:
            break
        calls *= 2
    per_trial = max(1, math.ceil(config.min_trial_s / per_call)) if per_call > 0 else 1
    return per_trial, tuple(timer.time(fn, per_trial) / per_trial for _ in range(n_trials))


def _libraries(precision: Precision, device: str, config: GemmConfig) -> tuple[Library, ...]:
    cpu = device.startswith("cpu")
    available: tuple[Library, ...] = (
        ("torch", "numpy") if cpu and precision in (Precision.FP32, Precision.FP64) else ("torch",)
    )
    if not config.libraries:
        return available
    chosen = tuple(lib for lib in config.libraries if lib in available)
    if not chosen:
        raise ValueError(
            f"none of {', '.join(config.libraries)} measures {precision.value} on {device}; "
            f"available: {', '.join(available)}"
        )
    return chosen


# --- measuring ------------------------------------------------------------------------------


def measure_burst(
    precision: Precision,
    device: str = "cpu",
    config: GemmConfig | None = None,
    *,
    progress: ProgressFn | None = None,
) -> tuple[tuple[ShapeTrials, ...], tuple[str, ...], str]:
    """Time the sweep for one precision: every library, every shape, several trials each.

    Args:
        precision: what to measure.
        device: ``cpu`` or ``cuda[:N]``.
        config: how (defaults for the device when None).
        progress: called after each shape.

    Returns:
        (the trials of every shape measured, notes on what was skipped and why, the method
        in words). The burst is the trial with the highest FLOP/s among them.

    Raises:
        UnsupportedPrecisionError: the device cannot run ``precision`` natively.
        RuntimeError: no shape could be measured (all out of memory or misaligned).
    """
    reason = unsupported_reason(precision, device)
    if reason is not None:
        raise UnsupportedPrecisionError(precision, device, reason)
    cfg = (config or GemmConfig()).resolved("cpu" if device.startswith("cpu") else "cuda")
    libraries = _libraries(precision, device, cfg)
    timer = _timer(device)
    oom = _oom_types()
    sweep_squares = not (config and config.shapes)
    measured: list[ShapeTrials] = []
    notes: list[str] = []
    total = len(cfg.shapes) * len(libraries)
    done = 0
    with float32_math(precision):
        for library in libraries:
            best = 0.0
            idle = 0
            saturated = False
            for item in cfg.shapes:
                done += 1
                desc = f"{precision.value} {library} {item}"
                if saturated and item.label == "square":
                    if progress:
                        progress(f"{desc}: skipped (saturated)", done, total)
                    continue
                try:
                    fn = _make_kernel(precision, item.shape, device, library)
                    per_trial, trial_s = _time_shape(fn, timer, cfg, cfg.trials)
                    del fn
                except ValueError as exc:
                    notes.append(f"{library} {item}: skipped ({exc})")
                    continue
                except oom:
                    notes.append(f"{library} {item}: out of memory")
                    if item.label == "square":
                        saturated = True  # larger squares will not fit either
                    continue
                trials = ShapeTrials(library, item.label, item.shape, per_trial, trial_s)
                measured.append(trials)
                if progress:
                    progress(f"{desc}: {trials.best_flops_per_s / 1e9:,.1f} GFLOP/s", done, total)
                if sweep_squares and item.label == "square":
                    if trials.best_flops_per_s > best * (1 + cfg.saturation_ratio):
                        idle = 0
                    else:
                        idle += 1
                        saturated = idle >= cfg.saturation_patience
                    best = max(best, trials.best_flops_per_s)
    if not measured:
        raise RuntimeError(
            f"no {precision.value} GEMM shape could be measured on {device}: " + "; ".join(notes)
        )
    method = (
        f"{timer.name}; best of {cfg.trials} trials of ≥ {cfg.min_trial_s:g} s per shape after "
        f"≥ {cfg.warmup_s:g} s warm-up; {len({t.shape for t in measured})} shapes "
        f"({', '.join(sorted({t.label for t in measured}))}); libraries: {', '.join(libraries)}"
    )
    return tuple(measured), tuple(notes), method


def _best(trials: Sequence[ShapeTrials]) -> ShapeTrials:
    return max(trials, key=lambda t: t.best_flops_per_s)


def _by_library(trials: Sequence[ShapeTrials]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in trials:
        out[t.library] = max(out.get(t.library, 0.0), t.best_flops_per_s)
    return out


def gemm_peak(
    precision: Precision,
    device: str,
    *,
    device_uuid: str,
    driver_version: str = "",
    cache: PeakCache | None = None,
    refresh: bool = False,
    config: GemmConfig | None = None,
    progress: ProgressFn | None = None,
    software: SoftwareInfo | None = None,
) -> tuple[CachedPeak, CacheOutcome | None, tuple[ShapeTrials, ...], tuple[str, ...]]:
    """The burst peak of ``precision`` on ``device``, from the cache when it has this exact
    device/precision/versions key, else measured (and stored when a cache is given).

    Returns:
        (the peak, the cache outcome or None without a cache, the trials measured now — empty
        on a hit, notes on skipped shapes).

    Raises:
        UnsupportedPrecisionError: the device cannot run ``precision`` natively.
        RuntimeError: no shape could be measured.
    """
    sw = software or software_info(device)
    key = peak_key(precision, device_uuid, driver_version, sw)
    fresh: list[tuple[tuple[ShapeTrials, ...], tuple[str, ...]]] = []

    def measure() -> CachedPeak:
        trials, notes, method = measure_burst(precision, device, config, progress=progress)
        fresh.append((trials, notes))
        best = _best(trials)
        return CachedPeak(
            key=key,
            burst_flops_per_s=best.best_flops_per_s,
            best_shape=best.shape,
            library=best.library,
            method=method,
            measured_unix_ns=time.time_ns(),
            spread_ratio=best.spread_ratio,
            by_library=_by_library(trials),
            device_name=sw.device_name,
        )

    if cache is None:
        peak: CachedPeak = measure()
        return peak, None, fresh[0][0], fresh[0][1]
    peak, outcome = cache.get_or_measure(key, measure, refresh=refresh)
    trials, notes = fresh[0] if fresh else ((), ())
    return peak, outcome, trials, notes


def measure_sustained(
    precision: Precision,
    device: str,
    shape: GemmShape,
    seconds: float,
    *,
    library: Library = "torch",
    wall_ns: Callable[[], int] = time.time_ns,
) -> SustainedRun:
    """Run GEMMs of ``shape`` back to back for ``seconds`` (after a short warm-up).

    On a GPU the GEMMs are queued in chunks of about 0.1 s with the next chunk always queued
    before the previous one is waited for, so the device never idles; the run's length is
    measured with CUDA events. ``start_unix_ns`` / ``end_unix_ns`` bracket the run on the wall
    clock for the sampler's window.

    Raises:
        UnsupportedPrecisionError: the device cannot run ``precision`` natively.
        ValueError: ``seconds`` is not positive, or the shape or library does not suit.
    """
    if not seconds > 0:
        raise ValueError(f"sustain seconds must be > 0, got {seconds}")
    reason = unsupported_reason(precision, device)
    if reason is not None:
        raise UnsupportedPrecisionError(precision, device, reason)
    with float32_math(precision):
        fn = _make_kernel(precision, shape, device, library)
        timer = _timer(device)
        warm = timer.time(fn, 1)
        if device.startswith("cuda"):
            return _sustain_cuda(fn, device, shape, seconds, warm, library, wall_ns)
        start_ns, start = wall_ns(), time.perf_counter()
        deadline = start + seconds
        gemms = 0
        while True:
            fn()
            gemms += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        end_ns = wall_ns()
    return SustainedRun(library, shape, start_ns, end_ns, gemms, gemms * shape.flops, now - start)


def _sustain_cuda(
    fn: Callable[[], object],
    device: str,
    shape: GemmShape,
    seconds: float,
    per_call_s: float,
    library: Library,
    wall_ns: Callable[[], int],
) -> SustainedRun:
    import torch

    chunk = max(1, math.ceil(0.1 / per_call_s)) if per_call_s > 0 else 1
    with torch.cuda.device(torch.device(device)):
        torch.cuda.synchronize()
        first = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start_ns = wall_ns()
        first.record()
        deadline = time.monotonic() + seconds
        gemms = 0
        previous: torch.cuda.Event | None = None
        while True:
            for _ in range(chunk):
                fn()
            gemms += chunk
            last = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            last.record()
            if previous is not None:
                previous.synchronize()  # the chunk just queued keeps the GPU busy meanwhile
            if time.monotonic() >= deadline:
                break
            previous = last
        last.synchronize()
        end_ns = wall_ns()
        device_s = float(first.elapsed_time(last)) / 1e3
    return SustainedRun(library, shape, start_ns, end_ns, gemms, gemms * shape.flops, device_s)


def measure_gemm(
    precision: Precision,
    device: str = "cpu",
    config: GemmConfig | None = None,
    *,
    device_uuid: str = "",
    driver_version: str = "",
    cache: PeakCache | None = None,
    refresh: bool = False,
    progress: ProgressFn | None = None,
    wall_ns: Callable[[], int] = time.time_ns,
) -> GemmMeasurement:
    """Burst (cached or measured) and, when ``config.sustain_s`` > 0, a sustained run at the
    burst's best shape with its best library.

    Args:
        precision: what to measure.
        device: ``cpu`` or ``cuda[:N]``.
        config: how (device defaults when None).
        device_uuid / driver_version: the cache key's device part (needed with ``cache``).
        cache: reuse and store the burst peak here; None measures every time.
        refresh: re-measure the burst even when the cache has it.
        progress: called after each shape of the sweep.
        wall_ns: wall clock for the sustained run's span (injectable).

    Raises:
        UnsupportedPrecisionError: the device cannot run ``precision`` natively.
        RuntimeError: no shape could be measured.
        ValueError: ``cache`` given without ``device_uuid``.
    """
    if cache is not None and not device_uuid:
        raise ValueError("a peak cache needs the device's UUID")
    reason = unsupported_reason(precision, device)
    if reason is not None:
        raise UnsupportedPrecisionError(precision, device, reason)
    sw = software_info(device)
    peak, outcome, trials, notes = gemm_peak(
        precision,
        device,
        device_uuid=device_uuid or "unkeyed",
        driver_version=driver_version,
        cache=cache,
        refresh=refresh,
        config=config,
        progress=progress,
        software=sw,
    )
    sustained = None
    sustain_s = config.sustain_s if config else 0.0
    if sustain_s > 0:
        library: Library = "numpy" if peak.library == "numpy" else "torch"
        sustained = measure_sustained(
            precision, device, peak.best_shape, sustain_s, library=library, wall_ns=wall_ns
        )
    return GemmMeasurement(
        precision=precision.value,
        device=device,
        timing=_timer(device).name,
        burst_flops_per_s=peak.burst_flops_per_s,
        best_shape=peak.best_shape,
        best_library=peak.library,
        burst_spread_ratio=peak.spread_ratio,
        by_library=dict(peak.by_library),
        trials=trials,
        method=peak.method,
        burst_measured_unix_ns=peak.measured_unix_ns,
        cache_outcome="" if outcome is None else outcome.value,
        sustained=sustained,
        software=sw,
        notes=notes,
    )


def gemm_result(measurement: GemmMeasurement, conditions: Conditions | None) -> GemmResult:
    """The wire record of a measurement, with energy from the sustained run's conditions.

    ``energy_per_flop_j`` = energy ÷ FLOPs over the same span (see
    :func:`~flopwatt.analysis.efficiency.energy_per_operation_j`); None when the device gave no
    energy or there was no sustained run. ``sweep`` lists the winning library's shapes.
    """
    m = measurement
    run = m.sustained
    cond = conditions or Conditions()
    energy_per_flop = None
    if run is not None and run.wall_s > 0:
        energy_per_flop = energy_per_operation_j(
            cond.energy_j, cond.window_s, run.flops, run.wall_s
        )
    blas = m.software.library_blas.get(m.best_library, "")
    return GemmResult(
        precision=m.precision,
        backend=f"{m.best_library}: {blas}" if blas else m.best_library,
        burst_flops_per_s=m.burst_flops_per_s,
        best_shape=m.best_shape,
        sweep=tuple(t.point() for t in m.trials if t.library == m.best_library),
        sustained_flops_per_s=None if run is None else run.flops_per_s,
        sustained_s=None if run is None else run.seconds,
        sustained_flops=None if run is None else float(run.flops),
        energy_j=cond.energy_j if run is not None else None,
        energy_per_flop_j=energy_per_flop,
        mean_power_w=cond.mean_power_w if run is not None else None,
        burst_spread_ratio=m.burst_spread_ratio,
        from_cache=m.from_cache,
        measured_unix_ns=m.burst_measured_unix_ns,
    )
