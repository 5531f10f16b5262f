"""Attribution through the store and the collector's checks, on both engines: spans of
unchanged owners extended in place, a new span when the owners change, a late observation never
rewriting history, exactly-once through the ledger (a resend does not extend a span twice), the
coverage rule readers use, and what the collector refuses."""

from __future__ import annotations

import math
from typing import Any

import pytest

from flopwatt.collector.validate_attribution import AttributionError, check_attribution
from flopwatt.records import (
    Attribution,
    DeviceAttribution,
    DeviceInfo,
    DeviceKind,
    GpuProcess,
    PodRef,
)
from flopwatt.store.attribution import (
    NEWEST_SPANS_SQL,
    SPAN_GRACE_NS,
    SPANS_IN_WINDOW_SQL,
    newest_span_sql,
    spans_from_rows,
)
from flopwatt.store.base import MessageWrite, Outcome, Store

AGENT, EPOCH, S = "node-a", 7, 1_000_000_000
T0 = 1_700_000_000 * S
POD = PodRef("ml", "llama-0", "trainer")


def _write(seq: int, a: Attribution, *, digest: bytes | None = None) -> MessageWrite:
    return MessageWrite(
        AGENT,
        EPOCH,
        seq,
        "attribution",
        digest or bytes([seq]) * 16,
        a.observed_unix_ns,
        attribution=a,
    )


def _one(t: int, d: DeviceAttribution) -> Attribution:
    return Attribution(t, (d,))


TRAIN = DeviceAttribution("GPU-0", (GpuProcess(41, "python3", 10, 0.9),), True, POD)


def _spans(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in store.query("SELECT * FROM gpu_attribution ORDER BY start_unix_ns")]


def test_unchanged_owners_extend_one_span_and_a_change_opens_the_next(store: Store) -> None:
    later = DeviceAttribution("GPU-0", (GpuProcess(41, "python3", 12, 0.5),), True, POD)
    other = DeviceAttribution("GPU-0", (GpuProcess(99, "vllm", 5, 0.2),), True, None)
    outs = store.apply(
        [
            _write(1, _one(T0, TRAIN)),
            _write(2, _one(T0 + 60 * S, later)),  # memory and utilisation alone: same span
            _write(3, _one(T0 + 65 * S, other)),
        ]
    )
    assert [o.outcome for o in outs] == [Outcome.STORED] * 3
    spans = _spans(store)
    assert [(s["start_unix_ns"], s["end_unix_ns"], s["job"]) for s in spans] == [
        (T0, T0 + 60 * S, "ml/llama-0/trainer"),
        (T0 + 65 * S, T0 + 65 * S, "vllm"),
    ]
    # The span keeps the newest processes (what a restarted collector labels with).
    assert '"python3",12,0.5' in spans[0]["processes_json"]
    # Readers: the first span lasts until the next starts (sooner than its grace).
    got = spans_from_rows(store.query(SPANS_IN_WINDOW_SQL, (0, T0 + 100 * S)))
    assert [(s.start_unix_ns, s.until_unix_ns) for s in got] == [
        (T0, T0 + 65 * S),
        (T0 + 65 * S, T0 + 65 * S + SPAN_GRACE_NS),
    ]
    assert got[0].attribution == DeviceAttribution(
        "GPU-0", (GpuProcess(41, "python3", 12, 0.5),), True, POD
    )
    newest = store.query(NEWEST_SPANS_SQL)
    assert [r["job"] for r in newest] == ["vllm"]
    # Per device (what a replica reads when an agent registers with it): the same row.
    store.apply([_write(4, _one(T0, DeviceAttribution("GPU-1", (), True)))])
    got = store.query(newest_span_sql(3), ("GPU-0", "GPU-1", "GPU-9"))
    assert sorted((r["device_uuid"], r["job"]) for r in got) == [
        ("GPU-0", "vllm"),
        ("GPU-1", "(no process)"),
    ]


def test_a_resend_is_a_duplicate_and_does_not_extend_twice(store: Store) -> None:
    store.apply([_write(1, _one(T0, TRAIN)), _write(2, _one(T0 + 10 * S, TRAIN))])
    (dup,) = store.apply([_write(2, _one(T0 + 10 * S, TRAIN))])
    assert dup.outcome is Outcome.DUPLICATE
    assert [(s["start_unix_ns"], s["end_unix_ns"]) for s in _spans(store)] == [(T0, T0 + 10 * S)]


def test_a_late_observation_does_not_rewrite_history(store: Store) -> None:
    other = DeviceAttribution("GPU-0", (), True, None)
    store.apply([_write(1, _one(T0, TRAIN)), _write(2, _one(T0 - 30 * S, other))])
    assert [(s["start_unix_ns"], s["job"]) for s in _spans(store)] == [(T0, "ml/llama-0/trainer")]


INFO = DeviceInfo(
    "GPU-0", 0, "NVIDIA H100 80GB HBM3", DeviceKind.GPU, memory_total_bytes=80 * 2**30
)


def _device_of(uuid: str) -> DeviceInfo:
    if uuid != "GPU-0":
        raise ValueError(f"device {uuid!r} is not registered")
    return INFO


@pytest.mark.parametrize(
    ("device", "why"),
    [
        (DeviceAttribution("GPU-9"), "not registered"),
        (DeviceAttribution("GPU-0", (GpuProcess(0),), True), "pid 0"),
        (DeviceAttribution("GPU-0", (GpuProcess(3), GpuProcess(3)), True), "twice"),
        (DeviceAttribution("GPU-0", (GpuProcess(3, "", None, math.nan),), True), "not in 0"),
        (DeviceAttribution("GPU-0", (GpuProcess(3, "", None, 1.5),), True), "not in 0"),
        (DeviceAttribution("GPU-0", (GpuProcess(3, "", 81 * 2**30),), True), "more than"),
        (DeviceAttribution("GPU-0", (GpuProcess(3),), False), "processes_known"),
        (DeviceAttribution("GPU-0", (GpuProcess(3, "a\x1bb"),), True), "control"),
        (DeviceAttribution("GPU-0", (GpuProcess(3, "x" * 254),), True), "254 characters"),
        (DeviceAttribution("GPU-0", pod=PodRef("", "p", "c")), "namespace and a name"),
        (DeviceAttribution("GPU-0", (GpuProcess(n) for n in range(1, 66)), True), "at most 64"),
    ],
)
def test_the_collector_refuses_a_bad_attribution_whole(device: DeviceAttribution, why: str) -> None:
    device = DeviceAttribution(
        device.device_uuid, tuple(device.processes), device.processes_known, device.pod
    )
    with pytest.raises(ValueError, match=why):
        check_attribution(Attribution(T0, (device,)), _device_of, T0)


def test_the_collector_refuses_a_device_named_twice_or_a_time_far_ahead() -> None:
    d = DeviceAttribution("GPU-0")
    with pytest.raises(AttributionError, match="twice"):
        check_attribution(Attribution(T0, (d, d)), _device_of, T0)
    with pytest.raises(AttributionError, match="future"):
        check_attribution(Attribution(T0 + 601 * S, (d,)), _device_of, T0)
    with pytest.raises(AttributionError, match="not > 0"):
        check_attribution(Attribution(0, (d,)), _device_of, T0)
    # Good: unknown values absent, a device with no processes, a full pod.
    check_attribution(
        Attribution(T0 + 600 * S, (DeviceAttribution("GPU-0", (GpuProcess(5),), True, POD),)),
        _device_of,
        T0,
    )
