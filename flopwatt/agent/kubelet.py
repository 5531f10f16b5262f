"""Which Kubernetes pod, namespace and container holds each GPU: a read-only client for the
kubelet's pod-resources gRPC API (``/v1.PodResourcesLister/List``).

The kubelet serves the API on a unix socket, by default
``/var/lib/kubelet/pod-resources/kubelet.sock``, and answers with every pod on the node and the
device-plugin devices allocated to each container. For NVIDIA's device plugin the device ids are
GPU UUIDs (``GPU-…``) or MIG device UUIDs (``MIG-…``) under resource names such as
``nvidia.com/gpu`` or ``nvidia.com/mig-1g.10gb``; this module maps them to ``PodRef`` s.

Optional and read-only: only ``List`` is called, and nothing else in the agent depends on it.
Outside Kubernetes the socket is absent and every call raises ``PodResourcesUnavailable``. In
Kubernetes the agent's pod must mount the host directory ``/var/lib/kubelet/pod-resources``
(a ``hostPath`` volume) and run as root, or as a user allowed to open the socket (connecting
to a unix socket needs write permission on it).

This is the only module that imports ``flopwatt.podresources.v1`` (the generated code).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from types import TracebackType

import grpc

from flopwatt.podresources.v1 import api_pb2, api_pb2_grpc
from flopwatt.records import PodRef

log = logging.getLogger(__name__)

DEFAULT_POD_RESOURCES_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
"""Where the kubelet serves the pod-resources API (its ``--root-dir`` default)."""

LIST_METHOD = "/v1.PodResourcesLister/List"
"""The full gRPC method name, as the kubelet serves it."""

MAX_RECEIVE_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest List reply accepted, bytes: 16 MiB, the receive limit Kubernetes' own
pod-resources clients use (``defaultPodResourcesMaxSize`` in its node e2e tests)."""


class PodResourcesUnavailable(Exception):  # noqa: N818 - the name says what callers handle
    """The kubelet's pod-resources API could not be read; the message says why (socket
    missing, permission, connection refused, method not served, no answer in time)."""


class PodResourcesClient:
    """Reads GPU allocations from the kubelet's pod-resources socket.

    The gRPC channel is opened on the first call and reused; after a failed call it is dropped,
    so the next call connects afresh (rather than waiting out gRPC's reconnect backoff after a
    kubelet restart). ``close()`` releases it; the client may be used again afterwards. Meant for
    one thread at a time.

    Args:
        socket_path: the kubelet's unix socket (``DEFAULT_POD_RESOURCES_SOCKET`` in a pod that
            mounts it at the host path).
        timeout_s: deadline of each call, seconds.
        resource_prefixes: a device is reported when its resource name starts with one of
            these (``"nvidia.com/"`` covers ``nvidia.com/gpu`` and every MIG profile).
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        timeout_s: float = 2.0,
        resource_prefixes: tuple[str, ...] = ("nvidia.com/",),
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._socket_path = socket_path.absolute()
        self._timeout_s = timeout_s
        self._resource_prefixes = resource_prefixes
        self._channel: grpc.Channel | None = None
        self._list: grpc.UnaryUnaryMultiCallable | None = None
        self._warned_duplicate = False

    @property
    def socket_path(self) -> Path:
        """The socket this client reads (absolute)."""
        return self._socket_path

    def gpu_allocations(self) -> dict[str, PodRef]:
        """Map each allocated device id (``GPU-…`` / ``MIG-…`` UUID as the device plugin reports
        it) of a matching resource to the container that holds it.

        Devices of other resources (CPUs, memory, other vendors' devices) and pods without
        devices are left out; names are kept exactly as the kubelet sends them, empty strings
        included. A time-sliced replica id (``GPU-…::N``) counts as its GPU. A GPU held by
        several containers (time-slicing, or a kubelet listing it twice) keeps the first one
        listed; the first such conflict is logged at warning, once per client.

        Raises:
            PodResourcesUnavailable: the socket is missing or cannot be opened, the connection
                is refused, the kubelet does not serve ``List`` (``UNIMPLEMENTED``), no answer
                came within ``timeout_s``, or any other gRPC or OS error.
        """
        response = self._call_list()
        allocations: dict[str, PodRef] = {}
        for pod in response.pod_resources:
            for container in pod.containers:
                ref = PodRef(namespace=pod.namespace, pod=pod.name, container=container.name)
                for devices in container.devices:
                    if not devices.resource_name.startswith(self._resource_prefixes):
                        continue
                    for replica_id in devices.device_ids:
                        # Time-slicing (NVIDIA device plugin) names each replica of a GPU
                        # "GPU-…::N": the GPU is the part before "::".
                        device_id = replica_id.split("::", 1)[0]
                        held = allocations.setdefault(device_id, ref)
                        if held is not ref and not self._warned_duplicate:
                            self._warned_duplicate = True
                            log.warning(
                                "kubelet pod-resources lists device %s twice (%s/%s/%s and "
                                "%s/%s/%s); keeping the first (logged once)",
                                device_id,
                                held.namespace,
                                held.pod,
                                held.container,
                                ref.namespace,
                                ref.pod,
                                ref.container,
                            )
        return allocations

    def close(self) -> None:
        """Close the channel, if open. Idempotent; never raises."""
        channel, self._channel, self._list = self._channel, None, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call_list(self) -> api_pb2.ListPodResourcesResponse:
        """One List call with the deadline; any failure becomes ``PodResourcesUnavailable``."""
        try:
            self._check_socket()
        except PodResourcesUnavailable:
            self.close()
            raise
        try:
            response: api_pb2.ListPodResourcesResponse = self._stub()(
                api_pb2.ListPodResourcesRequest(), timeout=self._timeout_s
            )
        except grpc.RpcError as e:
            self.close()
            raise PodResourcesUnavailable(self._describe(e)) from e
        except OSError as e:
            self.close()
            raise PodResourcesUnavailable(
                f"kubelet pod-resources socket {self._socket_path}: {e}"
            ) from e
        return response

    def _check_socket(self) -> None:
        """Fail early, with a plain reason, when the socket is clearly not usable."""
        where = f"kubelet pod-resources socket {self._socket_path}"
        try:
            mode = self._socket_path.stat().st_mode
        except FileNotFoundError as e:
            raise PodResourcesUnavailable(
                f"{where} does not exist (not on a Kubernetes node, or "
                f"{self._socket_path.parent} is not mounted into the agent's pod)"
            ) from e
        except OSError as e:
            raise PodResourcesUnavailable(f"{where}: {e}") from e
        if not stat.S_ISSOCK(mode):
            raise PodResourcesUnavailable(f"{where} is not a unix socket")
        if not os.access(self._socket_path, os.R_OK | os.W_OK):
            raise PodResourcesUnavailable(
                f"{where}: permission denied (connecting needs read and write access to the "
                "socket: run the agent as root or as a user allowed to open it)"
            )

    def _stub(self) -> grpc.UnaryUnaryMultiCallable:
        if self._list is None:
            self._channel = grpc.insecure_channel(
                f"unix://{self._socket_path}",
                options=[("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES)],
            )
            stub = api_pb2_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]
            self._list = stub.List
        return self._list

    def _describe(self, error: grpc.RpcError) -> str:
        """A one-line reason for a failed call, naming the socket."""
        where = f"kubelet pod-resources socket {self._socket_path}"
        code = error.code() if isinstance(error, grpc.Call) else None
        details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"{where}: no answer within {self._timeout_s:g} s"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return (
                f"{where}: the kubelet does not serve {LIST_METHOD} (UNIMPLEMENTED: {details}); "
                "the kubelet is too old for pod-resources v1 or has the endpoint disabled"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"{where}: cannot connect ({details})"
        name = code.name if code is not None else "error"
        return f"{where}: {name}: {details}"
