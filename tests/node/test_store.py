"""A data dir's store (``open_store``): the Raft log and the parking state on one database."""

from __future__ import annotations

import sqlalchemy as sa

from parkd.node.service import open_store
from parkd.parking.codec import FrameResult, encode
from parkd.raft.types import Entry, EntryKind

LOTS = {"north": 100, "south": 60}


def test_the_logs_and_the_applys_per_frame_transactions_share_one_connection(tmp_path):
    # On two connections, each commit of one made the other drop its page cache and
    # read its pages again (18 preads per frame on every node, seen with strace).
    store = open_store(str(tmp_path / "data"), LOTS)
    connections = []
    sa.event.listen(store.engine, "begin", lambda conn: connections.append(conn.connection.dbapi_connection))
    try:
        for index in (1, 2):
            frame = FrameResult(7, "north", index, 1_700_000_000.0 + index, 5, 0)
            entry = Entry(index, 1, EntryKind.NORMAL, encode(frame))
            store.storage.save(None, (entry,), sync=False)  # as the node's Ready loop writes its log
            assert [r.index for r in store.state.apply((entry,))] == [index]
    finally:
        store.close()
    assert len(connections) == 4
    assert len(set(map(id, connections))) == 1
