"""Check a run's evidence: what cameras were told against what nodes applied.

Inputs are the daemons' JSON logs (CONTRACT §8: ``frame_acked`` on cameras,
``frame_applied`` and ``leader_elected`` on nodes) and each node's database
after the run.  Every violation is reported with its evidence; the run is good
only when there are none.

Frames are keyed ``(camera_id, incarnation, seq)``, what exactly-once is per
(CONTRACT §9); events of a release before incarnations count as incarnation 0.
A camera's current value is that of the highest seq of its current incarnation,
the one whose first frame came last in the log.
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

from twisted.logger import eventsFromJSONLogFile

from parkd.db import u64_from_sqlite


def read_events(path: str, name: str) -> list[dict]:
    """The events with ``parkd_event == name`` from a JSON log (missing file: none)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [e for e in eventsFromJSONLogFile(f) if e.get("parkd_event") == name]


Key = tuple[int, int, int]  # (camera_id, incarnation, seq)


@contextmanager
def _reading(db_path: str):
    """One read transaction on a node's database: every query in it sees the same commit."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN")
        yield db
        db.execute("COMMIT")
    finally:
        db.close()


def _frames(db) -> dict[Key, tuple[int, int]]:
    rows = db.execute("SELECT camera_id, incarnation, seq, log_index, free FROM frames").fetchall()
    return {(c, u64_from_sqlite(n), s): (i, f) for c, n, s, i, f in rows}


def _cameras(db) -> dict[int, tuple[int, int, int]]:
    rows = db.execute(
        "SELECT c.camera_id, c.incarnation, i.last_seq, i.free FROM cameras AS c JOIN incarnations AS i "
        "ON i.camera_id = c.camera_id AND i.incarnation = c.incarnation"
    ).fetchall()
    return {c: (u64_from_sqlite(n), s, f) for c, n, s, f in rows}


def read_frames(db_path: str) -> dict[Key, tuple[int, int]]:
    """``{(camera_id, incarnation, seq): (log index, free)}`` from a node's database."""
    with _reading(db_path) as db:
        return _frames(db)


def read_cameras(db_path: str) -> dict[int, tuple[int, int, int]]:
    """``{camera_id: (incarnation, last_seq, free)}``: each camera's current value on a node."""
    with _reading(db_path) as db:
        return _cameras(db)


def read_node(db_path: str) -> tuple[dict[Key, tuple[int, int]], dict[int, tuple[int, int, int]]]:
    """A running node's frames and current values as of one commit (the node may be applying)."""
    with _reading(db_path) as db:
        return _frames(db), _cameras(db)


def event_key(event: dict) -> Key:
    return (event["camera_id"], event.get("incarnation", 0), event["seq"])


@dataclass
class Evidence:
    """What one run left behind."""

    acked: dict[Key, tuple[int, int]] = field(default_factory=dict)
    applied_events: dict[int, list[dict]] = field(default_factory=dict)  # node -> frame_applied events
    leaders: list[dict] = field(default_factory=list)  # leader_elected events of all nodes
    frames: dict[int, dict[Key, tuple[int, int]]] = field(default_factory=dict)
    cameras: dict[int, dict[int, tuple[int, int, int]]] = field(default_factory=dict)
    conflicting_acks: list[str] = field(default_factory=list)


def collect(camera_logs: list[str], node_logs: dict[int, str], node_dbs: dict[int, str]) -> Evidence:
    evidence = Evidence()
    for path in camera_logs:
        for e in read_events(path, "frame_acked"):
            key = event_key(e)
            result = (e["index"], e["free"])
            if evidence.acked.setdefault(key, result) != result:
                evidence.conflicting_acks.append(f"{key} acked as {evidence.acked[key]} and as {result}")
    for node_id, path in node_logs.items():
        evidence.applied_events[node_id] = read_events(path, "frame_applied")
        evidence.leaders += read_events(path, "leader_elected")
    for node_id, path in node_dbs.items():
        evidence.frames[node_id], evidence.cameras[node_id] = read_node(path)
    return evidence


def check(evidence: Evidence) -> list[str]:
    """Every violation found, as one line of evidence each."""
    problems = list(evidence.conflicting_acks)
    problems += _acked_applied_everywhere(evidence)
    problems += _applied_once(evidence)
    problems += _same_history(evidence)
    problems += _one_leader_per_term(evidence)
    problems += _current_values(evidence)
    return problems


def _acked_applied_everywhere(ev: Evidence) -> list[str]:
    out = []
    for node_id, frames in ev.frames.items():
        missing = sorted(set(ev.acked) - set(frames))
        if missing:
            out.append(f"node {node_id}: {len(missing)} acked frames never applied, e.g. {missing[:5]}")
        wrong = [(k, ev.acked[k], frames[k]) for k in ev.acked if k in frames and frames[k] != ev.acked[k]]
        if wrong:
            out.append(f"node {node_id}: acked result differs from applied (key, acked, applied): {wrong[:5]}")
    return out


def _applied_once(ev: Evidence) -> list[str]:
    out = []
    for node_id, events in ev.applied_events.items():
        seen: dict[Key, int] = {}
        for e in events:
            key = event_key(e)
            if key in seen and seen[key] != e["index"]:
                out.append(f"node {node_id}: {key} applied twice, at {seen[key]} and {e['index']}")
            seen[key] = e["index"]
    return out


def _same_history(ev: Evidence) -> list[str]:
    by_index = {
        node_id: {index: (key, free) for key, (index, free) in frames.items()} for node_id, frames in ev.frames.items()
    }
    out = []
    for node_id, history in by_index.items():
        if len(history) != len(ev.frames[node_id]):
            out.append(f"node {node_id}: two frames share a log index")
    nodes = sorted(by_index)
    for a, b in zip(nodes, nodes[1:]):
        common = set(by_index[a]) & set(by_index[b])
        differ = sorted(i for i in common if by_index[a][i] != by_index[b][i])
        if differ:
            i = differ[0]
            out.append(f"nodes {a} and {b} differ at index {i}: {by_index[a][i]} vs {by_index[b][i]}")
    return out


def _one_leader_per_term(ev: Evidence) -> list[str]:
    leaders = defaultdict(set)
    for e in ev.leaders:
        leaders[e["term"]].add(e["leader_id"])
    return [f"term {term}: leaders {sorted(ids)}" for term, ids in sorted(leaders.items()) if len(ids) > 1]


def _current_values(ev: Evidence) -> list[str]:
    """A camera's current value is that of the highest applied seq of its newest incarnation
    (whose first frame came last in the log), never below an acked one of it."""
    out = []
    highest_acked: dict[tuple[int, int], int] = {}
    for camera_id, incarnation, seq in ev.acked:
        highest_acked[camera_id, incarnation] = max(highest_acked.get((camera_id, incarnation), 0), seq)
    for node_id, cameras in ev.cameras.items():
        frames = ev.frames[node_id]
        for camera_id, (incarnation, last_seq, free) in cameras.items():
            first = {}  # incarnation -> the log index of its first frame
            for (c, n, _), (index, _) in frames.items():
                if c == camera_id:
                    first[n] = min(first.get(n, index), index)
            newest = max(first, key=first.get, default=incarnation)
            if incarnation != newest:
                out.append(f"node {node_id}: camera {camera_id} current incarnation {incarnation}, newest {newest}")
                continue
            top = max((s for c, n, s in frames if (c, n) == (camera_id, incarnation)), default=0)
            if last_seq != top:
                out.append(f"node {node_id}: camera {camera_id} current seq {last_seq}, highest applied {top}")
            elif frames[camera_id, incarnation, top][1] != free:
                gave = frames[camera_id, incarnation, top][1]
                out.append(f"node {node_id}: camera {camera_id} shows {free}, its seq {top} gave {gave}")
            acked = highest_acked.get((camera_id, incarnation), 0)
            if last_seq < acked:
                out.append(f"node {node_id}: camera {camera_id} at seq {last_seq} below acked {acked}")
        for camera_id in sorted({c for c, _ in highest_acked}):
            if camera_id not in cameras:
                out.append(f"node {node_id}: acked camera {camera_id} unknown")
    return out
