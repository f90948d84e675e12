"""The commands among a run of committed entries: which entries change the parking tables otherwise
than a frame does (a retention cut, a registry change, the cluster id, a member's data dir, a new
configuration), and what each one does; :func:`segments` splits a run at them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from parkd.parking.codec import (
    CLUSTER_ID_TAG,
    MEMBER_DATA_DIR_TAG,
    REGISTRY_TAG,
    RETENTION_TAG,
    CodecError,
    decode_cluster_id,
    decode_member_data_dir,
    decode_registry,
    decode_retention,
)
from parkd.raft import confchange
from parkd.raft.types import Entry, EntryKind


@dataclass(frozen=True, slots=True)
class Trim:
    index: int
    cutoff: float


@dataclass(frozen=True, slots=True)
class CameraEnabled:
    index: int
    camera_id: int
    enabled: bool


@dataclass(frozen=True, slots=True)
class ClusterIdSet:
    index: int
    cluster_id: str


@dataclass(frozen=True, slots=True)
class DataDirSet:
    index: int
    node_id: int
    data_dir_id: str


@dataclass(frozen=True, slots=True)
class Members:
    """A CONFIG entry: the members of the configuration it makes."""

    members: frozenset[int]


def segments(
    entries: Sequence[Entry],
) -> Iterator[Sequence[Entry] | Trim | CameraEnabled | ClusterIdSet | DataDirSet | Members]:
    """``entries`` split at command and CONFIG entries: runs of other entries, and each command."""
    start = 0
    for pos, entry in enumerate(entries):
        command = command_of(entry)
        if command is None:
            continue
        if pos > start:
            yield entries[start:pos]
        yield command
        start = pos + 1
    if start < len(entries):
        yield entries[start:]


_COMMAND_TAGS = frozenset(bytes((tag,)) for tag in (RETENTION_TAG, REGISTRY_TAG, CLUSTER_ID_TAG, MEMBER_DATA_DIR_TAG))


def command_of(entry: Entry) -> Trim | CameraEnabled | ClusterIdSet | DataDirSet | Members | None:
    """What a command or CONFIG entry does to the parking tables; None for a frame result,
    a NOOP, or a malformed command (Batch rejects it like any undecodable entry)."""
    data = entry.data
    try:
        if entry.kind is EntryKind.CONFIG:
            change = confchange.decode(data)
            return Members(frozenset(change.voters) | frozenset(change.learners))
        if entry.kind is not EntryKind.NORMAL or data[:1] not in _COMMAND_TAGS:
            return None
        tag = data[0]
        if tag == RETENTION_TAG:
            return Trim(entry.index, decode_retention(data).cutoff)
        if tag == REGISTRY_TAG:
            registry = decode_registry(data)
            return CameraEnabled(entry.index, registry.camera_id, registry.enabled)
        if tag == CLUSTER_ID_TAG:
            return ClusterIdSet(entry.index, decode_cluster_id(data).cluster_id)
        record = decode_member_data_dir(data)
        return DataDirSet(entry.index, record.node_id, record.data_dir_id)
    except (CodecError, confchange.ConfChangeDecodeError):
        return None
