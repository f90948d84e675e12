"""One behaviour suite for every Raft storage: MemoryStorage must mean what SqliteStorage does."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from parkd.raft.storage import MemoryStorage, SqliteStorage
from parkd.raft.types import Entry, EntryKind, HardState, PersistedState, SnapshotMeta


def entries(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, f"{term}/{i}".encode()) for i in range(first, last + 1)]


def test_fresh_storage_is_empty(storage):
    assert storage.load() == PersistedState()


def test_round_trip_keeps_kinds_and_binary_data(storage):
    written = [
        Entry(1, 1, EntryKind.NOOP),
        Entry(2, 1, EntryKind.NORMAL, bytes(range(256))),
        Entry(3, 2, EntryKind.CONFIG, b"\x00"),
    ]
    storage.save(HardState(term=2, vote=3, commit=2), written)
    assert storage.load() == PersistedState(HardState(2, 3, 2), tuple(written))
    assert all(isinstance(e.kind, EntryKind) for e in storage.load().entries)


def test_hard_state_and_entries_are_saved_independently(storage):
    storage.save(HardState(term=1, vote=1), [])
    storage.save(None, entries(1, 3, term=1))
    storage.save(HardState(term=4, vote=0, commit=3), [])
    assert storage.load() == PersistedState(HardState(4, 0, 3), tuple(entries(1, 3, 1)))


def test_empty_save_changes_nothing(storage):
    storage.save(HardState(term=1, vote=2), entries(1, 2, 1))
    storage.save(None, [])
    assert storage.load() == PersistedState(HardState(1, 2), tuple(entries(1, 2, 1)))


def test_conflicting_suffix_is_replaced_with_the_hard_state(storage):
    # Raft §5.3: a follower deletes a conflicting entry and all that follow it.
    storage.save(HardState(term=1, vote=1), entries(1, 5, term=1))
    storage.save(HardState(term=2, vote=2), entries(3, 4, term=2))
    assert storage.load() == PersistedState(
        HardState(2, 2), tuple(entries(1, 2, 1) + entries(3, 4, 2))
    )


def test_rewrite_from_the_first_entry(storage):
    storage.save(None, entries(1, 3, term=1))
    storage.save(None, entries(1, 1, term=2))
    assert storage.load().entries == tuple(entries(1, 1, 2))


@pytest.mark.parametrize(
    "batch",
    [entries(5, 6, 1), entries(0, 1, 1), [Entry(4, 1), Entry(6, 1)]],
    ids=["gap", "index-zero", "not-contiguous"],
)
def test_a_batch_that_would_break_the_log_is_refused_untouched(storage, batch):
    storage.save(HardState(1, 1), entries(1, 3, term=1))
    with pytest.raises(ValueError):
        storage.save(HardState(9, 9), batch)
    assert storage.load() == PersistedState(HardState(1, 1), tuple(entries(1, 3, 1)))


def test_compact_keeps_the_tail_and_records_the_snapshot(storage):
    storage.save(HardState(2, 1, 8), entries(1, 10, term=2))
    meta = SnapshotMeta(index=7, term=2, voters=(1, 2, 3), learners=(4,))
    storage.compact(5, meta)
    assert storage.load() == PersistedState(HardState(2, 1, 8), tuple(entries(6, 10, 2)), meta)
    with pytest.raises(ValueError):
        storage.save(None, entries(7, 7, term=3))  # covered by the snapshot
    storage.save(None, entries(8, 8, term=3))
    assert storage.load().entries == tuple(entries(6, 7, 2) + entries(8, 8, 3))


def test_snapshot_beyond_the_log_empties_it(storage):
    # InstallSnapshot (§7) to a lagging follower: the whole log is superseded.
    storage.save(None, entries(1, 3, term=1))
    meta = SnapshotMeta(index=20, term=4, voters=(1, 2, 3))
    storage.compact(20, meta)
    assert storage.load() == PersistedState(snapshot=meta)
    with pytest.raises(ValueError):
        storage.save(None, entries(4, 4, term=4))
    storage.save(None, entries(21, 22, term=4))
    assert storage.load().entries == tuple(entries(21, 22, 4))


@pytest.mark.parametrize(
    ("upto", "meta"),
    [(6, SnapshotMeta(5, 1)), (2, SnapshotMeta(2, 1)), (4, SnapshotMeta(9, 1))],
    ids=["beyond-snapshot", "older-snapshot", "log-left-below-snapshot"],
)
def test_compact_refuses_inconsistent_requests(storage, upto, meta):
    storage.save(None, entries(1, 6, term=1))
    storage.compact(3, SnapshotMeta(3, 1))
    with pytest.raises(ValueError):
        storage.compact(upto, meta)
    assert storage.load() == PersistedState(entries=tuple(entries(4, 6, 1)), snapshot=SnapshotMeta(3, 1))


# A random history of saves (hard state or None, rewind from the last index, count, term)
# and compactions (upto, snapshot index), some of them invalid on purpose.
_saves = st.tuples(
    st.none() | st.builds(HardState, st.integers(0, 9), st.integers(0, 3), st.integers(0, 50)),
    st.integers(-1, 4),
    st.integers(0, 6),
    st.integers(1, 9),
)
_compactions = st.tuples(st.integers(0, 30), st.integers(0, 30))


def _outcome(action):
    try:
        action()
    except ValueError:
        return "refused"
    return "done"


@settings(max_examples=80, deadline=None)
@given(st.lists(_saves | _compactions, max_size=20))
def test_sqlite_and_memory_agree_on_any_history(ops):
    memory, sqlite = MemoryStorage(), SqliteStorage.open("sqlite://")
    both = (memory, sqlite)
    try:
        for op in ops:
            if len(op) == 2:
                upto, index = op
                meta = SnapshotMeta(index, 1, (1, 2, 3))
                kind, results = "compact", {_outcome(lambda s=s: s.compact(upto, meta)) for s in both}
            else:
                hard_state, rewind, count, term = op
                state = memory.load()
                last = state.entries[-1].index if state.entries else state.snapshot.index
                batch = entries(max(1, last + 1 - rewind), last - rewind + count, term)
                kind, results = "save", {_outcome(lambda s=s: s.save(hard_state, batch)) for s in both}
            assert len(results) == 1, f"{kind}: memory and sqlite disagree"
            event(f"{kind} {results.pop()}")  # see --hypothesis-show-statistics
            assert sqlite.load() == memory.load()
    finally:
        sqlite.close()
