"""The camera registry on a node: which cameras are disabled, its events and operations.

An operator disables or enables a camera through the Raft log (CONTRACT §9 "Camera
registry"): the leader proposes a registry entry (``parkd/parking/codec.py``) and
every node's parking state applies it at the same log position, refusing the
camera's frames from there on (``parkd/parking/batch.py``).  This part adds what
the state machine leaves to the node:

- **The disabled set**, read from the state once and kept current from the
  applied entries, so that the client port refuses a disabled camera's ``Hello``
  and frames without a query (:meth:`is_disabled`), and closes its connections
  when the entry applies (:meth:`when_disabled`).
- **Events** (CONTRACT §10): ``camera_disabled`` and ``camera_enabled`` (camera_id,
  index) on every node when a registry entry is applied.
- **Operations** for the admin API and ``parkctl camera disable|enable``:
  :meth:`set_enabled` proposes the entry (leader only) and fires once it is
  applied on this node, like a membership change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from parkd.node.events import EntriesApplied, SnapshotInstalled
from parkd.node.membership import COMMIT_TIMEOUT, ChangeLost, ChangeTimeout
from parkd.parking.codec import CodecError, RegistryCommand, decode_registry, encode_registry, is_registry
from parkd.raft.core import NotLeader, Role
from parkd.raft.types import EntryKind


class UnknownCamera(Exception):
    """The camera has sent no frame to this cluster (404 over HTTP)."""


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A registry entry applied at ``index``: camera ``camera_id`` is now ``enabled`` or not."""

    camera_id: int
    enabled: bool
    index: int


@dataclass(eq=False)
class _Wait:
    deferred: defer.Deferred
    index: int
    term: int


class CameraRegistry:
    """The node's view of the camera registry and its admin operation.

    ``driver``: the RaftDriver (role, term, proposals, event stream); ``state``:
    the ParkingState (the registry as applied, the known cameras); ``clock``:
    for deadlines.
    """

    log = Logger()

    def __init__(self, driver, state, clock):
        self.driver = driver
        self.state = state
        self.clock = clock
        self._disabled: set[int] | None = None  # read from the state when first needed
        self._waits: list[_Wait] = []
        self._listeners: list[Callable[[int], None]] = []
        driver.subscribe(self._applied, EntriesApplied)
        driver.subscribe(self._snapshot_installed, SnapshotInstalled)

    def is_disabled(self, camera_id: int) -> bool:
        if self._disabled is None:
            self._disabled = self.state.disabled_cameras()
        return camera_id in self._disabled

    def when_disabled(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(camera_id)`` whenever an entry disabling a camera is applied here."""
        self._listeners.append(listener)

    # -- the operation

    def set_enabled(self, camera_id: int, enabled: bool, timeout: float = COMMIT_TIMEOUT) -> defer.Deferred:
        """Disable or enable ``camera_id`` through the log; fires with the RegistryChange once applied here.

        Fails with NotLeader (ask the leader it names), UnknownCamera (it never
        sent a frame: there is nothing to pause), ChangeLost (leadership changed
        before the entry committed: it was not made) or ChangeTimeout.
        """
        driver = self.driver
        if driver.role is not Role.LEADER:
            return defer.fail(NotLeader(driver.leader_id))
        if self.state.camera(camera_id) is None:
            return defer.fail(UnknownCamera(f"camera {camera_id} has sent no frame to this cluster"))
        try:
            driver.propose(encode_registry(RegistryCommand(camera_id, enabled)))
        except NotLeader as e:
            return defer.fail(e)
        wait = _Wait(defer.Deferred(), driver.last_index, driver.term)
        self._waits.append(wait)
        what = "enabling" if enabled else "disabling"
        message = (
            f"{what} camera {camera_id} (index {wait.index}) did not commit within {timeout:g} s; "
            "it may still (see parkctl camera list)"
        )
        wait.deferred.addTimeout(timeout, self.clock, onTimeoutCancel=lambda _, __: Failure(ChangeTimeout(message)))

        def done(result):
            self._waits.remove(wait)
            return result

        return wait.deferred.addBoth(done)

    # -- driver events

    def _applied(self, event: EntriesApplied) -> None:
        for entry in event.entries:
            change = _change(entry)
            if change is not None:
                self._changed(change)
            for wait in [w for w in self._waits if w.index == entry.index]:
                if change is not None and entry.term == wait.term:
                    wait.deferred.callback(change)
                else:
                    wait.deferred.errback(ChangeLost(
                        f"leadership changed before the registry change at index {entry.index} committed; "
                        "it was not made, try again"))  # fmt: skip

    def _changed(self, change: RegistryChange) -> None:
        fields = {"camera_id": change.camera_id, "index": change.index, "node_id": self.driver.node_id}
        if change.enabled:
            self.log.info("camera {camera_id} enabled at index {index}", parkd_event="camera_enabled", **fields)
        else:
            self.log.info("camera {camera_id} disabled at index {index}", parkd_event="camera_disabled", **fields)
        if self._disabled is not None:
            (self._disabled.discard if change.enabled else self._disabled.add)(change.camera_id)
        if not change.enabled:
            for listener in self._listeners:
                listener(change.camera_id)

    def _snapshot_installed(self, _event: SnapshotInstalled) -> None:
        """The state was replaced wholesale: read the registry again when needed."""
        self._disabled = None


def _change(entry) -> RegistryChange | None:
    if entry.kind is not EntryKind.NORMAL or not is_registry(entry.data):
        return None
    try:
        command = decode_registry(entry.data)
    except CodecError:
        return None  # the state machine rejected it like any undecodable entry
    return RegistryChange(command.camera_id, command.enabled, entry.index)
