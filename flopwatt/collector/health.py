"""Whether the collector can commit, told once per episode.

A collector that cannot commit (the store writer is gone, the disk is full, the database is
locked or unreachable) must not look healthy: gRPC health and ``/healthz`` say NOT_SERVING /
503 until a commit succeeds again, agents are turned away with ``UNAVAILABLE`` and a retry
delay (their spools keep everything), and the log says so once when the episode starts and once
when it ends — with how long it lasted and how much failed meanwhile — instead of once per
message. :class:`StoreHealth` holds that state; the server probes the store while it is
unhealthy and tells :meth:`StoreHealth.succeeded` when a probe or a commit goes through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2.0
"""Delay agents are asked to wait before reconnecting while the store cannot commit (s)."""

RETRY_AFTER_METADATA = "retry-after-ms"
"""Trailing metadata key carrying that delay, in whole milliseconds (documented in the .proto)."""


@dataclass(frozen=True)
class HealthView:
    """The store's health as other processes and the metrics see it."""

    serving: bool
    reason: str
    """Why it cannot commit ("" while serving)."""
    episodes_total: int
    """Episodes of not being able to commit since start."""
    failed_batches_total: int
    failed_messages_total: int


class StoreHealth:
    """Commit health with once-per-episode logging (thread-safe).

    Args:
        on_change: called with the new view whenever serving flips (from whichever thread
            reported the change; keep it quick).
        mono: monotonic clock in seconds (injectable).
    """

    def __init__(
        self,
        on_change: Callable[[HealthView], None] | None = None,
        *,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change
        self._mono = mono
        self._serving = True
        self._reason = ""
        self._since = 0.0
        self._episodes = 0
        self._failed_batches = 0
        self._failed_messages = 0
        self._episode_batches = 0
        self._episode_messages = 0
        self._stopping = False

    @property
    def serving(self) -> bool:
        """Whether the store commits."""
        return self._serving

    def view(self) -> HealthView:
        """The current state."""
        with self._lock:
            return self._view()

    def _view(self) -> HealthView:
        return HealthView(
            self._serving,
            self._reason,
            self._episodes,
            self._failed_batches,
            self._failed_messages,
        )

    def _still_serving(self) -> bool:
        return self._serving

    def failed(self, reason: str, messages: int = 0) -> None:
        """A commit (of ``messages`` agent messages) or a probe failed because of ``reason``."""
        with self._lock:
            self._failed_batches += 1
            self._failed_messages += messages
            if not self._serving or self._stopping:
                self._episode_batches += 1
                self._episode_messages += messages
                return
            self._serving = False
            self._reason = reason
            self._since = self._mono()
            self._episodes += 1
            self._episode_batches, self._episode_messages = 1, messages
            view = self._view()
        log.error(
            "the store cannot commit (%s): NOT_SERVING; agents are told to retry in %.0f s "
            "and keep their data spooled until it can",
            reason,
            RETRY_AFTER_S,
        )
        self._notify(view)

    def succeeded(self) -> None:
        """A commit or probe went through."""
        if self._serving:  # the common case, without the lock
            return
        with self._lock:
            if self._still_serving() or self._stopping:  # another thread got here first
                return
            self._serving = True
            lasted = self._mono() - self._since
            batches, messages = self._episode_batches, self._episode_messages
            self._reason = ""
            view = self._view()
        log.warning(
            "the store commits again after %.1f s: SERVING (%d commits and probes failed "
            "meanwhile, %d messages not acked; agents resend them)",
            lasted,
            batches,
            messages,
        )
        self._notify(view)

    def shutting_down(self) -> None:
        """The collector is stopping: not serving from now on (no error: a stop that was asked
        for), and nothing afterwards turns it back."""
        with self._lock:
            self._stopping = True
            self._serving = False
            self._reason = "shutting down"
            view = self._view()
        self._notify(view)

    def _notify(self, view: HealthView) -> None:
        if self._on_change is not None:
            self._on_change(view)
