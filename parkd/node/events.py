"""The node's event stream: what the RaftDriver publishes after each Ready (``parkd/node/driver.py``).

The node's parts subscribe to it (``RaftDriver.subscribe``) instead of reaching into the
core; each event is a frozen value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parkd.raft.core import ReadState, Role, TransferResult
from parkd.raft.types import Entry, Membership, SnapshotMeta


# -- the event stream ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """This node's role or the leader it knows changed (``leader_id`` None: none known)."""

    role: Role
    leader_id: int | None
    term: int


@dataclass(frozen=True, slots=True)
class EntriesPersisted:
    """New log entries are durable; this Ready's messages are about to go out."""

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class MembershipChanged:
    """The configuration in effect changed (on append, §4.1); connect to new members now."""

    membership: Membership


@dataclass(frozen=True, slots=True)
class EntriesApplied:
    """Committed entries were applied; ``results`` are the state machine's, in order."""

    entries: tuple[Entry, ...]
    results: list[Any]
    applied_index: int


@dataclass(frozen=True, slots=True)
class SnapshotInstalled:
    """A received snapshot replaced the state machine and the log (applied index = its index)."""

    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class LogCompacted:
    """Storage dropped the log up to ``upto`` and recorded the snapshot ``meta``."""

    meta: SnapshotMeta
    upto: int


@dataclass(frozen=True, slots=True)
class ReadIndexReady:
    """A linearizable read may be served once ``index`` is applied (0: retry it)."""

    read: ReadState


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """A leadership transfer this node started ended (see ``TransferResult``)."""

    result: TransferResult


@dataclass(frozen=True, slots=True)
class Persisted:
    """One storage transaction of the Ready loop took ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class StorageStalled:
    """A write of the Ready loop found the disk full; it is retried (``step``: persist or apply)."""

    error: str
    step: str


@dataclass(frozen=True, slots=True)
class StorageResumed:
    """The stalled write went through after ``seconds``; the Ready loop runs again."""

    seconds: float


DriverEvent = (
    LeaderChanged
    | EntriesPersisted
    | MembershipChanged
    | EntriesApplied
    | SnapshotInstalled
    | LogCompacted
    | ReadIndexReady
    | TransferEnded
    | Persisted
    | StorageStalled
    | StorageResumed
)
