"""Per-frame events (CONTRACT §8: ``frame_applied``, ``frame_acked``), written cheaply.

One event per frame on every node and camera is the hottest path there is:
through the twisted.logger publisher, text formatting and ``eventAsJSON`` cost
half of a leader's CPU at saturation (py-spy).  These events are therefore
written straight to the ``--log-json`` file as twisted.logger JSON records
(``eventsFromJSONLogFile`` reads them like any other event); the text log gets
a periodic summary instead.  A node's events of one applied batch go out in one
write: one system call per batch rather than per frame, and still written before
the batch's acks are sent, so a kill -9 loses none that a camera saw acked.
"""

from __future__ import annotations

import json
import time

from twisted.logger import LogLevel, eventAsJSON

# twisted.logger's JSON form of LogLevel.info, so readers get a LogLevel back.
_INFO = json.loads(eventAsJSON({"log_level": LogLevel.info}))["log_level"]


class FrameEvents:
    """Where per-frame events go: a JSON log file, a test's list, or nowhere."""

    def __init__(self):
        self.sink = None  # callable taking the fields all events share and a list of each one's own
        self.emitted = 0

    def emit(self, namespace: str, log_format: str, **fields) -> None:
        self.emit_all(namespace, log_format, [fields])

    def emit_all(self, namespace: str, log_format: str, records: list[dict]) -> None:
        """One event per dict of ``records`` (its own fields), all with one format and time."""
        self.emitted += len(records)
        if self.sink is not None and records:
            common = {"log_namespace": namespace, "log_format": log_format, "log_level": _INFO, "log_time": time.time()}
            self.sink(common, records)


def json_file_sink(file):
    """Write events as twisted.logger's jsonFileLogObserver does (record separator, JSON, newline), in one write.

    The shared fields are serialised once: each line is their JSON object, left
    open, followed by the event's own fields.
    """

    def write(common: dict, records: list[dict]) -> None:
        head = "\x1e" + json.dumps(common)[:-1]
        file.write("".join(f"{head}, {json.dumps(fields)[1:]}\n" if fields else f"{head}}}\n" for fields in records))

    return write


def list_sink(events: list):
    """Append each event, whole, to ``events`` (tests)."""

    def append(common: dict, records: list[dict]) -> None:
        events.extend({**common, **fields} for fields in records)

    return append


FRAME_EVENTS = FrameEvents()
