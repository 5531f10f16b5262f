"""Client-side gRPC channels to a collector, built one way for the agent and the CLI: TLS or
mutual TLS by configuration, bearer token as call metadata, keepalive set explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TokenFileError(ValueError):
    """A token file could not be parsed (the message names the line, never the token)."""


def read_token_file(path: Path) -> str:
    """Read a client-side token file (the token alone, surrounding whitespace ignored).

    Raises:
        TokenFileError: the file is empty.
        OSError: the file cannot be read.
    """
    token = path.read_text().strip()
    if not token:
        raise TokenFileError(f"{path}: empty token file")
    return token


#: Keepalive for long-lived agent streams. Without grpc.http2.ping_timeout-style settings a
#: black-holed connection is only noticed after TCP gives up (~65 s or more); with these a ping
#: every 10 s that is not answered within 5 s closes the channel.
CLIENT_KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class ClientCredentials:
    """How to reach and authenticate to a collector.

    ``target`` is ``HOST:PORT``, or several separated by commas (collector replicas on one
    store): an agent connects to the first and moves to the next when a connection fails. A
    host name that resolves to several addresses is tried address by address by gRPC itself.
    """

    target: str
    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """The collector addresses, in the order given."""
        return tuple(t.strip() for t in self.target.split(",") if t.strip()) or (self.target,)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the bearer token, if any.

        Raises:
            TokenFileError, OSError: unreadable or empty token file.
        """
        if self.token_file is None:
            return ()
        return (("authorization", f"Bearer {read_token_file(self.token_file)}"),)

    @property
    def secure(self) -> bool:
        """Whether the channel uses TLS."""
        return self.tls_ca is not None or self.tls_cert is not None


def channel_options(creds: ClientCredentials, max_message_bytes: int) -> list[tuple[str, object]]:
    """Channel options: keepalive, message size, and a TLS name override when given."""
    options: list[tuple[str, object]] = [
        *CLIENT_KEEPALIVE_OPTIONS,
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if creds.tls_server_name:
        options.append(("grpc.ssl_target_name_override", creds.tls_server_name))
    return options


def _ssl(creds: ClientCredentials) -> grpc.ChannelCredentials:
    if (creds.tls_cert is None) != (creds.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=creds.tls_ca.read_bytes() if creds.tls_ca else None,
        private_key=creds.tls_key.read_bytes() if creds.tls_key else None,
        certificate_chain=creds.tls_cert.read_bytes() if creds.tls_cert else None,
    )


def aio_channel(
    creds: ClientCredentials, *, target: str | None = None, max_message_bytes: int = 8 << 20
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (default: the first of ``creds.targets``)."""
    options = channel_options(creds, max_message_bytes)
    address = target or creds.targets[0]
    if creds.secure:
        return grpc.aio.secure_channel(address, _ssl(creds), options=options)
    return grpc.aio.insecure_channel(address, options=options)


def sync_channel(creds: ClientCredentials, *, max_message_bytes: int = 8 << 20) -> grpc.Channel:
    """A blocking channel to the first of the collector addresses (CLI use)."""
    options = channel_options(creds, max_message_bytes)
    if creds.secure:
        return grpc.secure_channel(creds.targets[0], _ssl(creds), options=options)
    return grpc.insecure_channel(creds.targets[0], options=options)
