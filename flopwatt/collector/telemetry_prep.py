"""Turning received telemetry bytes into validated, storable blocks — on the writer's side.

Telemetry is most of what a collector receives, and decoding and validating it is most of the
per-message work. The stream handler therefore passes telemetry on as its wire bytes and the
store writer (a thread, or a child process on another core) prepares it here, just before the
commit: decode, check every series belongs to a device the agent registered, validate each
sample, and note each device's latest values for the metrics.

A structurally broken message becomes a rejection write (status ``rejected`` with the reason),
so its sequence is consumed and the stream handler can end the stream with
``INVALID_ARGUMENT`` (``RESOURCE_EXHAUSTED`` for an oversized series) after the commit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from flopwatt.collector.store import MessageWrite
from flopwatt.collector.validate import merge_counts, validate_block
from flopwatt.records import SeriesBlock
from flopwatt.v1 import telemetry_pb2
from flopwatt.wire import WireError, WireTooLargeError, telemetry_from_proto

REJECT_INVALID = "invalid_argument"
REJECT_TOO_LARGE = "resource_exhausted"

#: device uuid → (latest sample time ns, {column: value})
Latest = dict[str, tuple[int, dict[str, float]]]


class TelemetryPreparer:
    """Prepares telemetry writes (see module docstring). Not thread-safe: one per writer."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._devices: dict[str, tuple[str, float | None]] = {}

    def update_devices(self, agent_id: str, power_limits_w: Mapping[str, float | None]) -> None:
        """Set the devices ``agent_id`` registered (uuid → power limit in W, or None)."""
        for uuid in [u for u, (a, _) in self._devices.items() if a == agent_id]:
            del self._devices[uuid]
        for uuid, limit in power_limits_w.items():
            self._devices[uuid] = (agent_id, limit)

    def prepare(self, w: MessageWrite) -> MessageWrite:
        """Decode and validate ``w.telemetry_wire``; writes without it pass through unchanged.

        Returns:
            the write with validated blocks and rejection counts, or a rejection write.
        """
        if w.telemetry_wire is None:
            return w
        try:
            batch = telemetry_from_proto(telemetry_pb2.TelemetryBatch.FromString(w.telemetry_wire))
            blocks, rejected = self._validate(w.agent_id, batch.as_blocks())
        except WireTooLargeError as exc:
            return self._rejected(w, str(exc), REJECT_TOO_LARGE)
        except WireError as exc:  # StructuralError is not raised here; ownership is below
            return self._rejected(w, str(exc), REJECT_INVALID)
        except _NotOwnedError as exc:
            return self._rejected(w, str(exc), REJECT_INVALID)
        return replace(w, blocks=blocks, rejected_samples=rejected, telemetry_wire=None)

    def _validate(
        self, agent_id: str, blocks: tuple[SeriesBlock, ...]
    ) -> tuple[tuple[SeriesBlock, ...], dict[tuple[str, str], int]]:
        now = self._clock_ns()
        clean: list[SeriesBlock] = []
        rejected: dict[tuple[str, str], int] = {}
        for block in blocks:
            limits = []
            for uuid in block.device_uuids:
                owner = self._devices.get(uuid)
                if owner is None or owner[0] != agent_id:
                    raise _NotOwnedError(f"device {uuid!r} is not registered by agent {agent_id!r}")
                limits.append(owner[1])
            keep, counts = validate_block(block, now_unix_ns=now, power_limits_w=limits)
            merge_counts(rejected, counts)
            clean.append(block if keep is None else block.take(keep))
        return tuple(clean), rejected

    @staticmethod
    def _rejected(w: MessageWrite, detail: str, code: str) -> MessageWrite:
        return replace(w, rejected_detail=detail, reject_code=code, telemetry_wire=None)


class _NotOwnedError(ValueError):
    """A series names a device the agent did not register."""


def devices_with_samples(blocks: tuple[SeriesBlock, ...]) -> set[str]:
    """The devices with at least one sample in ``blocks``."""
    out: set[str] = set()
    for block in blocks:
        bounds = block.offsets.tolist()
        out.update(
            block.device_uuids[d] for d in range(len(bounds) - 1) if bounds[d + 1] > bounds[d]
        )
    return out


def latest_values(blocks: tuple[SeriesBlock, ...], only: set[str] | None = None) -> Latest:
    """Each device's values at its latest sample (the row with the largest timestamp; agents
    send samples in time order, which makes that the last row, checked in one pass); with
    ``only``, just those devices."""
    out: Latest = {}
    for block in blocks:
        bounds = block.offsets.tolist()
        pairs = [
            (d, b - 1)
            for d, (a, b) in enumerate(itertools.pairwise(bounds))
            if b > a and (only is None or block.device_uuids[d] in only)
        ]
        if not pairs:
            continue
        idx = np.array([row for _, row in pairs], dtype=np.int64)
        ts = block.timestamp_unix_ns
        starts = np.array([bounds[d] for d, _ in pairs], dtype=np.int64)
        newest = np.maximum.reduceat(ts, starts)
        if not np.array_equal(ts[idx], newest):  # out of order: find each device's newest row
            idx = np.array(
                [bounds[d] + int(np.argmax(ts[bounds[d] : bounds[d + 1]])) for d, _ in pairs],
                dtype=np.int64,
            )
        stamps = ts[idx].tolist()
        names = list(block.columns)
        rows = (
            zip(*(block.columns[n][idx].tolist() for n in names), strict=True)
            if names
            else (iter([()] * len(pairs)))
        )
        for (d, _), stamp, row in zip(pairs, stamps, rows, strict=True):
            uuid = block.device_uuids[d]
            if uuid in out and out[uuid][0] > stamp:
                continue
            out[uuid] = (stamp, dict(zip(names, map(float, row), strict=True)))
    return out
