"""A loopback TCP proxy between agents and the collector's gRPC port, with network faults
switchable at run time:

* ``pass`` — forward bytes both ways;
* ``reset`` — close every connection with a TCP RST (``SO_LINGER`` 0) on both sides, and refuse
  new ones the same way, until the mode changes;
* ``blackhole`` — accept and keep connections but forward nothing in either direction and never
  answer (data is held, as a network that drops packets leaves TCP retransmitting); when the
  mode returns to ``pass`` what is held flows on, like a route that comes back.

The proxy runs its own asyncio loop on a daemon thread; :meth:`Proxy.set_mode` is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "reset", "blackhole"]
CHUNK_BYTES = 65536


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with an RST instead of a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)  # identity: kept in a set
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None


@dataclass
class ProxyStats:
    """Counters (connections, not bytes)."""

    accepted: int = 0
    reset: int = 0
    """Connections closed with an RST (existing ones and refused new ones)."""
    mode_changes: list[tuple[float, str]] = field(default_factory=list)
    """(time.monotonic() s, mode) of every change."""


class Proxy:
    """The proxy (see module docstring).

    Args:
        upstream_host, upstream_port: the collector's gRPC address.
        listen_port: where to listen on 127.0.0.1 (0 picks a free port: see :attr:`port`).
    """

    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listen_port = listen_port
        self.port = 0
        self.mode: Mode = "pass"
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._passing: asyncio.Event | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` for agents to connect to."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start listening (returns once the port is bound)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._passing = asyncio.Event()
        self._passing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    def set_mode(self, mode: Mode) -> None:
        """Switch mode now (thread-safe); entering ``reset`` resets every open connection."""
        asyncio.run_coroutine_threadsafe(self._set_mode(mode), self._loop).result(10)

    async def _set_mode(self, mode: Mode) -> None:
        assert self._passing is not None
        self.mode = mode
        self.stats.mode_changes.append((time.monotonic(), mode))
        if mode == "pass":
            self._passing.set()
            return
        self._passing.clear()
        if mode == "reset":
            for conn in list(self._conns):
                self._reset(conn)

    def _reset(self, conn: _Conn) -> None:
        self.stats.reset += 1
        _rst(conn.client)
        _rst(conn.upstream)
        self._conns.discard(conn)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._passing is not None
        self.stats.accepted += 1
        conn = _Conn(writer)
        if self.mode == "reset":
            self._reset(conn)
            return
        self._conns.add(conn)
        try:
            await self._passing.wait()  # a black hole holds new connections too
            if conn not in self._conns:
                return  # reset while held
            up_reader, conn.upstream = await asyncio.open_connection(*self._upstream)
            if conn not in self._conns:
                _rst(conn.upstream)
                return
            await asyncio.gather(
                self._pump(reader, conn.upstream, conn), self._pump(up_reader, writer, conn)
            )
        except (OSError, asyncio.IncompleteReadError):
            _rst(conn.client)
        finally:
            if conn in self._conns:
                self._conns.discard(conn)
                for w in (conn.client, conn.upstream):
                    if w is not None:
                        w.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        assert self._passing is not None
        try:
            while conn in self._conns:
                await self._passing.wait()
                data = await src.read(CHUNK_BYTES)
                if not data:
                    break
                await self._passing.wait()  # read during a black hole: hold it
                if conn not in self._conns:
                    return
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        if conn in self._conns:
            # One side closed: close the other (a FIN, as TCP would pass it on).
            self._conns.discard(conn)
            for w in (conn.client, conn.upstream):
                if w is not None:
                    w.close()

    def stop(self) -> None:
        """Close everything and stop the thread (idempotent)."""
        if not self._thread.is_alive():
            return

        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._conns):
                self._reset(conn)
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        # Let the loop finish cancelled handlers before it is closed.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()
