"""A full disk under the collector's database: a small tmpfs mounted on the database directory,
filled by a filler file until ``ENOSPC``, held full, then freed ("space returns").

Needs ``mount -t tmpfs`` (root, or a user namespace that allows it); :class:`MountError` says
why when it is not permitted, and the case is skipped. The mount is always undone: by the
caller's ``finally`` and, as a last resort, at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import subprocess
from pathlib import Path

FILL_CHUNK_BYTES = 1 << 20


class MountError(RuntimeError):
    """The tmpfs could not be mounted (the message is the skip reason)."""


_MOUNTED: set[Path] = set()


def _unmount_all() -> None:
    for path in list(_MOUNTED):
        unmount(path)


atexit.register(_unmount_all)


class SmallDisk:
    """A tmpfs of ``size_mb`` MiB on ``path`` (created), with a filler file.

    Args:
        path: the mount point (the collector's database directory).
        size_mb: the filesystem's size (MiB).
    """

    def __init__(self, path: Path, size_mb: int = 64) -> None:
        self.path = path
        self.size_mb = size_mb
        self.filler = path / "filler.bin"
        self.filled_bytes = 0

    def mount(self) -> None:
        """Mount the tmpfs.

        Raises:
            MountError: not permitted here (or ``mount`` is missing).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise MountError(f"cannot run mount: {exc}") from None
        if proc.returncode != 0:
            raise MountError(
                f"mounting a tmpfs is not permitted here: {proc.stderr.strip() or proc.returncode}"
            )
        _MOUNTED.add(self.path)

    def fill(self) -> int:
        """Write to the filler file until the disk is full (``ENOSPC``); return the bytes added
        (call again to top it up when something freed space)."""
        added = 0
        chunk = b"\xa5" * FILL_CHUNK_BYTES
        with open(self.filler, "ab", buffering=0) as f:
            size = FILL_CHUNK_BYTES
            while size >= 512:
                try:
                    f.write(chunk[:size])
                    added += size
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    size //= 2  # fill the last blocks too
        self.filled_bytes += added
        return added

    def free_bytes(self) -> int:
        """Bytes still available on the filesystem."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def free(self) -> None:
        """Delete the filler: the space returns."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def unmount(self) -> None:
        """Unmount (idempotent; lazily if still busy)."""
        unmount(self.path)


def unmount(path: Path) -> None:
    """Unmount ``path`` if this module mounted it (lazily when busy)."""
    if path not in _MOUNTED:
        return
    proc = subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if proc.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
    _MOUNTED.discard(path)
