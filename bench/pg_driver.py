#!/usr/bin/env python3
"""Which PostgreSQL driver for the store: the collector's commit, timed with each candidate.

A commit of the collector at 1,000 agents × 8 GPUs × 10 Hz holds, every 50 ms, about 50
messages: 50 ``messages`` rows and 400 ``telemetry_chunks`` rows of ~1 KB (one device's 10
samples × 13 columns) plus a progress update per stream. Each candidate writes the same
commits into the store's real schema, in one transaction each:

* psycopg 3 ``executemany`` (pipeline mode: one round trip per batch of statements);
* psycopg 3 ``COPY … FROM STDIN (FORMAT BINARY)`` for the chunk rows;
* asyncpg ``executemany`` and ``copy_records_to_table`` (if asyncpg is installed).

Prints commits/s and the implied samples/s per candidate and the CPU of this process and of the
server. Usage:  python bench/pg_driver.py [--commits 200] [--dsn postgresql://… | local]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flopwatt.store.postgres import PostgresStore  # noqa: E402

MESSAGES_PER_COMMIT = 50
CHUNKS_PER_MESSAGE = 8
CHUNK_BYTES = 1_050
SAMPLES_PER_CHUNK = 10


def _rows(commit: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    messages, chunks = [], []
    blob = os.urandom(CHUNK_BYTES)
    for m in range(MESSAGES_PER_COMMIT):
        agent, seq = f"agent-{m:04d}", commit + 1
        messages.append((agent, 1, seq, "telemetry", b"d" * 16, 0, "stored", "", 80))
        for c in range(CHUNKS_PER_MESSAGE):
            chunks.append((agent, 1, seq, c, f"GPU-{m}-{c}", 0, 1, SAMPLES_PER_CHUNK, blob))
    return messages, chunks


MSG_SQL = (
    "INSERT INTO messages (agent_id, epoch, sequence, kind, digest, received_unix_ns, status, "
    "detail, samples) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
CHUNK_SQL = (
    "INSERT INTO telemetry_chunks (agent_id, epoch, sequence, chunk_index, device_uuid, "
    "t_first_unix_ns, t_last_unix_ns, n_samples, data) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
CHUNK_COLUMNS = (
    "agent_id",
    "epoch",
    "sequence",
    "chunk_index",
    "device_uuid",
    "t_first_unix_ns",
    "t_last_unix_ns",
    "n_samples",
    "data",
)


def _fresh(base: str, name: str) -> str:
    import psycopg

    with psycopg.connect(base, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"')
    dsn = base.rsplit("/", 1)[0] + "/" + name
    PostgresStore(dsn).close()  # the schema
    return dsn


def psycopg_executemany(dsn: str, commits: int) -> None:
    import psycopg

    with psycopg.connect(dsn) as con:
        for i in range(commits):
            messages, chunks = _rows(i)
            with con.transaction():
                cur = con.cursor()
                cur.executemany(MSG_SQL, messages)
                cur.executemany(CHUNK_SQL, chunks)


def psycopg_copy(dsn: str, commits: int) -> None:
    import psycopg

    with psycopg.connect(dsn) as con:
        for i in range(commits):
            messages, chunks = _rows(i)
            with con.transaction():
                cur = con.cursor()
                cur.executemany(MSG_SQL, messages)
                with cur.copy(
                    f"COPY telemetry_chunks ({', '.join(CHUNK_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(
                        ["text", "int8", "int8", "int8", "text", "int8", "int8", "int8", "bytea"]
                    )
                    for row in chunks:
                        copy.write_row(row)


def asyncpg_executemany(dsn: str, commits: int) -> None:
    import asyncpg

    async def main() -> None:
        con = await asyncpg.connect(dsn)
        try:
            n = iter(range(1, 100))
            msg_sql = "".join(f"${next(n)}" if part == "%s" else part for part in _split(MSG_SQL))
            n = iter(range(1, 100))
            chunk_sql = "".join(
                f"${next(n)}" if part == "%s" else part for part in _split(CHUNK_SQL)
            )
            for i in range(commits):
                messages, chunks = _rows(i)
                async with con.transaction():
                    await con.executemany(msg_sql, messages)
                    await con.executemany(chunk_sql, chunks)
        finally:
            await con.close()

    asyncio.run(main())


def asyncpg_copy(dsn: str, commits: int) -> None:
    import asyncpg

    async def main() -> None:
        con = await asyncpg.connect(dsn)
        try:
            n = iter(range(1, 100))
            msg_sql = "".join(f"${next(n)}" if part == "%s" else part for part in _split(MSG_SQL))
            for i in range(commits):
                messages, chunks = _rows(i)
                async with con.transaction():
                    await con.executemany(msg_sql, messages)
                    await con.copy_records_to_table(
                        "telemetry_chunks", records=chunks, columns=list(CHUNK_COLUMNS)
                    )
        finally:
            await con.close()

    asyncio.run(main())


def _split(sql: str) -> list[str]:
    parts: list[str] = []
    rest = sql
    while "%s" in rest:
        head, rest = rest.split("%s", 1)
        parts += [head, "%s"]
    return [*parts, rest]


def _server_cpu() -> float:
    """CPU seconds of the PostgreSQL server: every live process, plus what the postmaster
    reaped from the backends that ended (a connection's backend exits when it closes)."""
    total = 0.0
    for p in psutil.process_iter(["name", "ppid"]):
        if p.info["name"] not in ("postgres", "postmaster"):
            continue
        try:
            t = p.cpu_times()
            total += t.user + t.system
            parent = psutil.Process(p.info["ppid"])
            if parent.name() not in ("postgres", "postmaster"):  # the postmaster itself
                total += t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--dsn", default="local", help="a PostgreSQL DSN, or 'local' (throwaway)")
    args = ap.parse_args()
    candidates: list[tuple[str, Callable[[str, int], None]]] = [
        ("psycopg 3 executemany (pipeline)", psycopg_executemany),
        ("psycopg 3 COPY (binary) for chunks", psycopg_copy),
    ]
    try:
        import asyncpg  # noqa: F401

        candidates += [
            ("asyncpg executemany", asyncpg_executemany),
            ("asyncpg copy_records_to_table", asyncpg_copy),
        ]
    except ImportError:
        print("asyncpg not installed: only psycopg measured")
    import contextlib

    with contextlib.ExitStack() as stack:
        if args.dsn == "local":
            from tests.postgres_server import run_postgres

            base = stack.enter_context(run_postgres()).dsn()
        else:
            base = args.dsn
        me = psutil.Process()
        samples = MESSAGES_PER_COMMIT * CHUNKS_PER_MESSAGE * SAMPLES_PER_CHUNK
        print(
            f"{args.commits} commits of {MESSAGES_PER_COMMIT} messages, "
            f"{MESSAGES_PER_COMMIT * CHUNKS_PER_MESSAGE} chunks of {CHUNK_BYTES} B "
            f"({samples} samples) each"
        )
        for k, (label, fn) in enumerate(candidates):
            dsn = _fresh(base, f"driver_{k}")
            c0, s0, t0 = sum(me.cpu_times()[:2]), _server_cpu(), time.perf_counter()
            fn(dsn, args.commits)
            wall = time.perf_counter() - t0
            client = sum(me.cpu_times()[:2]) - c0
            server = _server_cpu() - s0
            print(
                f"  {label:38s} {args.commits / wall:7.1f} commits/s "
                f"({args.commits * samples / wall:>11,.0f} samples/s); CPU per commit: "
                f"client {1e3 * client / args.commits:.2f} ms, "
                f"server {1e3 * server / args.commits:.2f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
