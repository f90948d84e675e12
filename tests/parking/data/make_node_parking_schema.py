"""Write the node-database fixture of the parking schema BEFORE the trend buckets (data/node-parking-schema-2.sql).

Run it with the previous code on the path, from a checkout of this tree:

    git worktree add /tmp/parkd-prev <the commit before the buckets' schema bump>   # e.g. 5ae07e3
    PYTHONPATH=/tmp/parkd-prev .venv/bin/python tests/parking/data/make_node_parking_schema.py \\
        tests/parking/data/node-parking-schema-2.sql
    git worktree remove /tmp/parkd-prev

It applies a fixed log through that code's ``ParkingState`` and ``SqliteStorage``
(as a node does) and dumps the file with sqlite3's ``iterdump``.  When the buckets'
upgrader is renumbered (another schema came first), regenerate the fixture from the
merged code just before the buckets' commit and rename it after the schema it holds.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile

from parkd.db import open_engine, schema_version
from parkd.parking.codec import FrameResult, RegistryCommand, encode, encode_registry
from parkd.parking.retention import ensure_retention_index, retention_entry
from parkd.parking.state import ParkingState
from parkd.raft.storage import SqliteStorage
from parkd.raft.types import Entry, EntryKind, HardState

LOTS = {"north": 100, "south": 60}
INC_A, INC_B = 0x1111, 0x2222  # camera 1's first and second incarnations

# (camera, lot, seq, captured_at, free, incarnation) or a command; applied in this order from index 2
LOG = [
    (1, "north", 1, 1000.0, 10, INC_A),
    (2, "south", 1, 1001.0, 20, 0),
    (1, "north", 2, 1012.0, 11, INC_A),
    (2, "south", 2, 1025.0, 21, 0),
    (1, "north", 3, 1071.0, 12, INC_A),
    (2, "south", 4, 1090.0, 24, 0),
    (2, "south", 3, 1080.0, 23, 0),  # late: after seq 4, not in the trend
    (1, "north", 1, 1130.0, 50, INC_B),  # camera 1 replaced: a new incarnation
    (1, "north", 4, 1085.0, 13, INC_A),  # a late retry of the old incarnation: history only
    ("retention", 1015.0),  # trims camera 1's INC_A seqs 1-2 and camera 2's seq 1
    (3, "north", 1, 1200.0, 30, 0),
    ("disable", 3),
    (1, "north", 2, 1735.0, 51, INC_B),
    (2, "south", 5, 1740.0, 25, 0),
    (1, "north", 2, 1735.0, 51, INC_B),  # a retry: duplicate
]


def entries() -> list[Entry]:
    out = [Entry(1, 1, EntryKind.NOOP)]
    for index, item in enumerate(LOG, start=2):
        if item[0] == "retention":
            data = retention_entry(item[1])
        elif item[0] == "disable":
            data = encode_registry(RegistryCommand(item[1], False))
        else:
            camera, lot, seq, at, free, inc = item
            data = encode(FrameResult(camera, lot, seq, at, free, inc))
        out.append(Entry(index, 1, EntryKind.NORMAL, data))
    return out


def main(out_path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "node.db")
        engine = open_engine(path)
        storage = SqliteStorage(engine)
        state = ParkingState(engine, LOTS)
        ensure_retention_index(engine)
        log = entries()
        storage.save(HardState(1, 1, log[-1].index), log)
        state.apply(log)
        with engine.connect() as conn:
            parking = schema_version(conn, "parking")
        engine.dispose()
        conn = sqlite3.connect(path)
        dump = "\n".join(conn.iterdump())
        conn.close()
    header = (
        f"-- A node database (data dir node.db) written by parkd before the trend buckets: parking schema {parking}.\n"
        "-- Made by tests/parking/data/make_node_parking_schema.py (its docstring says how; its LOG the entries:\n"
        "-- two incarnations of camera 1 with a late retry of the old one, a late seq of camera 2, a retention\n"
        "-- entry at index 11 (cutoff 1015), camera 3 disabled at 13, a duplicate at 16).\n"
    )
    with open(out_path, "w") as f:
        f.write(header + dump + "\n")
    print(f"wrote {out_path}: parking schema {parking}")


if __name__ == "__main__":
    main(sys.argv[1])
