"""The records agent and collector exchange, as plain dataclasses (protobuf only at the wire).

Each record mirrors one message of ``proto/flopwatt/v1``; :mod:`flopwatt.wire` converts between
the two. Units are in every field name; ``None`` means the value is not available (absent, never
zero). Telemetry is columnar: one numpy array per column, absent columns left out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

# --- identity -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftwareVersions:
    """Software on a node; empty string = not present or not detected."""

    driver_version: str = ""
    cuda_version: str = ""
    nvml_version: str = ""
    torch_version: str = ""
    python_version: str = ""
    os: str = ""
    blas: str = ""


@dataclass(frozen=True)
class NodeInfo:
    """The node an agent runs on (``hostname``: the node's name, in Kubernetes the node)."""

    hostname: str
    agent_version: str = ""
    software: SoftwareVersions = field(default_factory=SoftwareVersions)
    device_backend: str = ""


@dataclass(frozen=True)
class DeviceCapabilities:
    """What a device can report, probed once at agent start."""

    energy_counter: bool = False
    power_instant: bool = False
    power_average_1s: bool = False
    memory_temperature: bool = False
    throttle_reasons: bool = False
    ecc: bool = False
    utilization: bool = False
    clocks: bool = False
    gpm: bool = False
    """NVML GPM pipe activity (:data:`GPM_COLUMNS`)."""


class DeviceKind(StrEnum):
    """What kind of device a record describes."""

    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class DeviceInfo:
    """One device at registration. ``uuid`` is the key; ``index`` is for display only."""

    uuid: str
    index: int
    name: str
    kind: DeviceKind = DeviceKind.GPU
    pci_bus_id: str = ""
    pci_device_id: int | None = None
    """NVML packed id: device << 16 | vendor; None when unknown."""
    memory_total_bytes: int = 0
    power_limit_enforced_w: float | None = None
    power_limit_default_w: float | None = None
    power_limit_min_w: float | None = None
    power_limit_max_w: float | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_max_mhz: int | None = None
    capabilities: DeviceCapabilities = field(default_factory=DeviceCapabilities)
    simulated: bool = False
    sim_sku: str = ""
    torch_index: int = -1
    power_usage_is_average: bool = False


# --- telemetry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """A telemetry column: its name (with unit) and element type (little-endian, as on the
    wire and in the store)."""

    name: str
    dtype: np.dtype[Any]


TIMESTAMP_DTYPE: np.dtype[Any] = np.dtype("<i8")
"""Element type of timestamps: int64 ns since the Unix epoch, little-endian."""

#: The telemetry columns besides the timestamps, in wire order.
TELEMETRY_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("power_instant_w", np.dtype("<f8")),
    ColumnSpec("power_average_1s_w", np.dtype("<f8")),
    ColumnSpec("energy_j", np.dtype("<f8")),
    ColumnSpec("sm_clock_mhz", np.dtype("<u4")),
    ColumnSpec("mem_clock_mhz", np.dtype("<u4")),
    ColumnSpec("gpu_temperature_c", np.dtype("<f4")),
    ColumnSpec("memory_temperature_c", np.dtype("<f4")),
    ColumnSpec("gpu_utilization_ratio", np.dtype("<f4")),
    ColumnSpec("memory_utilization_ratio", np.dtype("<f4")),
    ColumnSpec("throttle_reasons", np.dtype("<u8")),
    ColumnSpec("power_limit_w", np.dtype("<f8")),
    ColumnSpec("memory_used_bytes", np.dtype("<u8")),
    # NVML GPM pipe activity (ratios 0–1 over the interval since the previous sample).
    ColumnSpec("sm_active_ratio", np.dtype("<f4")),
    ColumnSpec("sm_occupancy_ratio", np.dtype("<f4")),
    ColumnSpec("tensor_active_ratio", np.dtype("<f4")),
    ColumnSpec("tensor_hmma_active_ratio", np.dtype("<f4")),
    ColumnSpec("tensor_imma_active_ratio", np.dtype("<f4")),
    ColumnSpec("tensor_dfma_active_ratio", np.dtype("<f4")),
    ColumnSpec("fp64_active_ratio", np.dtype("<f4")),
    ColumnSpec("fp32_active_ratio", np.dtype("<f4")),
    ColumnSpec("fp16_active_ratio", np.dtype("<f4")),
    ColumnSpec("dram_bandwidth_ratio", np.dtype("<f4")),
    # Health counters (read every few seconds, repeated in between).
    ColumnSpec("ecc_corrected_volatile_total", np.dtype("<u8")),
    ColumnSpec("ecc_uncorrected_volatile_total", np.dtype("<u8")),
    ColumnSpec("remapped_rows_correctable_total", np.dtype("<u8")),
    ColumnSpec("remapped_rows_uncorrectable_total", np.dtype("<u8")),
    ColumnSpec("row_remap_pending", np.dtype("<u8")),
    ColumnSpec("row_remap_failed", np.dtype("<u8")),
    ColumnSpec("pcie_replay_total", np.dtype("<u8")),
    ColumnSpec("nvlink_crc_errors_total", np.dtype("<u8")),
    ColumnSpec("xid_events_total", np.dtype("<u8")),
    ColumnSpec("xid_last", np.dtype("<u8")),
    ColumnSpec("nvlink_replay_errors_total", np.dtype("<u8")),
    ColumnSpec("nvlink_recovery_errors_total", np.dtype("<u8")),
)
"""Every telemetry column, in wire and storage order: a new column is only ever appended (the
stored chunks' column bitmaps index this tuple)."""
GPM_COLUMNS: tuple[str, ...] = (
    "sm_active_ratio",
    "sm_occupancy_ratio",
    "tensor_active_ratio",
    "tensor_hmma_active_ratio",
    "tensor_imma_active_ratio",
    "tensor_dfma_active_ratio",
    "fp64_active_ratio",
    "fp32_active_ratio",
    "fp16_active_ratio",
    "dram_bandwidth_ratio",
)
"""The columns NVML GPM fills (absent on devices without GPM)."""
HEALTH_COLUMNS: tuple[str, ...] = (
    "ecc_corrected_volatile_total",
    "ecc_uncorrected_volatile_total",
    "remapped_rows_correctable_total",
    "remapped_rows_uncorrectable_total",
    "row_remap_pending",
    "row_remap_failed",
    "pcie_replay_total",
    "nvlink_crc_errors_total",
    "xid_events_total",
    "xid_last",
    "nvlink_replay_errors_total",
    "nvlink_recovery_errors_total",
)
"""Health counters: what names a bad GPU besides its efficiency."""
assert len(TELEMETRY_COLUMNS) <= 63, "chunk bitmaps are 64-bit, built in signed int64 arrays"
COLUMN_DTYPES: dict[str, np.dtype[Any]] = {c.name: c.dtype for c in TELEMETRY_COLUMNS}
TELEMETRY_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in TELEMETRY_COLUMNS)
POWER_COLUMNS: tuple[str, ...] = ("power_instant_w", "power_average_1s_w")


@dataclass(frozen=True)
class DeviceSeries:
    """Consecutive samples of one device, column by column.

    ``columns`` holds only the columns available for these samples; each array has the same
    length as ``timestamp_unix_ns`` (wall clock, ns since the Unix epoch).
    """

    device_uuid: str
    timestamp_unix_ns: npt.NDArray[np.int64]
    columns: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.timestamp_unix_ns.shape[0])

    def column(self, name: str) -> npt.NDArray[Any] | None:
        """The named column, or None when it is absent for these samples."""
        return self.columns.get(name)

    def take(self, mask: npt.NDArray[np.bool_]) -> DeviceSeries:
        """The samples where ``mask`` is true (same columns)."""
        return DeviceSeries(
            self.device_uuid,
            self.timestamp_unix_ns[mask],
            MappingProxyType({k: v[mask] for k, v in self.columns.items()}),
        )


@dataclass(frozen=True)
class SeriesBlock:
    """Several devices' series that share one column set, concatenated column by column.

    Device ``device_uuids[i]`` owns rows ``offsets[i]:offsets[i + 1]``. Blocks let the collector
    validate and store a whole batch with a handful of array operations instead of a handful per
    device; :meth:`series` gives the per-device views.
    """

    device_uuids: tuple[str, ...]
    offsets: npt.NDArray[np.int64]
    timestamp_unix_ns: npt.NDArray[np.int64]
    columns: Mapping[str, npt.NDArray[Any]]

    def __len__(self) -> int:
        return int(self.timestamp_unix_ns.shape[0])

    def series(self) -> tuple[DeviceSeries, ...]:
        """Per-device views (no copies)."""
        out = []
        bounds = self.offsets.tolist()
        for i, uuid in enumerate(self.device_uuids):
            a, b = bounds[i], bounds[i + 1]
            out.append(
                DeviceSeries(
                    uuid,
                    self.timestamp_unix_ns[a:b],
                    {k: v[a:b] for k, v in self.columns.items()},
                )
            )
        return tuple(out)

    def device_index(self) -> npt.NDArray[np.int64]:
        """For each row, the index of its device in ``device_uuids``."""
        return np.repeat(np.arange(len(self.device_uuids)), np.diff(self.offsets))

    def take(self, keep: npt.NDArray[np.bool_]) -> SeriesBlock:
        """The rows where ``keep`` is true; devices left with no rows keep an empty range."""
        kept = np.bincount(self.device_index()[keep], minlength=len(self.device_uuids))
        offsets = np.zeros(len(self.device_uuids) + 1, dtype=np.int64)
        np.cumsum(kept, out=offsets[1:])
        return SeriesBlock(
            self.device_uuids,
            offsets,
            self.timestamp_unix_ns[keep],
            {k: v[keep] for k, v in self.columns.items()},
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as raw little-endian bytes: several times cheaper than numpy's own reduction,
        # which matters when blocks cross to the writer process.
        return (
            _block_from_bytes,
            (
                self.device_uuids,
                self.offsets.astype("<i8").tobytes(),
                self.timestamp_unix_ns.astype(TIMESTAMP_DTYPE).tobytes(),
                tuple((k, v.dtype.str, v.tobytes()) for k, v in self.columns.items()),
            ),
        )

    @classmethod
    def concat(cls, series: Sequence[DeviceSeries]) -> SeriesBlock:
        """One block from series that all have the same columns.

        Raises:
            ValueError: the series do not share one column set.
        """
        names = tuple(series[0].columns) if series else ()
        if any(set(s.columns) != set(names) for s in series):
            raise ValueError("series in one block must share their columns")
        lengths = [len(s) for s in series]
        offsets = np.zeros(len(series) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            tuple(s.device_uuid for s in series),
            offsets,
            np.concatenate([s.timestamp_unix_ns for s in series])
            if series
            else np.zeros(0, np.int64),
            {n: np.concatenate([s.columns[n] for s in series]) for n in names},
        )


def _block_from_bytes(
    uuids: tuple[str, ...],
    offsets: bytes,
    timestamps: bytes,
    columns: tuple[tuple[str, str, bytes], ...],
) -> SeriesBlock:
    return SeriesBlock(
        uuids,
        np.frombuffer(offsets, "<i8"),
        np.frombuffer(timestamps, TIMESTAMP_DTYPE),
        {name: np.frombuffer(raw, dtype) for name, dtype, raw in columns},
    )


class _BlockSeries(Sequence[DeviceSeries]):
    """The per-device views of some blocks, created only when someone asks for them."""

    def __init__(self, blocks: tuple[SeriesBlock, ...]) -> None:
        self._blocks = blocks
        self._series: tuple[DeviceSeries, ...] | None = None

    def _all(self) -> tuple[DeviceSeries, ...]:
        if self._series is None:
            self._series = tuple(s for b in self._blocks for s in b.series())
        return self._series

    def __len__(self) -> int:
        return sum(len(b.device_uuids) for b in self._blocks)

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]

    def __iter__(self) -> Iterator[DeviceSeries]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(self._all())


@dataclass(frozen=True)
class TelemetryBatch:
    """A batch of series (about one per second per agent).

    ``blocks`` is an optional grouped form of the same samples (see :class:`SeriesBlock`); the
    wire layer fills it when decoding, and :meth:`as_blocks` builds it when absent.
    """

    series: Sequence[DeviceSeries]
    missed_ticks: int = 0
    blocks: tuple[SeriesBlock, ...] = field(default=(), compare=False, repr=False)

    @property
    def samples(self) -> int:
        """Total samples in the batch (one sample = one timestamp of one device)."""
        if self.blocks:
            return sum(len(b) for b in self.blocks)
        return sum(len(s) for s in self.series)

    @classmethod
    def from_blocks(cls, blocks: Sequence[SeriesBlock], missed_ticks: int = 0) -> TelemetryBatch:
        """A batch whose per-device series are views into ``blocks``, built on first use."""
        return cls(_BlockSeries(tuple(blocks)), missed_ticks, tuple(blocks))

    def as_blocks(self) -> tuple[SeriesBlock, ...]:
        """The samples grouped into blocks of series with the same column set (in order)."""
        if self.blocks or not self.series:
            return self.blocks
        groups: dict[frozenset[str], list[DeviceSeries]] = {}
        for s in self.series:
            groups.setdefault(frozenset(s.columns), []).append(s)
        return tuple(SeriesBlock.concat(g) for g in groups.values())


# --- jobs -----------------------------------------------------------------------------------


class JobKind(StrEnum):
    """The benchmark a job runs."""

    GEMM = "gemm"
    MODEL = "model"


@dataclass(frozen=True)
class GemmJobSpec:
    """GEMM peak: burst sweep per precision, then a sustained run of ``sustain_s`` seconds."""

    precisions: tuple[str, ...] = ()
    max_size: int = 0
    sustain_s: float = 0.0
    refresh: bool = False


@dataclass(frozen=True)
class ModelJobSpec:
    """Model efficiency over torchvision models with random weights."""

    models: tuple[str, ...] = ()
    batches: tuple[int, ...] = ()
    precision: str = ""
    warmup: int = 0
    runs: int = 0


@dataclass(frozen=True)
class JobSpec:
    """What to run and on which devices (empty ``device_uuids`` = all of the agent's)."""

    gemm: GemmJobSpec | None = None
    model: ModelJobSpec | None = None
    device_uuids: tuple[str, ...] = ()

    @property
    def kind(self) -> JobKind | None:
        """The job kind, or None when the spec names none."""
        if self.gemm is not None:
            return JobKind.GEMM
        if self.model is not None:
            return JobKind.MODEL
        return None


@dataclass(frozen=True)
class GemmShape:
    """C[m×n] = A[m×k]·B[k×n]; 2·m·n·k FLOPs."""

    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        """FLOPs of one GEMM of this shape (2·m·n·k)."""
        return 2 * self.m * self.n * self.k


@dataclass(frozen=True)
class GemmPoint:
    """One point of a GEMM sweep."""

    shape: GemmShape
    best_s: float
    median_s: float
    best_flops_per_s: float


@dataclass(frozen=True)
class Conditions:
    """Conditions over a job's own timing window (see ``common.proto``)."""

    sm_clock_min_mhz: float | None = None
    sm_clock_mean_mhz: float | None = None
    mem_clock_mean_mhz: float | None = None
    power_limit_w: float | None = None
    temperature_max_c: float | None = None
    temperature_mean_c: float | None = None
    throttle_reasons_seen: int = 0
    energy_j: float | None = None
    mean_power_w: float | None = None
    energy_from_counter: bool = False
    window_s: float | None = None
    driver_version: str = ""
    cuda_version: str = ""
    torch_version: str = ""
    blas: str = ""
    cpu_threads: int = 0
    other_processes: tuple[str, ...] = ()
    simulated: bool = False


@dataclass(frozen=True)
class GemmResult:
    """GEMM peak for one device and precision: burst (best of the sweep) and sustained."""

    precision: str
    backend: str
    burst_flops_per_s: float
    best_shape: GemmShape
    sweep: tuple[GemmPoint, ...] = ()
    sustained_flops_per_s: float | None = None
    sustained_s: float | None = None
    sustained_flops: float | None = None
    energy_j: float | None = None
    energy_per_flop_j: float | None = None
    mean_power_w: float | None = None
    burst_spread_ratio: float | None = None
    from_cache: bool = False
    measured_unix_ns: int = 0


@dataclass(frozen=True)
class ModelResult:
    """Model efficiency for one device, model, batch and precision (per whole-batch forward)."""

    model: str
    batch: int
    precision: str
    input_size: int
    flops: float
    macs: float
    latency_p50_s: float
    latency_p90_s: float
    latency_p99_s: float
    latency_mean_s: float
    latency_std_s: float
    runs: int
    throughput_samples_per_s: float
    delivered_flops_per_s: float
    peak_flops_per_s: float | None = None
    peak_source: str = ""
    efficiency_ratio: float | None = None
    spec_efficiency_ratio: float | None = None
    energy_per_inference_j: float | None = None
    mean_power_w: float | None = None
    arithmetic_intensity_flops_per_byte: float | None = None


@dataclass(frozen=True)
class JobResult:
    """A finished job's result on one device (exactly one of ``gemm`` / ``model``)."""

    job_id: str
    device_uuid: str
    gemm: GemmResult | None = None
    model: ModelResult | None = None
    conditions: Conditions = field(default_factory=Conditions)
    started_unix_ns: int = 0
    finished_unix_ns: int = 0

    @property
    def kind(self) -> JobKind | None:
        """Which result this is, or None when neither is set."""
        if self.gemm is not None:
            return JobKind.GEMM
        if self.model is not None:
            return JobKind.MODEL
        return None


class JobState(IntEnum):
    """Lifecycle of a job on one agent (values are the wire enum's)."""

    UNSPECIFIED = 0
    QUEUED = 1
    DELIVERED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    UNAVAILABLE = 6

    @property
    def final(self) -> bool:
        """True once nothing more will happen to the job on that agent."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.UNAVAILABLE)


@dataclass(frozen=True)
class JobStatus:
    """A job status update from an agent."""

    job_id: str
    state: JobState
    message: str = ""
    progress_ratio: float = 0.0


# --- attribution: who uses each GPU ---------------------------------------------------------

ATTRIBUTION_MAX_PROCESSES = 64
"""Most processes one device's attribution may list (the agent keeps the busiest)."""
FLOPWATT_PROCESS = "flopwatt"
"""The name the agent gives its own process (its benchmark jobs run in it)."""
NO_PROCESS_JOB = "(no process)"
"""The job of a GPU nobody used: its process list is known and empty, and no pod holds it."""
UNKNOWN_JOB = "(unknown)"
"""The job of a GPU whose processes cannot be listed and that no pod holds."""
ATTRIBUTION_MAX_TEXT = 253
"""Longest namespace, pod, container or process name accepted (a DNS subdomain's limit)."""


@dataclass(frozen=True)
class GpuProcess:
    """One process with a compute context on a GPU."""

    pid: int
    """Process id as the agent sees it (the host's PID namespace when the agent runs with
    ``hostPID``, as NVML reports host PIDs)."""
    name: str = ""
    """Command name (``/proc/PID/comm``, at most 15 characters on Linux); "" when unreadable."""
    used_memory_bytes: int | None = None
    """GPU memory the process holds (bytes); None where NVML does not say (e.g. under MIG or
    without permission)."""
    sm_utilization_ratio: float | None = None
    """Share of the last few seconds in which one of this process's kernels ran on the GPU
    (NVML per-process SM utilisation, 0–1); None where NVML gives no per-process sample."""


def busiest(processes: Sequence[GpuProcess], n: int) -> list[GpuProcess]:
    """The ``n`` busiest of ``processes``: by SM utilisation, then memory held (unknown counts
    below any known value), then pid for a stable order."""
    return sorted(
        processes,
        key=lambda p: (
            1.0 if p.sm_utilization_ratio is None else -p.sm_utilization_ratio,
            1 if p.used_memory_bytes is None else -p.used_memory_bytes,
            p.pid,
        ),
    )[:n]


@dataclass(frozen=True)
class PodRef:
    """The Kubernetes container a GPU is allocated to (from the kubelet pod-resources API)."""

    namespace: str
    pod: str
    container: str


@dataclass(frozen=True)
class DeviceAttribution:
    """Who uses one device at one instant."""

    device_uuid: str
    processes: tuple[GpuProcess, ...] = ()
    processes_known: bool = False
    """Whether the process list was read. False (not supported, no permission, a backend with
    no notion of processes): an empty ``processes`` means unknown, not idle."""
    pod: PodRef | None = None
    """The container the GPU is allocated to; None outside Kubernetes or when unallocated."""

    @property
    def job(self) -> str:
        """A name for the workload: ``flopwatt`` while flopwatt's own benchmark runs on the
        GPU (it holds the GPU then, whichever pod it is allocated to); else
        ``namespace/pod/container`` when the GPU is allocated to a pod; else the sorted
        distinct process names joined by ``+``; else ``(no process)`` when the list is known
        and empty, ``(unknown)`` when it is not known."""
        names = {p.name or f"pid {p.pid}" for p in self.processes}
        if FLOPWATT_PROCESS in names:
            return FLOPWATT_PROCESS
        if self.pod is not None:
            return f"{self.pod.namespace}/{self.pod.pod}/{self.pod.container}"
        if names:
            return "+".join(sorted(names))
        return NO_PROCESS_JOB if self.processes_known else UNKNOWN_JOB


@dataclass(frozen=True)
class Attribution:
    """Who used each of a node's devices at ``observed_unix_ns`` (sent when it changes, and
    refreshed periodically with the processes' utilisation)."""

    observed_unix_ns: int
    devices: tuple[DeviceAttribution, ...] = ()


# --- stream ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamHello:
    """First message of a stream."""

    agent_id: str
    epoch: int
    pending_epochs: tuple[int, ...] = ()


@dataclass(frozen=True)
class Dropped:
    """Tombstone for a telemetry message the agent dropped from a full spool."""

    reason: str
    samples: int
    original_kind: str = "telemetry"


@dataclass(frozen=True)
class Heartbeat:
    """Liveness when nothing else is sent."""

    sent_unix_ns: int


Payload = StreamHello | TelemetryBatch | JobResult | JobStatus | Heartbeat | Dropped | Attribution


@dataclass(frozen=True)
class AgentMessage:
    """One sequenced agent message: (epoch, sequence) is its identity for exactly-once storage."""

    epoch: int
    sequence: int
    payload: Payload

    @property
    def kind(self) -> str:
        """Payload kind as stored: telemetry, job_result, job_status, heartbeat, dropped, hello,
        attribution."""
        return _PAYLOAD_KIND[type(self.payload)]


_PAYLOAD_KIND: dict[type, str] = {
    StreamHello: "hello",
    TelemetryBatch: "telemetry",
    JobResult: "job_result",
    JobStatus: "job_status",
    Heartbeat: "heartbeat",
    Dropped: "dropped",
    Attribution: "attribution",
}


@dataclass(frozen=True)
class AgentSettings:
    """Settings the collector asks an agent to use."""

    sample_interval_s: float = 0.1
    batch_interval_s: float = 1.0


@dataclass(frozen=True)
class RegisterRequest:
    """Node, devices and this run's epoch."""

    node: NodeInfo
    devices: tuple[DeviceInfo, ...]
    epoch: int


@dataclass(frozen=True)
class RegisterResponse:
    """The id the collector knows the agent by, its settings and its message size limit."""

    agent_id: str
    settings: AgentSettings
    max_message_bytes: int = 0
    """Largest serialised agent message the collector accepts (bytes); 0: not said (8 MiB)."""


@dataclass(frozen=True)
class Ack:
    """Everything through ``committed_through`` in ``epoch`` is durably stored."""

    epoch: int
    committed_through: int


@dataclass(frozen=True)
class RunJob:
    """Command: run a job."""

    job_id: str
    spec: JobSpec


@dataclass(frozen=True)
class SetSampleInterval:
    """Command: change the sampling period (s)."""

    sample_interval_s: float


@dataclass(frozen=True)
class Command:
    """A command from the collector to an agent."""

    command_id: str
    action: RunJob | SetSampleInterval


@dataclass(frozen=True)
class SampleRejection:
    """Samples of one device the collector did not store, and why (a validation reason)."""

    device_uuid: str
    reason: str
    samples: int


@dataclass(frozen=True)
class Rejection:
    """What the collector did not store of message (epoch, sequence): the whole message
    (``message_rejected``, with ``detail``), or some of its samples."""

    epoch: int
    sequence: int
    message_rejected: bool = False
    detail: str = ""
    samples: tuple[SampleRejection, ...] = ()


CollectorPayload = Ack | Command | Rejection
