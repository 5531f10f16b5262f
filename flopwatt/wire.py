"""Conversion between :mod:`flopwatt.records` and the protobuf messages of ``flopwatt.v1``.

One ``*_to_proto`` / ``*_from_proto`` pair per message, round-trip tested. ``from_proto``
functions check structure (a payload is set, column lengths agree, enums are known) and raise
:class:`WireError` for a structurally broken message; servers map it to ``INVALID_ARGUMENT``.
Value checks (NaN or negative watts, future timestamps) are not done here: they are per sample
and belong to the collector's validation.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, NoReturn

import numpy as np

from flopwatt.records import (
    COLUMN_DTYPES,
    TELEMETRY_COLUMNS,
    TIMESTAMP_DTYPE,
    Ack,
    AgentMessage,
    AgentSettings,
    Attribution,
    CollectorPayload,
    Command,
    Conditions,
    DeviceAttribution,
    DeviceCapabilities,
    DeviceInfo,
    DeviceKind,
    DeviceSeries,
    Dropped,
    GemmJobSpec,
    GemmPoint,
    GemmResult,
    GemmShape,
    GpuProcess,
    Heartbeat,
    JobResult,
    JobSpec,
    JobState,
    JobStatus,
    ModelJobSpec,
    ModelResult,
    NodeInfo,
    PodRef,
    RegisterRequest,
    RegisterResponse,
    Rejection,
    RunJob,
    SampleRejection,
    SeriesBlock,
    SetSampleInterval,
    SoftwareVersions,
    StreamHello,
    TelemetryBatch,
)
from flopwatt.v1 import agent_pb2, attribution_pb2, common_pb2, jobs_pb2, telemetry_pb2

MAX_SERIES_SAMPLES = 1_000_000
"""Upper bound on samples in one series; larger is refused as oversized."""


class WireError(ValueError):
    """A structurally broken message (maps to gRPC ``INVALID_ARGUMENT``)."""


class WireTooLargeError(WireError):
    """A message too large to accept (maps to gRPC ``RESOURCE_EXHAUSTED``)."""


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def _set_opt(msg: Any, name: str, value: Any) -> None:
    if value is not None:
        setattr(msg, name, value)


# --- identity -------------------------------------------------------------------------------


def software_to_proto(s: SoftwareVersions) -> common_pb2.SoftwareVersions:
    return common_pb2.SoftwareVersions(
        driver_version=s.driver_version,
        cuda_version=s.cuda_version,
        nvml_version=s.nvml_version,
        torch_version=s.torch_version,
        python_version=s.python_version,
        os=s.os,
        blas=s.blas,
    )


def software_from_proto(m: common_pb2.SoftwareVersions) -> SoftwareVersions:
    return SoftwareVersions(
        driver_version=m.driver_version,
        cuda_version=m.cuda_version,
        nvml_version=m.nvml_version,
        torch_version=m.torch_version,
        python_version=m.python_version,
        os=m.os,
        blas=m.blas,
    )


def node_to_proto(n: NodeInfo) -> common_pb2.NodeInfo:
    return common_pb2.NodeInfo(
        hostname=n.hostname,
        agent_version=n.agent_version,
        software=software_to_proto(n.software),
        device_backend=n.device_backend,
    )


def node_from_proto(m: common_pb2.NodeInfo) -> NodeInfo:
    if not m.hostname.strip():
        raise WireError("node.hostname is empty")
    return NodeInfo(
        hostname=m.hostname,
        agent_version=m.agent_version,
        software=software_from_proto(m.software),
        device_backend=m.device_backend,
    )


# Every capability crosses the wire by name (a field added to one side only fails the round-trip
# tests rather than being dropped silently).
_CAP_FIELDS = tuple(f.name for f in dataclasses.fields(DeviceCapabilities))


def capabilities_to_proto(c: DeviceCapabilities) -> common_pb2.DeviceCapabilities:
    return common_pb2.DeviceCapabilities(**{f: getattr(c, f) for f in _CAP_FIELDS})


def capabilities_from_proto(m: common_pb2.DeviceCapabilities) -> DeviceCapabilities:
    return DeviceCapabilities(**{f: getattr(m, f) for f in _CAP_FIELDS})


_KIND_TO_PROTO = {
    DeviceKind.GPU: common_pb2.DEVICE_KIND_GPU,
    DeviceKind.CPU: common_pb2.DEVICE_KIND_CPU,
}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}
_DEVICE_OPTIONALS = (
    "power_limit_enforced_w",
    "power_limit_default_w",
    "power_limit_min_w",
    "power_limit_max_w",
    "sm_clock_max_mhz",
    "mem_clock_max_mhz",
)


def device_to_proto(d: DeviceInfo) -> common_pb2.DeviceInfo:
    m = common_pb2.DeviceInfo(
        uuid=d.uuid,
        index=d.index,
        name=d.name,
        pci_bus_id=d.pci_bus_id,
        pci_device_id=d.pci_device_id or 0,
        memory_total_bytes=d.memory_total_bytes,
        capabilities=capabilities_to_proto(d.capabilities),
        kind=_KIND_TO_PROTO[d.kind],
        simulated=d.simulated,
        sim_sku=d.sim_sku,
        torch_index=d.torch_index,
        power_usage_is_average=d.power_usage_is_average,
    )
    for name in _DEVICE_OPTIONALS:
        _set_opt(m, name, getattr(d, name))
    return m


def device_from_proto(m: common_pb2.DeviceInfo) -> DeviceInfo:
    if not m.uuid.strip():
        raise WireError(f"device {m.index} has an empty uuid")
    if m.kind not in _KIND_FROM_PROTO:
        raise WireError(f"device {m.uuid}: unknown kind {m.kind}")
    return DeviceInfo(
        uuid=m.uuid,
        index=m.index,
        name=m.name,
        kind=_KIND_FROM_PROTO[m.kind],
        pci_bus_id=m.pci_bus_id,
        pci_device_id=m.pci_device_id or None,
        memory_total_bytes=m.memory_total_bytes,
        capabilities=capabilities_from_proto(m.capabilities),
        simulated=m.simulated,
        sim_sku=m.sim_sku,
        torch_index=m.torch_index,
        power_usage_is_average=m.power_usage_is_average,
        **{name: _opt(m, name) for name in _DEVICE_OPTIONALS},
    )


# --- telemetry ------------------------------------------------------------------------------


def _le_bytes(values: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> bytes:
    return values.astype(dtype, copy=False).tobytes()


def series_to_proto(s: DeviceSeries) -> telemetry_pb2.DeviceSeries:
    m = telemetry_pb2.DeviceSeries(
        device_uuid=s.device_uuid,
        timestamp_unix_ns=_le_bytes(s.timestamp_unix_ns, TIMESTAMP_DTYPE),
    )
    for spec in TELEMETRY_COLUMNS:
        col = s.columns.get(spec.name)
        if col is not None:
            setattr(m, spec.name, _le_bytes(col, spec.dtype))
    return m


def series_from_proto(m: telemetry_pb2.DeviceSeries) -> DeviceSeries:
    """Decode one series (see :func:`telemetry_from_proto` for whole batches)."""
    fields = _checked_fields(m)
    n = len(fields.get("timestamp_unix_ns", b"")) // TIMESTAMP_DTYPE.itemsize
    ts = np.frombuffer(fields.get("timestamp_unix_ns", b""), TIMESTAMP_DTYPE)
    columns = {
        spec.name: np.frombuffer(fields[spec.name], spec.dtype, count=n)
        for spec in TELEMETRY_COLUMNS
        if spec.name in fields
    }
    return DeviceSeries(m.device_uuid, ts, columns)


def telemetry_to_proto(b: TelemetryBatch) -> telemetry_pb2.TelemetryBatch:
    return telemetry_pb2.TelemetryBatch(
        series=[series_to_proto(s) for s in b.series], missed_ticks=b.missed_ticks
    )


_COLUMN_GETTERS = tuple((spec, operator.attrgetter(spec.name)) for spec in TELEMETRY_COLUMNS)
_TS_GETTER = operator.attrgetter("timestamp_unix_ns")
_UUID_GETTER = operator.attrgetter("device_uuid")
_SERIES_GETTER = operator.attrgetter(
    "device_uuid", "timestamp_unix_ns", *(spec.name for spec in TELEMETRY_COLUMNS)
)

SeriesFields = tuple[Any, ...]
"""One series' raw fields: (device uuid, packed timestamps, then each column's packed bytes
in :data:`~flopwatt.records.TELEMETRY_COLUMNS` order, ``b""`` where absent)."""

SERIES_FIELD_COUNT = 2 + len(TELEMETRY_COLUMNS)


def series_fields(m: telemetry_pb2.TelemetryBatch) -> list[SeriesFields]:
    """Every series of ``m`` as its raw fields (see :data:`SeriesFields`), unchecked.

    One attribute fetch per series: a collector's writer checks the lengths of a whole
    commit's series with one array operation and packs chunks straight from these bytes
    (the wire's packed arrays are the stored chunk's little-endian layout).
    """
    return list(map(_SERIES_GETTER, m.series))


def telemetry_from_proto(m: telemetry_pb2.TelemetryBatch) -> TelemetryBatch:
    """Decode a batch into blocks of series that share their columns.

    Each column of a block is one ``numpy.frombuffer`` over the series' concatenated bytes: no
    per-value Python objects, which is what keeps decoding cheap at thousands of batches per
    second. The common case — every series carries the same columns — is decoded in one pass
    over the columns; anything else is grouped series by series.

    Raises:
        WireError: a series without device uuid, or a column whose length does not match the
            timestamps.
        WireTooLargeError: a series above :data:`MAX_SERIES_SAMPLES` samples.
    """
    series = list(m.series)
    if not series:
        return TelemetryBatch.from_blocks((), m.missed_ticks)
    block = _uniform_block(series)
    if block is not None:
        return TelemetryBatch.from_blocks((block,), m.missed_ticks)
    runs: list[tuple[frozenset[str], list[telemetry_pb2.DeviceSeries]]] = []
    for s in series:
        signature = frozenset(_checked_fields(s))
        if runs and runs[-1][0] == signature:
            runs[-1][1].append(s)
        else:
            runs.append((signature, [s]))
    blocks = []
    for _, members in runs:
        uniform = _uniform_block(members)
        if uniform is None:  # pragma: no cover - members share their columns by construction
            raise WireError("telemetry series could not be grouped by columns")
        blocks.append(uniform)
    return TelemetryBatch.from_blocks(blocks, m.missed_ticks)


def _uniform_block(series: list[telemetry_pb2.DeviceSeries]) -> SeriesBlock | None:
    """One block for series that all carry the same columns with consistent lengths (one join
    and one zero-copy view per column); None when they do not (the caller then checks series by
    series, raising the precise error).

    Raises:
        WireError: a series without device uuid or with a partial timestamp.
        WireTooLargeError: a series above :data:`MAX_SERIES_SAMPLES` samples.
    """
    uuids = list(map(_UUID_GETTER, series))
    ts_parts = list(map(_TS_GETTER, series))
    ts_bytes = list(map(len, ts_parts))
    if not all(uuids) or any(n % 8 for n in ts_bytes):
        _raise_precise(series)
    lengths = [n >> 3 for n in ts_bytes]
    if max(lengths) > MAX_SERIES_SAMPLES:
        _raise_precise(series)
    expected = {1: lengths, 4: [n * 4 for n in lengths], 8: ts_bytes}
    columns = {}
    for spec, getter in _COLUMN_GETTERS:
        parts = list(map(getter, series))
        sizes = list(map(len, parts))
        if not any(sizes):
            continue
        if sizes != expected[spec.dtype.itemsize]:
            return None  # mixed columns or a bad length: the grouping path sorts out which
        columns[spec.name] = np.frombuffer(b"".join(parts), spec.dtype)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ts = np.frombuffer(b"".join(ts_parts), TIMESTAMP_DTYPE)
    return SeriesBlock(tuple(uuids), offsets, ts, columns)


def _raise_precise(series: list[telemetry_pb2.DeviceSeries]) -> NoReturn:
    for s in series:
        _checked_fields(s)
    raise WireError("malformed telemetry series")  # pragma: no cover - _checked_fields raised


def _checked_fields(m: telemetry_pb2.DeviceSeries) -> dict[str, Any]:
    """The fields a series sets (name → value), after checking its structure."""
    fields = {d.name: v for d, v in m.ListFields()}
    uuid = fields.get("device_uuid")
    if not uuid:
        raise WireError("telemetry series without device_uuid")
    ts_bytes = len(fields.get("timestamp_unix_ns", b""))
    if ts_bytes % TIMESTAMP_DTYPE.itemsize:
        raise WireError(f"series for {uuid}: timestamp_unix_ns is not a whole number of int64")
    n = ts_bytes // TIMESTAMP_DTYPE.itemsize
    if n > MAX_SERIES_SAMPLES:
        raise WireTooLargeError(f"series for {uuid} has {n} samples (max {MAX_SERIES_SAMPLES})")
    for name, value in fields.items():
        dtype = COLUMN_DTYPES.get(name)
        if dtype is not None and len(value) != n * dtype.itemsize:
            raise WireError(
                f"series for {uuid}: column {name} has {len(value)} bytes, "
                f"not {n} × {dtype.itemsize} for {n} timestamps"
            )
    return fields


# --- jobs -----------------------------------------------------------------------------------


def job_spec_to_proto(s: JobSpec) -> jobs_pb2.JobSpec:
    m = jobs_pb2.JobSpec(device_uuids=list(s.device_uuids))
    if s.gemm is not None:
        m.gemm.CopyFrom(
            jobs_pb2.GemmJobSpec(
                precisions=list(s.gemm.precisions),
                max_size=s.gemm.max_size,
                sustain_s=s.gemm.sustain_s,
                refresh=s.gemm.refresh,
            )
        )
    elif s.model is not None:
        m.model.CopyFrom(
            jobs_pb2.ModelJobSpec(
                models=list(s.model.models),
                batches=list(s.model.batches),
                precision=s.model.precision,
                warmup=s.model.warmup,
                runs=s.model.runs,
            )
        )
    return m


def job_spec_from_proto(m: jobs_pb2.JobSpec) -> JobSpec:
    kind = m.WhichOneof("kind")
    if kind == "gemm":
        g = m.gemm
        return JobSpec(
            gemm=GemmJobSpec(tuple(g.precisions), g.max_size, g.sustain_s, g.refresh),
            device_uuids=tuple(m.device_uuids),
        )
    if kind == "model":
        d = m.model
        return JobSpec(
            model=ModelJobSpec(tuple(d.models), tuple(d.batches), d.precision, d.warmup, d.runs),
            device_uuids=tuple(m.device_uuids),
        )
    raise WireError("job spec names no job kind (gemm or model)")


def _shape_to_proto(s: GemmShape) -> jobs_pb2.GemmShape:
    return jobs_pb2.GemmShape(m=s.m, n=s.n, k=s.k)


def _shape_from_proto(m: jobs_pb2.GemmShape) -> GemmShape:
    return GemmShape(m.m, m.n, m.k)


_COND_OPTIONALS = (
    "sm_clock_min_mhz",
    "sm_clock_mean_mhz",
    "mem_clock_mean_mhz",
    "power_limit_w",
    "temperature_max_c",
    "temperature_mean_c",
    "energy_j",
    "mean_power_w",
    "window_s",
)
_COND_PLAIN = (
    "throttle_reasons_seen",
    "energy_from_counter",
    "driver_version",
    "cuda_version",
    "torch_version",
    "blas",
    "cpu_threads",
    "simulated",
)


def conditions_to_proto(c: Conditions) -> common_pb2.Conditions:
    m = common_pb2.Conditions(
        other_processes=list(c.other_processes), **{f: getattr(c, f) for f in _COND_PLAIN}
    )
    for name in _COND_OPTIONALS:
        _set_opt(m, name, getattr(c, name))
    return m


def conditions_from_proto(m: common_pb2.Conditions) -> Conditions:
    return Conditions(
        other_processes=tuple(m.other_processes),
        **{f: getattr(m, f) for f in _COND_PLAIN},
        **{f: _opt(m, f) for f in _COND_OPTIONALS},
    )


_GEMM_OPTIONALS = (
    "sustained_flops_per_s",
    "sustained_s",
    "sustained_flops",
    "energy_j",
    "energy_per_flop_j",
    "mean_power_w",
    "burst_spread_ratio",
)


def gemm_result_to_proto(r: GemmResult) -> jobs_pb2.GemmResult:
    m = jobs_pb2.GemmResult(
        precision=r.precision,
        backend=r.backend,
        burst_flops_per_s=r.burst_flops_per_s,
        best_shape=_shape_to_proto(r.best_shape),
        from_cache=r.from_cache,
        measured_unix_ns=r.measured_unix_ns,
        sweep=[
            jobs_pb2.GemmPoint(
                shape=_shape_to_proto(p.shape),
                best_s=p.best_s,
                median_s=p.median_s,
                best_flops_per_s=p.best_flops_per_s,
            )
            for p in r.sweep
        ],
    )
    for name in _GEMM_OPTIONALS:
        _set_opt(m, name, getattr(r, name))
    return m


def gemm_result_from_proto(m: jobs_pb2.GemmResult) -> GemmResult:
    if not m.precision:
        raise WireError("GEMM result without precision")
    return GemmResult(
        precision=m.precision,
        backend=m.backend,
        burst_flops_per_s=m.burst_flops_per_s,
        best_shape=_shape_from_proto(m.best_shape),
        from_cache=m.from_cache,
        measured_unix_ns=m.measured_unix_ns,
        sweep=tuple(
            GemmPoint(_shape_from_proto(p.shape), p.best_s, p.median_s, p.best_flops_per_s)
            for p in m.sweep
        ),
        **{name: _opt(m, name) for name in _GEMM_OPTIONALS},
    )


_MODEL_PLAIN = (
    "model",
    "batch",
    "precision",
    "input_size",
    "flops",
    "macs",
    "latency_p50_s",
    "latency_p90_s",
    "latency_p99_s",
    "latency_mean_s",
    "latency_std_s",
    "runs",
    "throughput_samples_per_s",
    "delivered_flops_per_s",
    "peak_source",
)
_MODEL_OPTIONALS = (
    "peak_flops_per_s",
    "efficiency_ratio",
    "spec_efficiency_ratio",
    "energy_per_inference_j",
    "mean_power_w",
    "arithmetic_intensity_flops_per_byte",
)


def model_result_to_proto(r: ModelResult) -> jobs_pb2.ModelResult:
    m = jobs_pb2.ModelResult(**{f: getattr(r, f) for f in _MODEL_PLAIN})
    for name in _MODEL_OPTIONALS:
        _set_opt(m, name, getattr(r, name))
    return m


def model_result_from_proto(m: jobs_pb2.ModelResult) -> ModelResult:
    if not m.model or not m.precision or m.batch == 0:
        raise WireError("model result needs model, precision and a batch > 0")
    return ModelResult(
        **{f: getattr(m, f) for f in _MODEL_PLAIN}, **{f: _opt(m, f) for f in _MODEL_OPTIONALS}
    )


def job_result_to_proto(r: JobResult) -> jobs_pb2.JobResult:
    m = jobs_pb2.JobResult(
        job_id=r.job_id,
        device_uuid=r.device_uuid,
        conditions=conditions_to_proto(r.conditions),
        started_unix_ns=r.started_unix_ns,
        finished_unix_ns=r.finished_unix_ns,
    )
    if r.gemm is not None:
        m.gemm.CopyFrom(gemm_result_to_proto(r.gemm))
    elif r.model is not None:
        m.model.CopyFrom(model_result_to_proto(r.model))
    return m


def job_result_from_proto(m: jobs_pb2.JobResult) -> JobResult:
    if not m.job_id or not m.device_uuid:
        raise WireError("job result needs job_id and device_uuid")
    which = m.WhichOneof("result")
    common: dict[str, Any] = {
        "job_id": m.job_id,
        "device_uuid": m.device_uuid,
        "conditions": conditions_from_proto(m.conditions),
        "started_unix_ns": m.started_unix_ns,
        "finished_unix_ns": m.finished_unix_ns,
    }
    if which == "gemm":
        return JobResult(gemm=gemm_result_from_proto(m.gemm), **common)
    if which == "model":
        return JobResult(model=model_result_from_proto(m.model), **common)
    raise WireError(f"job result {m.job_id} carries neither a GEMM nor a model result")


def job_status_to_proto(s: JobStatus) -> jobs_pb2.JobStatus:
    return jobs_pb2.JobStatus(
        job_id=s.job_id,
        state=jobs_pb2.JobState.Name(int(s.state)),
        message=s.message,
        progress_ratio=s.progress_ratio,
    )


def job_status_from_proto(m: jobs_pb2.JobStatus) -> JobStatus:
    if not m.job_id:
        raise WireError("job status without job_id")
    try:
        state = JobState(m.state)
    except ValueError:
        raise WireError(f"job status {m.job_id}: unknown state {m.state}") from None
    return JobStatus(m.job_id, state, m.message, m.progress_ratio)


# --- attribution ----------------------------------------------------------------------------


def attribution_to_proto(a: Attribution) -> attribution_pb2.Attribution:
    m = attribution_pb2.Attribution(observed_unix_ns=a.observed_unix_ns)
    for d in a.devices:
        dm = m.devices.add(device_uuid=d.device_uuid, processes_known=d.processes_known)
        for p in d.processes:
            pm = dm.processes.add(pid=p.pid, name=p.name)
            _set_opt(pm, "used_memory_bytes", p.used_memory_bytes)
            _set_opt(pm, "sm_utilization_ratio", p.sm_utilization_ratio)
        if d.pod is not None:
            dm.pod.CopyFrom(
                attribution_pb2.PodRef(
                    namespace=d.pod.namespace, pod=d.pod.pod, container=d.pod.container
                )
            )
    return m


def attribution_from_proto(m: attribution_pb2.Attribution) -> Attribution:
    """Decode only; the collector validates the values (``ingest``), so that a bad attribution
    is consumed and reported rather than ending the stream."""
    devices = []
    for dm in m.devices:
        processes = tuple(
            GpuProcess(
                pid=pm.pid,
                name=pm.name,
                used_memory_bytes=_opt(pm, "used_memory_bytes"),
                sm_utilization_ratio=_opt(pm, "sm_utilization_ratio"),
            )
            for pm in dm.processes
        )
        pod = None
        if dm.HasField("pod"):
            pod = PodRef(dm.pod.namespace, dm.pod.pod, dm.pod.container)
        devices.append(DeviceAttribution(dm.device_uuid, processes, dm.processes_known, pod))
    return Attribution(m.observed_unix_ns, tuple(devices))


# --- stream ---------------------------------------------------------------------------------


def agent_message_to_proto(msg: AgentMessage) -> agent_pb2.AgentMessage:
    m = agent_pb2.AgentMessage(epoch=msg.epoch, sequence=msg.sequence)
    p = msg.payload
    if isinstance(p, StreamHello):
        m.hello.CopyFrom(
            agent_pb2.StreamHello(
                agent_id=p.agent_id, epoch=p.epoch, pending_epochs=list(p.pending_epochs)
            )
        )
    elif isinstance(p, TelemetryBatch):
        m.telemetry.CopyFrom(telemetry_to_proto(p))
    elif isinstance(p, JobResult):
        m.job_result.CopyFrom(job_result_to_proto(p))
    elif isinstance(p, JobStatus):
        m.job_status.CopyFrom(job_status_to_proto(p))
    elif isinstance(p, Heartbeat):
        m.heartbeat.CopyFrom(agent_pb2.Heartbeat(sent_unix_ns=p.sent_unix_ns))
    elif isinstance(p, Attribution):
        m.attribution.CopyFrom(attribution_to_proto(p))
    else:
        m.dropped.CopyFrom(
            agent_pb2.Dropped(reason=p.reason, samples=p.samples, original_kind=p.original_kind)
        )
    return m


def agent_message_from_proto(m: agent_pb2.AgentMessage) -> AgentMessage:
    which = m.WhichOneof("payload")
    if which is None:
        raise WireError(f"message {m.epoch}/{m.sequence} carries no payload")
    if which == "hello":
        h = m.hello
        if not h.agent_id or h.epoch == 0:
            raise WireError("hello needs agent_id and a non-zero epoch")
        return AgentMessage(0, 0, StreamHello(h.agent_id, h.epoch, tuple(h.pending_epochs)))
    if m.epoch == 0 or m.sequence == 0:
        raise WireError(f"{which} message needs a non-zero epoch and sequence")
    payload: Any
    if which == "telemetry":
        payload = telemetry_from_proto(m.telemetry)
    elif which == "job_result":
        payload = job_result_from_proto(m.job_result)
    elif which == "job_status":
        payload = job_status_from_proto(m.job_status)
    elif which == "heartbeat":
        payload = Heartbeat(m.heartbeat.sent_unix_ns)
    elif which == "attribution":
        payload = attribution_from_proto(m.attribution)
    else:
        d = m.dropped
        payload = Dropped(d.reason, d.samples, d.original_kind or "telemetry")
    return AgentMessage(m.epoch, m.sequence, payload)


def register_request_to_proto(r: RegisterRequest) -> agent_pb2.RegisterRequest:
    return agent_pb2.RegisterRequest(
        node=node_to_proto(r.node), devices=[device_to_proto(d) for d in r.devices], epoch=r.epoch
    )


def register_request_from_proto(m: agent_pb2.RegisterRequest) -> RegisterRequest:
    if m.epoch == 0:
        raise WireError("register needs a non-zero epoch")
    devices = tuple(device_from_proto(d) for d in m.devices)
    uuids = [d.uuid for d in devices]
    if len(set(uuids)) != len(uuids):
        raise WireError("register lists a device uuid twice")
    return RegisterRequest(node_from_proto(m.node), devices, m.epoch)


def settings_to_proto(s: AgentSettings) -> agent_pb2.AgentSettings:
    return agent_pb2.AgentSettings(
        sample_interval_s=s.sample_interval_s, batch_interval_s=s.batch_interval_s
    )


def settings_from_proto(m: agent_pb2.AgentSettings) -> AgentSettings:
    return AgentSettings(m.sample_interval_s or 0.1, m.batch_interval_s or 1.0)


def register_response_to_proto(r: RegisterResponse) -> agent_pb2.RegisterResponse:
    return agent_pb2.RegisterResponse(
        agent_id=r.agent_id,
        settings=settings_to_proto(r.settings),
        max_message_bytes=r.max_message_bytes,
    )


def register_response_from_proto(m: agent_pb2.RegisterResponse) -> RegisterResponse:
    return RegisterResponse(m.agent_id, settings_from_proto(m.settings), m.max_message_bytes)


def collector_message_to_proto(p: CollectorPayload) -> agent_pb2.CollectorMessage:
    if isinstance(p, Ack):
        return agent_pb2.CollectorMessage(
            ack=agent_pb2.Ack(epoch=p.epoch, committed_through=p.committed_through)
        )
    if isinstance(p, Rejection):
        return agent_pb2.CollectorMessage(
            rejection=agent_pb2.Rejection(
                epoch=p.epoch,
                sequence=p.sequence,
                message_rejected=p.message_rejected,
                detail=p.detail,
                samples=[
                    agent_pb2.SampleRejection(
                        device_uuid=r.device_uuid, reason=r.reason, samples=r.samples
                    )
                    for r in p.samples
                ],
            )
        )
    cmd = agent_pb2.Command(command_id=p.command_id)
    if isinstance(p.action, RunJob):
        cmd.run_job.CopyFrom(
            agent_pb2.RunJob(job_id=p.action.job_id, spec=job_spec_to_proto(p.action.spec))
        )
    else:
        cmd.set_sample_interval.CopyFrom(
            agent_pb2.SetSampleInterval(sample_interval_s=p.action.sample_interval_s)
        )
    return agent_pb2.CollectorMessage(command=cmd)


def collector_message_from_proto(m: agent_pb2.CollectorMessage) -> CollectorPayload:
    which = m.WhichOneof("payload")
    if which == "ack":
        return Ack(m.ack.epoch, m.ack.committed_through)
    if which == "rejection":
        r = m.rejection
        return Rejection(
            r.epoch,
            r.sequence,
            r.message_rejected,
            r.detail,
            tuple(SampleRejection(x.device_uuid, x.reason, x.samples) for x in r.samples),
        )
    if which == "command":
        c = m.command
        kind = c.WhichOneof("kind")
        if kind == "run_job":
            return Command(
                c.command_id, RunJob(c.run_job.job_id, job_spec_from_proto(c.run_job.spec))
            )
        if kind == "set_sample_interval":
            interval = c.set_sample_interval.sample_interval_s
            if not interval > 0:
                raise WireError(f"sample interval must be > 0 s, got {interval}")
            return Command(c.command_id, SetSampleInterval(interval))
        raise WireError(f"command {c.command_id} names no action")
    raise WireError("collector message carries no payload")
