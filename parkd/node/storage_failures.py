"""What the Ready loop does when storage fails: a full disk stalls it, anything else stops the node.

A full disk (``SQLITE_FULL``, ``ENOSPC``) rolled the failed transaction back,
so the Ready is kept and retried every :data:`RETRY_STALLED_S` seconds from the
step that failed (:class:`Stall`); the lines here say what happened and what
the operator does next.  The driver keeps the control flow.
"""

from __future__ import annotations

from dataclasses import dataclass

from parkd.db import is_disk_full
from parkd.raft.core import Ready

RETRY_STALLED_S = 1.0  # a Ready whose write found the disk full is tried again this often
STALL_REMINDER_S = 60.0  # while it still fails, one log line this often


@dataclass(slots=True)
class Stall:
    """The Ready whose write found the disk full, and the step to retry it from."""

    node_id: int
    ready: Ready
    applying: bool  # persisted and sent already: retry from the apply
    since: float
    reminded: float

    @property
    def step(self) -> str:
        return "apply committed entries" if self.applying else "write the Raft log"

    def began(self, log, error: Exception) -> None:
        log.critical(
            "disk full: node {node_id} could not {step} ({error}); nothing is lost: it keeps its last "
            "durable state, refuses new frames (nospace alarm) and retries every {retry:g}s until space "
            "is freed on its data dir's filesystem",
            node_id=self.node_id, step=self.step, error=one_line(error), retry=RETRY_STALLED_S,
        )  # fmt: skip

    def failed_again(self, log, applying: bool, now: float) -> None:
        """Another attempt found the disk full: remember its step, remind every :data:`STALL_REMINDER_S`."""
        self.applying = applying
        if now - self.reminded >= STALL_REMINDER_S:
            self.reminded = now
            log.warn("disk still full after {seconds:.0f}s: node {node_id} cannot {step}; retrying",
                     seconds=now - self.since, node_id=self.node_id, step=self.step)  # fmt: skip

    def ended(self, log, now: float) -> float:
        """An attempt went through: log it and return how long the node was stalled."""
        seconds = now - self.since
        log.info("disk writable again: node {node_id} resumes after {seconds:.1f}s",
                 node_id=self.node_id, seconds=seconds)  # fmt: skip
        return seconds


def log_storage_stop(log, node_id: int, error: Exception, synced: bool) -> None:
    """The critical line of a storage error that stops the node.

    ``synced=False``: the fsync of a committed write failed; nothing that
    needed that write left the node, and its state on disk is unknown.
    """
    if is_disk_full(error):
        todo = "free space on its data dir's filesystem, then start it again"
    else:
        todo = "find the cause in the error above (disk, permissions, a damaged file), then start it again"
    if synced:
        what = "its database keeps every transaction that completed, the failed one was rolled back"
    else:
        what = ("the last write may or may not be on disk (nothing that needed it left the node), and the "
                "kernel's log says more")  # fmt: skip
    log.critical(
        "storage failed, stopping node {node_id}: {error}; {what}: {todo}",
        node_id=node_id, error=one_line(error), what=what, todo=todo,
    )  # fmt: skip


def one_line(error: Exception) -> str:
    """The error's first line (SQLAlchemy appends a second one pointing at its web site)."""
    return str(error).strip().splitlines()[0]
