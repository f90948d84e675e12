"""The address book of a node: where every member's raft, client and HTTP ports are.

It starts with the config file's ``[[node]]`` tables; every CONFIG entry that
adds a node carries that node's addresses in its context (JSON ``{"id", "raft",
"client", "http"}``), and it wins over the file ("config in the log wins").
Each address is kept with the log index it came from (0: the file), so a later
source never loses to an older one whatever order they are read in (file,
snapshot, log at start-up; entries as they are persisted; a snapshot installed
later).  Snapshots carry the book, so members added through a log that was
compacted since are still known after a restart.
"""

from __future__ import annotations

import json

from twisted.logger import Logger

from parkd.config import ConfigError, Member, parse_address, parse_int
from parkd.raft import confchange
from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.types import Entry, EntryKind


def member_json(member: Member) -> dict:
    return {"id": member.id, "raft": str(member.raft), "client": str(member.client), "http": str(member.http)}


def member_from_json(doc, what: str = "member") -> Member:
    """A Member from ``{"id", "raft", "client", "http"}``; ConfigError naming the field."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{what}: expected an object with id, raft, client and http")
    missing = [k for k in ("id", "raft", "client", "http") if k not in doc]
    if missing:
        raise ConfigError(f"{what}.{missing[0]}: missing")
    node_id = doc["id"]
    if isinstance(node_id, bool) or not isinstance(node_id, int):
        raise ConfigError(f"{what}.id: expected a whole number, got {node_id!r}")
    if not 0 < node_id <= confchange.MAX_NODE_ID:
        raise ConfigError(f"{what}.id: must be in 1..{confchange.MAX_NODE_ID}, got {node_id}")
    return Member(
        id=parse_int(node_id, f"{what}.id"),
        raft=parse_address(doc["raft"], f"{what}.raft"),
        client=parse_address(doc["client"], f"{what}.client"),
        http=parse_address(doc["http"], f"{what}.http"),
    )


def member_context(member: Member) -> bytes:
    """The context of the CONFIG entry that adds ``member``: its addresses as JSON."""
    return json.dumps(member_json(member), separators=(",", ":")).encode()


class AddressBook:
    """``{id: Member}`` with the log index each address came from."""

    log = Logger()

    def __init__(self, file_members=(), entries=()):
        self.members: dict[int, Member] = {}
        self.sources: dict[int, int] = {}  # id -> log index the address came from
        for member in file_members:
            self.put(member, 0)
        self.read_entries(entries)

    def get(self, node_id: int) -> Member | None:
        return self.members.get(node_id)

    def put(self, member: Member, source: int) -> bool:
        """Record ``member``'s addresses from log index ``source``; True if that changed them."""
        if self.sources.get(member.id, -1) > source:
            return False
        changed = self.members.get(member.id) != member
        self.members[member.id] = member
        self.sources[member.id] = source
        return changed

    def to_snapshot(self) -> list[dict]:
        """The whole book as JSON-able dicts (with the index each address came from)."""
        return [
            {**member_json(member), "index": self.sources.get(node_id, 0)}
            for node_id, member in sorted(self.members.items())
        ]

    def restore(self, members) -> None:
        """Merge the book of a snapshot (:meth:`to_snapshot`'s form); bad members are skipped."""
        for i, doc in enumerate(members or ()):
            try:
                member = member_from_json(doc, f"snapshot member {i}")
                source = doc.get("index", 0)
                source = source if isinstance(source, int) and not isinstance(source, bool) else 0
            except (ConfigError, AttributeError) as e:
                self.log.warn("ignoring a snapshot member: {error}", error=str(e))
                continue
            self.put(member, source)

    def read_entries(self, entries) -> bool:
        """Learn the addresses that CONFIG entries carry; True if any changed."""
        changed = False
        for entry in entries:
            if entry.kind is not EntryKind.CONFIG:
                continue
            change = decode_change(entry)
            if change is None or change.op is not ConfChangeOp.ADD_LEARNER or not change.context:
                continue
            try:
                member = member_from_json(json.loads(change.context), f"CONFIG entry {entry.index}")
            except (ValueError, ConfigError) as e:
                self.log.warn("CONFIG entry {index}: no usable addresses ({error})", index=entry.index, error=str(e))
                continue
            if member.id != change.node_id:
                self.log.warn("CONFIG entry {index}: addresses of node {other} for node {node}",
                              index=entry.index, other=member.id, node=change.node_id)  # fmt: skip
                continue
            changed |= self.put(member, entry.index)
        return changed


def decode_change(entry: Entry) -> ConfChange | None:
    """The change a CONFIG entry holds, or None (logged) if it cannot be read."""
    try:
        return confchange.decode(entry.data)
    except confchange.ConfChangeDecodeError as e:
        AddressBook.log.warn("CONFIG entry {index} unreadable: {error}", index=entry.index, error=str(e))
        return None
