"""Child processes, started one way: spawned, never forked, and deaf to stop signals.

gRPC does not support ``fork()`` of a process whose gRPC threads are running, so every child
of the collector and the agent (the store writer, the HTTP exporter, job runners) is *spawned*:
a fresh interpreter, nothing inherited but its arguments.

A stop is the parent's business. Ctrl-C on a terminal sends SIGINT to the whole foreground
process group, and a service manager may send SIGTERM to every process of the service at once;
a child that died of either would lose what it was committing and print a traceback. Children
therefore ignore both and are stopped by their parent, in order (for the collector: stop
intake, commit what arrived, ack, then stop the children). A child whose parent vanished sees
its pipe close and exits by itself.

Python keeps a signal ignored when the interpreter starts with it ignored, so a child started
from the main thread is started with both signals set to "ignore" for the instant of the spawn
(covering the child's own start-up and imports); a child started from another thread (a
restart) ignores them from the first line of its entry point.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import weakref
from multiprocessing.process import BaseProcess

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def start_child(process: BaseProcess) -> None:
    """Start ``process`` (a spawn-context process) so that it ignores SIGINT and SIGTERM from
    its first instruction where possible (see module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        process.start()
    else:
        saved = [(sig, signal.signal(sig, signal.SIG_IGN)) for sig in STOP_SIGNALS]
        try:
            process.start()
        finally:
            for sig, handler in saved:
                signal.signal(sig, handler)
    # A safety net for an exit that skipped the orderly stop: multiprocessing's own exit
    # handler terminates (SIGTERM, which a child ignores) and then waits for ever. Handlers run
    # last-registered first, so this one runs before it.
    atexit.register(_kill_if_alive, weakref.ref(process))


def _kill_if_alive(ref: weakref.ref[BaseProcess]) -> None:
    process = ref()
    if process is not None and process.pid is not None and process.exitcode is None:
        with contextlib.suppress(Exception):
            process.kill()
            process.join(5)


def become_child() -> None:
    """Call first in a child's entry point: ignore SIGINT and SIGTERM (the parent stops it)."""
    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_IGN)


def describe_exit(exitcode: int | None) -> str:
    """A child's exit status in words ("killed by SIGKILL", "exit code 1", "still running")."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
