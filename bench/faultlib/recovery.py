"""Recovery after a fault, from the monitor's timeline.

An agent has *recovered* at the first sample at or after the end of the fault where its backlog
(unacked messages: its spool, or a raw client's in-memory queue) is back to its live level
(the most it held in the steady window before the fault, at least :data:`LIVE_FLOOR`), and it
is being acked again: its ack counter moved since the fault ended — or it stopped producing and
everything it produced is acked. The case has recovered when every agent has; recovery time is
measured from the end of the fault.

Backlog drain rate per agent: the backlog it held when the fault ended (or a larger peak it
reached afterwards) ÷ the seconds from then until it recovered (messages/s; resolution: the
0.5 s sampling). Each agent produces one message (one second of telemetry)
per second, so the same figure is also how many seconds of backlog it clears per second: the
catch-up speed as a multiple of real time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.faultlib.monitor import AgentSample, Sample

LIVE_FLOOR = 2
"""An agent's live backlog is at least this many messages (one batch in flight and one being
acked is normal)."""

MESSAGES_PER_S = 1.0
"""What each agent produces: one telemetry batch a second."""


@dataclass(frozen=True)
class Recovery:
    """Recovery figures for one case (see module docstring)."""

    seconds: float | None
    """From the end of the fault until every agent recovered; None: not all did."""
    recovered_agents: int
    agents: int
    backlog_peak_median: float
    backlog_peak_max: int
    drain_rate_median: float | None
    """Messages per second per agent (median over agents that had a backlog to drain)."""
    drain_rate_min: float | None

    @property
    def drain_realtime_x(self) -> float | None:
        """The median drain rate as a multiple of real time."""
        if self.drain_rate_median is None:
            return None
        return self.drain_rate_median / MESSAGES_PER_S


def live_levels(samples: list[Sample], t_from: float, t_to: float) -> dict[str, int]:
    """Per agent, the largest backlog seen in [t_from, t_to] (at least :data:`LIVE_FLOOR`)."""
    levels: dict[str, int] = {}
    for s in samples:
        if t_from <= s.t <= t_to:
            for name, a in s.agents.items():
                levels[name] = max(levels.get(name, LIVE_FLOOR), a.backlog)
    return levels


def _recovered(a: AgentSample, live: int, acked_at_end: int) -> bool:
    if a.backlog > live:
        return False
    return a.acked > acked_at_end or (not a.producing and a.acked >= a.produced)


def compute_recovery(
    samples: list[Sample],
    fault_start: float,
    fault_end: float,
    levels: dict[str, int],
    *,
    expected_agents: int = 0,
) -> Recovery:
    """Recovery after a fault that lasted from ``fault_start`` to ``fault_end``
    (``time.monotonic()`` s); ``levels`` from :func:`live_levels` (agents missing there get
    :data:`LIVE_FLOOR`). Until ``expected_agents`` agents have appeared in the timeline, the
    case has not recovered."""
    before = [s for s in samples if s.t <= fault_end]
    at_end = before[-1].agents if before else (samples[0].agents if samples else {})
    names = sorted({n for s in samples if s.t >= fault_start for n in s.agents})
    recovered_at: dict[str, float] = {}
    peaks: dict[str, int] = {}
    # The backlog to drain: what an agent held when the fault ended, or a larger peak it
    # reached afterwards (a fault whose effect comes after its end, e.g. a killed writer).
    drain_from: dict[str, tuple[int, float]] = {
        name: (a.backlog, fault_end) for name, a in at_end.items()
    }
    for s in samples:
        if s.t < fault_start:
            continue
        for name, a in s.agents.items():
            if name in recovered_at:
                continue
            peaks[name] = max(peaks.get(name, 0), a.backlog)
            if s.t <= fault_end:
                continue
            if a.backlog > drain_from.get(name, (0, fault_end))[0]:
                drain_from[name] = (a.backlog, s.t)
            end = at_end.get(name)
            acked_at_end = end.acked if end is not None else 0
            if _recovered(a, levels.get(name, LIVE_FLOOR), acked_at_end):
                recovered_at[name] = s.t
    seconds = None
    if names and len(recovered_at) == len(names) >= expected_agents:
        seconds = max(0.0, max(recovered_at.values()) - fault_end)
    rates = []
    for name, t_rec in recovered_at.items():
        backlog, t_from = drain_from.get(name, (0, t_rec))
        if backlog > levels.get(name, LIVE_FLOOR) and t_rec > t_from:
            rates.append(backlog / (t_rec - t_from))
    backlog_peaks = list(peaks.values()) or [0]
    return Recovery(
        seconds=seconds,
        recovered_agents=len(recovered_at),
        agents=max(len(names), expected_agents),
        backlog_peak_median=float(statistics.median(backlog_peaks)),
        backlog_peak_max=max(backlog_peaks),
        drain_rate_median=statistics.median(rates) if rates else None,
        drain_rate_min=min(rates) if rates else None,
    )
