"""The kubelet pod-resources client against a real gRPC server on a unix socket, and the vendored
``.proto`` against upstream's wire format (field numbers and the method path)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from flopwatt.agent import kubelet
from flopwatt.agent.kubelet import (
    DEFAULT_POD_RESOURCES_SOCKET,
    LIST_METHOD,
    PodResourcesClient,
    PodResourcesUnavailable,
)
from flopwatt.podresources.v1 import api_pb2, api_pb2_grpc
from flopwatt.records import PodRef

GPU_A = "GPU-0b6a9b8e-1c1d-4f5e-9a0b-111111111111"
GPU_B = "GPU-0b6a9b8e-1c1d-4f5e-9a0b-222222222222"
MIG_A = "MIG-5c7e2f0a-8d3b-5e1f-a2c4-333333333333"
MIG_B = "MIG-5c7e2f0a-8d3b-5e1f-a2c4-444444444444"


def _devices(resource: str, *ids: str) -> api_pb2.ContainerDevices:
    return api_pb2.ContainerDevices(resource_name=resource, device_ids=list(ids))


def _pod(
    namespace: str, name: str, containers: dict[str, list[api_pb2.ContainerDevices]]
) -> api_pb2.PodResources:
    return api_pb2.PodResources(
        namespace=namespace,
        name=name,
        containers=[
            api_pb2.ContainerResources(name=c, devices=devices) for c, devices in containers.items()
        ],
    )


CLUSTER = api_pb2.ListPodResourcesResponse(
    pod_resources=[
        _pod(
            "ml",
            "trainer-0",
            {
                "main": [_devices("nvidia.com/gpu", GPU_A, GPU_B)],
                "sidecar": [_devices("example.com/foo", "foo-1")],
            },
        ),
        _pod(
            "infer",
            "server-7f9c",
            {
                "model": [
                    _devices("nvidia.com/mig-1g.10gb", MIG_A),
                    _devices("example.com/foo", "foo-2"),
                ],
                "warmup": [_devices("nvidia.com/mig-2g.20gb", MIG_B)],
            },
        ),
        _pod("kube-system", "coredns-abc", {"coredns": []}),
        _pod("default", "no-containers", {}),
    ]
)


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    """Answers List with ``response``; with ``hang`` set, waits (for ``release``) first."""

    def __init__(self, response: api_pb2.ListPodResourcesResponse, *, hang: bool = False) -> None:
        self.response = response
        self.hang = hang
        self.release = threading.Event()
        self.calls = 0

    def List(  # noqa: N802 - the gRPC method name
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        if self.hang:
            self.release.wait(timeout=10)
        return self.response


@contextmanager
def serve(socket_path: Path, servicer: FakeKubelet | None) -> Iterator[None]:
    """A real gRPC server on ``socket_path``; with no servicer it serves no method at all (as a
    kubelet without the API would), so List answers UNIMPLEMENTED."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    if servicer is not None:
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    try:
        yield
    finally:
        if servicer is not None:
            servicer.release.set()
        server.stop(grace=None).wait()


@contextmanager
def stale_socket(socket_path: Path) -> Iterator[None]:
    """A socket file nobody listens on (a kubelet that died): connecting is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(socket_path))
        try:
            yield
        finally:
            socket_path.unlink()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "kubelet.sock"


@pytest.fixture
def kubelet_up(socket_path: Path) -> Iterator[FakeKubelet]:
    servicer = FakeKubelet(CLUSTER)
    with serve(socket_path, servicer):
        yield servicer


def test_gpus_and_mig_devices_map_to_their_containers(
    socket_path: Path, kubelet_up: FakeKubelet
) -> None:
    with PodResourcesClient(socket_path) as client:
        allocations = client.gpu_allocations()
    assert allocations == {
        GPU_A: PodRef(namespace="ml", pod="trainer-0", container="main"),
        GPU_B: PodRef(namespace="ml", pod="trainer-0", container="main"),
        MIG_A: PodRef(namespace="infer", pod="server-7f9c", container="model"),
        MIG_B: PodRef(namespace="infer", pod="server-7f9c", container="warmup"),
    }


def test_other_resources_and_pods_without_devices_are_left_out(
    socket_path: Path, kubelet_up: FakeKubelet
) -> None:
    with PodResourcesClient(socket_path) as client:
        allocations = client.gpu_allocations()
    assert "foo-1" not in allocations
    assert "foo-2" not in allocations
    pods = {ref.pod for ref in allocations.values()}
    assert pods == {"trainer-0", "server-7f9c"}


def test_resource_prefixes_choose_what_is_reported(
    socket_path: Path, kubelet_up: FakeKubelet
) -> None:
    with PodResourcesClient(socket_path, resource_prefixes=("example.com/",)) as client:
        assert client.gpu_allocations() == {
            "foo-1": PodRef("ml", "trainer-0", "sidecar"),
            "foo-2": PodRef("infer", "server-7f9c", "model"),
        }
    with PodResourcesClient(socket_path, resource_prefixes=("nvidia.com/gpu",)) as client:
        assert set(client.gpu_allocations()) == {GPU_A, GPU_B}


def test_empty_names_are_kept_as_sent(socket_path: Path) -> None:
    response = api_pb2.ListPodResourcesResponse(
        pod_resources=[_pod("", "", {"": [_devices("nvidia.com/gpu", GPU_A)]})]
    )
    with serve(socket_path, FakeKubelet(response)), PodResourcesClient(socket_path) as client:
        assert client.gpu_allocations() == {GPU_A: PodRef("", "", "")}


def test_a_device_listed_twice_keeps_the_first_and_warns_once(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    response = api_pb2.ListPodResourcesResponse(
        pod_resources=[
            _pod("a", "first", {"c": [_devices("nvidia.com/gpu", GPU_A)]}),
            _pod("b", "second", {"c": [_devices("nvidia.com/gpu", GPU_A, GPU_B)]}),
        ]
    )
    caplog.set_level(logging.WARNING, logger=kubelet.__name__)
    with serve(socket_path, FakeKubelet(response)), PodResourcesClient(socket_path) as client:
        for _ in range(2):
            assert client.gpu_allocations() == {
                GPU_A: PodRef("a", "first", "c"),
                GPU_B: PodRef("b", "second", "c"),
            }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert GPU_A in warnings[0].getMessage()


def test_time_sliced_replicas_count_as_their_gpu(socket_path: Path) -> None:
    """The NVIDIA device plugin's time-slicing names replicas "GPU-…::N": the GPU is the UUID
    before "::" (the first container listed keeps it)."""
    response = api_pb2.ListPodResourcesResponse(
        pod_resources=[
            _pod("a", "first", {"c": [_devices("nvidia.com/gpu", f"{GPU_A}::0")]}),
            _pod("b", "second", {"c": [_devices("nvidia.com/gpu", f"{GPU_A}::1")]}),
        ]
    )
    with serve(socket_path, FakeKubelet(response)), PodResourcesClient(socket_path) as client:
        assert client.gpu_allocations() == {GPU_A: PodRef("a", "first", "c")}


def test_missing_socket_is_unavailable_naming_the_path(socket_path: Path) -> None:
    client = PodResourcesClient(socket_path)
    with pytest.raises(PodResourcesUnavailable, match="does not exist") as raised:
        client.gpu_allocations()
    assert str(socket_path) in str(raised.value)
    client.close()


def test_a_path_that_is_not_a_socket_is_unavailable(socket_path: Path) -> None:
    socket_path.write_text("not a socket")
    with (
        PodResourcesClient(socket_path) as client,
        pytest.raises(PodResourcesUnavailable, match="not a unix socket"),
    ):
        client.gpu_allocations()


def test_unimplemented_is_unavailable(socket_path: Path) -> None:
    with (
        serve(socket_path, None),
        PodResourcesClient(socket_path) as client,
        pytest.raises(PodResourcesUnavailable, match="UNIMPLEMENTED") as raised,
    ):
        client.gpu_allocations()
    assert str(socket_path) in str(raised.value)
    assert LIST_METHOD in str(raised.value)


def test_a_kubelet_that_does_not_answer_in_time_is_unavailable(socket_path: Path) -> None:
    servicer = FakeKubelet(CLUSTER, hang=True)
    with (
        serve(socket_path, servicer),
        PodResourcesClient(socket_path, timeout_s=0.3) as client,
        pytest.raises(PodResourcesUnavailable, match=r"no answer within 0\.3 s"),
    ):
        client.gpu_allocations()


def test_the_channel_is_reused_across_calls(
    socket_path: Path, kubelet_up: FakeKubelet, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real = grpc.insecure_channel

    def counting(target: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(target)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", counting)
    with PodResourcesClient(socket_path) as client:
        first = client.gpu_allocations()
        second = client.gpu_allocations()
    assert first == second
    assert len(first) == 4
    assert kubelet_up.calls == 2
    assert opened == [f"unix://{socket_path}"]


def test_a_socket_nobody_listens_on_is_unavailable(socket_path: Path) -> None:
    with (
        stale_socket(socket_path),
        PodResourcesClient(socket_path) as client,
        pytest.raises(PodResourcesUnavailable, match="cannot connect") as raised,
    ):
        client.gpu_allocations()
    assert str(socket_path) in str(raised.value)


def test_a_restarted_kubelet_is_read_again(socket_path: Path) -> None:
    """After a failed call the next one connects afresh, rather than failing fast while gRPC
    waits out its reconnect backoff (a reused channel would)."""
    with PodResourcesClient(socket_path, timeout_s=1.0) as client:
        with serve(socket_path, FakeKubelet(CLUSTER)):
            assert len(client.gpu_allocations()) == 4
        with stale_socket(socket_path), pytest.raises(PodResourcesUnavailable):
            client.gpu_allocations()
        with serve(socket_path, FakeKubelet(CLUSTER)):
            assert len(client.gpu_allocations()) == 4


def test_close_is_idempotent_and_the_client_usable_after(
    socket_path: Path, kubelet_up: FakeKubelet
) -> None:
    client = PodResourcesClient(socket_path)
    client.close()
    assert len(client.gpu_allocations()) == 4
    client.close()
    client.close()
    assert len(client.gpu_allocations()) == 4
    client.close()


def test_constructor_arguments() -> None:
    assert Path("/var/lib/kubelet/pod-resources/kubelet.sock") == DEFAULT_POD_RESOURCES_SOCKET
    assert PodResourcesClient(Path("rel.sock")).socket_path.is_absolute()
    with pytest.raises(ValueError, match="timeout_s"):
        PodResourcesClient(DEFAULT_POD_RESOURCES_SOCKET, timeout_s=0)


# --- the vendored .proto against upstream's wire format --------------------------------------
# Upstream: kubernetes/kubernetes staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto


def test_the_method_path_is_the_kubelets() -> None:
    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"
    method = service.methods_by_name["List"]
    assert f"/{service.full_name}/{method.name}" == "/v1.PodResourcesLister/List" == LIST_METHOD
    assert method.input_type.full_name == "v1.ListPodResourcesRequest"
    assert method.output_type.full_name == "v1.ListPodResourcesResponse"


def test_the_server_answers_at_the_kubelets_method_path(
    socket_path: Path, kubelet_up: FakeKubelet
) -> None:
    """A call built from the path alone (as a client generated from upstream makes it)."""
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call: Callable[..., bytes] = channel.unary_unary(
            "/v1.PodResourcesLister/List",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        raw = call(b"", timeout=5)
    assert api_pb2.ListPodResourcesResponse.FromString(raw) == CLUSTER


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("ListPodResourcesResponse", "pod_resources", 1),
        ("PodResources", "name", 1),
        ("PodResources", "namespace", 2),
        ("PodResources", "containers", 3),
        ("ContainerResources", "name", 1),
        ("ContainerResources", "devices", 2),
        ("ContainerDevices", "resource_name", 1),
        ("ContainerDevices", "device_ids", 2),
    ],
)
def test_field_numbers_are_upstreams(message: str, field: str, number: int) -> None:
    descriptor = api_pb2.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.fields_by_name[field].number == number
    assert descriptor.full_name == f"v1.{message}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def test_bytes_in_upstreams_layout_decode_and_unknown_fields_are_skipped() -> None:
    """Bytes laid out by hand as a current kubelet sends them, including the fields we do not
    vendor (cpu_ids, memory, topology, dynamic_resources)."""
    topology = _len_field(1, _varint_field(1, 0))  # TopologyInfo{nodes: [NUMANode{ID: 0}]}
    devices = (
        _len_field(1, b"nvidia.com/gpu")
        + _len_field(2, GPU_A.encode())
        + _len_field(2, GPU_B.encode())
        + _len_field(3, topology)  # ContainerDevices.topology
    )
    container = (
        _len_field(1, b"main")
        + _len_field(2, devices)
        + _len_field(3, _varint(2) + _varint(3))  # cpu_ids, packed int64
        + _len_field(4, _len_field(1, b"memory") + _varint_field(2, 1 << 30))  # memory
        + _len_field(5, _len_field(2, b"claim-0"))  # dynamic_resources
    )
    pod = _len_field(1, b"trainer-0") + _len_field(2, b"ml") + _len_field(3, container)
    response = api_pb2.ListPodResourcesResponse.FromString(_len_field(1, pod))

    assert len(response.pod_resources) == 1
    decoded = response.pod_resources[0]
    assert (decoded.namespace, decoded.name) == ("ml", "trainer-0")
    assert [c.name for c in decoded.containers] == ["main"]
    [decoded_devices] = decoded.containers[0].devices
    assert decoded_devices.resource_name == "nvidia.com/gpu"
    assert list(decoded_devices.device_ids) == [GPU_A, GPU_B]

    # Our encoding of the fields we keep is upstream's layout, byte for byte.
    known_devices = devices.removesuffix(_len_field(3, topology))
    known_pod = (
        _len_field(1, b"trainer-0")
        + _len_field(2, b"ml")
        + _len_field(3, _len_field(1, b"main") + _len_field(2, known_devices))
    )
    ours = api_pb2.ListPodResourcesResponse(
        pod_resources=[
            _pod("ml", "trainer-0", {"main": [_devices("nvidia.com/gpu", GPU_A, GPU_B)]})
        ]
    )
    assert ours.SerializeToString(deterministic=True) == _len_field(1, known_pod)
