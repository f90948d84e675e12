"""The data of a frame's Raft entry: the analysed RESULT, never the payload.

A fixed little-endian header (version, camera_id, seq, captured_at, free) followed
by the lot id in UTF-8: about 30 bytes and one ``struct`` call each way.  Field
widths match ``proto/parkd.proto``.  The leading version byte lets a later format
(e.g. protobuf) coexist with entries already in logs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSION = 1
_HEADER = struct.Struct("<BIQdI")  # version, camera_id, seq, captured_at, free


class CodecError(ValueError):
    """The entry data is not a frame result this version can read or write."""


@dataclass(frozen=True, slots=True)
class FrameResult:
    camera_id: int
    lot: str
    seq: int
    captured_at: float  # seconds since the epoch, as the camera stamped it
    free: int


def encode(result: FrameResult) -> bytes:
    try:
        header = _HEADER.pack(VERSION, result.camera_id, result.seq, result.captured_at, result.free)
        return header + result.lot.encode("utf-8")
    except (struct.error, UnicodeEncodeError) as exc:
        raise CodecError(f"cannot encode {result}: {exc}") from exc


def decode(data: bytes) -> FrameResult:
    if len(data) < _HEADER.size or data[0] != VERSION:
        raise CodecError(f"not a version {VERSION} frame result ({len(data)} bytes)")
    _, camera_id, seq, captured_at, free = _HEADER.unpack_from(data)
    try:
        lot = data[_HEADER.size :].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"lot id is not UTF-8: {exc}") from exc
    return FrameResult(camera_id, lot, seq, captured_at, free)
