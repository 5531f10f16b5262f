"""Authentication matrix against a real collector: bearer tokens, admin tokens, TLS and mutual
TLS with real certificates. A credential for node A can never write as node B."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from flopwatt.collector.auth import AuthConfig, TokenFileError, load_agent_tokens
from flopwatt.collector.server import CollectorConfig, ConfigError, build_auth
from flopwatt.v1 import admin_pb2, admin_pb2_grpc, agent_pb2_grpc
from tests.collector_helpers import (
    AgentStream,
    bearer,
    collector,
    device_pb,
    hello_pb,
    register_pb,
    telemetry_pb,
)
from tests.tls_helpers import TestCA

TOKEN_A = "tok-node-a-0123456789abcdef"
TOKEN_B = "tok-node-b-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
EPOCH = 77


@pytest.fixture
def token_files(tmp_path: Path) -> dict[str, Path]:
    agents = tmp_path / "agents.tokens"
    agents.write_text(f"# hostname token\nnode-a {TOKEN_A}\nnode-b {TOKEN_B}\n")
    admins = tmp_path / "admin.tokens"
    admins.write_text(f"{ADMIN}\n")
    return {"agent_token_file": agents, "admin_token_file": admins}


async def _register_code(
    channel: grpc.aio.Channel, host: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    try:
        await stub.Register(register_pb(host, [device_pb(f"GPU-{host}")], EPOCH), metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("metadata", "host", "expected"),
    [
        ((), "node-a", grpc.StatusCode.UNAUTHENTICATED),
        (bearer("wrong-token-0123456789"), "node-a", grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", TOKEN_A),), "node-a", grpc.StatusCode.UNAUTHENTICATED),  # no scheme
        (bearer(TOKEN_B), "node-a", grpc.StatusCode.PERMISSION_DENIED),  # other node's token
        (bearer(ADMIN), "node-a", grpc.StatusCode.PERMISSION_DENIED),  # admin cannot write
        (bearer(TOKEN_A), "node-a", grpc.StatusCode.OK),
    ],
)
async def test_register_auth_matrix(
    tmp_path: Path,
    token_files: dict[str, Path],
    metadata: tuple[tuple[str, str], ...],
    host: str,
    expected: grpc.StatusCode,
) -> None:
    async with (
        collector(tmp_path, **token_files) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        assert await _register_code(ch, host, metadata) == expected


async def test_stream_auth_other_nodes_token_cannot_write(
    tmp_path: Path, token_files: dict[str, Path]
) -> None:
    async with (
        collector(tmp_path, **token_files) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        assert await _register_code(ch, "node-a", bearer(TOKEN_A)) == grpc.StatusCode.OK
        s = AgentStream(ch, bearer(TOKEN_B))
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1, uuid="GPU-node-a"))
        assert await s.wait_end() == grpc.StatusCode.PERMISSION_DENIED
        s = AgentStream(ch)
        s.send(hello_pb("node-a", EPOCH))
        assert await s.wait_end() == grpc.StatusCode.UNAUTHENTICATED
        s = AgentStream(ch, bearer(TOKEN_A))
        s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1, uuid="GPU-node-a"))
        await s.wait_ack(EPOCH, 1)
        assert await s.close() == grpc.StatusCode.OK
        n = c.store.query("SELECT COUNT(*) AS n FROM telemetry_chunks")[0]["n"]
        assert n == 1  # only the authorised stream wrote


async def test_admin_api_needs_an_admin_token(tmp_path: Path, token_files: dict[str, Path]) -> None:
    async with (
        collector(tmp_path, **token_files) as c,
        grpc.aio.insecure_channel(c.grpc_address) as ch,
    ):
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (bearer("nope-nope-nope-nope"), grpc.StatusCode.UNAUTHENTICATED),
            (bearer(TOKEN_A), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.ListAgents(admin_pb2.ListAgentsRequest(), metadata=metadata)
            assert info.value.code() == code
        resp = await admin.ListAgents(admin_pb2.ListAgentsRequest(), metadata=bearer(ADMIN))
        assert list(resp.agents) == []


def test_token_file_errors_never_echo_tokens(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tokens"
    bad.write_text("node-a short\n")
    with pytest.raises(TokenFileError) as info:
        load_agent_tokens(bad)
    assert "short" not in str(info.value).replace("shorter", "")
    bad.write_text(f"node-a {TOKEN_A}\nnode-b {TOKEN_A}\n")
    with pytest.raises(TokenFileError, match="repeated"):
        load_agent_tokens(bad)
    assert TOKEN_A not in str(info.value)


def test_unauthenticated_collector_stays_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        build_auth(CollectorConfig(grpc_listen="0.0.0.0:50051"))
    assert not build_auth(
        CollectorConfig(grpc_listen="0.0.0.0:1", allow_unauthenticated_remote=True)
    ).enabled
    assert not build_auth(CollectorConfig(grpc_listen="[::1]:1")).enabled
    with pytest.raises(ConfigError, match="go together"):
        build_auth(CollectorConfig(tls_cert=tmp_path / "x"))


def test_token_lookup_is_by_digest_only() -> None:
    cfg = AuthConfig(agent_tokens={b"x" * 32: "node"})
    assert cfg.agent_for_token("anything") is None
    assert "anything" not in repr(cfg)


async def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server = ca.issue("localhost", server=True)
    client_a = ca.issue("node-a", server=False)
    async with collector(
        tmp_path,
        grpc_listen="localhost:0",
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=ca.ca.cert,
    ) as c:
        target = f"localhost:{c.grpc_port}"
        # TLS without a client certificate: the handshake fails.
        no_cert = grpc.ssl_channel_credentials(root_certificates=ca.ca.cert.read_bytes())
        async with grpc.aio.secure_channel(target, no_cert) as ch:
            code = await _register_code(ch, "node-a", ())
            assert code == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca.ca.cert.read_bytes(),
            private_key=client_a.key.read_bytes(),
            certificate_chain=client_a.cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(target, with_cert) as ch:
            # node-a's certificate cannot register as node-b ...
            assert await _register_code(ch, "node-b", ()) == grpc.StatusCode.PERMISSION_DENIED
            # ... but can as itself, and stream.
            assert await _register_code(ch, "node-a", ()) == grpc.StatusCode.OK
            s = AgentStream(ch)
            s.send(hello_pb("node-a", EPOCH), telemetry_pb(EPOCH, 1, uuid="GPU-node-a"))
            await s.wait_ack(EPOCH, 1)
            assert await s.close() == grpc.StatusCode.OK
