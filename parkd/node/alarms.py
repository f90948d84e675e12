"""The node's alarms (CONTRACT §10): named conditions under which it takes no new frames.

An alarm is raised with a reason and cleared by the part that watches its
condition (today one alarm, ``nospace``, watched by ``disk.py``); both log one
line with ``parkd_event`` ``alarm_raised`` / ``alarm_cleared`` (``name``,
``reason``).  While any alarm is raised the node is not ready (``/readyz``),
``/api/v1/cluster`` and ``parkd_alarm{name}`` show it, and the frame intake
answers new frames with ``Unavailable`` (:meth:`Alarms.frame_refusal`): the
camera keeps them in its outbox and tries again.  Reads, membership changes
and retention go on.
"""

from __future__ import annotations

from twisted.logger import Logger

NOSPACE = "nospace"
KNOWN = (NOSPACE,)  # every alarm a node can raise (parkd_alarm shows each, 0 or 1)


class Alarms:
    """The alarms raised on this node, with their reasons, and the frames they refused."""

    log = Logger()

    def __init__(self, node_id: int = 0):
        self.node_id = node_id
        self._raised: dict[str, str] = {}  # name -> reason, in the order raised
        self.refused: dict[str, int] = {name: 0 for name in KNOWN}  # frames refused, by alarm

    def raise_alarm(self, name: str, reason: str) -> None:
        """Raise ``name`` (again: nothing new is logged)."""
        if name in self._raised:
            return
        self._raised[name] = reason
        self.log.warn("alarm {name} raised on node {node_id}: {reason}; new frames are refused until it clears",
                      parkd_event="alarm_raised", name=name, node_id=self.node_id, reason=reason)  # fmt: skip

    def clear(self, name: str, reason: str) -> None:
        """Clear ``name`` if it is raised; ``reason`` says why it no longer holds."""
        if self._raised.pop(name, None) is None:
            return
        self.log.info("alarm {name} cleared on node {node_id}: {reason}",
                      parkd_event="alarm_cleared", name=name, node_id=self.node_id, reason=reason)  # fmt: skip

    def is_raised(self, name: str) -> bool:
        return name in self._raised

    def active(self) -> list[str]:
        """The names of the raised alarms, sorted."""
        return sorted(self._raised)

    def reason(self, name: str) -> str | None:
        return self._raised.get(name)

    def frame_refusal(self) -> str | None:
        """Why a new frame must be refused now (and count it), or None to take it."""
        for name, reason in self._raised.items():
            self.refused[name] = self.refused.get(name, 0) + 1
            return f"{name} alarm on node {self.node_id}: {reason}"
        return None
