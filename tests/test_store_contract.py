"""One contract, both engines: every store (SQLite file, PostgreSQL database) keeps the same
semantics, so a collector on either acks the same things.

* exactly once per (agent, epoch, sequence): a message is stored only as the next of its epoch;
  a resend is a duplicate (same digest, counted) or a conflict (different digest: the first copy
  kept); a message past a missing one is OUT_OF_ORDER and not stored;
* progress (what acks report) is the highest contiguous stored sequence;
* a rejected message is recorded and consumed; a tombstone counts the samples it stands for;
  rejected samples, job results, comparisons and job states are stored with the message;
* jobs and registrations; the schema version; epochs beyond a signed 64-bit integer;
* two store instances on one database (two collector replicas) writing the same stream at the
  same time never store a sequence twice or leave a hole.

PostgreSQL is a real server (Debian ``postgresql`` package) started for the session; these
cases skip with a reason only where its binaries are absent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import fields
from typing import Any

import numpy as np

from flopwatt.analysis.comparison import SpecComparison
from flopwatt.records import (
    Conditions,
    DeviceInfo,
    GemmResult,
    GemmShape,
    JobResult,
    JobState,
    JobStatus,
    NodeInfo,
    SeriesBlock,
)
from flopwatt.store import open_store
from flopwatt.store.base import MessageWrite, Outcome, Registration, Store
from flopwatt.store.chunks import unpack_chunk
from flopwatt.store.schema import SCHEMA_VERSION, epoch_to_db

AGENT, EPOCH = "node-a", 2**64 - 5  # an epoch that does not fit a signed 64-bit integer


def heartbeat(sequence: int, *, agent: str = AGENT, digest: bytes | None = None) -> MessageWrite:
    return MessageWrite(
        agent, EPOCH, sequence, "heartbeat", digest or bytes([sequence % 256]) * 16, 1
    )


def telemetry(sequence: int, samples: int = 3) -> MessageWrite:
    ts = 1_700_000_000_000_000_000 + np.arange(samples, dtype=np.int64) * 100_000_000
    block = SeriesBlock(
        ("GPU-0",),
        np.array([0, samples], dtype=np.int64),
        ts,
        {"power_instant_w": np.full(samples, 300.0 + sequence)},
    )
    return MessageWrite(
        AGENT,
        EPOCH,
        sequence,
        "telemetry",
        bytes([sequence]) * 16,
        2,
        blocks=(block,),
        rejected_samples={("GPU-0", "power_negative"): 2},
    )


def rows(store: Store, sql: str, *params: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in store.query(sql, params)]


def test_next_in_sequence_is_stored_and_progress_follows(store: Store) -> None:
    outcomes = store.apply([heartbeat(1), heartbeat(2), heartbeat(3)])
    assert [(o.outcome, o.committed_through) for o in outcomes] == [
        (Outcome.STORED, 1),
        (Outcome.STORED, 2),
        (Outcome.STORED, 3),
    ]
    assert store.committed_through(AGENT, EPOCH) == 3
    assert store.committed_through(AGENT, EPOCH + 1 - 2**64) == 0  # another epoch
    assert store.committed_through("nobody", EPOCH) == 0


def test_resends_are_duplicates_or_conflicts_and_the_first_copy_stays(store: Store) -> None:
    store.apply([heartbeat(1), heartbeat(2)])
    dup, conflict = store.apply([heartbeat(1), heartbeat(2, digest=b"\xff" * 16)])
    assert (dup.outcome, dup.committed_through) == (Outcome.DUPLICATE, 2)
    assert (conflict.outcome, conflict.committed_through) == (Outcome.CONFLICT, 2)
    digests = rows(store, "SELECT sequence, digest FROM messages ORDER BY sequence")
    assert [bytes(r["digest"]) for r in digests] == [b"\x01" * 16, b"\x02" * 16]
    store.apply([heartbeat(1)])
    (ledger,) = rows(store, "SELECT duplicates, conflicts FROM stream_progress")
    assert (ledger["duplicates"], ledger["conflicts"]) == (2, 1)  # counted for store check


def test_a_message_past_a_missing_one_is_out_of_order_and_not_stored(store: Store) -> None:
    store.apply([heartbeat(1)])
    (late,) = store.apply([heartbeat(3)])
    assert (late.outcome, late.committed_through) == (Outcome.OUT_OF_ORDER, 1)
    (resend,) = store.apply([MessageWrite(AGENT, EPOCH, 2, "heartbeat", b"x" * 16, 1, resend=True)])
    assert resend.outcome is Outcome.OUT_OF_ORDER  # a digest-only copy is never stored
    assert [r["sequence"] for r in rows(store, "SELECT sequence FROM messages")] == [1]
    outcomes = store.apply([heartbeat(2), heartbeat(3)])
    assert [o.committed_through for o in outcomes] == [2, 3]


def test_rejected_messages_are_consumed_and_tombstones_count_samples(store: Store) -> None:
    rejected = MessageWrite(
        AGENT, EPOCH, 1, "telemetry", b"r" * 16, 1, rejected_detail="broken", reject_code="x"
    )
    tomb = MessageWrite(AGENT, EPOCH, 2, "dropped", b"d" * 16, 1, dropped_samples=480)
    a, b = store.apply([rejected, tomb])
    assert (a.outcome, a.committed_through) == (Outcome.REJECTED, 1)
    assert (b.outcome, b.committed_through) == (Outcome.STORED, 2)
    got = rows(store, "SELECT sequence, status, detail, samples FROM messages ORDER BY sequence")
    assert [(r["status"], r["detail"], r["samples"]) for r in got] == [
        ("rejected", "broken", 0),
        ("stored", "", 480),
    ]


def test_telemetry_chunks_and_rejected_samples_are_stored_with_the_message(store: Store) -> None:
    (o,) = store.apply([telemetry(1)])
    assert o.outcome is Outcome.STORED
    (chunk,) = rows(store, "SELECT device_uuid, n_samples, data FROM telemetry_chunks")
    ts, cols = unpack_chunk(bytes(chunk["data"]))
    assert chunk["device_uuid"] == "GPU-0" and chunk["n_samples"] == 3 == len(ts)
    assert list(cols["power_instant_w"]) == [301.0] * 3
    (rej,) = rows(store, "SELECT device_uuid, reason, samples FROM rejected_samples")
    assert (rej["device_uuid"], rej["reason"], rej["samples"]) == ("GPU-0", "power_negative", 2)
    (msg,) = rows(store, "SELECT samples, epoch FROM messages")
    assert msg["samples"] == 3 and msg["epoch"] == epoch_to_db(EPOCH)


def _result(job_id: str) -> JobResult:
    return JobResult(
        job_id=job_id,
        device_uuid="GPU-0",
        gemm=GemmResult(
            "bf16", "tensor", 790e12, GemmShape(8192, 8192, 8192), sustained_flops_per_s=700e12
        ),
        conditions=Conditions(simulated=True, power_limit_w=700.0),
        started_unix_ns=1,
        finished_unix_ns=2,
    )


def test_jobs_registrations_results_and_states(store: Store) -> None:
    node = NodeInfo(hostname=AGENT, agent_version="t", device_backend="sim")
    device = DeviceInfo(uuid="GPU-0", index=0, name="NVIDIA H100 80GB HBM3", simulated=True)
    reg = Registration(node, (device,), EPOCH, {"GPU-0": ("H100-SXM5-80GB", "name")}, 5)
    store.register_agents([reg, reg])  # a re-registration is an update
    (dev,) = rows(store, "SELECT device_uuid, agent_id, sku, simulated FROM devices")
    assert (dev["sku"], dev["simulated"], dev["agent_id"]) == ("H100-SXM5-80GB", 1, AGENT)
    store.create_job("job-1", "gemm", "{}", "{}", [AGENT, "node-b"], 10)
    assert [j.job_id for j in store.pending_jobs(AGENT)] == ["job-1"]
    store.set_target_state("job-1", AGENT, JobState.RUNNING, "", 11, delivered_epoch=EPOCH)
    comparison = SpecComparison(
        "H100-SXM5-80GB", "bf16", "tensor", *([None] * (len(fields(SpecComparison)) - 3))
    )
    write = MessageWrite(
        AGENT,
        EPOCH,
        1,
        "job_result",
        b"j" * 16,
        12,
        result=_result("job-1"),
        comparison=comparison,
        job_status=JobStatus("job-1", JobState.SUCCEEDED, "done"),
    )
    assert store.apply([write])[0].outcome is Outcome.STORED
    job = store.get_job("job-1")
    assert job is not None
    targets = {t.agent_id: t for t in job.targets}
    assert targets[AGENT].state is JobState.SUCCEEDED and targets[AGENT].results == 1
    assert targets[AGENT].delivered_epoch == EPOCH
    assert targets["node-b"].state is JobState.QUEUED and targets["node-b"].results == 0
    assert store.pending_jobs(AGENT) == []
    (res,) = rows(store, "SELECT sustained_flops_per_s, power_limit_w FROM job_results")
    assert (res["sustained_flops_per_s"], res["power_limit_w"]) == (700e12, 700.0)
    (comp,) = rows(store, "SELECT sku, precision FROM comparisons")
    assert (comp["sku"], comp["precision"]) == ("H100-SXM5-80GB", "bf16")
    assert store.get_job("missing") is None


def test_schema_version_and_reopening(db: str) -> None:
    first = open_store(db)
    first.apply([heartbeat(1)])
    first.close()
    again = open_store(db)  # migrations already applied: nothing to do, data kept
    try:
        assert again.schema_version() == SCHEMA_VERSION  # type: ignore[attr-defined]
        assert again.committed_through(AGENT, EPOCH) == 1
    finally:
        again.close()


def test_two_replicas_writing_one_stream_store_each_sequence_once(db: str) -> None:
    """Two store instances (two replicas) race the same 200 messages of one stream, each in
    its own order of batches: every sequence is stored once and progress ends at 200."""
    stores = [open_store(db, busy_timeout_s=20.0) for _ in range(2)]
    outcomes: list[list[Outcome]] = [[], []]
    errors: list[BaseException] = []

    def replica(i: int) -> None:
        try:
            for start in range(1, 201, 10):
                batch = [heartbeat(s) for s in range(start, start + 10)]
                for o in stores[i].apply(batch):
                    outcomes[i].append(o.outcome)
                time.sleep(0.001 * i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        stored = [o for per in outcomes for o in per if o is Outcome.STORED]
        assert len(stored) == 200  # each sequence stored by exactly one replica
        assert set(o for per in outcomes for o in per) <= {
            Outcome.STORED,
            Outcome.DUPLICATE,
            Outcome.OUT_OF_ORDER,
        }
        seqs = [r["sequence"] for r in rows(stores[0], "SELECT sequence FROM messages")]
        assert sorted(seqs) == list(range(1, 201))
        assert stores[1].committed_through(AGENT, EPOCH) == 200
    finally:
        for s in stores:
            s.close()


def test_a_job_target_is_claimed_for_delivery_once(store: Store) -> None:
    """Two replicas may both see a QUEUED target; only the first claim delivers it."""
    store.create_job("job-c", "gemm", "{}", "{}", [AGENT], 1)
    assert store.claim_delivery("job-c", AGENT, EPOCH, 2) is True
    assert store.claim_delivery("job-c", AGENT, EPOCH, 3) is False
    job = store.get_job("job-c")
    assert job is not None and job.targets[0].state is JobState.DELIVERED
    assert job.targets[0].delivered_epoch == EPOCH
