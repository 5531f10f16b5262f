"""Authentication and authorisation for the collector's gRPC services.

* Agent tokens: a token file maps each bearer token to the one hostname it may write as
  (``hostname token`` per line, ``#`` comments). Only SHA-256 digests are kept in memory, every
  comparison is constant-time (:func:`hmac.compare_digest` against every entry), and tokens are
  never logged or echoed.
* Admin tokens: a separate file, one token per line; admin tokens cannot write as agents and
  agent tokens cannot call the admin API.
* Mutual TLS: with a client CA configured, a client certificate's common name (or a DNS
  subject-alternative name) names the hostname an agent may write as.

The interceptor refuses calls without acceptable credentials (``UNAUTHENTICATED``) before any
handler runs; handlers then check that the hostname a message claims is the credentials' own
(``PERMISSION_DENIED`` otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from flopwatt.channel import TokenFileError

AGENT_SERVICE_PREFIX = "/flopwatt.v1.AgentService/"
ADMIN_SERVICE_PREFIX = "/flopwatt.v1.AdminService/"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load_agent_tokens(path: Path) -> dict[bytes, str]:
    """Parse an agent token file: ``hostname token`` per line.

    Returns:
        SHA-256 digest of each token → its hostname.

    Raises:
        TokenFileError: malformed line, duplicate token, or an empty file.
        OSError: the file cannot be read.
    """
    out: dict[bytes, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenFileError(f"{path}:{lineno}: expected 'hostname token'")
        hostname, token = parts
        if len(token) < 16:
            raise TokenFileError(f"{path}:{lineno}: token for {hostname} is shorter than 16 chars")
        d = _digest(token)
        if d in out:
            raise TokenFileError(f"{path}:{lineno}: token repeated (already used for {out[d]})")
        out[d] = hostname
    if not out:
        raise TokenFileError(f"{path}: no tokens")
    return out


def load_admin_tokens(path: Path) -> list[bytes]:
    """Parse an admin token file: one token per line. Returns the tokens' SHA-256 digests.

    Raises:
        TokenFileError: a token shorter than 16 characters, or no tokens.
    """
    out = []
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < 16 or len(line.split()) != 1:
            raise TokenFileError(f"{path}:{lineno}: expected one token of at least 16 chars")
        out.append(_digest(line))
    if not out:
        raise TokenFileError(f"{path}: no tokens")
    return out


@dataclass(frozen=True)
class Identity:
    """Who is calling. ``hostname`` None with ``admin`` False means auth is disabled."""

    hostname: str | None
    admin: bool = False
    method: str = "none"


@dataclass(frozen=True)
class AuthConfig:
    """The collector's credentials configuration."""

    agent_tokens: Mapping[bytes, str] = field(default_factory=dict)
    admin_tokens: Sequence[bytes] = ()
    client_certs: bool = False
    """True when the server requires client certificates (mutual TLS)."""

    @property
    def enabled(self) -> bool:
        """Whether any credential is required at all."""
        return bool(self.agent_tokens or self.admin_tokens or self.client_certs)

    def agent_for_token(self, token: str) -> str | None:
        """The hostname a token is issued for, or None (constant time over all tokens)."""
        candidate = _digest(token)
        found: str | None = None
        for d, hostname in self.agent_tokens.items():
            if hmac.compare_digest(d, candidate):
                found = hostname
        return found

    def is_admin_token(self, token: str) -> bool:
        """Whether ``token`` is an admin token (constant time over all tokens)."""
        candidate = _digest(token)
        ok = False
        for d in self.admin_tokens:
            ok |= hmac.compare_digest(d, candidate)
        return ok


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token from an ``authorization: Bearer <token>`` metadata entry, or None."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def certificate_hostname(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """Hostname named by a verified client certificate: its common name, else the first DNS
    subject-alternative name; None without a client certificate."""
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth_context.get(key) or ()
        for v in values:
            name = v.decode() if isinstance(v, bytes) else str(v)
            if name:
                return name
    return None


def identify(
    config: AuthConfig,
    metadata: Sequence[tuple[str, str | bytes]] | None,
    auth_context: Mapping[str, Sequence[bytes]],
) -> Identity | None:
    """Resolve the caller's identity; None when credentials are required but not acceptable."""
    if not config.enabled:
        return Identity(None)
    token = bearer_token(metadata)
    if token is not None:
        if config.is_admin_token(token):
            return Identity(None, admin=True, method="token")
        hostname = config.agent_for_token(token)
        return Identity(hostname, method="token") if hostname else None
    if config.client_certs:
        hostname = certificate_hostname(auth_context)
        if hostname:
            return Identity(hostname, method="certificate")
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses agent and admin calls without acceptable credentials, before any handler runs.

    Health checks pass through (load balancers and Kubernetes probes carry no token).
    """

    def __init__(self, config: AuthConfig) -> None:
        self._config = config

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if not self._config.enabled or handler is None:
            return handler
        is_agent = method.startswith(AGENT_SERVICE_PREFIX)
        is_admin = method.startswith(ADMIN_SERVICE_PREFIX)
        if not (is_agent or is_admin):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if is_admin:
            if token is None:
                return _aborting(
                    handler,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "admin API needs an admin bearer token",
                )
            if not self._config.is_admin_token(token):
                if self._config.agent_for_token(token) is not None:
                    return _aborting(
                        handler,
                        grpc.StatusCode.PERMISSION_DENIED,
                        "agent tokens cannot call the admin API",
                    )
                return _aborting(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
            return handler
        if token is not None:
            if self._config.agent_for_token(token) is None:
                if self._config.is_admin_token(token):
                    return _aborting(
                        handler,
                        grpc.StatusCode.PERMISSION_DENIED,
                        "admin tokens cannot write as an agent",
                    )
                return _aborting(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
            return handler
        if self._config.client_certs:
            return handler  # the handler resolves the certificate's hostname (needs context)
        return _aborting(
            handler,
            grpc.StatusCode.UNAUTHENTICATED,
            "missing 'authorization: Bearer <token>' metadata",
        )


def _aborting(handler: Any, code: grpc.StatusCode, details: str) -> Any:
    """A handler of the same shape as ``handler`` that aborts with ``code``."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, details)

    async def streaming(_request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, details)

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(streaming, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(unary, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)
