"""``flopwatt.wire``: every ``*_to_proto`` / ``*_from_proto`` pair round-trips records exactly
(optional fields absent stay absent, present stay present; telemetry columns keep their dtypes
and absent columns stay absent), and structurally broken messages raise ``WireError``.

Values are not judged here (NaN watts, future timestamps): that is the collector's job, so the
wire layer must carry them through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flopwatt import wire
from flopwatt.records import (
    COLUMN_DTYPES,
    TELEMETRY_COLUMN_NAMES,
    TELEMETRY_COLUMNS,
    Ack,
    AgentMessage,
    AgentSettings,
    Attribution,
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
    RunJob,
    SetSampleInterval,
    SoftwareVersions,
    StreamHello,
    TelemetryBatch,
)
from flopwatt.v1 import agent_pb2, common_pb2, jobs_pb2, telemetry_pb2
from flopwatt.wire import WireError, WireTooLargeError
from tests.collector_helpers import le

EPOCH = 0xFEDC_BA98_7654_3210  # uses the top bit of the fixed64
NOW_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

# Hypothesis must not write an example database into the repository (.hypothesis/ is not
# ignored); the series strategies are large, so skip the data-size health check.
HYPOTHESIS = settings(
    database=None,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _reserialize(m: Any) -> Any:
    """The message as the other side sees it: serialised to bytes and parsed again."""
    copy = type(m)()
    copy.ParseFromString(m.SerializeToString())
    return copy


# --- comparison helpers (numpy arrays make dataclass == ambiguous) --------------------------


def assert_series_equal(got: DeviceSeries, want: DeviceSeries) -> None:
    assert got.device_uuid == want.device_uuid
    assert got.timestamp_unix_ns.dtype == np.int64
    np.testing.assert_array_equal(got.timestamp_unix_ns, want.timestamp_unix_ns, strict=True)
    assert set(got.columns) == set(want.columns), "absent columns must stay absent"
    dtypes = {c.name: np.dtype(c.dtype) for c in TELEMETRY_COLUMNS}
    for name, col in want.columns.items():
        out = got.columns[name]
        assert out.dtype == dtypes[name], name
        # Bit-exact, NaN included (assert_array_equal treats NaN == NaN at the same position).
        np.testing.assert_array_equal(out, col.astype(dtypes[name]), strict=True)


def assert_batch_equal(got: TelemetryBatch, want: TelemetryBatch) -> None:
    assert got.missed_ticks == want.missed_ticks
    assert len(got.series) == len(want.series)
    for g, w in zip(got.series, want.series, strict=True):
        assert_series_equal(g, w)


def assert_message_equal(got: AgentMessage, want: AgentMessage) -> None:
    assert (got.epoch, got.sequence, got.kind) == (want.epoch, want.sequence, want.kind)
    if isinstance(want.payload, TelemetryBatch):
        assert isinstance(got.payload, TelemetryBatch)
        assert_batch_equal(got.payload, want.payload)
    else:
        assert got.payload == want.payload


# --- record builders: every optional field absent, or every one present ---------------------


def device_full(
    uuid: str = "GPU-8c3e5b9a-1111-2222-3333-444455556666", index: int = 3
) -> DeviceInfo:
    return DeviceInfo(
        uuid=uuid,
        index=index,
        name="NVIDIA H100 80GB HBM3",
        kind=DeviceKind.GPU,
        pci_bus_id="00000000:17:00.0",
        pci_device_id=0x233010DE,
        memory_total_bytes=85_520_809_984,
        power_limit_enforced_w=700.0,
        power_limit_default_w=700.0,
        power_limit_min_w=200.0,
        power_limit_max_w=700.0,
        sm_clock_max_mhz=1980,
        mem_clock_max_mhz=2619,
        capabilities=DeviceCapabilities(*(True,) * len(fields(DeviceCapabilities))),
        simulated=False,
        sim_sku="",
        torch_index=2,
        power_usage_is_average=True,
    )


def device_bare(uuid: str = "CPU-node-a-0") -> DeviceInfo:
    """Only the required fields: every optional one absent (None), the rest defaults."""
    return DeviceInfo(uuid=uuid, index=0, name="AMD EPYC 9654", kind=DeviceKind.CPU)


def device_sim() -> DeviceInfo:
    return DeviceInfo(
        uuid="GPU-sim-0",
        index=0,
        name="NVIDIA H100 80GB HBM3",
        simulated=True,
        sim_sku="H100-SXM5-80GB",
        power_limit_enforced_w=0.0,  # present and zero is not absent
        capabilities=DeviceCapabilities(energy_counter=True, clocks=True),
    )


NODE_FULL = NodeInfo(
    hostname="gpu-node-17",
    agent_version="0.1.0",
    software=SoftwareVersions(
        driver_version="570.124.06",
        cuda_version="12.8",
        nvml_version="12.570.124.06",
        torch_version="2.14.1",
        python_version="3.11.9",
        os="Linux 6.8.0 Ubuntu 24.04",
        blas="cuBLAS 12.8",
    ),
    device_backend="nvml",
)
NODE_BARE = NodeInfo(hostname="n")

CONDITIONS_FULL = Conditions(
    sm_clock_min_mhz=1755.0,
    sm_clock_mean_mhz=1830.5,
    mem_clock_mean_mhz=2619.0,
    power_limit_w=700.0,
    temperature_max_c=71.0,
    temperature_mean_c=66.25,
    throttle_reasons_seen=0x4 | 0x20 | (1 << 63),
    energy_j=19_500.0,
    mean_power_w=650.0,
    energy_from_counter=True,
    window_s=30.0,
    driver_version="570.124.06",
    cuda_version="12.8",
    torch_version="2.14.1",
    blas="",
    cpu_threads=0,
    other_processes=("1234:python", "5678:nvidia-smi"),
    simulated=False,
)
CONDITIONS_ZERO = Conditions(
    # present-and-zero must come back present, not as "absent"
    sm_clock_min_mhz=0.0,
    power_limit_w=0.0,
    energy_j=0.0,
    window_s=0.0,
)

GEMM_FULL = GemmResult(
    precision="bf16",
    backend="cublas",
    burst_flops_per_s=790e12,
    best_shape=GemmShape(8192, 8192, 8192),
    sweep=(
        GemmPoint(GemmShape(1024, 1024, 1024), 4.1e-6, 4.3e-6, 2 * 1024**3 / 4.1e-6),
        GemmPoint(GemmShape(8192, 8192, 4096), 1.0e-3, 1.1e-3, 2 * 8192 * 8192 * 4096 / 1.0e-3),
    ),
    sustained_flops_per_s=700e12,
    sustained_s=30.0,
    sustained_flops=700e12 * 30,
    energy_j=19_500.0,
    energy_per_flop_j=19_500.0 / (700e12 * 30),
    mean_power_w=650.0,
    burst_spread_ratio=0.012,
    from_cache=True,
    measured_unix_ns=NOW_NS,
)
GEMM_BARE = GemmResult(
    precision="fp64",
    backend="numpy-openblas",
    burst_flops_per_s=1.5e11,
    best_shape=GemmShape(1, 2, 3),
)

MODEL_FULL = ModelResult(
    model="resnet50",
    batch=64,
    precision="fp16",
    input_size=224,
    flops=2 * 4.09e9 * 64,
    macs=4.09e9 * 64,
    latency_p50_s=0.0212,
    latency_p90_s=0.0220,
    latency_p99_s=0.0251,
    latency_mean_s=0.0215,
    latency_std_s=0.0009,
    runs=200,
    throughput_samples_per_s=64 / 0.0212,
    delivered_flops_per_s=2 * 4.09e9 * 64 / 0.0212,
    peak_flops_per_s=780e12,
    peak_source="measured:cublas",
    efficiency_ratio=0.031,
    spec_efficiency_ratio=0.025,
    energy_per_inference_j=0.21,
    mean_power_w=640.0,
    arithmetic_intensity_flops_per_byte=120.0,
)
MODEL_BARE = ModelResult(
    model="vit_b_16",
    batch=1,
    precision="fp32",
    input_size=224,
    flops=35.1e9,
    macs=17.55e9,
    latency_p50_s=0.1,
    latency_p90_s=0.11,
    latency_p99_s=0.12,
    latency_mean_s=0.1,
    latency_std_s=0.01,
    runs=10,
    throughput_samples_per_s=10.0,
    delivered_flops_per_s=351e9,
)


def series_full(n: int = 5, uuid: str = "GPU-0") -> DeviceSeries:
    """Every column present, with values at the edges of each dtype."""
    ts = np.arange(n, dtype=np.int64) * 100_000_000 + NOW_NS
    cols: dict[str, npt.NDArray[Any]] = {}
    for spec in TELEMETRY_COLUMNS:
        dt = np.dtype(spec.dtype)
        if dt.kind == "u":
            top = np.iinfo(dt).max
            cols[spec.name] = np.array([(top - i) if i % 2 else i for i in range(n)], dtype=dt)
        else:
            cols[spec.name] = (np.linspace(0.0, 1.0, n) * 700.0 + 0.1).astype(dt)
    return DeviceSeries(uuid, ts, cols)


def job_result(
    payload: GemmResult | ModelResult, conditions: Conditions = CONDITIONS_FULL
) -> JobResult:
    kw: dict[str, Any] = (
        {"gemm": payload} if isinstance(payload, GemmResult) else {"model": payload}
    )
    return JobResult(
        job_id="job-7",
        device_uuid="GPU-0",
        conditions=conditions,
        started_unix_ns=NOW_NS - 31 * 10**9,
        finished_unix_ns=NOW_NS,
        **kw,
    )


# --- identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("node", [NODE_FULL, NODE_BARE], ids=["full", "bare"])
def test_node_round_trip(node: NodeInfo) -> None:
    assert wire.node_from_proto(_reserialize(wire.node_to_proto(node))) == node
    sw = node.software
    assert wire.software_from_proto(_reserialize(wire.software_to_proto(sw))) == sw


@pytest.mark.parametrize(
    "caps",
    [
        DeviceCapabilities(),
        DeviceCapabilities(*(True,) * len(fields(DeviceCapabilities))),
        DeviceCapabilities(energy_counter=True, throttle_reasons=True, clocks=True),
    ],
)
def test_capabilities_round_trip(caps: DeviceCapabilities) -> None:
    assert wire.capabilities_from_proto(_reserialize(wire.capabilities_to_proto(caps))) == caps


@pytest.mark.parametrize(
    "device", [device_full(), device_bare(), device_sim()], ids=["full", "bare", "sim"]
)
def test_device_round_trip(device: DeviceInfo) -> None:
    m = _reserialize(wire.device_to_proto(device))
    assert wire.device_from_proto(m) == device
    # Optional fields: absent on the wire exactly when None in the record.
    for name in (
        "power_limit_enforced_w",
        "power_limit_default_w",
        "power_limit_min_w",
        "power_limit_max_w",
        "sm_clock_max_mhz",
        "mem_clock_max_mhz",
    ):
        assert m.HasField(name) == (getattr(device, name) is not None), name


def test_device_pci_id_zero_means_unknown() -> None:
    """``pci_device_id`` 0 on the wire is "unknown" (None), as the .proto documents."""
    m = wire.device_to_proto(device_bare())
    assert m.pci_device_id == 0
    assert wire.device_from_proto(m).pci_device_id is None


@pytest.mark.parametrize(
    "req",
    [
        RegisterRequest(NODE_FULL, (device_full(), device_full("GPU-b", 4), device_sim()), EPOCH),
        RegisterRequest(NODE_BARE, (), 1),
        RegisterRequest(NODE_BARE, (device_bare(),), U64_MAX),
    ],
    ids=["three-devices", "no-devices", "cpu-max-epoch"],
)
def test_register_request_round_trip(req: RegisterRequest) -> None:
    got = wire.register_request_from_proto(_reserialize(wire.register_request_to_proto(req)))
    assert got == req


@pytest.mark.parametrize(
    "resp",
    [
        RegisterResponse("gpu-node-17", AgentSettings()),
        RegisterResponse(
            "gpu-node-17", AgentSettings(sample_interval_s=0.05, batch_interval_s=2.5)
        ),
    ],
)
def test_register_response_round_trip(resp: RegisterResponse) -> None:
    m = _reserialize(wire.register_response_to_proto(resp))
    assert wire.register_response_from_proto(m) == resp
    assert wire.settings_from_proto(wire.settings_to_proto(resp.settings)) == resp.settings


def test_settings_unset_on_the_wire_mean_defaults() -> None:
    assert wire.settings_from_proto(agent_pb2.AgentSettings()) == AgentSettings()


# --- telemetry --------------------------------------------------------------------------------


def test_series_every_column_round_trip_keeps_dtypes_and_extremes() -> None:
    s = series_full(7)
    m = _reserialize(wire.series_to_proto(s))
    assert len(m.timestamp_unix_ns) == 7 * 8  # packed little-endian int64
    assert_series_equal(wire.series_from_proto(m), s)


@pytest.mark.parametrize("present", [(), ("power_instant_w",), ("energy_j", "throttle_reasons")])
def test_absent_columns_stay_absent(present: tuple[str, ...]) -> None:
    full = series_full(4)
    s = DeviceSeries(
        full.device_uuid, full.timestamp_unix_ns, {k: full.columns[k] for k in present}
    )
    m = _reserialize(wire.series_to_proto(s))
    for name in TELEMETRY_COLUMN_NAMES:
        size = COLUMN_DTYPES[name].itemsize
        assert len(getattr(m, name)) == (4 * size if name in present else 0), name
    got = wire.series_from_proto(m)
    assert set(got.columns) == set(present)
    assert_series_equal(got, s)
    for name in TELEMETRY_COLUMN_NAMES:
        if name not in present:
            assert got.column(name) is None


def test_empty_series_round_trip() -> None:
    s = DeviceSeries("GPU-0", np.zeros(0, dtype=np.int64), {})
    got = wire.series_from_proto(_reserialize(wire.series_to_proto(s)))
    assert len(got) == 0 and dict(got.columns) == {}
    assert got.timestamp_unix_ns.dtype == np.int64


def test_telemetry_batch_round_trip_several_series_per_device() -> None:
    a = series_full(3, "GPU-0")
    b = DeviceSeries("GPU-0", a.timestamp_unix_ns + 10**9, {"power_instant_w": np.ones(3)})
    c = DeviceSeries("GPU-1", a.timestamp_unix_ns, {"energy_j": np.arange(3, dtype=np.float64)})
    batch = TelemetryBatch((a, b, c), missed_ticks=U32_MAX)
    got = wire.telemetry_from_proto(_reserialize(wire.telemetry_to_proto(batch)))
    assert_batch_equal(got, batch)
    assert got.samples == 9


def _column_strategy(dtype: np.dtype[Any], n: int, *, finite: bool) -> st.SearchStrategy[Any]:
    if dtype.kind == "u":
        elem: st.SearchStrategy[Any] = st.integers(0, int(np.iinfo(dtype).max))
    else:
        width: Literal[32, 64] = 32 if dtype.itemsize == 4 else 64
        elem = st.floats(width=width, allow_nan=not finite, allow_infinity=not finite)
    return st.lists(elem, min_size=n, max_size=n).map(lambda v: np.array(v, dtype=dtype))


@st.composite
def series_strategy(draw: Callable[..., Any], *, finite: bool = True) -> DeviceSeries:
    n = draw(st.integers(1, 40))
    ts = draw(
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n).map(
            lambda v: np.array(v, dtype=np.int64)
        )
    )
    names = draw(st.sets(st.sampled_from(TELEMETRY_COLUMN_NAMES)))
    cols = {
        spec.name: draw(_column_strategy(np.dtype(spec.dtype), n, finite=finite))
        for spec in TELEMETRY_COLUMNS
        if spec.name in names
    }
    uuid = draw(st.text(min_size=1, max_size=20).filter(lambda u: u != ""))
    return DeviceSeries(uuid, ts, cols)


@HYPOTHESIS
@given(series_strategy(finite=True))
def test_series_round_trip_property(s: DeviceSeries) -> None:
    assert_series_equal(wire.series_from_proto(_reserialize(wire.series_to_proto(s))), s)


@HYPOTHESIS
@given(series_strategy(finite=False))
def test_series_round_trip_carries_nan_and_inf_untouched(s: DeviceSeries) -> None:
    got = wire.series_from_proto(_reserialize(wire.series_to_proto(s)))
    assert_series_equal(got, s)


@HYPOTHESIS
@given(
    st.lists(series_strategy(), max_size=4),
    st.integers(0, U32_MAX),
    st.integers(1, U64_MAX),
    st.integers(1, U64_MAX),
)
def test_telemetry_message_round_trip_property(
    series: list[DeviceSeries], missed: int, epoch: int, sequence: int
) -> None:
    msg = AgentMessage(epoch, sequence, TelemetryBatch(tuple(series), missed))
    got = wire.agent_message_from_proto(_reserialize(wire.agent_message_to_proto(msg)))
    assert_message_equal(got, msg)


def test_nan_power_is_not_judged_by_the_wire_layer() -> None:
    s = DeviceSeries(
        "GPU-0",
        np.array([NOW_NS, NOW_NS + 1, NOW_NS + 2], dtype=np.int64),
        {
            "power_instant_w": np.array([math.nan, -5.0, math.inf]),
            "gpu_temperature_c": np.array([math.nan, 1.0, -math.inf], dtype=np.float32),
        },
    )
    got = wire.series_from_proto(_reserialize(wire.series_to_proto(s)))
    col = got.columns["power_instant_w"]
    assert math.isnan(col[0]) and col[1] == -5.0 and col[2] == math.inf
    assert_series_equal(got, s)


# --- jobs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        JobSpec(gemm=GemmJobSpec()),
        JobSpec(
            gemm=GemmJobSpec(("fp64", "bf16", "fp8"), 16384, 30.0, True),
            device_uuids=("GPU-0", "GPU-1"),
        ),
        JobSpec(model=ModelJobSpec()),
        JobSpec(
            model=ModelJobSpec(("resnet50", "vit_b_16"), (1, 8, 64), "bf16", 5, 50),
            device_uuids=("GPU-3",),
        ),
    ],
    ids=["gemm-defaults", "gemm-full", "model-defaults", "model-full"],
)
def test_job_spec_round_trip(spec: JobSpec) -> None:
    assert wire.job_spec_from_proto(_reserialize(wire.job_spec_to_proto(spec))) == spec


@pytest.mark.parametrize(
    "conditions", [Conditions(), CONDITIONS_FULL, CONDITIONS_ZERO], ids=["empty", "full", "zeros"]
)
def test_conditions_round_trip(conditions: Conditions) -> None:
    m = _reserialize(wire.conditions_to_proto(conditions))
    assert wire.conditions_from_proto(m) == conditions
    assert m.HasField("energy_j") == (conditions.energy_j is not None)


@pytest.mark.parametrize("result", [GEMM_FULL, GEMM_BARE], ids=["full", "bare"])
def test_gemm_result_round_trip(result: GemmResult) -> None:
    m = _reserialize(wire.gemm_result_to_proto(result))
    assert wire.gemm_result_from_proto(m) == result
    assert m.HasField("sustained_flops_per_s") == (result.sustained_flops_per_s is not None)


@pytest.mark.parametrize("result", [MODEL_FULL, MODEL_BARE], ids=["full", "bare"])
def test_model_result_round_trip(result: ModelResult) -> None:
    m = _reserialize(wire.model_result_to_proto(result))
    assert wire.model_result_from_proto(m) == result
    assert m.HasField("efficiency_ratio") == (result.efficiency_ratio is not None)


@pytest.mark.parametrize(
    "result",
    [
        job_result(GEMM_FULL),
        job_result(GEMM_BARE, Conditions()),
        job_result(MODEL_FULL),
        job_result(MODEL_BARE, CONDITIONS_ZERO),
    ],
    ids=["gemm-full", "gemm-bare", "model-full", "model-bare"],
)
def test_job_result_round_trip(result: JobResult) -> None:
    got = wire.job_result_from_proto(_reserialize(wire.job_result_to_proto(result)))
    assert got == result
    assert got.kind == result.kind


@pytest.mark.parametrize("state", list(JobState))
def test_job_status_round_trip_every_state(state: JobState) -> None:
    status = JobStatus("job-7", state, message="step 3/7", progress_ratio=0.43)
    got = wire.job_status_from_proto(_reserialize(wire.job_status_to_proto(status)))
    assert got == status
    assert isinstance(got.state, JobState)


# --- stream -----------------------------------------------------------------------------------


AGENT_MESSAGES: dict[str, AgentMessage] = {
    "hello": AgentMessage(0, 0, StreamHello("gpu-node-17", EPOCH)),
    "hello-pending": AgentMessage(0, 0, StreamHello("gpu-node-17", EPOCH, (1, 2, U64_MAX))),
    "telemetry": AgentMessage(EPOCH, 1, TelemetryBatch((series_full(3),), missed_ticks=2)),
    "telemetry-empty": AgentMessage(EPOCH, 2, TelemetryBatch(())),
    "job_result-gemm": AgentMessage(EPOCH, 3, job_result(GEMM_FULL)),
    "job_result-model": AgentMessage(EPOCH, 4, job_result(MODEL_BARE, Conditions())),
    "job_status": AgentMessage(EPOCH, 5, JobStatus("job-7", JobState.RUNNING, "sweep", 0.5)),
    "heartbeat": AgentMessage(EPOCH, 6, Heartbeat(NOW_NS)),
    "dropped": AgentMessage(EPOCH, U64_MAX, Dropped("spool full", 1200, "telemetry")),
    "attribution": AgentMessage(
        EPOCH,
        7,
        Attribution(
            NOW_NS,
            (
                DeviceAttribution(
                    "GPU-0",
                    (
                        GpuProcess(4242, "python3", 40 * 2**30, 0.87),
                        GpuProcess(77, "", None, None),
                    ),
                    True,
                    PodRef("ml-train", "llama-pretrain-0", "trainer"),
                ),
                DeviceAttribution("GPU-1"),
                DeviceAttribution("GPU-2", (), True, None),
            ),
        ),
    ),
}


@pytest.mark.parametrize("msg", AGENT_MESSAGES.values(), ids=AGENT_MESSAGES.keys())
def test_agent_message_round_trip_every_payload(msg: AgentMessage) -> None:
    m = _reserialize(wire.agent_message_to_proto(msg))
    assert m.WhichOneof("payload") == msg.kind
    assert_message_equal(wire.agent_message_from_proto(m), msg)


def test_every_payload_kind_is_covered() -> None:
    oneof = agent_pb2.AgentMessage.DESCRIPTOR.oneofs_by_name["payload"]
    assert {f.name for f in oneof.fields} == {m.kind for m in AGENT_MESSAGES.values()}


def test_attribution_absent_values_stay_absent() -> None:
    """Unknown memory or utilisation crosses as absent, never as 0; a zero crosses as 0."""
    a = Attribution(1, (DeviceAttribution("GPU-0", (GpuProcess(1, "", 0, 0.0),), True),))
    m = _reserialize(wire.attribution_to_proto(a))
    assert m.devices[0].processes[0].HasField("used_memory_bytes")
    assert m.devices[0].processes[0].HasField("sm_utilization_ratio")
    assert wire.attribution_from_proto(m) == a
    bare = _reserialize(wire.attribution_to_proto(Attribution(1, (DeviceAttribution("G"),))))
    assert not bare.devices[0].HasField("pod")
    assert wire.attribution_from_proto(bare).devices[0].pod is None


def test_dropped_without_original_kind_means_telemetry() -> None:
    m = agent_pb2.AgentMessage(epoch=EPOCH, sequence=1, dropped=agent_pb2.Dropped(samples=3))
    payload = wire.agent_message_from_proto(m).payload
    assert payload == Dropped("", 3, "telemetry")


COLLECTOR_MESSAGES: dict[str, Ack | Command] = {
    "ack": Ack(EPOCH, 42),
    "ack-zero": Ack(EPOCH, 0),
    "ack-max": Ack(U64_MAX, U64_MAX),
    "run_job-gemm": Command(
        "cmd-1", RunJob("job-7", JobSpec(gemm=GemmJobSpec(("bf16",), 8192, 30.0, True)))
    ),
    "run_job-model": Command(
        "cmd-2",
        RunJob("job-8", JobSpec(model=ModelJobSpec(("resnet50",), (8,)), device_uuids=("GPU-0",))),
    ),
    "set_sample_interval": Command("cmd-3", SetSampleInterval(0.05)),
}


@pytest.mark.parametrize("payload", COLLECTOR_MESSAGES.values(), ids=COLLECTOR_MESSAGES.keys())
def test_collector_message_round_trip(payload: Ack | Command) -> None:
    m = _reserialize(wire.collector_message_to_proto(payload))
    assert wire.collector_message_from_proto(m) == payload


# --- structural errors ------------------------------------------------------------------------


def _series_pb(n: int = 3, **columns: list[Any]) -> telemetry_pb2.DeviceSeries:
    m = telemetry_pb2.DeviceSeries(device_uuid="GPU-0")
    m.timestamp_unix_ns = le([NOW_NS + i for i in range(n)], "timestamp_unix_ns")
    for name, values in columns.items():
        setattr(m, name, le(values, name))
    return m


def test_wire_errors_are_value_errors_and_too_large_is_a_wire_error() -> None:
    assert issubclass(WireError, ValueError)
    assert issubclass(WireTooLargeError, WireError)


@pytest.mark.parametrize("name", TELEMETRY_COLUMN_NAMES)
@pytest.mark.parametrize("length", [1, 4])
def test_column_length_mismatch(name: str, length: int) -> None:
    m = _series_pb(3, **{name: [1] * length})
    with pytest.raises(WireError, match=name) as info:
        wire.series_from_proto(m)
    assert not isinstance(info.value, WireTooLargeError)


def test_column_without_timestamps() -> None:
    with pytest.raises(WireError, match="power_instant_w"):
        wire.series_from_proto(_series_pb(0, power_instant_w=[1.0]))


def test_series_without_device_uuid() -> None:
    m = _series_pb(2, power_instant_w=[1.0, 2.0])
    m.device_uuid = ""
    with pytest.raises(WireError, match="device_uuid"):
        wire.series_from_proto(m)


def test_mismatch_inside_a_batch_fails_the_whole_message() -> None:
    m = agent_pb2.AgentMessage(epoch=EPOCH, sequence=1)
    m.telemetry.series.append(_series_pb(2, energy_j=[1.0, 2.0]))
    m.telemetry.series.append(_series_pb(2, energy_j=[1.0]))
    with pytest.raises(WireError, match="energy_j"):
        wire.agent_message_from_proto(m)


def test_oversized_series_is_too_large() -> None:
    m = telemetry_pb2.DeviceSeries(device_uuid="GPU-0")
    m.timestamp_unix_ns = np.arange(wire.MAX_SERIES_SAMPLES + 1, dtype="<i8").tobytes()
    with pytest.raises(WireTooLargeError, match=str(wire.MAX_SERIES_SAMPLES)):
        wire.series_from_proto(m)


def test_series_at_the_size_limit_is_accepted() -> None:
    m = telemetry_pb2.DeviceSeries(device_uuid="GPU-0")
    m.timestamp_unix_ns = np.arange(wire.MAX_SERIES_SAMPLES, dtype="<i8").tobytes()
    assert len(wire.series_from_proto(m)) == wire.MAX_SERIES_SAMPLES


def _gemm_pb(**kw: Any) -> jobs_pb2.GemmResult:
    return jobs_pb2.GemmResult(**{"precision": "bf16", "backend": "cublas", **kw})


def _model_pb(**kw: Any) -> jobs_pb2.ModelResult:
    return jobs_pb2.ModelResult(**{"model": "resnet50", "precision": "fp16", "batch": 8, **kw})


def _msg(**payload: Any) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(epoch=EPOCH, sequence=1, **payload)


BROKEN_AGENT_MESSAGES: dict[str, tuple[agent_pb2.AgentMessage, str]] = {
    "no-payload": (agent_pb2.AgentMessage(epoch=EPOCH, sequence=1), "no payload"),
    "empty-payload-bytes": (agent_pb2.AgentMessage(), "no payload"),
    "zero-epoch": (
        agent_pb2.AgentMessage(epoch=0, sequence=1, heartbeat=agent_pb2.Heartbeat()),
        "non-zero epoch",
    ),
    "zero-sequence": (
        agent_pb2.AgentMessage(epoch=EPOCH, sequence=0, telemetry=telemetry_pb2.TelemetryBatch()),
        "non-zero epoch and sequence",
    ),
    "hello-no-agent": (
        agent_pb2.AgentMessage(hello=agent_pb2.StreamHello(epoch=EPOCH)),
        "agent_id",
    ),
    "hello-zero-epoch": (
        agent_pb2.AgentMessage(hello=agent_pb2.StreamHello(agent_id="a")),
        "non-zero epoch",
    ),
    "job-result-without-result": (
        _msg(job_result=jobs_pb2.JobResult(job_id="j", device_uuid="GPU-0")),
        "neither a GEMM nor a model",
    ),
    "job-result-without-job-id": (
        _msg(job_result=jobs_pb2.JobResult(device_uuid="GPU-0", gemm=_gemm_pb())),
        "job_id",
    ),
    "job-result-without-device": (
        _msg(job_result=jobs_pb2.JobResult(job_id="j", gemm=_gemm_pb())),
        "device_uuid",
    ),
    "gemm-without-precision": (
        _msg(
            job_result=jobs_pb2.JobResult(
                job_id="j", device_uuid="GPU-0", gemm=_gemm_pb(precision="")
            )
        ),
        "precision",
    ),
    "model-without-model": (
        _msg(
            job_result=jobs_pb2.JobResult(
                job_id="j", device_uuid="GPU-0", model=_model_pb(model="")
            )
        ),
        "model",
    ),
    "model-without-precision": (
        _msg(
            job_result=jobs_pb2.JobResult(
                job_id="j", device_uuid="GPU-0", model=_model_pb(precision="")
            )
        ),
        "precision",
    ),
    "model-batch-zero": (
        _msg(
            job_result=jobs_pb2.JobResult(job_id="j", device_uuid="GPU-0", model=_model_pb(batch=0))
        ),
        "batch",
    ),
    "job-status-unknown-state": (
        _msg(job_status=jobs_pb2.JobStatus(job_id="j", state=99)),  # type: ignore[arg-type]
        "unknown state 99",
    ),
    "job-status-without-job-id": (
        _msg(job_status=jobs_pb2.JobStatus(state=jobs_pb2.JOB_STATE_RUNNING)),
        "job_id",
    ),
    "telemetry-length-mismatch": (
        _msg(telemetry=telemetry_pb2.TelemetryBatch(series=[_series_pb(3, sm_clock_mhz=[1, 2])])),
        "sm_clock_mhz",
    ),
}


@pytest.mark.parametrize(
    ("message", "words"), BROKEN_AGENT_MESSAGES.values(), ids=BROKEN_AGENT_MESSAGES.keys()
)
def test_broken_agent_messages(message: agent_pb2.AgentMessage, words: str) -> None:
    parsed = _reserialize(message)
    with pytest.raises(WireError, match=words) as info:
        wire.agent_message_from_proto(parsed)
    assert not isinstance(info.value, WireTooLargeError)


def test_empty_bytes_parse_to_a_message_without_payload() -> None:
    """What a peer sending zero bytes produces: a message with no payload, refused."""
    m = agent_pb2.AgentMessage.FromString(b"")
    with pytest.raises(WireError, match="no payload"):
        wire.agent_message_from_proto(m)


def test_job_spec_without_kind() -> None:
    with pytest.raises(WireError, match="no job kind"):
        wire.job_spec_from_proto(jobs_pb2.JobSpec(device_uuids=["GPU-0"]))
    with pytest.raises(WireError, match="no job kind"):
        wire.job_spec_from_proto(wire.job_spec_to_proto(JobSpec()))


def _register(devices: list[common_pb2.DeviceInfo], epoch: int = EPOCH, host: str = "n") -> Any:
    return agent_pb2.RegisterRequest(
        node=common_pb2.NodeInfo(hostname=host), devices=devices, epoch=epoch
    )


def _dev(uuid: str = "GPU-0", kind: int = common_pb2.DEVICE_KIND_GPU) -> common_pb2.DeviceInfo:
    return common_pb2.DeviceInfo(uuid=uuid, name="x", kind=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (_register([_dev("GPU-a"), _dev("GPU-b"), _dev("GPU-a")]), "twice"),
        (_register([_dev()], epoch=0), "non-zero epoch"),
        (_register([_dev()], host=""), "hostname"),
        (_register([_dev()], host="   "), "hostname"),
        (_register([_dev("")]), "empty uuid"),
        (_register([_dev("  ")]), "empty uuid"),
        (_register([_dev(kind=99)]), "unknown kind"),
    ],
    ids=[
        "duplicate-uuid",
        "zero-epoch",
        "no-hostname",
        "blank-hostname",
        "no-uuid",
        "blank-uuid",
        "unknown-kind",
    ],
)
def test_broken_register_requests(message: agent_pb2.RegisterRequest, words: str) -> None:
    with pytest.raises(WireError, match=words):
        wire.register_request_from_proto(_reserialize(message))


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (agent_pb2.CollectorMessage(), "no payload"),
        (agent_pb2.CollectorMessage(command=agent_pb2.Command(command_id="c")), "no action"),
        (
            agent_pb2.CollectorMessage(
                command=agent_pb2.Command(
                    command_id="c", set_sample_interval=agent_pb2.SetSampleInterval()
                )
            ),
            "> 0",
        ),
        (
            agent_pb2.CollectorMessage(
                command=agent_pb2.Command(
                    command_id="c",
                    set_sample_interval=agent_pb2.SetSampleInterval(sample_interval_s=-1.0),
                )
            ),
            "> 0",
        ),
        (
            agent_pb2.CollectorMessage(
                command=agent_pb2.Command(
                    command_id="c",
                    set_sample_interval=agent_pb2.SetSampleInterval(sample_interval_s=math.nan),
                )
            ),
            "> 0",
        ),
        (
            agent_pb2.CollectorMessage(
                command=agent_pb2.Command(command_id="c", run_job=agent_pb2.RunJob(job_id="j"))
            ),
            "no job kind",
        ),
    ],
    ids=[
        "no-payload",
        "no-action",
        "zero-interval",
        "negative-interval",
        "nan-interval",
        "run-job-without-kind",
    ],
)
def test_broken_collector_messages(message: agent_pb2.CollectorMessage, words: str) -> None:
    with pytest.raises(WireError, match=words):
        wire.collector_message_from_proto(_reserialize(message))


def test_unknown_job_state_from_a_newer_peer() -> None:
    """proto3 enums are open: a number this build does not know survives parsing and must be
    refused by name, not crash with a bare ValueError from the enum."""
    raw = jobs_pb2.JobStatus(job_id="j", state=jobs_pb2.JOB_STATE_RUNNING).SerializeToString()
    raw = raw.replace(bytes([0x10, jobs_pb2.JOB_STATE_RUNNING]), bytes([0x10, 42]))
    m = jobs_pb2.JobStatus.FromString(raw)
    assert m.state == 42
    with pytest.raises(WireError, match="unknown state 42"):
        wire.job_status_from_proto(m)


def test_records_are_unchanged_by_conversion() -> None:
    """to_proto must not mutate its input (records are shared with spools and state)."""
    s = series_full(3)
    before = {k: v.copy() for k, v in s.columns.items()}
    wire.series_to_proto(s)
    for k, v in before.items():
        np.testing.assert_array_equal(s.columns[k], v, strict=True)
