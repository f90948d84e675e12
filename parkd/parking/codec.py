"""The data of the parking state's Raft entries: frame results and the commands between them.

A frame result is the analysed RESULT, never the payload: a fixed little-endian
header (version, camera_id, [incarnation,] seq, captured_at, free) followed by the
lot id in UTF-8, about 40 bytes and one ``struct`` call each way.  Field widths
match ``proto/parkd.proto``.  The leading version byte lets formats coexist in a
log: VERSION 1 (no incarnation) is read as incarnation 0, the incarnation that
frames from before camera incarnations belong to; VERSION 2 carries it.  A result
of incarnation 0 is still written as VERSION 1, so that a node of the previous
release in the same cluster (a rolling upgrade) reads it.

The other entries start with a tag byte that no frame result uses: retention
(``R``), camera registry (``C``), cluster id (``I``) and member data dir (``D``)
commands.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

VERSION = 2
MAX_INCARNATION = (1 << 64) - 1
_HEADER_1 = struct.Struct("<BIQdI")  # version 1, camera_id, seq, captured_at, free
_HEADER_2 = struct.Struct("<BIQQdI")  # version 2, camera_id, incarnation, seq, captured_at, free


class CodecError(ValueError):
    """The entry data is not a frame result this version can read or write."""


@dataclass(slots=True)  # not frozen, as ApplyResult (parkd/parking/outcomes.py): one per frame, twice
class FrameResult:
    camera_id: int
    lot: str
    seq: int
    captured_at: float  # seconds since the epoch, as the camera stamped it
    free: int
    incarnation: int = 0  # the camera's state dir (CONTRACT §9); 0 for frames from before incarnations


def encode(result: FrameResult) -> bytes:
    try:
        if result.incarnation == 0:
            header = _HEADER_1.pack(1, result.camera_id, result.seq, result.captured_at, result.free)
        else:
            header = _HEADER_2.pack(
                2, result.camera_id, result.incarnation, result.seq, result.captured_at, result.free
            )
        return header + result.lot.encode("utf-8")
    except (struct.error, UnicodeEncodeError) as exc:
        raise CodecError(f"cannot encode {result}: {exc}") from exc


def decode(data: bytes) -> FrameResult:
    version = data[0] if data else None
    if version == 1 and len(data) >= _HEADER_1.size:
        header = _HEADER_1
        _, camera_id, seq, captured_at, free = header.unpack_from(data)
        incarnation = 0
    elif version == 2 and len(data) >= _HEADER_2.size:
        header = _HEADER_2
        _, camera_id, incarnation, seq, captured_at, free = header.unpack_from(data)
    else:
        raise CodecError(f"not a version 1 or {VERSION} frame result ({len(data)} bytes)")
    try:
        lot = data[header.size :].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(f"lot id is not UTF-8: {exc}") from exc
    return FrameResult(camera_id, lot, seq, captured_at, free, incarnation)


# -- retention entries ---------------------------------------------------------------
#
# A committed entry that trims the frame history at its log position, so that every
# node trims alike (parkd/parking/retention.py).  Its first byte is a tag no frame
# result uses; a node that predates it rejects the entry as an undecodable frame,
# which changes no rows.

RETENTION_TAG = 0x52  # "R"; frame results start with their version (1 or 2)
_RETENTION_BYTE = bytes((RETENTION_TAG,))
_RETENTION = struct.Struct("<Bd")  # tag, cutoff (captured_at, seconds since the epoch)


@dataclass(frozen=True, slots=True)
class Retention:
    """Delete frame history captured before ``cutoff`` (each incarnation's newest frame stays)."""

    cutoff: float


def encode_retention(command: Retention) -> bytes:
    if not math.isfinite(command.cutoff):
        raise CodecError(f"retention cutoff {command.cutoff} is not a finite number")
    return _RETENTION.pack(RETENTION_TAG, command.cutoff)


def is_retention(data: bytes) -> bool:
    """Whether entry data is a retention command (checked before :func:`decode`)."""
    return data[:1] == _RETENTION_BYTE


def decode_retention(data: bytes) -> Retention:
    if len(data) != _RETENTION.size or data[0] != RETENTION_TAG:
        raise CodecError(f"not a retention command ({len(data)} bytes)")
    _, cutoff = _RETENTION.unpack(data)
    if not math.isfinite(cutoff):
        raise CodecError(f"retention cutoff {cutoff} is not a finite number")
    return Retention(cutoff)


# -- camera registry entries ------------------------------------------------------------
#
# Disable or enable a camera at a log position, so that every node refuses the same
# frames (CONTRACT §9 "Camera registry").  Tagged like retention entries; a node that
# predates them rejects the entry as an undecodable frame.

REGISTRY_TAG = 0x43  # "C"
_REGISTRY_BYTE = bytes((REGISTRY_TAG,))
_REGISTRY = struct.Struct("<BBI")  # tag, enabled (0 or 1), camera_id


@dataclass(frozen=True, slots=True)
class RegistryCommand:
    """Disable (``enabled`` False) or enable camera ``camera_id`` from this entry on."""

    camera_id: int
    enabled: bool


def encode_registry(command: RegistryCommand) -> bytes:
    if not 1 <= command.camera_id <= 0xFFFFFFFF:
        raise CodecError(f"camera id {command.camera_id} is outside 1..{0xFFFFFFFF}")
    return _REGISTRY.pack(REGISTRY_TAG, 1 if command.enabled else 0, command.camera_id)


def is_registry(data: bytes) -> bool:
    """Whether entry data is a camera registry command (checked before :func:`decode`)."""
    return data[:1] == _REGISTRY_BYTE


def decode_registry(data: bytes) -> RegistryCommand:
    if len(data) != _REGISTRY.size or data[0] != REGISTRY_TAG:
        raise CodecError(f"not a camera registry command ({len(data)} bytes)")
    _, enabled, camera_id = _REGISTRY.unpack(data)
    if enabled not in (0, 1) or camera_id == 0:
        raise CodecError(f"camera registry command with enabled={enabled}, camera id {camera_id}")
    return RegistryCommand(camera_id, bool(enabled))


# -- cluster identity entries -------------------------------------------------------------
#
# The cluster id (CONTRACT §10 "Cluster id") and each member's data-dir id are replicated
# state, so that every node, snapshot and backup holds the same ones: the leader proposes
# them (parkd/node/cluster_identity.py).  Both are 128-bit random ids, written as 32
# lowercase hex digits (uuid4().hex) and carried as 16 bytes.  Tagged like the others; a
# node that predates them rejects the entry as an undecodable frame.

CLUSTER_ID_TAG = 0x49  # "I"
_CLUSTER_ID_BYTE = bytes((CLUSTER_ID_TAG,))
MEMBER_DATA_DIR_TAG = 0x44  # "D"
_MEMBER_DATA_DIR_BYTE = bytes((MEMBER_DATA_DIR_TAG,))
_CLUSTER_ID = struct.Struct("<B16s")  # tag, cluster id
_MEMBER_DATA_DIR = struct.Struct("<BI16s")  # tag, node id, data-dir id
_ID_TEXT = re.compile(r"[0-9a-f]{32}")


def is_id(text: object) -> bool:
    """Whether ``text`` is a cluster or data-dir id as written: 32 lowercase hex digits."""
    return isinstance(text, str) and _ID_TEXT.fullmatch(text) is not None


def _id_bytes(text: str, what: str) -> bytes:
    if not is_id(text):
        raise CodecError(f"{what} {text!r} is not 32 lowercase hex digits")
    return bytes.fromhex(text)


@dataclass(frozen=True, slots=True)
class ClusterIdCommand:
    """The cluster's id; the first one applied stays (later ones change nothing)."""

    cluster_id: str


@dataclass(frozen=True, slots=True)
class MemberDataDir:
    """Member ``node_id`` runs on the data dir ``data_dir_id`` (until it is removed)."""

    node_id: int
    data_dir_id: str


def encode_cluster_id(command: ClusterIdCommand) -> bytes:
    return _CLUSTER_ID.pack(CLUSTER_ID_TAG, _id_bytes(command.cluster_id, "cluster id"))


def is_cluster_id(data: bytes) -> bool:
    """Whether entry data is a cluster id command (checked before :func:`decode`)."""
    return data[:1] == _CLUSTER_ID_BYTE


def decode_cluster_id(data: bytes) -> ClusterIdCommand:
    if len(data) != _CLUSTER_ID.size or data[0] != CLUSTER_ID_TAG:
        raise CodecError(f"not a cluster id command ({len(data)} bytes)")
    _, raw = _CLUSTER_ID.unpack(data)
    return ClusterIdCommand(raw.hex())


def encode_member_data_dir(command: MemberDataDir) -> bytes:
    if not 1 <= command.node_id <= 0xFFFFFFFF:
        raise CodecError(f"node id {command.node_id} is outside 1..{0xFFFFFFFF}")
    return _MEMBER_DATA_DIR.pack(MEMBER_DATA_DIR_TAG, command.node_id, _id_bytes(command.data_dir_id, "data-dir id"))


def is_member_data_dir(data: bytes) -> bool:
    """Whether entry data is a member data dir command (checked before :func:`decode`)."""
    return data[:1] == _MEMBER_DATA_DIR_BYTE


def decode_member_data_dir(data: bytes) -> MemberDataDir:
    if len(data) != _MEMBER_DATA_DIR.size or data[0] != MEMBER_DATA_DIR_TAG:
        raise CodecError(f"not a member data dir command ({len(data)} bytes)")
    _, node_id, raw = _MEMBER_DATA_DIR.unpack(data)
    if node_id == 0:
        raise CodecError("member data dir command for node 0")
    return MemberDataDir(node_id, raw.hex())
