from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceSeries(_message.Message):
    __slots__ = ("device_uuid", "timestamp_unix_ns", "power_instant_w", "power_average_1s_w", "energy_j", "sm_clock_mhz", "mem_clock_mhz", "gpu_temperature_c", "memory_temperature_c", "gpu_utilization_ratio", "memory_utilization_ratio", "throttle_reasons", "power_limit_w", "memory_used_bytes")
    DEVICE_UUID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    POWER_INSTANT_W_FIELD_NUMBER: _ClassVar[int]
    POWER_AVERAGE_1S_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    MEM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    GPU_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    GPU_UTILIZATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    MEMORY_UTILIZATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    timestamp_unix_ns: _containers.RepeatedScalarFieldContainer[int]
    power_instant_w: _containers.RepeatedScalarFieldContainer[float]
    power_average_1s_w: _containers.RepeatedScalarFieldContainer[float]
    energy_j: _containers.RepeatedScalarFieldContainer[float]
    sm_clock_mhz: _containers.RepeatedScalarFieldContainer[int]
    mem_clock_mhz: _containers.RepeatedScalarFieldContainer[int]
    gpu_temperature_c: _containers.RepeatedScalarFieldContainer[float]
    memory_temperature_c: _containers.RepeatedScalarFieldContainer[float]
    gpu_utilization_ratio: _containers.RepeatedScalarFieldContainer[float]
    memory_utilization_ratio: _containers.RepeatedScalarFieldContainer[float]
    throttle_reasons: _containers.RepeatedScalarFieldContainer[int]
    power_limit_w: _containers.RepeatedScalarFieldContainer[float]
    memory_used_bytes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, device_uuid: _Optional[str] = ..., timestamp_unix_ns: _Optional[_Iterable[int]] = ..., power_instant_w: _Optional[_Iterable[float]] = ..., power_average_1s_w: _Optional[_Iterable[float]] = ..., energy_j: _Optional[_Iterable[float]] = ..., sm_clock_mhz: _Optional[_Iterable[int]] = ..., mem_clock_mhz: _Optional[_Iterable[int]] = ..., gpu_temperature_c: _Optional[_Iterable[float]] = ..., memory_temperature_c: _Optional[_Iterable[float]] = ..., gpu_utilization_ratio: _Optional[_Iterable[float]] = ..., memory_utilization_ratio: _Optional[_Iterable[float]] = ..., throttle_reasons: _Optional[_Iterable[int]] = ..., power_limit_w: _Optional[_Iterable[float]] = ..., memory_used_bytes: _Optional[_Iterable[int]] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("series", "missed_ticks")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    MISSED_TICKS_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[DeviceSeries]
    missed_ticks: int
    def __init__(self, series: _Optional[_Iterable[_Union[DeviceSeries, _Mapping]]] = ..., missed_ticks: _Optional[int] = ...) -> None: ...
