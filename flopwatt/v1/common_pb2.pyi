from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_KIND_UNSPECIFIED: _ClassVar[DeviceKind]
    DEVICE_KIND_GPU: _ClassVar[DeviceKind]
    DEVICE_KIND_CPU: _ClassVar[DeviceKind]
DEVICE_KIND_UNSPECIFIED: DeviceKind
DEVICE_KIND_GPU: DeviceKind
DEVICE_KIND_CPU: DeviceKind

class SoftwareVersions(_message.Message):
    __slots__ = ("driver_version", "cuda_version", "nvml_version", "torch_version", "python_version", "os", "blas")
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    NVML_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    BLAS_FIELD_NUMBER: _ClassVar[int]
    driver_version: str
    cuda_version: str
    nvml_version: str
    torch_version: str
    python_version: str
    os: str
    blas: str
    def __init__(self, driver_version: _Optional[str] = ..., cuda_version: _Optional[str] = ..., nvml_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., python_version: _Optional[str] = ..., os: _Optional[str] = ..., blas: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("hostname", "agent_version", "software", "device_backend")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    agent_version: str
    software: SoftwareVersions
    device_backend: str
    def __init__(self, hostname: _Optional[str] = ..., agent_version: _Optional[str] = ..., software: _Optional[_Union[SoftwareVersions, _Mapping]] = ..., device_backend: _Optional[str] = ...) -> None: ...

class DeviceCapabilities(_message.Message):
    __slots__ = ("energy_counter", "power_instant", "power_average_1s", "memory_temperature", "throttle_reasons", "ecc", "utilization", "clocks", "gpm")
    ENERGY_COUNTER_FIELD_NUMBER: _ClassVar[int]
    POWER_INSTANT_FIELD_NUMBER: _ClassVar[int]
    POWER_AVERAGE_1S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_FIELD_NUMBER: _ClassVar[int]
    ECC_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    CLOCKS_FIELD_NUMBER: _ClassVar[int]
    GPM_FIELD_NUMBER: _ClassVar[int]
    energy_counter: bool
    power_instant: bool
    power_average_1s: bool
    memory_temperature: bool
    throttle_reasons: bool
    ecc: bool
    utilization: bool
    clocks: bool
    gpm: bool
    def __init__(self, energy_counter: _Optional[bool] = ..., power_instant: _Optional[bool] = ..., power_average_1s: _Optional[bool] = ..., memory_temperature: _Optional[bool] = ..., throttle_reasons: _Optional[bool] = ..., ecc: _Optional[bool] = ..., utilization: _Optional[bool] = ..., clocks: _Optional[bool] = ..., gpm: _Optional[bool] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("uuid", "index", "name", "pci_bus_id", "pci_device_id", "memory_total_bytes", "power_limit_enforced_w", "power_limit_default_w", "power_limit_min_w", "power_limit_max_w", "sm_clock_max_mhz", "mem_clock_max_mhz", "capabilities", "kind", "simulated", "sim_sku", "torch_index", "power_usage_is_average")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PCI_BUS_ID_FIELD_NUMBER: _ClassVar[int]
    PCI_DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_ENFORCED_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_DEFAULT_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_MIN_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_MAX_W_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MAX_MHZ_FIELD_NUMBER: _ClassVar[int]
    MEM_CLOCK_MAX_MHZ_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    SIM_SKU_FIELD_NUMBER: _ClassVar[int]
    TORCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    POWER_USAGE_IS_AVERAGE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    name: str
    pci_bus_id: str
    pci_device_id: int
    memory_total_bytes: int
    power_limit_enforced_w: float
    power_limit_default_w: float
    power_limit_min_w: float
    power_limit_max_w: float
    sm_clock_max_mhz: int
    mem_clock_max_mhz: int
    capabilities: DeviceCapabilities
    kind: DeviceKind
    simulated: bool
    sim_sku: str
    torch_index: int
    power_usage_is_average: bool
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., name: _Optional[str] = ..., pci_bus_id: _Optional[str] = ..., pci_device_id: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., power_limit_enforced_w: _Optional[float] = ..., power_limit_default_w: _Optional[float] = ..., power_limit_min_w: _Optional[float] = ..., power_limit_max_w: _Optional[float] = ..., sm_clock_max_mhz: _Optional[int] = ..., mem_clock_max_mhz: _Optional[int] = ..., capabilities: _Optional[_Union[DeviceCapabilities, _Mapping]] = ..., kind: _Optional[_Union[DeviceKind, str]] = ..., simulated: _Optional[bool] = ..., sim_sku: _Optional[str] = ..., torch_index: _Optional[int] = ..., power_usage_is_average: _Optional[bool] = ...) -> None: ...

class Conditions(_message.Message):
    __slots__ = ("sm_clock_min_mhz", "sm_clock_mean_mhz", "mem_clock_mean_mhz", "power_limit_w", "temperature_max_c", "temperature_mean_c", "throttle_reasons_seen", "energy_j", "mean_power_w", "energy_from_counter", "window_s", "driver_version", "cuda_version", "torch_version", "blas", "cpu_threads", "other_processes", "simulated")
    SM_CLOCK_MIN_MHZ_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MEAN_MHZ_FIELD_NUMBER: _ClassVar[int]
    MEM_CLOCK_MEAN_MHZ_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MAX_C_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_MEAN_C_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASONS_SEEN_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    MEAN_POWER_W_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FROM_COUNTER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    DRIVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CUDA_VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    BLAS_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    OTHER_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    sm_clock_min_mhz: float
    sm_clock_mean_mhz: float
    mem_clock_mean_mhz: float
    power_limit_w: float
    temperature_max_c: float
    temperature_mean_c: float
    throttle_reasons_seen: int
    energy_j: float
    mean_power_w: float
    energy_from_counter: bool
    window_s: float
    driver_version: str
    cuda_version: str
    torch_version: str
    blas: str
    cpu_threads: int
    other_processes: _containers.RepeatedScalarFieldContainer[str]
    simulated: bool
    def __init__(self, sm_clock_min_mhz: _Optional[float] = ..., sm_clock_mean_mhz: _Optional[float] = ..., mem_clock_mean_mhz: _Optional[float] = ..., power_limit_w: _Optional[float] = ..., temperature_max_c: _Optional[float] = ..., temperature_mean_c: _Optional[float] = ..., throttle_reasons_seen: _Optional[int] = ..., energy_j: _Optional[float] = ..., mean_power_w: _Optional[float] = ..., energy_from_counter: _Optional[bool] = ..., window_s: _Optional[float] = ..., driver_version: _Optional[str] = ..., cuda_version: _Optional[str] = ..., torch_version: _Optional[str] = ..., blas: _Optional[str] = ..., cpu_threads: _Optional[int] = ..., other_processes: _Optional[_Iterable[str]] = ..., simulated: _Optional[bool] = ...) -> None: ...
