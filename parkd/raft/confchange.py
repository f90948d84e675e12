"""The data of a CONFIG log entry: one single-server membership change (dissertation §4.1).

A pure codec, no I/O.  A change names one node and what happens to it:

- ``ADD_LEARNER``: the node joins as a non-voting learner (it receives the log but
  neither votes nor counts toward commit) until it has caught up (§4.2.1);
- ``PROMOTE``: a learner becomes a voter;
- ``REMOVE``: a voter or learner leaves;
- ``FORCE``: the node becomes the only voter, whatever the configuration was.  Not a
  change the old configuration agreed to: only ``RaftCore.force_new_configuration``
  (``--force-new-cluster``, disaster recovery) appends one.

``context`` is opaque to the core: the node puts the member's addresses there.
``voters``/``learners`` are the *resulting* configuration, filled in by the leader
when it appends the entry, so that the latest CONFIG entry in a log fully
describes the membership without replaying earlier changes (a node that joins
with an empty configuration, or restarts with a changed start-up file, still
learns the right one).  Proposers leave them empty.

Wire layout (big-endian): version (1 byte, = 1), op (1 byte), node_id (u32),
voter count (u16) and voter ids (u32 each), learner count (u16) and learner ids
(u32 each), then the context bytes up to the end.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from parkd.raft.types import Membership

VERSION = 1
_HEAD = struct.Struct(">BBI")
_COUNT = struct.Struct(">H")
MAX_NODE_ID = (1 << 32) - 1


class ConfChangeOp(enum.IntEnum):
    ADD_LEARNER = 1
    PROMOTE = 2
    REMOVE = 3
    FORCE = 4


class ConfChangeDecodeError(ValueError):
    """CONFIG entry data that this codec cannot read."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    op: ConfChangeOp
    node_id: int
    context: bytes = b""
    voters: tuple[int, ...] = ()  # the configuration after the change (set by the leader)
    learners: tuple[int, ...] = ()

    def result(self) -> Membership:
        """The configuration this change produced (index left to the caller)."""
        return Membership(self.voters, self.learners)


def apply_change(
    change: ConfChange, current: Membership
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (voters, learners) that ``change`` makes of ``current`` (sorted ids).

    Does not validate: :meth:`RaftCore.propose_conf_change` refuses changes that
    make no sense before calling this.
    """
    voters, learners = set(current.voters), set(current.learners)
    node = change.node_id
    if change.op is ConfChangeOp.ADD_LEARNER:
        learners.add(node)
    elif change.op is ConfChangeOp.PROMOTE:
        learners.discard(node)
        voters.add(node)
    elif change.op is ConfChangeOp.REMOVE:
        voters.discard(node)
        learners.discard(node)
    elif change.op is ConfChangeOp.FORCE:
        voters, learners = {node}, set()
    else:  # pragma: no cover - the enum has no other members
        raise ValueError(f"unknown op {change.op!r}")
    return tuple(sorted(voters)), tuple(sorted(learners - voters))


def encode(change: ConfChange) -> bytes:
    if not 0 < change.node_id <= MAX_NODE_ID:
        raise ValueError(f"node id {change.node_id} out of range")
    parts = [_HEAD.pack(VERSION, int(change.op), change.node_id)]
    for ids in (change.voters, change.learners):
        parts.append(_COUNT.pack(len(ids)))
        parts.append(struct.pack(f">{len(ids)}I", *ids))
    parts.append(change.context)
    return b"".join(parts)


def decode(data: bytes) -> ConfChange:
    try:
        version, op, node_id = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise ConfChangeDecodeError(f"unknown CONFIG entry version {version}")
        pos = _HEAD.size
        lists = []
        for _ in range(2):
            (count,) = _COUNT.unpack_from(data, pos)
            pos += _COUNT.size
            lists.append(struct.unpack_from(f">{count}I", data, pos))
            pos += 4 * count
        return ConfChange(ConfChangeOp(op), node_id, bytes(data[pos:]), *lists)
    except (struct.error, ValueError) as exc:
        if isinstance(exc, ConfChangeDecodeError):
            raise
        raise ConfChangeDecodeError(f"bad CONFIG entry: {exc}") from exc
