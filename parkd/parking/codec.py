"""The data of a frame's Raft entry: the analysed RESULT, never the payload.

A fixed little-endian header (version, camera_id, seq, captured_at, free) followed
by the lot id in UTF-8: about 30 bytes and one ``struct`` call each way.  Field
widths match ``proto/parkd.proto``.  The leading version byte lets a later format
(e.g. protobuf) coexist with entries already in logs.
"""

from __future__ import annotations

import math
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


# -- retention entries ---------------------------------------------------------------
#
# A committed entry that trims the frame history at its log position, so that every
# node trims alike (parkd/parking/retention.py).  Its first byte is a tag no frame
# result uses; a node that predates it rejects the entry as an undecodable frame,
# which changes no rows.

RETENTION_TAG = 0x52  # "R"; frame results start with VERSION (1)
_RETENTION = struct.Struct("<Bd")  # tag, cutoff (captured_at, seconds since the epoch)


@dataclass(frozen=True, slots=True)
class Retention:
    """Delete frame history captured before ``cutoff`` (each camera's current frame stays)."""

    cutoff: float


def encode_retention(command: Retention) -> bytes:
    if not math.isfinite(command.cutoff):
        raise CodecError(f"retention cutoff {command.cutoff} is not a finite number")
    return _RETENTION.pack(RETENTION_TAG, command.cutoff)


def is_retention(data: bytes) -> bool:
    """Whether entry data is a retention command (checked before :func:`decode`)."""
    return data[:1] == bytes((RETENTION_TAG,))


def decode_retention(data: bytes) -> Retention:
    if len(data) != _RETENTION.size or data[0] != RETENTION_TAG:
        raise CodecError(f"not a retention command ({len(data)} bytes)")
    _, cutoff = _RETENTION.unpack(data)
    if not math.isfinite(cutoff):
        raise CodecError(f"retention cutoff {cutoff} is not a finite number")
    return Retention(cutoff)
