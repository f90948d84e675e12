"""Cluster membership on a node: peer links, member events and admin operations.

The Raft core decides *who* is a member (single-server changes through CONFIG
log entries, learners promoted by the leader itself; ``parkd/raft/core.py``).
This module adds what the core leaves to the node:

- **The address book** (``addresses.py``): where each member listens, from the
  config file, CONFIG entries and snapshots.
- **Peer links**: whenever the configuration changes, the node connects to new
  voters and learners at once (before the messages of that Ready are sent) and
  closes the links of members that left once that change has committed (the
  leader keeps replicating to a member being removed until then, so it learns
  of its removal).
- **Events** (CONTRACT §8), when a CONFIG entry is applied (committed):
  ``member_added`` (a learner joined), ``member_promoted`` (it became a voter)
  and ``member_removed``.
- **Operations** for the admin API and ``parkctl``: :meth:`add_node`,
  :meth:`remove_node` and :meth:`transfer_leader` return Deferreds that fire
  when the change has committed (or the new leader is known) and fail with
  :class:`NotLeader` (ask the leader it names), :class:`ChangeRefused` (a
  reason for the operator), :class:`ChangeTimeout` or :class:`ChangeLost`.
  Deadlines are ``Deferred.addTimeout``.

It follows the driver's event stream (entries persisted and applied, the
configuration in effect, the leader, transfers, an installed snapshot) and
changes the core only through the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from parkd.config import Member
from parkd.node.addresses import AddressBook, decode_change, member_context, member_json
from parkd.node.events import EntriesApplied, EntriesPersisted, LeaderChanged, MembershipChanged, TransferEnded
from parkd.raft.confchange import ConfChange, ConfChangeOp
from parkd.raft.core import ConfChangeRefused, NotLeader, Role
from parkd.raft.types import Entry, EntryKind, Membership

COMMIT_TIMEOUT = 10.0  # seconds for a change to commit
PROMOTE_TIMEOUT = 60.0  # seconds for a new learner to catch up and be promoted
TRANSFER_TIMEOUT = 10.0  # seconds for a leadership transfer to finish

__all__ = [
    "ChangeLost",
    "ChangeRefused",
    "ChangeTimeout",
    "MembershipManager",
    "NotLeader",
]


class ChangeRefused(Exception):
    """The change is not made; ``reason`` says why (409 over HTTP, exit 1 in parkctl)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ChangeTimeout(Exception):
    """The change did not finish in time; it may still (504 over HTTP)."""


class ChangeLost(Exception):
    """Leadership changed before the change committed, and it was overwritten: retry."""


# ------------------------------------------------------------------ waiting for outcomes


@dataclass(eq=False)
class _IndexWait:
    """Fires once the entry at ``index`` is applied: with its configuration if of ``term``."""

    deferred: defer.Deferred
    index: int
    term: int


@dataclass(eq=False)
class _ConfigWait:
    """Fires once a committed configuration satisfies ``until``; fails once ``failing`` names a reason."""

    deferred: defer.Deferred
    until: Callable[[Membership], bool]
    failing: Callable[[Membership], str | None] | None = None


@dataclass(eq=False)
class _TransferWait:
    """Fires with ``target`` once it is known as the leader (a transfer from this leader)."""

    deferred: defer.Deferred
    target: int
    for_leader: bool = True  # False: fire once handed over (the target campaigns), not once it leads
    handed_over: bool = False


class MembershipManager:
    """The node's view of membership (address book, links, events) and its admin operations.

    ``driver``: the node's RaftDriver (the core's state, its inputs and event
    stream); ``peers``: a PeerService (or None); ``file_members``: the config
    file's members; ``entries``: the persisted log (``PersistedState.entries``)
    whose CONFIG entries are read for addresses.
    """

    log = Logger()

    def __init__(self, driver, peers, file_members=(), clock=None, entries=()):
        self.node_id = driver.node_id
        self.driver = driver
        self.peers = peers
        self.clock = clock if clock is not None else driver.clock
        self.book = AddressBook(file_members, entries)
        self._index_waits: list[_IndexWait] = []
        self._config_waits: list[_ConfigWait] = []
        self._transfers: list[_TransferWait] = []
        self._removed_announced = False
        driver.subscribe(self._entries_persisted, EntriesPersisted)
        driver.subscribe(self._membership_changed, MembershipChanged)
        driver.subscribe(self._committed, EntriesApplied)
        driver.subscribe(self._transfer_ended, TransferEnded)
        driver.subscribe(self._leader_changed, LeaderChanged)
        self._sync_links()

    # -- the address book

    def address(self, node_id: int) -> Member | None:
        """The addresses of ``node_id`` if known (the log's, else the config file's)."""
        return self.book.get(node_id)

    def members(self) -> list[dict]:
        """The core's members in id order, for ``/api/v1/cluster``.

        ``{"id", "raft", "client", "http", "match_index", "membership"}``, where
        ``membership`` is "voter" or "learner" and addresses are None if unknown.
        """
        membership = self.driver.membership
        matches = self.driver.match_indexes
        out = []
        for node_id in sorted({*membership.voters, *membership.learners}):
            member = self.address(node_id)
            doc = member_json(member) if member else {"id": node_id, "raft": None, "client": None, "http": None}
            doc["match_index"] = matches.get(node_id)
            doc["membership"] = "voter" if node_id in membership.voters else "learner"
            out.append(doc)
        return out

    def members_for_snapshot(self) -> list[dict]:
        """The whole address book as JSON-able dicts, for a snapshot."""
        return self.book.to_snapshot()

    def restore_members(self, members) -> None:
        """Merge the address book of an installed (or loaded) snapshot."""
        self.book.restore(members)
        self._sync_links()

    # -- driver events

    def _entries_persisted(self, event: EntriesPersisted) -> None:
        """New entries are durable (before this Ready's messages go out): learn addresses."""
        if self.book.read_entries(event.entries):
            self._sync_links()

    def _membership_changed(self, _event: MembershipChanged) -> None:
        """The configuration in effect changed (on append): connect to new members now."""
        self._sync_links()

    def _sync_links(self) -> None:
        """One link per member; members that left lose theirs once their removal committed."""
        if self.peers is None:
            return
        membership = self.driver.membership
        wanted = {*membership.voters, *membership.learners} - {self.node_id}
        for node_id in sorted(wanted):
            member = self.address(node_id)
            if member is None:
                self.log.warn("no address known for member {peer_id}", peer_id=node_id)
                continue
            self.peers.add_peer(member)
        if membership.index <= self.driver.commit_index and wanted:
            for node_id in [p for p in self.peers.links if p not in wanted]:
                self.peers.remove_peer(node_id)

    def _committed(self, event: EntriesApplied) -> None:
        """Entries were applied: log membership events, settle waiting operations."""
        config_seen = False
        for entry in event.entries:
            resulting = None
            if entry.kind is EntryKind.CONFIG:
                config_seen = True
                resulting = self._config_applied(entry)
            for wait in [w for w in self._index_waits if w.index == entry.index]:
                if entry.term == wait.term and resulting is not None:
                    wait.deferred.callback(resulting)
                else:
                    wait.deferred.errback(ChangeLost(
                        f"leadership changed before the change at index {entry.index} committed; "
                        "it was not made, try again"))  # fmt: skip
        if config_seen:
            self._sync_links()

    def _config_applied(self, entry: Entry) -> Membership | None:
        """Log the event of a committed CONFIG entry; the configuration it made."""
        change = decode_change(entry)
        if change is None:
            return None
        node = change.node_id
        member = self.address(node)
        addresses = member_json(member) if member else {"raft": None, "client": None, "http": None}
        fields = {
            "node_id": self.node_id,
            "member_id": node,
            "raft": addresses["raft"],
            "client": addresses["client"],
            "http": addresses["http"],
            "index": entry.index,
            "voters": list(change.voters),
            "learners": list(change.learners),
        }
        if change.op is ConfChangeOp.ADD_LEARNER:
            self.log.info("member {member_id} added as a learner at index {index} (raft {raft}); "
                          "voters {voters}, learners {learners}",
                          parkd_event="member_added", role="learner", **fields)  # fmt: skip
        elif change.op is ConfChangeOp.PROMOTE:
            self.log.info("member {member_id} promoted to voter at index {index}; voters {voters}, learners {learners}",
                          parkd_event="member_promoted", role="voter", **fields)  # fmt: skip
        elif change.op is ConfChangeOp.REMOVE:
            self.log.info("member {member_id} removed at index {index}; voters {voters}, learners {learners}",
                          parkd_event="member_removed", **fields)  # fmt: skip
            if node == self.node_id and not self._removed_announced:
                self._removed_announced = True
                self.log.warn("node {node_id} was removed from the cluster: it no longer votes or receives the "
                              "log; stop it (its data directory can be deleted)", node_id=self.node_id)  # fmt: skip
        resulting = Membership(tuple(change.voters), tuple(change.learners), entry.index)
        for wait in list(self._config_waits):
            if wait.until(resulting):
                wait.deferred.callback(resulting)
            elif wait.failing is not None and (reason := wait.failing(resulting)):
                wait.deferred.errback(ChangeRefused(reason))
        return resulting

    # -- operations

    def add_node(self, member: Member, wait_voter: bool = False, timeout: float | None = None) -> defer.Deferred:
        """Add ``member`` as a learner; fires with the committed Membership.

        With ``wait_voter`` it fires only once the leader has promoted it (it
        must be running and have caught up); ``timeout`` bounds the whole wait.
        """
        try:
            self._check_addresses(member)
            index = self._propose(ConfChange(ConfChangeOp.ADD_LEARNER, member.id, member_context(member)))
        except Exception as e:  # NotLeader, ChangeRefused
            return defer.fail(e)
        if timeout is None:
            timeout = PROMOTE_TIMEOUT if wait_voter else COMMIT_TIMEOUT
        self.book.put(member, index)
        deadline = self.clock.seconds() + timeout
        added = self._wait_index(index, timeout, f"adding node {member.id}")
        if not wait_voter:
            return added

        def promoted(membership: Membership):
            if member.id in membership.voters:
                return membership
            left = max(0.0, deadline - self.clock.seconds())
            return self._wait_config(
                lambda m: member.id in m.voters,
                left,
                f"node {member.id} was added as a learner but has not caught up and been promoted to voter "
                f"(is it running with --join?); the leader promotes it once it has",
                failing=lambda m: None if member.id in m else f"node {member.id} was removed before it was promoted",
            )

        return added.addCallback(promoted)

    def remove_node(self, node_id: int, timeout: float = COMMIT_TIMEOUT) -> defer.Deferred:
        """Remove a voter or learner; fires with the committed Membership.

        Refused if the remaining voters that this leader can reach are not a
        majority of the new configuration (the cluster would stop).  Removing
        the leader itself: it steps down once the change has committed.
        """
        try:
            self._check_removal(node_id)
            member = self.address(node_id)
            context = member_context(member) if member else b""
            index = self._propose(ConfChange(ConfChangeOp.REMOVE, node_id, context))
        except Exception as e:
            return defer.fail(e)
        return self._wait_index(index, timeout, f"removing node {node_id}")

    def transfer_leader(
        self, target: int | None = None, timeout: float = TRANSFER_TIMEOUT, *, wait_for_leader: bool = True
    ) -> defer.Deferred:
        """Hand leadership to ``target`` (None: the most up-to-date voter).

        Fires with the new leader's id once this node knows it (or, without
        ``wait_for_leader``, once this leader stepped down for the target's
        election: a stopping node need not wait for the result); fails with
        ChangeRefused if the transfer was abandoned or cancelled, or another
        node won.  This leader's own id cancels a pending transfer (§3.10) and
        fires at once with that id: the leader stays.
        """
        driver = self.driver
        if driver.role is not Role.LEADER:
            return defer.fail(NotLeader(driver.leader_id))
        if target == self.node_id:
            if driver.transferee is not None:
                driver.transfer_leadership(self.node_id)
            return defer.succeed(self.node_id)
        if target is not None and target not in driver.membership.voters:
            what = "a learner" if target in driver.membership.learners else "not a member"
            return defer.fail(ChangeRefused(f"node {target} is {what}; leadership can only go to a voter"))
        try:
            target = self.driver.transfer_leadership(target)
        except NotLeader as e:
            return defer.fail(e)
        except ValueError as e:
            return defer.fail(ChangeRefused(str(e)))
        wait = _TransferWait(defer.Deferred(), target, wait_for_leader)
        self._transfers.append(wait)
        return self._deadline(
            wait.deferred, timeout, self._transfers, wait,
            f"leadership did not reach node {target} within {timeout:g} s",
        )  # fmt: skip

    # -- operation helpers

    def _propose(self, change: ConfChange) -> int:
        try:
            return self.driver.propose_conf_change(change)
        except ConfChangeRefused as e:
            raise ChangeRefused(e.reason) from None

    def _check_addresses(self, member: Member) -> None:
        membership = self.driver.membership
        if self.driver.role is not Role.LEADER:
            raise NotLeader(self.driver.leader_id)
        if member.id in membership:
            raise ChangeRefused(f"node {member.id} is already a member")
        for other in sorted({*membership.voters, *membership.learners}):
            known = self.address(other)
            if known is None:
                continue
            for kind in ("raft", "client", "http"):
                if getattr(known, kind) == getattr(member, kind):
                    raise ChangeRefused(f"{kind} address {getattr(member, kind)} is node {other}'s")

    def _check_removal(self, node_id: int) -> None:
        driver = self.driver
        if driver.role is not Role.LEADER:
            raise NotLeader(driver.leader_id)
        membership = driver.membership
        if node_id not in membership:
            known = ", ".join(str(i) for i in sorted({*membership.voters, *membership.learners}))
            raise ChangeRefused(f"node {node_id} is not a member (members: {known})")
        if node_id not in membership.voters:
            return  # a learner: the quorum does not change
        remaining = [v for v in membership.voters if v != node_id]
        if not remaining:
            raise ChangeRefused(f"node {node_id} is the last voter; removing it would leave no cluster")
        reachable = [v for v in remaining if v == self.node_id or self.peers is None or self.peers.connected(v)]
        quorum = len(remaining) // 2 + 1
        if len(reachable) < quorum:
            raise ChangeRefused(
                f"removing node {node_id} would leave voters {_ids(remaining)} of which only "
                f"{_ids(reachable) or 'none'} are reachable from the leader; {quorum} are needed for a majority"
            )

    def _wait_index(self, index: int, timeout: float, what: str) -> defer.Deferred:
        wait = _IndexWait(defer.Deferred(), index, self.driver.term)
        self._index_waits.append(wait)
        message = f"{what} (index {index}) did not commit within {timeout:g} s; it may still commit (see parkctl status)"
        return self._deadline(wait.deferred, timeout, self._index_waits, wait, message)

    def _wait_config(self, until, timeout: float, message: str, failing=None) -> defer.Deferred:
        wait = _ConfigWait(defer.Deferred(), until, failing)
        self._config_waits.append(wait)
        return self._deadline(wait.deferred, timeout, self._config_waits, wait, message)

    def _deadline(self, deferred: defer.Deferred, timeout: float, waits: list, wait, message: str) -> defer.Deferred:
        """``deferred`` fails with ChangeTimeout(message) after ``timeout``; ``wait`` leaves ``waits`` once fired."""
        deferred.addTimeout(timeout, self.clock, onTimeoutCancel=lambda _, __: Failure(ChangeTimeout(message)))

        def done(result):
            waits.remove(wait)
            return result

        return deferred.addBoth(done)

    def _transfer_ended(self, event: TransferEnded) -> None:
        result = event.result
        for wait in [w for w in self._transfers if w.target == result.target and not w.handed_over]:
            if result.succeeded:
                wait.handed_over = True
                if not wait.for_leader or self.driver.leader_id == wait.target:
                    wait.deferred.callback(wait.target)
            elif result.cancelled:
                wait.deferred.errback(ChangeRefused(f"leadership transfer to node {result.target} was cancelled"))
            else:
                wait.deferred.errback(ChangeRefused(
                    f"leadership transfer to node {result.target} was abandoned (it did not catch up and win "
                    "within an election timeout, or another election intervened)"))  # fmt: skip

    def _leader_changed(self, event: LeaderChanged) -> None:
        if event.leader_id is None:
            return
        for wait in list(self._transfers):
            if event.leader_id == wait.target:
                wait.deferred.callback(wait.target)
            elif event.leader_id != self.node_id:
                wait.deferred.errback(ChangeRefused(
                    f"node {event.leader_id} became leader instead of node {wait.target}"))  # fmt: skip


def _ids(ids) -> str:
    return ", ".join(str(i) for i in ids)
