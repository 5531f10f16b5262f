from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceSeries(_message.Message):
    __slots__ = ("device_uuid", "timestamp_unix_ns", "power_instant_w", "power_average_1s_w", "energy_j", "sm_clock_mhz", "mem_clock_mhz", "gpu_temperature_c", "memory_temperature_c", "gpu_utilization_ratio", "memory_utilization_ratio", "throttle_reasons", "power_limit_w", "memory_used_bytes", "sm_active_ratio", "sm_occupancy_ratio", "tensor_active_ratio", "tensor_hmma_active_ratio", "tensor_imma_active_ratio", "tensor_dfma_active_ratio", "fp64_active_ratio", "fp32_active_ratio", "fp16_active_ratio", "dram_bandwidth_ratio", "ecc_corrected_volatile_total", "ecc_uncorrected_volatile_total", "remapped_rows_correctable_total", "remapped_rows_uncorrectable_total", "row_remap_pending", "row_remap_failed", "pcie_replay_total", "nvlink_crc_errors_total", "xid_events_total", "xid_last", "nvlink_replay_errors_total", "nvlink_recovery_errors_total")
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
    SM_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    SM_OCCUPANCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    TENSOR_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    TENSOR_HMMA_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    TENSOR_IMMA_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    TENSOR_DFMA_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    FP64_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    FP32_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    FP16_ACTIVE_RATIO_FIELD_NUMBER: _ClassVar[int]
    DRAM_BANDWIDTH_RATIO_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_VOLATILE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_VOLATILE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REMAPPED_ROWS_CORRECTABLE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REMAPPED_ROWS_UNCORRECTABLE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROW_REMAP_PENDING_FIELD_NUMBER: _ClassVar[int]
    ROW_REMAP_FAILED_FIELD_NUMBER: _ClassVar[int]
    PCIE_REPLAY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NVLINK_CRC_ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    XID_EVENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    XID_LAST_FIELD_NUMBER: _ClassVar[int]
    NVLINK_REPLAY_ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NVLINK_RECOVERY_ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    device_uuid: str
    timestamp_unix_ns: bytes
    power_instant_w: bytes
    power_average_1s_w: bytes
    energy_j: bytes
    sm_clock_mhz: bytes
    mem_clock_mhz: bytes
    gpu_temperature_c: bytes
    memory_temperature_c: bytes
    gpu_utilization_ratio: bytes
    memory_utilization_ratio: bytes
    throttle_reasons: bytes
    power_limit_w: bytes
    memory_used_bytes: bytes
    sm_active_ratio: bytes
    sm_occupancy_ratio: bytes
    tensor_active_ratio: bytes
    tensor_hmma_active_ratio: bytes
    tensor_imma_active_ratio: bytes
    tensor_dfma_active_ratio: bytes
    fp64_active_ratio: bytes
    fp32_active_ratio: bytes
    fp16_active_ratio: bytes
    dram_bandwidth_ratio: bytes
    ecc_corrected_volatile_total: bytes
    ecc_uncorrected_volatile_total: bytes
    remapped_rows_correctable_total: bytes
    remapped_rows_uncorrectable_total: bytes
    row_remap_pending: bytes
    row_remap_failed: bytes
    pcie_replay_total: bytes
    nvlink_crc_errors_total: bytes
    xid_events_total: bytes
    xid_last: bytes
    nvlink_replay_errors_total: bytes
    nvlink_recovery_errors_total: bytes
    def __init__(self, device_uuid: _Optional[str] = ..., timestamp_unix_ns: _Optional[bytes] = ..., power_instant_w: _Optional[bytes] = ..., power_average_1s_w: _Optional[bytes] = ..., energy_j: _Optional[bytes] = ..., sm_clock_mhz: _Optional[bytes] = ..., mem_clock_mhz: _Optional[bytes] = ..., gpu_temperature_c: _Optional[bytes] = ..., memory_temperature_c: _Optional[bytes] = ..., gpu_utilization_ratio: _Optional[bytes] = ..., memory_utilization_ratio: _Optional[bytes] = ..., throttle_reasons: _Optional[bytes] = ..., power_limit_w: _Optional[bytes] = ..., memory_used_bytes: _Optional[bytes] = ..., sm_active_ratio: _Optional[bytes] = ..., sm_occupancy_ratio: _Optional[bytes] = ..., tensor_active_ratio: _Optional[bytes] = ..., tensor_hmma_active_ratio: _Optional[bytes] = ..., tensor_imma_active_ratio: _Optional[bytes] = ..., tensor_dfma_active_ratio: _Optional[bytes] = ..., fp64_active_ratio: _Optional[bytes] = ..., fp32_active_ratio: _Optional[bytes] = ..., fp16_active_ratio: _Optional[bytes] = ..., dram_bandwidth_ratio: _Optional[bytes] = ..., ecc_corrected_volatile_total: _Optional[bytes] = ..., ecc_uncorrected_volatile_total: _Optional[bytes] = ..., remapped_rows_correctable_total: _Optional[bytes] = ..., remapped_rows_uncorrectable_total: _Optional[bytes] = ..., row_remap_pending: _Optional[bytes] = ..., row_remap_failed: _Optional[bytes] = ..., pcie_replay_total: _Optional[bytes] = ..., nvlink_crc_errors_total: _Optional[bytes] = ..., xid_events_total: _Optional[bytes] = ..., xid_last: _Optional[bytes] = ..., nvlink_replay_errors_total: _Optional[bytes] = ..., nvlink_recovery_errors_total: _Optional[bytes] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("series", "missed_ticks")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    MISSED_TICKS_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[DeviceSeries]
    missed_ticks: int
    def __init__(self, series: _Optional[_Iterable[_Union[DeviceSeries, _Mapping]]] = ..., missed_ticks: _Optional[int] = ...) -> None: ...
