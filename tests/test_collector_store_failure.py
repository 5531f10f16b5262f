"""A collector whose store fails to commit keeps every agent's acks moving once it can again.

Two ways a commit fails here, both with simulated agents streaming through a real collector:
a failure injected into the writer's store in the middle of the streams (a subclass of the
real SQLite store whose ``apply`` raises for a few batches), and the database's write lock held
by another process for longer than the collector's busy timeout. Each time: the collector says
NOT_SERVING while it cannot commit and SERVING again after, every agent's acks advance past
the failure and its spool drains, every message every agent produced is stored exactly once,
and stream progress equals the highest contiguous stored sequence — also after a restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flopwatt.agent.agent import Agent
from flopwatt.collector.server import RunningCollector
from flopwatt.store.base import MessageWrite, WriteOutcome
from flopwatt.store.schema import epoch_to_db
from flopwatt.store.sqlite import SQLiteStore
from tests.collector_helpers import collector
from tests.test_agent_e2e import Produced, assert_exactly_once, make_agent, run_agents, wait_for

pytestmark = pytest.mark.slow


class FailingStore(SQLiteStore):
    """The real store, except that a commit holding one of the messages in ``fail`` (agent,
    sequence) fails once — after ``stall_s``, as a commit waiting out a lock does, so that the
    stream's next messages queue behind it and commit after it; every other call is real."""

    def __init__(self, path: Path, *, stall_s: float = 0.6) -> None:
        super().__init__(path)
        self.fail: set[tuple[str, int]] = set()
        self.stall_s = stall_s
        self.failed = 0

    def apply(self, writes: Sequence[MessageWrite]) -> list[WriteOutcome]:
        hit = self.fail & {(w.agent_id, w.sequence) for w in writes if not w.resend}
        if hit:
            self.fail -= hit
            self.failed += 1
            time.sleep(self.stall_s)
            raise sqlite3.OperationalError("database or disk is full (injected)")
        return super().apply(writes)


def highest_contiguous(db: Path, agent: Agent) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "SELECT sequence FROM messages WHERE agent_id=? AND epoch=? ORDER BY sequence",
        (agent.config.hostname, epoch_to_db(agent.epoch)),
    ).fetchall()
    con.close()
    n = 0
    for (seq,) in rows:
        if seq != n + 1:
            break
        n = seq
    return n


def healthz(c: RunningCollector) -> int:
    try:
        with urllib.request.urlopen(f"{c.http_url}/healthz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def _stream_until_drained(
    c: RunningCollector, agents: list[Agent], after_failure: Any
) -> list[bool]:
    """Run the agents until each has been acked well past the failure; record health."""
    seen: list[bool] = []
    stop, tasks = await run_agents(agents)
    try:
        await wait_for(
            lambda: all(a.uplink.stats.acked_messages >= 3 for a in agents), 30, "first acks"
        )
        await after_failure()

        def drained() -> bool:
            seen.append(c.health.serving)
            return c.health.serving and all(
                a.uplink.stats.acked_messages >= 15 and a.spool.stats().messages <= 2
                for a in agents
            )

        await wait_for(drained, 60, "acks past the failure and drained spools")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return seen


async def test_injected_commit_failures_mid_stream_do_not_wedge_any_agent(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    store = FailingStore(db)
    async with collector(tmp_path, store=store, db_path=db) as c:
        agents = [make_agent(tmp_path, f"node-{i}", c.grpc_address, seed=i) for i in range(3)]
        produced = [Produced(a) for a in agents]

        async def fail_next_batches() -> None:
            # The commit holding each agent's next-but-one message fails, while the messages
            # after it are already queued: the shape that wedged agents before (a later
            # commit stored past the failed one).
            store.fail = {(a.config.hostname, a.uplink.stats.sent_messages + 2) for a in agents[:2]}
            await wait_for(lambda: not store.fail, 30, "the injected failures")

        await _stream_until_drained(c, agents, fail_next_batches)
        assert c.health.view().episodes_total >= 1
        assert healthz(c) == 200
    for agent, prod in zip(agents, produced, strict=True):
        assert_exactly_once(db, agent, prod)
    # After a restart, progress is exactly the highest contiguous stored sequence.
    async with collector(tmp_path, db_path=db) as c:
        for agent, prod in zip(agents, produced, strict=True):
            committed = c.store.committed_through(agent.config.hostname, agent.epoch)
            assert committed == highest_contiguous(db, agent) == max(prod.samples)


async def test_write_lock_held_by_another_process_past_the_busy_timeout(tmp_path: Path) -> None:
    """The writer is a child process; another connection holds the write lock for 2 s against
    a 0.3 s busy timeout: NOT_SERVING meanwhile (gRPC health and /healthz), then everything
    commits without anyone restarting anything."""
    db = tmp_path / "c.db"
    async with collector(tmp_path, db_path=db, writer_process=True, store_busy_timeout_s=0.3) as c:
        agents = [make_agent(tmp_path, f"node-{i}", c.grpc_address, seed=i) for i in range(3)]
        produced = [Produced(a) for a in agents]
        codes: list[int] = []

        async def hold_lock() -> None:
            held = threading.Event()
            release = threading.Event()

            def hold() -> None:
                conn = sqlite3.connect(db, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                held.set()
                release.wait(10)
                conn.execute("ROLLBACK")
                conn.close()

            t = threading.Thread(target=hold)
            t.start()
            await asyncio.to_thread(held.wait)
            await wait_for(lambda: not c.health.serving, 10, "NOT_SERVING while locked")
            codes.append(await asyncio.to_thread(healthz, c))
            await asyncio.sleep(2.0)
            release.set()
            await asyncio.to_thread(t.join)

        await _stream_until_drained(c, agents, hold_lock)
        assert codes == [503]
        assert healthz(c) == 200
    for agent, prod in zip(agents, produced, strict=True):
        assert_exactly_once(db, agent, prod)


async def test_a_full_disk_is_ridden_out_and_the_collector_resumes_by_itself(
    tmp_path: Path,
) -> None:
    """The database cannot grow (SQLite's ``max_page_count`` at its current size: every commit
    fails with SQLITE_FULL, as on a full disk) for 3 s: NOT_SERVING (gRPC health and /healthz
    503), nothing acked without a commit, agents spool; when the database may grow again the
    collector's own probe finds out and it serves again within 10 s, every message stored
    exactly once."""
    db = tmp_path / "c.db"
    store = SQLiteStore(db)
    async with collector(tmp_path, store=store, db_path=db) as c:
        agents = [make_agent(tmp_path, f"node-{i}", c.grpc_address, seed=i) for i in range(3)]
        produced = [Produced(a) for a in agents]
        codes: list[int] = []
        resumed_s: list[float] = []

        def cap_pages(pages: int | None) -> None:
            with store._write_lock:  # the writer thread's connection
                if pages is None:
                    store._conn.execute("PRAGMA max_page_count=4294967294")
                else:
                    count = store._conn.execute("PRAGMA page_count").fetchone()[0]
                    store._conn.execute(f"PRAGMA max_page_count={count}")

        async def fill_disk() -> None:
            acked = [a.uplink.stats.acked_messages for a in agents]
            await asyncio.to_thread(cap_pages, 0)
            await wait_for(lambda: not c.health.serving, 15, "NOT_SERVING while full")
            codes.append(await asyncio.to_thread(healthz, c))
            await asyncio.sleep(3.0)
            # Agents keep what is not acked spooled. (A commit that fits in the file's free
            # pages may still go through, as on a real full disk; whatever is acked is stored,
            # which the exactly-once check below proves.)
            assert all(a.spool.stats().messages > 3 for a in agents)
            await asyncio.to_thread(cap_pages, None)
            t0 = time.monotonic()
            await wait_for(lambda: c.health.serving, 15, "SERVING once space returns")
            resumed_s.append(time.monotonic() - t0)
            assert all(
                a.uplink.stats.acked_messages >= b for a, b in zip(agents, acked, strict=True)
            )

        await _stream_until_drained(c, agents, fill_disk)
        assert codes == [503]
        assert resumed_s and resumed_s[0] <= 10.0
        assert c.health.view().episodes_total >= 1
    for agent, prod in zip(agents, produced, strict=True):
        assert_exactly_once(db, agent, prod)
