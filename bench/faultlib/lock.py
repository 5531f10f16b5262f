"""Another process holding the collector database's write lock: it opens the same SQLite file,
runs ``BEGIN IMMEDIATE`` (the write lock, in WAL mode), holds it for a while and rolls back.

As a script (``python -m bench.faultlib.lock DB SECONDS``) it prints ``locked`` once it holds
the lock and ``released`` after the rollback. :class:`LockHolder` runs it and waits for the
first line.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from pathlib import Path

from bench.faultlib.processes import PYTHON, ManagedProcess


def hold(db: Path, seconds: float, *, acquire_timeout_s: float = 60.0) -> None:
    """Hold ``db``'s write lock for ``seconds`` (after waiting up to ``acquire_timeout_s`` for
    it), then roll back. Prints ``locked`` / ``released`` on stdout."""
    with contextlib.closing(
        sqlite3.connect(db, timeout=acquire_timeout_s, isolation_level=None)
    ) as conn:
        conn.execute("BEGIN IMMEDIATE")
        print(f"locked {time.monotonic():.3f}", flush=True)
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        print(f"released {time.monotonic():.3f}", flush=True)


class LockHolder(ManagedProcess):
    """The lock-holding process for one case.

    Args:
        db: the collector's database.
        seconds: how long to hold the lock (s).
        log_dir: where its output goes.
    """

    def __init__(self, db: Path, seconds: float, log_dir: Path) -> None:
        super().__init__(
            "lock-holder",
            [PYTHON, "-m", "bench.faultlib.lock", str(db), str(seconds)],
            log_dir,
        )
        self.seconds = seconds

    def _stamp(self, word: str) -> float | None:
        if not self.stdout_paths:
            return None
        for line in self.stdout_paths[-1].read_text().splitlines():
            if line.startswith(word + " "):
                return float(line.split()[1])
        return None

    def wait_locked(self, timeout_s: float = 60.0) -> float:
        """Wait until the lock is held; return when it was taken (``time.monotonic()`` s).

        Raises:
            RuntimeError: the process ended or did not get the lock in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stamp = self._stamp("locked")
            if stamp is not None:
                return stamp
            if not self.alive():
                break
            time.sleep(0.02)
        raise RuntimeError(f"the lock holder did not get the lock (rc={self.returncode()})")

    def wait_released(self, timeout_s: float = 60.0) -> float:
        """Wait for the rollback; return when it happened (``time.monotonic()`` s)."""
        assert self.proc is not None
        self.proc.wait(timeout_s)
        stamp = self._stamp("released")
        if stamp is None:
            raise RuntimeError(f"the lock holder ended without releasing (rc={self.returncode()})")
        return stamp


if __name__ == "__main__":
    hold(Path(sys.argv[1]), float(sys.argv[2]))
