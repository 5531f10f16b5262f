"""Rendering ``/metrics`` in a forked child at low CPU priority.

The collector's main process reads every agent stream and sends every ack on one event loop.
A scrape of thousands of GPUs is tens of megabytes of text and a few hundred milliseconds of
CPU; done in that process it competes with ingest for the GIL and for the CPU at the same
priority, and on a busy machine acks queued behind it for seconds. A forked child has the
parent's state as of the fork (copy-on-write, nothing is sent), its own GIL, and a lower
priority: it renders from whatever CPU ingest leaves over and writes the bytes to a pipe.

The fork is taken with the state's lock held (:meth:`FleetState.quiescent`), so no other
thread is inside the state; the child touches nothing but the state, the exporter and the pipe
(no gRPC, no SQLite, no logging) and leaves with ``os._exit``. (Python 3.12 and later warn
that forking a multi-threaded process may deadlock the child: the locks the child could meet
are the state's, held free across the fork, and the interpreter's own, which fork handles.)
If the collector goes away mid-render, the child's next write fails and it exits.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager

_MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1 << 16

RENDER_NICE = 19
"""How much lower the rendering child's CPU priority is (``nice`` increment)."""


class ForkedRenderError(RuntimeError):
    """The child did not produce a body (it failed, or was killed)."""


def render_forked(
    render: Callable[[], bytes],
    quiescent: Callable[[], AbstractContextManager[None]],
    *,
    nice: int = RENDER_NICE,
) -> bytes:
    """``render()`` run in a forked child at priority ``nice``; its bytes.

    Call from a thread that may block (it waits for the child); the calling process's other
    threads keep running. ``quiescent`` is held across the fork.

    Raises:
        ForkedRenderError: the child failed or ended without a complete body.
        OSError: the fork itself failed.
    """
    read_fd, write_fd = os.pipe()
    try:
        # Held across the fork and released on both sides (the child's copy of the lock must
        # be free before it renders).
        with quiescent():
            pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # pragma: no cover - the child (coverage is not collected there)
        _child(render, write_fd, read_fd, nice)
    os.close(write_fd)
    chunks = []
    try:
        while chunk := os.read(read_fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    body = b"".join(chunks)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise ForkedRenderError(f"the /metrics render child ended with status {status:#x}")
    return body


def _child(
    render: Callable[[], bytes], write_fd: int, read_fd: int, nice: int
) -> None:  # pragma: no cover - runs in the forked child
    code = 1
    try:
        gc.disable()  # a collection would touch (and so copy) every shared page
        os.close(read_fd)
        # Nothing but the pipe: a child still holding the listening sockets would keep the
        # ports bound after its parent has gone.
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, _MAX_FD)
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.nice(nice)
        body = memoryview(render())
        while body:
            body = body[os.write(write_fd, body) :]
        code = 0
    finally:
        os._exit(code)
