from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GpuProcess(_message.Message):
    __slots__ = ("pid", "name", "used_memory_bytes", "sm_utilization_ratio")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SM_UTILIZATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    pid: int
    name: str
    used_memory_bytes: int
    sm_utilization_ratio: float
    def __init__(self, pid: _Optional[int] = ..., name: _Optional[str] = ..., used_memory_bytes: _Optional[int] = ..., sm_utilization_ratio: _Optional[float] = ...) -> None: ...

class PodRef(_message.Message):
    __slots__ = ("namespace", "pod", "container")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pod: str
    container: str
    def __init__(self, namespace: _Optional[str] = ..., pod: _Optional[str] = ..., container: _Optional[str] = ...) -> None: ...

class DeviceAttribution(_message.Message):
    __slots__ = ("device_uuid", "processes", "processes_known", "pod")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_KNOWN_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    processes: _containers.RepeatedCompositeFieldContainer[GpuProcess]
    processes_known: bool
    pod: PodRef
    def __init__(self, device_uuid: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[GpuProcess, _Mapping]]] = ..., processes_known: _Optional[bool] = ..., pod: _Optional[_Union[PodRef, _Mapping]] = ...) -> None: ...

class Attribution(_message.Message):
    __slots__ = ("observed_unix_ns", "devices")
    OBSERVED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    observed_unix_ns: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceAttribution]
    def __init__(self, observed_unix_ns: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceAttribution, _Mapping]]] = ...) -> None: ...
