"""The agent: one node's devices, sampler, spool, uplink and job runner, wired together.

Several agents can run in one process (the demo runs a simulated fleet that way): nothing here
is a module-level singleton, and every clock, path and backend is injected.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flopwatt import __version__
from flopwatt.agent.attribution import (
    DEFAULT_INTERVAL_S,
    DEFAULT_REFRESH_S,
    Attributor,
    PodSource,
    open_pod_source,
)
from flopwatt.agent.devices.base import Backend, Device
from flopwatt.agent.jobs.runner import JobRunner
from flopwatt.agent.sampler import Sampler
from flopwatt.agent.spool import Spool, SpooledMessage, SpoolStats
from flopwatt.agent.uplink import UPLINK_WINDOW, Uplink
from flopwatt.channel import ClientCredentials
from flopwatt.records import (
    AgentMessage,
    Attribution,
    Command,
    Heartbeat,
    NodeInfo,
    Payload,
    RegisterRequest,
    RunJob,
    SetSampleInterval,
    TelemetryBatch,
)
from flopwatt.wire import agent_message_to_proto

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentConfig:
    """What an agent needs besides its backend."""

    hostname: str
    collector: ClientCredentials
    spool_path: Path
    spool_max_bytes: int = 256 * 1024 * 1024
    interval_s: float = 0.1
    batch_interval_s: float = 1.0
    heartbeat_s: float = 30.0
    ack_timeout_s: float = 15.0
    connect_timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 10.0
    auth_backoff_s: float = 60.0
    job_options: dict[str, float] = field(default_factory=dict)
    """Overrides for job defaults (e.g. ``sustain_s`` for quick demos)."""
    attribution_interval_s: float = DEFAULT_INTERVAL_S
    """How often the processes and pods using each GPU are read (s); 0 turns attribution off."""
    attribution_refresh_s: float = DEFAULT_REFRESH_S
    """Longest gap between two attribution messages (s)."""
    kubelet_socket: str = "auto"
    """The kubelet pod-resources socket: a path, ``none``, or ``auto`` (the simulator's
    ``--sim-pod`` map on the sim backend, else the default socket when it exists)."""


class Agent:
    """One node (see module docstring).

    Args:
        config: identity, collector, spool and intervals.
        backend: the device backend (nvml, cpu or sim).
        epoch: this run's epoch (random non-zero 64-bit by default).
        pods: where pods come from (default: chosen by ``config.kubelet_socket``).

    Raises:
        ValueError: ``config.kubelet_socket`` names a socket that does not exist.
    """

    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        *,
        epoch: int | None = None,
        pods: PodSource | None = None,
    ) -> None:
        pod_source = pods
        if pod_source is None and config.attribution_interval_s > 0:
            pod_source = open_pod_source(config.kubelet_socket, backend)  # may raise: first
        self.config = config
        self.backend = backend
        self.epoch = epoch if epoch is not None else (secrets.randbits(64) or 1)
        self.devices: list[Device] = backend.devices()
        self.spool = Spool(
            config.spool_path, max_bytes=config.spool_max_bytes, keep_first=UPLINK_WINDOW
        )
        self._seq_lock = threading.Lock()
        self._next_seq = 1
        self._last_emit = time.monotonic()
        self.sampler = Sampler(
            self.devices,
            self._emit_telemetry,
            interval_s=config.interval_s,
            batch_interval_s=config.batch_interval_s,
            on_tick=self._on_tick,
        )
        node = NodeInfo(
            hostname=config.hostname,
            agent_version=__version__,
            software=backend.software(),
            device_backend=backend.name,
        )
        self.register = RegisterRequest(node, tuple(d.info for d in self.devices), self.epoch)
        self.attributor: Attributor | None = None
        if config.attribution_interval_s > 0:
            self.attributor = Attributor(
                self.devices,
                self._emit_attribution,
                pods=pod_source,
                interval_s=config.attribution_interval_s,
                refresh_s=max(config.attribution_refresh_s, config.attribution_interval_s),
            )
        self.jobs = JobRunner(self, dict(config.job_options))
        self.final_spool_stats: SpoolStats | None = None
        """The spool's state when :meth:`run` ended (the spool is closed then)."""
        self.uplink = Uplink(
            config.collector,
            self.spool,
            self.epoch,
            self.register,
            self._on_command,
            on_settings=self._on_settings,
            window=UPLINK_WINDOW,
            ack_timeout_s=config.ack_timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            backoff_base_s=config.backoff_base_s,
            backoff_cap_s=config.backoff_cap_s,
            auth_backoff_s=config.auth_backoff_s,
        )

    # --- emitting ------------------------------------------------------------------------

    def emit(self, payload: Payload) -> int:
        """Spool one message (thread-safe); returns its sequence number."""
        with self._seq_lock:
            seq = self._next_seq
            self._next_seq += 1
            message = AgentMessage(self.epoch, seq, payload)
            proto = agent_message_to_proto(message)
            telemetry = isinstance(payload, TelemetryBatch)
            samples = payload.samples if isinstance(payload, TelemetryBatch) else 0
            self.spool.append(
                SpooledMessage(self.epoch, seq, message.kind, proto.SerializeToString(), samples),
                # A batch takes every sample the sampler held (it swaps its buffer first).
                pending_samples=0 if telemetry else None,
            )
            self._last_emit = time.monotonic()
        self.uplink.wake()
        return seq

    def sampler_devices(self) -> list[Device]:
        """Devices still being sampled (lost ones are gone)."""
        return self.sampler.live_devices()

    def _emit_telemetry(self, batch: TelemetryBatch) -> None:
        self.emit(batch)

    def _emit_attribution(self, attribution: Attribution) -> None:
        self.emit(attribution)

    def _on_tick(self, held_samples: int, now_unix_ns: int) -> None:
        self.spool.note_pending(self.epoch, held_samples, now_unix_ns)

    # --- commands ------------------------------------------------------------------------

    def _on_command(self, command: Command) -> None:
        action = command.action
        if isinstance(action, SetSampleInterval):
            try:
                self.sampler.set_interval(action.sample_interval_s)
                log.info("sample interval set to %.3f s by the collector", action.sample_interval_s)
            except ValueError as exc:
                log.warning("ignored command %s: %s", command.command_id, exc)
        elif isinstance(action, RunJob):
            self.jobs.submit(action.job_id, action.spec)

    def _on_settings(self, sample_interval_s: float) -> None:
        if sample_interval_s > 0 and sample_interval_s != self.sampler.interval_s:
            self.sampler.set_interval(sample_interval_s)

    # --- running -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, drain_s: float = 5.0) -> None:
        """Sample and deliver until ``stop`` is set, then flush and try to deliver what is
        spooled for up to ``drain_s`` (whatever is left stays in the spool for next time)."""
        for loss in self.spool.recover(self.epoch):
            log.warning(
                "the previous run ended without sending its last %d samples (killed?); "
                "counted as a tombstone (epoch %d, sequence %d)",
                loss.samples,
                loss.epoch,
                loss.sequence,
            )
        self.sampler.start()
        if self.attributor is not None:
            self.attributor.start()
        uplink_stop = asyncio.Event()
        uplink = asyncio.create_task(self.uplink.run(uplink_stop))
        heartbeat = asyncio.create_task(self._heartbeats(stop))
        try:
            await stop.wait()
        finally:
            heartbeat.cancel()
            if self.attributor is not None:
                self.attributor.stop()
            self.sampler.stop(flush=True)
            self.spool.close_epoch(self.epoch)
            self.jobs.close()
            deadline = time.monotonic() + drain_s
            while self.spool.stats().messages and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            uplink_stop.set()
            await asyncio.gather(uplink, heartbeat, return_exceptions=True)
            self.final_spool_stats = self.spool.stats()
            if self.final_spool_stats.messages:
                log.warning(
                    "%d messages stay in the spool for the next run",
                    self.final_spool_stats.messages,
                )
            self.spool.close()
            self.backend.close()

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(min(5.0, self.config.heartbeat_s))
            if time.monotonic() - self._last_emit >= self.config.heartbeat_s:
                self.emit(Heartbeat(time.time_ns()))
