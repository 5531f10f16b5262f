"""The header both telemetry chunk layouts start with (:mod:`flopwatt.store.chunks`,
:mod:`flopwatt.store.packing`): a 4-byte magic, the uint32 sample count and the bitmap of the
columns present (bit i ⇔ ``TELEMETRY_COLUMNS[i]``), little-endian.

The bitmap is uint32 under the narrow magic and uint64 under the wide one. The wide header is
written only when a column past the 32nd is present, so chunks without one stay byte-identical
to those an older flopwatt writes and reads."""

from __future__ import annotations

import struct

from flopwatt.records import TELEMETRY_COLUMNS

_NARROW = struct.Struct("<4sII")
_WIDE = struct.Struct("<4sIQ")


def pack_column_header(narrow_magic: bytes, wide_magic: bytes, n: int, bitmap: int) -> bytes:
    """The narrowest header that holds ``bitmap``, for ``n`` samples."""
    if bitmap >> 32:
        return _WIDE.pack(wide_magic, n, bitmap)
    return _NARROW.pack(narrow_magic, n, bitmap)


def unpack_column_header(
    blob: bytes, narrow_magic: bytes, wide_magic: bytes, what: str
) -> tuple[int, int, int]:
    """(sample count, column bitmap, offset of what follows the header) of ``blob``.

    Raises:
        ValueError: not a ``what`` (another magic, or shorter than its header), or its bitmap
            names a column this version does not know.
    """
    magic = bytes(blob[:4])
    if magic == narrow_magic and len(blob) >= _NARROW.size:
        _, n, bitmap = _NARROW.unpack_from(blob)
        offset = _NARROW.size
    elif magic == wide_magic and len(blob) >= _WIDE.size:
        _, n, bitmap = _WIDE.unpack_from(blob)
        offset = _WIDE.size
    else:
        raise ValueError(f"not a flopwatt {what}")
    if bitmap >> len(TELEMETRY_COLUMNS):
        raise ValueError(f"{what} names a column this version does not know")
    return int(n), int(bitmap), offset
