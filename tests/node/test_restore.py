"""``parkctl restore`` (CONTRACT §10 "Restore"): a data dir of a new cluster from a backup, or one line and nothing.

Real files throughout: a backup made from a real parking state, a real config,
the data dir opened afterwards the way a node opens it (``service.open_store``).
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import struct

import pytest

from parkd import ctl
from parkd.config import load_config
from parkd.launcher import write_config
from parkd.node.restore import RestoreError, restore_data_dir
from parkd.node.service import open_store
from parkd.parking.backup import MAGIC, restored_cluster_id
from parkd.parking.snapshot import read_snapshot_meta

from backups import LOTS, backup_file

FRAMES = 300


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(backup path, header, a config of 3 nodes) made once; never changed."""
    tmp = tmp_path_factory.mktemp("restore")
    path, header, _ = backup_file(tmp, FRAMES)
    config = write_config(str(tmp / "new.toml"), nodes=3, lots=LOTS)
    return path, header, config


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A config of 2 nodes, not the 3 voters the backup's cluster had."""
    return write_config(str(tmp_path_factory.mktemp("two") / "two.toml"), nodes=2, lots=LOTS)


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = ctl.main(list(argv), out=out, err=err, environ={})
    return code, out.getvalue(), err.getvalue()


def restore(made, data_dir, node_id=2, path=None, config=None):
    backup, config = made[0], config or made[2]
    return run("restore", str(path or backup), "--config", config, "--id", str(node_id), "--data-dir", str(data_dir))


def test_a_restored_data_dir_holds_the_backup_state_with_the_new_config(made, two, tmp_path):
    backup, header, _ = made
    assert header.voters == (1, 2, 3)
    code, out, err = restore(made, tmp_path / "n2", config=two)
    assert (code, err) == (0, "")
    new_members = load_config(two).members
    assert f"index {header.index}, term {header.term}, voters 1, 2;" in out
    store = open_store(str(tmp_path / "n2"), LOTS)
    try:
        assert store.applied == header.index == FRAMES
        snap = store.persisted.snapshot
        assert (snap.index, snap.term, snap.voters, snap.learners) == (FRAMES, header.term, (1, 2), ())
        assert store.persisted.entries == () and store.persisted.hard_state.commit == FRAMES
        with sqlite3.connect(store.db_path) as conn:
            assert conn.execute("SELECT count(*) FROM frames").fetchone()[0] == FRAMES  # every frame is there
    finally:
        store.close()
    [name] = os.listdir(tmp_path / "n2" / "snapshots")
    contents = read_snapshot_meta(tmp_path / "n2" / "snapshots" / name)
    assert (contents.meta.index, contents.meta.term, contents.meta.voters) == (FRAMES, header.term, (1, 2))
    assert [(m["id"], m["http"]) for m in contents.members] == [(m.id, str(m.http)) for m in new_members]
    assert sorted(os.listdir(tmp_path)) == ["n2"]  # no temporary directory left next to it


def test_every_node_restored_from_one_file_gets_the_same_new_cluster_id(made, tmp_path):
    ids = set()
    for node_id in (1, 2, 3):
        code, out, _ = restore(made, tmp_path / f"n{node_id}", node_id)
        assert code == 0
        ids.add(out.split("new cluster id ")[1].split()[0])
    [cluster_id] = ids
    assert len(cluster_id) == 32 and cluster_id != made[1].cluster_id


def test_an_empty_existing_directory_is_used(made, tmp_path):
    (tmp_path / "n1").mkdir()
    assert restore(made, tmp_path / "n1", 1)[0] == 0
    assert "node.db" in os.listdir(tmp_path / "n1")


# ------------------------------------------------------------------ refusals: one line, nothing written


def refused(made, tmp_path, data_dir=None, node_id=2, path=None):
    before = sorted(os.listdir(tmp_path))
    code, out, err = restore(made, data_dir or tmp_path / "new", node_id, path)
    assert code == 1 and out == ""
    assert err.startswith("parkctl: ") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporary directory
    return err


def test_a_non_empty_data_dir_is_refused(made, tmp_path):
    (tmp_path / "n2").mkdir()
    (tmp_path / "n2" / "node.db").write_bytes(b"an old node's")
    err = refused(made, tmp_path, tmp_path / "n2")
    assert "is not empty" in err
    assert os.listdir(tmp_path / "n2") == ["node.db"] and (tmp_path / "n2" / "node.db").read_bytes() == b"an old node's"


def test_a_node_not_in_the_config_is_refused(made, tmp_path):
    assert "node 4 is not in the config (its [[node]] ids: 1, 2, 3)" in refused(made, tmp_path, node_id=4)


def copy_with(made, tmp_path, edit) -> str:
    data = bytearray(made[0].read_bytes())
    path = tmp_path.parent / f"{tmp_path.name}-damaged.pkb"  # outside tmp_path, which must stay empty
    path.write_bytes(bytes(edit(data)))
    return str(path)


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_one_flipped_byte_is_refused(made, tmp_path, where):
    def flip(data):
        data[int(len(data) * where)] ^= 0x01
        return data

    err = refused(made, tmp_path, path=copy_with(made, tmp_path, flip))
    assert "corrupt" in err and "nothing written" in err


def test_a_truncated_file_is_refused(made, tmp_path):
    err = refused(made, tmp_path, path=copy_with(made, tmp_path, lambda data: data[: len(data) // 2]))
    assert "truncated" in err


def test_a_file_of_a_future_format_version_is_refused(made, tmp_path):
    def future(data):
        struct.pack_into(">I", data, len(MAGIC), 2)
        body = bytes(data[:-32])
        return body + hashlib.sha256(body).digest()  # intact: a newer parkd's file

    err = refused(made, tmp_path, path=copy_with(made, tmp_path, future))
    assert "backup format version 2; this parkd reads version 1" in err


def test_a_missing_file_is_refused(made, tmp_path):
    assert "no such file" in refused(made, tmp_path, path=tmp_path.parent / "nothing-here.pkb")


def test_the_function_refuses_before_writing(made, tmp_path):
    backup, _, config = made
    with pytest.raises(RestoreError, match="not in the config"):
        restore_data_dir(str(backup), load_config(config), 9, str(tmp_path / "x"))
    assert os.listdir(tmp_path) == []


def test_the_new_cluster_id_is_derived_from_the_file(made, tmp_path):
    backup, _, _ = made
    code, out, _ = restore(made, tmp_path / "n1", 1)
    digest = backup.read_bytes()[-32:].hex()
    assert hashlib.sha256(backup.read_bytes()[:-32]).hexdigest() == digest
    assert f"new cluster id {restored_cluster_id(digest)}" in out
