"""Value types shared by the Raft core, its storage and the wire adapter.

Plain frozen dataclasses: no Twisted, no SQL, no clock.  Tests compare them with
``==``; the node layer converts them to and from protobuf (``parkd/wire.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class EntryKind(enum.IntEnum):
    """What a log entry carries; the values are stored on disk and on the wire."""

    NORMAL = 0  # application data (a parking frame result)
    NOOP = 1  # appended by a new leader at once (Raft paper §5.4.2 / §8)
    CONFIG = 2  # a membership change (dissertation §4.1); data: parkd.raft.confchange


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message of the same Ready is sent.

    ``vote`` is 0 when no vote was cast in ``term`` (node ids start at 1).
    """

    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The position a snapshot covers and the membership as of that position.

    ``voters``/``learners`` are the configuration in effect at ``index`` (the core
    tells it with ``RaftCore.config_at(index)``); empty voters mean "none recorded".
    """

    index: int = 0
    term: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Membership:
    """A cluster configuration (dissertation §4.1): who votes, who only replicates.

    ``index`` is the log index of the CONFIG entry that set it; for the snapshot's
    configuration it is the snapshot index, and 0 for the start-up configuration.
    """

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    index: int = 0

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.voters or node_id in self.learners


@dataclass(frozen=True, slots=True)
class PersistedState:
    """Everything a restarting node reads back from its storage."""

    hard_state: HardState = field(default_factory=HardState)
    entries: tuple[Entry, ...] = ()
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
