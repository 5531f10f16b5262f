"""On-disk cache of measured GEMM burst peaks, so model runs reuse a peak instead of re-measuring.

One JSON file (default ``$FLOPWATT_CACHE_DIR/peaks.json``, else
``$XDG_CACHE_HOME/flopwatt/peaks.json``, else ``~/.cache/flopwatt/peaks.json``) holds one entry
per :class:`PeakKey`: the device's UUID, the precision, and every version that can change the
figure — GPU driver, torch, the BLAS builds, and the thread counts on a CPU. A new driver or
torch therefore misses the cache and is measured afresh; an old entry stays in the file for
comparison. Each entry says when (``measured_unix_ns``) and how (``method``) it was measured.

Writes are atomic (temporary file + ``os.replace``) under an advisory lock, so two processes
measuring different devices at once do not lose each other's entries. A file that cannot be read
as a cache is treated as empty (logged) and rewritten on the next store: a broken cache costs a
re-measurement, never a failed run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from flopwatt.jsonable import from_jsonable, to_jsonable
from flopwatt.records import GemmShape

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "CacheOutcome",
    "CachedPeak",
    "PeakCache",
    "PeakKey",
    "default_cache_path",
]

#: Environment variable naming the cache directory (the file is ``peaks.json`` inside it).
CACHE_ENV = "FLOPWATT_CACHE_DIR"
_FILE_NAME = "peaks.json"
_FORMAT_VERSION = 1


def default_cache_path(environ: Mapping[str, str] | None = None) -> Path:
    """The cache file: ``$FLOPWATT_CACHE_DIR/peaks.json``, else under ``$XDG_CACHE_HOME``, else
    ``~/.cache/flopwatt/peaks.json``."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser() / _FILE_NAME
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "flopwatt" / _FILE_NAME


@dataclass(frozen=True)
class PeakKey:
    """What a measured peak depends on. Two measurements share an entry only if all match.

    Attributes:
        device_uuid: the device's UUID (``GPU-…``, or ``CPU-<machine id>`` for the host CPU).
        precision: the precision label (``fp32``, ``tf32``…).
        driver_version: GPU driver version; empty on a CPU.
        torch_version: ``torch.__version__``.
        blas: the BLAS libraries measured (``cuBLAS (CUDA 13.0)``; on a CPU torch's and numpy's
            builds, e.g. ``torch: MKL 2024.2 (AVX2); numpy: OpenBLAS 0.3.31 Haswell``).
        threads: thread counts on a CPU (``torch=2 numpy=2``); empty on a GPU.
    """

    device_uuid: str
    precision: str
    driver_version: str = ""
    torch_version: str = ""
    blas: str = ""
    threads: str = ""


@dataclass(frozen=True)
class CachedPeak:
    """A measured burst peak and how it was measured.

    Attributes:
        key: what it was measured under.
        burst_flops_per_s: best FLOP/s (OP/s for int8) over the sweep.
        best_shape: the GEMM shape that reached it.
        library: the library that reached it (``torch`` or ``numpy``).
        method: how, in words (timing, trials, sweep).
        measured_unix_ns: when the measurement finished (ns since the Unix epoch).
        spread_ratio: (best − worst) ÷ best over the trials at the best shape.
        by_library: best FLOP/s per library measured (both BLAS builds on a CPU).
        device_name: the device's name, for people reading the file.
    """

    key: PeakKey
    burst_flops_per_s: float
    best_shape: GemmShape
    library: str
    method: str
    measured_unix_ns: int
    spread_ratio: float | None = None
    by_library: Mapping[str, float] = field(default_factory=dict)
    device_name: str = ""


class CacheOutcome(StrEnum):
    """How :meth:`PeakCache.get_or_measure` obtained its peak."""

    HIT = "hit"
    """Found in the cache for exactly this key; nothing measured."""
    MISS = "miss"
    """Not in the cache; measured and stored."""
    REFRESH = "refresh"
    """Re-measured on request (``--refresh``) and stored over any old entry."""


def _key_id(key: PeakKey) -> str:
    return json.dumps(asdict(key), sort_keys=True)


class PeakCache:
    """The peak cache file.

    Args:
        path: the cache file; default :func:`default_cache_path`.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_cache_path()

    @classmethod
    def in_dir(cls, directory: Path | str | None) -> PeakCache:
        """The cache in ``directory`` (``peaks.json`` inside it), or the default when None."""
        return cls(None if directory is None else Path(directory) / _FILE_NAME)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, CachedPeak]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("peak cache %s unreadable (%s); measuring afresh", self.path, exc)
            return {}
        try:
            doc = json.loads(text)
            if doc.get("version") != _FORMAT_VERSION:
                raise ValueError(f"format version {doc.get('version')!r}")
            peaks = [from_jsonable(CachedPeak, item) for item in doc["peaks"]]
        # A damaged or foreign file must cost a re-measurement, not the run.
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("peak cache %s is not a valid cache (%s); ignoring it", self.path, exc)
            return {}
        return {_key_id(p.key): p for p in peaks}

    def _write(self, entries: dict[str, CachedPeak]) -> None:
        doc: dict[str, Any] = {
            "version": _FORMAT_VERSION,
            "peaks": [to_jsonable(p) for p in entries.values()],
        }
        fd, tmp = tempfile.mkstemp(prefix=".peaks-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out, indent=2, allow_nan=False)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get(self, key: PeakKey) -> CachedPeak | None:
        """The entry for exactly ``key``, or None."""
        return self._read().get(_key_id(key))

    def entries(self) -> list[CachedPeak]:
        """Every entry in the file, in stored order."""
        return list(self._read().values())

    def put(self, peak: CachedPeak) -> None:
        """Store ``peak`` (replacing any entry with the same key).

        Raises:
            OSError: the cache directory cannot be written.
        """
        with self._locked():
            entries = self._read()
            entries[_key_id(peak.key)] = peak
            self._write(entries)

    def get_or_measure(
        self, key: PeakKey, measure: Callable[[], CachedPeak], *, refresh: bool = False
    ) -> tuple[CachedPeak, CacheOutcome]:
        """The cached peak for ``key``, or a fresh measurement stored for next time.

        Args:
            key: the lookup key.
            measure: called on a miss or a refresh; must return a peak for ``key``.
            refresh: measure even when an entry exists, and replace it.

        Returns:
            The peak and whether it was a hit, a miss or a refresh.

        A cache that cannot be written (read-only home in a container) is logged and the fresh
        measurement returned anyway: the cache saves time, it is never a reason to fail.

        Raises:
            ValueError: ``measure`` returned a peak for a different key.
        """
        if not refresh:
            cached = self.get(key)
            if cached is not None:
                return cached, CacheOutcome.HIT
        peak = measure()
        if peak.key != key:
            raise ValueError(f"measured peak is for {peak.key}, not {key}")
        try:
            self.put(peak)
        except OSError as exc:
            log.warning("peak cache %s not written (%s); the peak is not reused", self.path, exc)
        return peak, CacheOutcome.REFRESH if refresh else CacheOutcome.MISS
