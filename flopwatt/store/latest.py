"""Each device's newest sample values, as the writer hands them to the fleet state.

One :class:`LatestBlock` covers a whole commit's worth of devices as a matrix rather than a dict
per device: the writer builds it with a few array operations, it crosses from the writer process
(and on to the exporter process) as raw bytes, and the state scatters it into its newest-values
table with a few more (:meth:`~flopwatt.collector.state.FleetState.apply_latest`). Values are in
each column's own unit (``power_instant_w`` in W, ``sm_clock_mhz`` in MHz, ...), as float64.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from flopwatt.records import SeriesBlock


@dataclass(frozen=True)
class LatestBlock:
    """Device ``device_uuids[i]`` had values ``values[i]`` (columns ``names``, as float) at its
    sample ``stamps_unix_ns[i]``. A device may have several rows (several messages of one
    agent in one commit); applying them in order with "newer or equal stamp wins" keeps the
    newest."""

    device_uuids: tuple[str, ...]
    stamps_unix_ns: npt.NDArray[np.int64]
    names: tuple[str, ...]
    values: npt.NDArray[np.float64]
    """Shape (devices, names)."""

    def __len__(self) -> int:
        return len(self.device_uuids)

    def row(self, i: int) -> dict[str, float]:
        """Row ``i`` as {column: value}."""
        return dict(zip(self.names, self.values[i].tolist(), strict=True))

    def __reduce__(self) -> tuple[Any, ...]:
        # Raw bytes across the process boundary: far cheaper than pickling arrays or dicts.
        return (
            _latest_from_bytes,
            (
                self.device_uuids,
                self.stamps_unix_ns.astype("<i8").tobytes(),
                self.names,
                self.values.astype("<f8").tobytes(),
            ),
        )


def _latest_from_bytes(
    uuids: tuple[str, ...], stamps: bytes, names: tuple[str, ...], values: bytes
) -> LatestBlock:
    matrix = np.frombuffer(values, "<f8").reshape(len(uuids), len(names))
    return LatestBlock(uuids, np.frombuffer(stamps, "<i8"), names, matrix)


def latest_block(block: SeriesBlock) -> LatestBlock | None:
    """Each device's values at its newest sample in ``block`` (the row with the largest
    timestamp; agents send samples in time order, which makes that the last row, checked in
    one pass); None when the block has no samples."""
    bounds = block.offsets.tolist()
    # Every device with rows, so that consecutive starts delimit exactly one device's rows.
    nonempty = [d for d, (a, b) in enumerate(itertools.pairwise(bounds)) if b > a]
    if not nonempty:
        return None
    ts = block.timestamp_unix_ns
    starts = np.array([bounds[d] for d in nonempty], dtype=np.int64)
    idx = np.array([bounds[d + 1] - 1 for d in nonempty], dtype=np.int64)
    if not np.array_equal(ts[idx], np.maximum.reduceat(ts, starts)):
        # Out of time order: find each device's newest row.
        idx = np.array(
            [bounds[d] + int(np.argmax(ts[bounds[d] : bounds[d + 1]])) for d in nonempty],
            dtype=np.int64,
        )
    names = tuple(block.columns)
    values = (
        np.column_stack([block.columns[n][idx].astype(np.float64) for n in names])
        if names
        else np.zeros((len(nonempty), 0))
    )
    return LatestBlock(
        tuple(block.device_uuids[d] for d in nonempty),
        ts[idx].astype(np.int64),
        names,
        np.ascontiguousarray(values, dtype=np.float64),
    )
