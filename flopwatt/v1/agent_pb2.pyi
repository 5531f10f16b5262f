from flopwatt.v1 import attribution_pb2 as _attribution_pb2
from flopwatt.v1 import common_pb2 as _common_pb2
from flopwatt.v1 import jobs_pb2 as _jobs_pb2
from flopwatt.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("node", "devices", "epoch")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    node: _common_pb2.NodeInfo
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.DeviceInfo]
    epoch: int
    def __init__(self, node: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.DeviceInfo, _Mapping]]] = ..., epoch: _Optional[int] = ...) -> None: ...

class AgentSettings(_message.Message):
    __slots__ = ("sample_interval_s", "batch_interval_s")
    SAMPLE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    sample_interval_s: float
    batch_interval_s: float
    def __init__(self, sample_interval_s: _Optional[float] = ..., batch_interval_s: _Optional[float] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("agent_id", "settings", "max_message_bytes")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    settings: AgentSettings
    max_message_bytes: int
    def __init__(self, agent_id: _Optional[str] = ..., settings: _Optional[_Union[AgentSettings, _Mapping]] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class StreamHello(_message.Message):
    __slots__ = ("agent_id", "epoch", "pending_epochs")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PENDING_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    epoch: int
    pending_epochs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, agent_id: _Optional[str] = ..., epoch: _Optional[int] = ..., pending_epochs: _Optional[_Iterable[int]] = ...) -> None: ...

class Dropped(_message.Message):
    __slots__ = ("reason", "samples", "original_kind")
    REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_KIND_FIELD_NUMBER: _ClassVar[int]
    reason: str
    samples: int
    original_kind: str
    def __init__(self, reason: _Optional[str] = ..., samples: _Optional[int] = ..., original_kind: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_unix_ns",)
    SENT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    sent_unix_ns: int
    def __init__(self, sent_unix_ns: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("epoch", "sequence", "hello", "telemetry", "job_result", "job_status", "heartbeat", "dropped", "attribution")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    JOB_RESULT_FIELD_NUMBER: _ClassVar[int]
    JOB_STATUS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    sequence: int
    hello: StreamHello
    telemetry: _telemetry_pb2.TelemetryBatch
    job_result: _jobs_pb2.JobResult
    job_status: _jobs_pb2.JobStatus
    heartbeat: Heartbeat
    dropped: Dropped
    attribution: _attribution_pb2.Attribution
    def __init__(self, epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., hello: _Optional[_Union[StreamHello, _Mapping]] = ..., telemetry: _Optional[_Union[_telemetry_pb2.TelemetryBatch, _Mapping]] = ..., job_result: _Optional[_Union[_jobs_pb2.JobResult, _Mapping]] = ..., job_status: _Optional[_Union[_jobs_pb2.JobStatus, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., dropped: _Optional[_Union[Dropped, _Mapping]] = ..., attribution: _Optional[_Union[_attribution_pb2.Attribution, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("epoch", "committed_through")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    committed_through: int
    def __init__(self, epoch: _Optional[int] = ..., committed_through: _Optional[int] = ...) -> None: ...

class SampleRejection(_message.Message):
    __slots__ = ("device_uuid", "reason", "samples")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    reason: str
    samples: int
    def __init__(self, device_uuid: _Optional[str] = ..., reason: _Optional[str] = ..., samples: _Optional[int] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("epoch", "sequence", "message_rejected", "detail", "samples")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_REJECTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    sequence: int
    message_rejected: bool
    detail: str
    samples: _containers.RepeatedCompositeFieldContainer[SampleRejection]
    def __init__(self, epoch: _Optional[int] = ..., sequence: _Optional[int] = ..., message_rejected: _Optional[bool] = ..., detail: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[SampleRejection, _Mapping]]] = ...) -> None: ...

class RunJob(_message.Message):
    __slots__ = ("job_id", "spec")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: _jobs_pb2.JobSpec
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[_jobs_pb2.JobSpec, _Mapping]] = ...) -> None: ...

class SetSampleInterval(_message.Message):
    __slots__ = ("sample_interval_s",)
    SAMPLE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    sample_interval_s: float
    def __init__(self, sample_interval_s: _Optional[float] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("command_id", "run_job", "set_sample_interval")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_JOB_FIELD_NUMBER: _ClassVar[int]
    SET_SAMPLE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    run_job: RunJob
    set_sample_interval: SetSampleInterval
    def __init__(self, command_id: _Optional[str] = ..., run_job: _Optional[_Union[RunJob, _Mapping]] = ..., set_sample_interval: _Optional[_Union[SetSampleInterval, _Mapping]] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("ack", "command", "rejection")
    ACK_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    command: Command
    rejection: Rejection
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ..., rejection: _Optional[_Union[Rejection, _Mapping]] = ...) -> None: ...
