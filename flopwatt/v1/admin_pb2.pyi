from flopwatt.v1 import common_pb2 as _common_pb2
from flopwatt.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentSelector(_message.Message):
    __slots__ = ("hostnames", "skus", "all")
    HOSTNAMES_FIELD_NUMBER: _ClassVar[int]
    SKUS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    hostnames: _containers.RepeatedScalarFieldContainer[str]
    skus: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, hostnames: _Optional[_Iterable[str]] = ..., skus: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentDevice(_message.Message):
    __slots__ = ("device", "sku", "sku_match")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    SKU_MATCH_FIELD_NUMBER: _ClassVar[int]
    device: _common_pb2.DeviceInfo
    sku: str
    sku_match: str
    def __init__(self, device: _Optional[_Union[_common_pb2.DeviceInfo, _Mapping]] = ..., sku: _Optional[str] = ..., sku_match: _Optional[str] = ...) -> None: ...

class AgentSummary(_message.Message):
    __slots__ = ("agent_id", "node", "devices", "connected", "last_seen_unix_ns", "epoch")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    node: _common_pb2.NodeInfo
    devices: _containers.RepeatedCompositeFieldContainer[AgentDevice]
    connected: bool
    last_seen_unix_ns: int
    epoch: int
    def __init__(self, agent_id: _Optional[str] = ..., node: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[AgentDevice, _Mapping]]] = ..., connected: _Optional[bool] = ..., last_seen_unix_ns: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentSummary]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentSummary, _Mapping]]] = ...) -> None: ...

class RunJobRequest(_message.Message):
    __slots__ = ("selector", "spec")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    selector: AgentSelector
    spec: _jobs_pb2.JobSpec
    def __init__(self, selector: _Optional[_Union[AgentSelector, _Mapping]] = ..., spec: _Optional[_Union[_jobs_pb2.JobSpec, _Mapping]] = ...) -> None: ...

class RunJobResponse(_message.Message):
    __slots__ = ("job_id", "agent_ids")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    agent_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., agent_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobTarget(_message.Message):
    __slots__ = ("agent_id", "state", "message", "updated_unix_ns", "results")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    state: _jobs_pb2.JobState
    message: str
    updated_unix_ns: int
    results: int
    def __init__(self, agent_id: _Optional[str] = ..., state: _Optional[_Union[_jobs_pb2.JobState, str]] = ..., message: _Optional[str] = ..., updated_unix_ns: _Optional[int] = ..., results: _Optional[int] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "spec", "requested_unix_ns", "targets", "finished")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: _jobs_pb2.JobSpec
    requested_unix_ns: int
    targets: _containers.RepeatedCompositeFieldContainer[JobTarget]
    finished: bool
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[_jobs_pb2.JobSpec, _Mapping]] = ..., requested_unix_ns: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[JobTarget, _Mapping]]] = ..., finished: _Optional[bool] = ...) -> None: ...
