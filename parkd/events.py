"""Per-frame events (CONTRACT §8: ``frame_applied``, ``frame_acked``), written cheaply.

One event per frame on every node and camera is the hottest path there is:
through the twisted.logger publisher, text formatting and ``eventAsJSON`` cost
half of a leader's CPU at saturation (py-spy).  These events are therefore
written straight to the ``--log-json`` file as twisted.logger JSON records
(``eventsFromJSONLogFile`` reads them like any other event); the text log gets
a periodic summary instead.
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
        self.sink = None  # callable taking one event dict
        self.emitted = 0

    def emit(self, namespace: str, log_format: str, **fields) -> None:
        self.emitted += 1
        if self.sink is not None:
            self.sink(
                {
                    "log_namespace": namespace,
                    "log_format": log_format,
                    "log_level": _INFO,
                    "log_time": time.time(),
                    **fields,
                }
            )


def json_file_sink(file):
    """Write events as twisted.logger's jsonFileLogObserver does (record separator, JSON, newline)."""

    def write(event: dict) -> None:
        file.write("\x1e" + json.dumps(event) + "\n")

    return write


FRAME_EVENTS = FrameEvents()
