"""Build the LD_PRELOAD fsync slowdown (``slow_fsync.c``) on demand and give the environment
that loads it into the collector."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("slow_fsync.c")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flopwatt-faults"


class ShimUnavailableError(RuntimeError):
    """The shim cannot be built here (the message says why: the case is skipped)."""


def build_shim(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The shared object, compiled with gcc into ``cache_dir`` unless already there (keyed by
    the source's hash, so an edited source is rebuilt).

    Raises:
        ShimUnavailableError: no gcc, or it failed (its output is in the message).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ShimUnavailableError("gcc is not installed: cannot build the fsync slowdown shim")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out = cache_dir / f"slow_fsync-{digest}.so"
    if out.exists():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ShimUnavailableError(f"gcc failed to build the shim: {proc.stderr.strip()}")
    os.replace(tmp, out)
    return out


def shim_env(shim: Path, delay_ms: float) -> dict[str, str]:
    """Environment additions that slow every fsync of a process (and its children) by
    ``delay_ms`` milliseconds."""
    preload = os.environ.get("LD_PRELOAD", "")
    return {
        "LD_PRELOAD": f"{shim} {preload}".strip(),
        "FLOPWATT_FSYNC_DELAY_MS": f"{delay_ms:g}",
    }
