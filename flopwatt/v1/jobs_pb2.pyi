from flopwatt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_DELIVERED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_UNAVAILABLE: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_DELIVERED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_UNAVAILABLE: JobState

class GemmJobSpec(_message.Message):
    __slots__ = ("precisions", "max_size", "sustain_s", "refresh")
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    SUSTAIN_S_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    precisions: _containers.RepeatedScalarFieldContainer[str]
    max_size: int
    sustain_s: float
    refresh: bool
    def __init__(self, precisions: _Optional[_Iterable[str]] = ..., max_size: _Optional[int] = ..., sustain_s: _Optional[float] = ..., refresh: _Optional[bool] = ...) -> None: ...

class ModelJobSpec(_message.Message):
    __slots__ = ("models", "batches", "precision", "warmup", "runs")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedScalarFieldContainer[str]
    batches: _containers.RepeatedScalarFieldContainer[int]
    precision: str
    warmup: int
    runs: int
    def __init__(self, models: _Optional[_Iterable[str]] = ..., batches: _Optional[_Iterable[int]] = ..., precision: _Optional[str] = ..., warmup: _Optional[int] = ..., runs: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("gemm", "model", "device_uuids")
    GEMM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUIDS_FIELD_NUMBER: _ClassVar[int]
    gemm: GemmJobSpec
    model: ModelJobSpec
    device_uuids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gemm: _Optional[_Union[GemmJobSpec, _Mapping]] = ..., model: _Optional[_Union[ModelJobSpec, _Mapping]] = ..., device_uuids: _Optional[_Iterable[str]] = ...) -> None: ...

class GemmShape(_message.Message):
    __slots__ = ("m", "n", "k")
    M_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    m: int
    n: int
    k: int
    def __init__(self, m: _Optional[int] = ..., n: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class GemmPoint(_message.Message):
    __slots__ = ("shape", "best_s", "median_s", "best_flops_per_s")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    BEST_S_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_S_FIELD_NUMBER: _ClassVar[int]
    BEST_FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    shape: GemmShape
    best_s: float
    median_s: float
    best_flops_per_s: float
    def __init__(self, shape: _Optional[_Union[GemmShape, _Mapping]] = ..., best_s: _Optional[float] = ..., median_s: _Optional[float] = ..., best_flops_per_s: _Optional[float] = ...) -> None: ...

class GemmResult(_message.Message):
    __slots__ = ("precision", "backend", "sweep", "burst_flops_per_s", "best_shape", "sustained_flops_per_s", "sustained_s", "sustained_flops", "energy_j", "energy_per_flop_j", "mean_power_w", "burst_spread_ratio", "from_cache", "measured_unix_ns")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    BURST_FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BEST_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SUSTAINED_FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    SUSTAINED_S_FIELD_NUMBER: _ClassVar[int]
    SUSTAINED_FLOPS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_PER_FLOP_J_FIELD_NUMBER: _ClassVar[int]
    MEAN_POWER_W_FIELD_NUMBER: _ClassVar[int]
    BURST_SPREAD_RATIO_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    precision: str
    backend: str
    sweep: _containers.RepeatedCompositeFieldContainer[GemmPoint]
    burst_flops_per_s: float
    best_shape: GemmShape
    sustained_flops_per_s: float
    sustained_s: float
    sustained_flops: float
    energy_j: float
    energy_per_flop_j: float
    mean_power_w: float
    burst_spread_ratio: float
    from_cache: bool
    measured_unix_ns: int
    def __init__(self, precision: _Optional[str] = ..., backend: _Optional[str] = ..., sweep: _Optional[_Iterable[_Union[GemmPoint, _Mapping]]] = ..., burst_flops_per_s: _Optional[float] = ..., best_shape: _Optional[_Union[GemmShape, _Mapping]] = ..., sustained_flops_per_s: _Optional[float] = ..., sustained_s: _Optional[float] = ..., sustained_flops: _Optional[float] = ..., energy_j: _Optional[float] = ..., energy_per_flop_j: _Optional[float] = ..., mean_power_w: _Optional[float] = ..., burst_spread_ratio: _Optional[float] = ..., from_cache: _Optional[bool] = ..., measured_unix_ns: _Optional[int] = ...) -> None: ...

class ModelResult(_message.Message):
    __slots__ = ("model", "batch", "precision", "input_size", "flops", "macs", "latency_p50_s", "latency_p90_s", "latency_p99_s", "latency_mean_s", "latency_std_s", "runs", "throughput_samples_per_s", "delivered_flops_per_s", "peak_flops_per_s", "peak_source", "efficiency_ratio", "spec_efficiency_ratio", "energy_per_inference_j", "mean_power_w", "arithmetic_intensity_flops_per_byte")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    MACS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MEAN_S_FIELD_NUMBER: _ClassVar[int]
    LATENCY_STD_S_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_FLOPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_SOURCE_FIELD_NUMBER: _ClassVar[int]
    EFFICIENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    SPEC_EFFICIENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    ENERGY_PER_INFERENCE_J_FIELD_NUMBER: _ClassVar[int]
    MEAN_POWER_W_FIELD_NUMBER: _ClassVar[int]
    ARITHMETIC_INTENSITY_FLOPS_PER_BYTE_FIELD_NUMBER: _ClassVar[int]
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
    peak_flops_per_s: float
    peak_source: str
    efficiency_ratio: float
    spec_efficiency_ratio: float
    energy_per_inference_j: float
    mean_power_w: float
    arithmetic_intensity_flops_per_byte: float
    def __init__(self, model: _Optional[str] = ..., batch: _Optional[int] = ..., precision: _Optional[str] = ..., input_size: _Optional[int] = ..., flops: _Optional[float] = ..., macs: _Optional[float] = ..., latency_p50_s: _Optional[float] = ..., latency_p90_s: _Optional[float] = ..., latency_p99_s: _Optional[float] = ..., latency_mean_s: _Optional[float] = ..., latency_std_s: _Optional[float] = ..., runs: _Optional[int] = ..., throughput_samples_per_s: _Optional[float] = ..., delivered_flops_per_s: _Optional[float] = ..., peak_flops_per_s: _Optional[float] = ..., peak_source: _Optional[str] = ..., efficiency_ratio: _Optional[float] = ..., spec_efficiency_ratio: _Optional[float] = ..., energy_per_inference_j: _Optional[float] = ..., mean_power_w: _Optional[float] = ..., arithmetic_intensity_flops_per_byte: _Optional[float] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("job_id", "device_uuid", "gemm", "model", "conditions", "started_unix_ns", "finished_unix_ns")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    GEMM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    device_uuid: str
    gemm: GemmResult
    model: ModelResult
    conditions: _common_pb2.Conditions
    started_unix_ns: int
    finished_unix_ns: int
    def __init__(self, job_id: _Optional[str] = ..., device_uuid: _Optional[str] = ..., gemm: _Optional[_Union[GemmResult, _Mapping]] = ..., model: _Optional[_Union[ModelResult, _Mapping]] = ..., conditions: _Optional[_Union[_common_pb2.Conditions, _Mapping]] = ..., started_unix_ns: _Optional[int] = ..., finished_unix_ns: _Optional[int] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "message", "progress_ratio")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_RATIO_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    message: str
    progress_ratio: float
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., progress_ratio: _Optional[float] = ...) -> None: ...
