"""A collector on PostgreSQL rides out a full disk: the database's tables live on a small tmpfs
(a tablespace) that another process fills. Commits fail ("could not extend file … No space
left on device"): the collector goes NOT_SERVING (gRPC health and /healthz 503), acks nothing it
did not commit, agents spool; once the space returns the collector's own probe — a real write
of a megabyte, not a ``SELECT 1`` — finds out and it serves again within 10 s, with every
message stored exactly once.

Needs root (to mount the tmpfs) and the PostgreSQL server binaries; skipped otherwise with the
reason (``.ci/run`` runs as root and installs PostgreSQL).
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.collector_helpers import collector
from tests.postgres_server import PostgresServer
from tests.test_agent_e2e import Produced, make_agent, wait_for
from tests.test_collector_store_failure import _stream_until_drained, healthz
from tests.test_postgres_collector import stored

pytestmark = pytest.mark.slow

TMPFS_BYTES = 24 * 2**20


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 24 MiB tmpfs owned by the ``postgres`` user (the server's), unmounted afterwards (in
    a directory of its own under /tmp: the server cannot reach into pytest's, root's 0700)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs (.ci/run runs as root)")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("needs the 'postgres' user of the Debian postgresql package")
    root = Path(tempfile.mkdtemp(prefix="flopwatt-small-disk-"))
    shutil.chown(root, "postgres", "postgres")
    where = root / "mnt"
    where.mkdir()
    done = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={TMPFS_BYTES},mode=0700,uid={owner.pw_uid},gid={owner.pw_gid}",
            "tmpfs",
            str(where),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _fill(where: Path) -> Path:
    """Fill the file system at ``where`` to the last byte (as root: past any reserve)."""
    filler = where / "filler"
    with open(filler, "wb") as f:
        chunk = b"\xff" * 2**20
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler


async def test_a_full_disk_under_postgresql_is_ridden_out(
    tmp_path: Path, postgres: PostgresServer, small_disk: Path
) -> None:
    dsn = postgres.create_database("disk_full")
    space = small_disk / "tablespace"
    space.mkdir()
    shutil.chown(space, "postgres", "postgres")
    with psycopg.connect(postgres.dsn(), autocommit=True) as con:
        con.execute("DROP TABLESPACE IF EXISTS small_disk")
        con.execute(f"CREATE TABLESPACE small_disk LOCATION '{space}'")
        con.execute("ALTER DATABASE disk_full SET default_tablespace = small_disk")
    try:
        async with collector(tmp_path, db_path=dsn) as c:
            agents = [make_agent(tmp_path, f"full-{i}", c.grpc_address, seed=i) for i in range(3)]
            produced = [Produced(a) for a in agents]
            codes: list[int] = []
            resumed_s: list[float] = []

            async def fill_disk() -> None:
                acked = [a.uplink.stats.acked_messages for a in agents]
                filler = await asyncio.to_thread(_fill, small_disk)
                await wait_for(lambda: not c.health.serving, 30, "NOT_SERVING while full")
                codes.append(await asyncio.to_thread(healthz, c))
                await asyncio.sleep(3.0)
                assert c.health.serving is False  # the probe does not take a read for health
                assert all(a.spool.stats().messages > 3 for a in agents)
                filler.unlink()
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
        for agent, made in zip(agents, produced, strict=True):
            got = stored(dsn, agent)
            assert set(got) == set(made.samples)
            assert all(got[s][1] == n for s, n in made.samples.items())
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as con:
            con.execute("DROP DATABASE IF EXISTS disk_full")
            con.execute("DROP TABLESPACE IF EXISTS small_disk")
