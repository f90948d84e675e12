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
from json.encoder import encode_basestring_ascii

from twisted.logger import LogLevel, eventAsJSON

# twisted.logger's JSON form of LogLevel.info, so readers get a LogLevel back.
_INFO = json.loads(eventAsJSON({"log_level": LogLevel.info}))["log_level"]


class FrameEvents:
    """Where per-frame events go: a JSON log file, a test's list, or nowhere."""

    def __init__(self):
        self.sink = None  # callable taking the fields all events share, the field names and each event's values
        self.emitted = 0

    def emit(self, namespace: str, log_format: str, **fields) -> None:
        if self.sink is None:
            self.emitted += 1
        else:
            self.emit_rows(namespace, log_format, tuple(fields), [tuple(fields.values())])

    def emit_rows(self, namespace: str, log_format: str, names: tuple[str, ...], rows: list[tuple]) -> None:
        """One event per tuple of ``rows`` (its values of the fields ``names``), all with one format and time."""
        self.emitted += len(rows)
        if self.sink is not None and rows:
            common = {"log_namespace": namespace, "log_format": log_format, "log_level": _INFO, "log_time": time.time()}
            self.sink(common, names, rows)


def json_file_sink(file):
    """Write events as twisted.logger's jsonFileLogObserver does (record separator, JSON, newline), in one write.

    The shared fields are serialised once: each line is their JSON object, left
    open, followed by the event's own fields.  Those are filled into a template
    made once per tuple of names, integers and strings encoded directly: about
    1 µs a line, where a ``json.dumps`` of each event's dict took 3.5 µs (one
    ``frame_applied`` line per frame on every node: 11-15 % of a node's apply
    at saturation, py-spy).
    """
    templates: dict[tuple[str, ...], str] = {}

    def write(common: dict, names: tuple[str, ...], rows: list[tuple]) -> None:
        head = "\x1e" + json.dumps(common)[:-1]
        if not names:
            file.write(f"{head}}}\n" * len(rows))
            return
        fill = templates.get(names) or templates.setdefault(names, _template(names))
        lines = [f"{head}, {fill % tuple([v if type(v) is int else _json(v) for v in row])}}}\n" for row in rows]
        file.write("".join(lines))

    return write


def _template(names: tuple[str, ...]) -> str:
    """A ``%`` template of the fields ``names``: ``"name": %s, ...``."""
    return ", ".join(json.dumps(name).replace("%", "%%") + ": %s" for name in names)


def _json(value) -> str:
    """``value`` (not an ``int``, which formats as itself under ``%s``) as JSON text."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    return json.dumps(value)


def list_sink(events: list):
    """Append each event, whole, to ``events`` (tests)."""

    def append(common: dict, names: tuple[str, ...], rows: list[tuple]) -> None:
        events.extend({**common, **dict(zip(names, row))} for row in rows)

    return append


FRAME_EVENTS = FrameEvents()
