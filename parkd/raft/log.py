"""The in-memory Raft log, its commit point and how much of it storage holds.

The core keeps the whole log in memory (loaded from ``PersistedState`` at start-up)
and never reads storage again: storage only receives the entries this class hands
out through :meth:`RaftLog.take_unsent`.  Three positions matter:

- ``committed``: known to be stored on a majority (§5.3);
- ``stable``: the last index known durable here, which is all a leader may count
  for itself when it counts replicas (dissertation §10.2.1);
- the first index not yet handed to storage; a truncation moves it back so storage
  sees the replacement entries and deletes its conflicting suffix.

Snapshots (Raft §7): the log may start after index 1.  ``first_index - 1`` is the
*offset*, the last discarded position, whose term is still known; positions below
it are covered by a snapshot and unknown here (``term_at`` returns None).  The
node keeps a trailing margin of applied entries when it compacts, so slightly
lagging followers still catch up from the log.

Terms never decrease along a log, so term searches are binary searches.
"""

from __future__ import annotations

import bisect
from operator import attrgetter

from parkd.raft.types import Entry, SnapshotMeta

_term_of = attrgetter("term")


class LogConflictBelowCommit(AssertionError):
    """A leader asked to overwrite a committed entry: safety is already broken."""


class RaftLog:
    __slots__ = (
        "_offset",
        "_offset_term",
        "_entries",
        "committed",
        "stable",
        "_unsent",
        "written_from",
    )

    def __init__(self, entries: tuple[Entry, ...], snapshot: SnapshotMeta, committed: int):
        """Load a log: ``entries`` follow ``snapshot`` or overlap it (a trailing margin).

        When the stored entries start at or below the snapshot index, the first of
        them becomes the offset (the term of the entry before it is unknown).
        """
        self._offset = snapshot.index  # index of the entry just before entries[0]
        self._offset_term = snapshot.term
        entries = list(entries)
        if entries and entries[0].index <= snapshot.index:
            first = entries.pop(0)
            self._offset, self._offset_term = first.index, first.term
            at = snapshot.index - first.index - 1  # entries[at] is the snapshot's entry
            if at >= len(entries):
                raise ValueError(f"the entries end below the snapshot at {snapshot.index}")
            kept_term = first.term if at < 0 else entries[at].term
            if kept_term != snapshot.term:
                raise ValueError(f"entry {snapshot.index} is not of the snapshot's term")
        self._entries = entries
        for pos, entry in enumerate(self._entries):
            if entry.index != self._offset + 1 + pos:
                raise ValueError(f"log not contiguous at index {entry.index}")
        if not self._offset <= committed <= self.last_index:
            raise ValueError(f"commit {committed} outside the log")
        self.committed = committed
        self.stable = self.last_index
        self._unsent = self.last_index + 1
        self.written_from = 0  # set by try_append: where it (re)wrote the log, or 0

    @property
    def first_index(self) -> int:
        """The first index held; the term of ``first_index - 1`` is still known."""
        return self._offset + 1

    @property
    def last_index(self) -> int:
        return self._offset + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._offset_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if this log has no such entry."""
        pos = index - self._offset - 1
        if pos < 0:
            return self._offset_term if pos == -1 else None
        if pos < len(self._entries):
            return self._entries[pos].term
        return None

    def slice(self, lo: int, hi: int) -> tuple[Entry, ...]:
        """Entries with ``lo <= index < hi`` (those still held)."""
        base = self._offset + 1
        if lo < base:
            lo = base
        if hi <= lo:
            return ()
        return tuple(self._entries[lo - base : hi - base])

    def batch(self, lo: int, max_count: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries from ``lo`` for one AppendEntries; always at least one if any exist."""
        start = lo - self._offset - 1
        chunk = self._entries[start : start + max_count]
        size = 0
        for n, entry in enumerate(chunk):
            size += len(entry.data)
            if size > max_bytes and n:
                return tuple(chunk[:n])
        return tuple(chunk)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: is a log ending at (last_index, last_term) at least as up to date?"""
        mine = self.last_term
        return last_term > mine or (last_term == mine and last_index >= self.last_index)

    def first_index_of_term(self, term: int, at: int) -> int:
        """The first index of the run of ``term`` that contains index ``at``."""
        hi = at - self._offset
        pos = bisect.bisect_left(self._entries, term, hi=hi, key=_term_of)
        return self._offset + 1 + pos

    def last_index_of_term(self, term: int) -> int:
        """The last index holding ``term``, or 0 if this log has none."""
        pos = bisect.bisect_right(self._entries, term, key=_term_of) - 1
        if pos >= 0 and self._entries[pos].term == term:
            return self._offset + 1 + pos
        return self._offset if self._offset_term == term else 0

    def append(self, entries: list[Entry]) -> None:
        """A leader adds new entries at the end (it never truncates its own log)."""
        self._entries.extend(entries)

    def try_append(
        self, prev_index: int, prev_term: int, entries: tuple[Entry, ...], leader_commit: int
    ) -> int | None:
        """§5.3 on a follower: the last index now known to match the leader, or None.

        Truncates only at a real conflict: entries that are already present are left
        alone, so a duplicated or reordered AppendEntries never removes later
        entries.  The commit point follows the leader only up to the last entry
        this message verified.

        ``written_from`` is set to the first index this call (re)wrote, or 0.

        Below the offset nothing can be checked, but it is all committed (a
        snapshot covers it) and so matches any current leader: the entries there
        are skipped, and a message that ends below the offset verifies the
        commit index (etcd-io/raft answers such appends the same way).
        """
        self.written_from = 0
        if prev_index < self._offset:
            skip = self._offset - prev_index  # entries[skip - 1] is at the offset
            if len(entries) < skip:
                return self.committed
            if entries[skip - 1].term != self._offset_term:
                raise LogConflictBelowCommit(
                    f"entry {self._offset} of term {entries[skip - 1].term} conflicts "
                    f"with the snapshot's term {self._offset_term}"
                )
            prev_index, prev_term, entries = self._offset, self._offset_term, entries[skip:]
        if self.term_at(prev_index) != prev_term:
            return None
        last_new = prev_index + len(entries)
        # Log matching (§5.3): if the last entry matches, every entry before it does.
        if entries and self.term_at(last_new) != entries[-1].term:
            self._merge(entries)
        self.committed = max(self.committed, min(leader_commit, last_new))
        return last_new

    def _merge(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        skip = 0
        for entry in entries:
            if self.term_at(entry.index) != entry.term:
                break
            skip += 1
        at = first + skip
        if at <= self.committed:
            raise LogConflictBelowCommit(f"conflict at {at} <= commit {self.committed}")
        del self._entries[at - self._offset - 1 :]
        self._entries.extend(entries[skip:])
        self._unsent = min(self._unsent, at)
        self.stable = min(self.stable, at - 1)
        self.written_from = at

    def compact(self, upto: int) -> None:
        """Forget the entries up to ``upto`` (a snapshot covers them); keep its term."""
        if upto <= self._offset:
            return
        if upto > min(self.committed, self.stable, self._unsent - 1):
            raise ValueError(f"cannot compact to {upto}: not yet committed and durable here")
        term = self.term_at(upto)
        del self._entries[: upto - self._offset]
        self._offset, self._offset_term = upto, term

    def restore(self, index: int, term: int) -> bool:
        """Make the log start after a snapshot at (index, term); Raft §7.

        If the entry at ``index`` has ``term``, the entries after it are kept
        (returns True) but handed to storage again, since storage replaced its log
        by the snapshot; otherwise the whole log is dropped (returns False).
        """
        kept = self.term_at(index) == term and index >= self._offset
        if kept:
            del self._entries[: index - self._offset]
        else:
            self._entries.clear()
        self._offset, self._offset_term = index, term
        self.committed = max(self.committed, index)
        self.stable = index
        self._unsent = index + 1
        return kept

    def has_unsent(self) -> bool:
        return self._unsent <= self.last_index

    def take_unsent(self) -> tuple[Entry, ...]:
        """The entries storage has not been given yet (it truncates at the first one)."""
        entries = self.slice(self._unsent, self.last_index + 1)
        self._unsent = self.last_index + 1
        return entries

    def stable_to(self, index: int, term: int) -> None:
        """Storage has made entries up to (index, term) durable.

        Ignored if that entry has since been replaced: the replacement reaches
        storage in a later Ready, which then moves ``stable`` forward.
        """
        if index > self.stable and self.term_at(index) == term:
            self.stable = index
