"""Validation of a received :class:`~flopwatt.records.Attribution` (the rules are in
``attribution.proto``). An attribution that breaks a rule is rejected whole: it is small, sent
again within a minute, and half of one would name the wrong owner."""

from __future__ import annotations

import math
from collections.abc import Callable

from flopwatt.collector.validate import MAX_FUTURE_S
from flopwatt.records import (
    ATTRIBUTION_MAX_PROCESSES,
    ATTRIBUTION_MAX_TEXT,
    Attribution,
    DeviceInfo,
)


class AttributionError(ValueError):
    """Why an attribution is rejected (the message names the device and the rule)."""


def check_attribution(
    a: Attribution, device_of: Callable[[str], DeviceInfo], now_unix_ns: int
) -> None:
    """Check ``a`` against the rules.

    Args:
        device_of: the registered device with a UUID; raises ``ValueError`` (or a subclass)
            when the sending agent did not register it.
        now_unix_ns: the collector's wall clock.

    Raises:
        AttributionError: the first rule broken.
        ValueError: from ``device_of``.
    """
    if a.observed_unix_ns <= 0:
        raise AttributionError(f"attribution observed_unix_ns {a.observed_unix_ns} is not > 0")
    if a.observed_unix_ns > now_unix_ns + int(MAX_FUTURE_S * 1e9):
        raise AttributionError(
            f"attribution observed {(a.observed_unix_ns - now_unix_ns) / 1e9:.0f} s in the "
            f"future (more than {MAX_FUTURE_S:.0f} s ahead of the collector's clock)"
        )
    seen: set[str] = set()
    for d in a.devices:
        if d.device_uuid in seen:
            raise AttributionError(f"attribution names device {d.device_uuid!r} twice")
        seen.add(d.device_uuid)
        info = device_of(d.device_uuid)
        where = f"attribution of {d.device_uuid}"
        if len(d.processes) > ATTRIBUTION_MAX_PROCESSES:
            raise AttributionError(
                f"{where}: {len(d.processes)} processes (at most {ATTRIBUTION_MAX_PROCESSES})"
            )
        if d.processes and not d.processes_known:
            raise AttributionError(f"{where}: processes listed but processes_known is false")
        pids: set[int] = set()
        for p in d.processes:
            if p.pid <= 0:
                raise AttributionError(f"{where}: pid {p.pid} is not > 0")
            if p.pid in pids:
                raise AttributionError(f"{where}: pid {p.pid} listed twice")
            pids.add(p.pid)
            _text(where, "process name", p.name)
            r = p.sm_utilization_ratio
            if r is not None and not (math.isfinite(r) and 0.0 <= r <= 1.0):
                raise AttributionError(f"{where}: pid {p.pid} sm_utilization_ratio {r} not in 0–1")
            m = p.used_memory_bytes
            total = info.memory_total_bytes
            if m is not None and total and m > total:
                raise AttributionError(
                    f"{where}: pid {p.pid} holds {m} bytes, more than the GPU's {total}"
                )
        if d.pod is not None:
            if not d.pod.namespace or not d.pod.pod:
                raise AttributionError(f"{where}: a pod needs a namespace and a name")
            for label, value in (
                ("namespace", d.pod.namespace),
                ("pod", d.pod.pod),
                ("container", d.pod.container),
            ):
                _text(where, label, value)


def _text(where: str, what: str, value: str) -> None:
    if len(value) > ATTRIBUTION_MAX_TEXT:
        raise AttributionError(
            f"{where}: {what} is {len(value)} characters (at most {ATTRIBUTION_MAX_TEXT})"
        )
    if any(ord(ch) < 32 for ch in value):
        raise AttributionError(f"{where}: {what} {value!r} holds control characters")
