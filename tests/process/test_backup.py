"""Backup and restore on real processes with TLS (issue 13, process tests 1 and 5; CONTRACT §10).

1. A 3-node cluster under camera load -> ``parkctl backup`` -> kill -9 every node and
   delete its data dir -> ``parkctl restore`` into three new data dirs -> start: every
   frame acked at or below the backup's index is there with the same result, on every
   node, and the cameras carry on.
5. ``parkctl restore`` refuses a backup with one flipped byte, a truncated one and
   one of a future format version, in one line each, writing nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import time

from harness import Cluster

from parkd import ctl
from parkd.launcher import node_daemon
from parkd.parking.backup import MAGIC


def parkctl(cluster, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = ctl.main([*map(str, args)], out=out, err=err, environ=cluster.operator_env())
    return code, out.getvalue(), err.getvalue()


def take_backup(cluster, path) -> tuple[int, int]:
    """``parkctl backup`` through the cluster's config (TLS, operator certificate); (index, term)."""
    out = cluster.parkctl("backup", path)
    found = re.search(r"index (\d+), term (\d+), (\d+) bytes", out)
    assert found, out
    assert int(found[3]) == os.path.getsize(path)
    return int(found[1]), int(found[2])


def restore(cluster, path, node_id, data_dir) -> tuple[int, str, str]:
    return parkctl(cluster, "restore", path, "--config", cluster.config_path, "--id", node_id, "--data-dir", data_dir)


def data_dir(cluster, node_id) -> str:
    return os.path.dirname(cluster.db_path(node_id))


def test_1_backup_kill_everything_restore_and_every_acked_frame_is_back(make_cluster, tmp_path):
    cluster = make_cluster().start_all()
    cluster.leader()
    cluster.wait_acks(30)
    backup = str(tmp_path / "cluster.pkb")
    index, term = take_backup(cluster, backup)
    cluster.wait_acks(10, since=len(cluster.acked()))  # the cameras went on while it streamed
    # The node that served it logged it once; leadership may have moved since (CI saw it once).
    taken = [e["index"] for node in cluster.nodes.values() for e in cluster.events(node, "backup_taken")]
    assert taken == [index]
    leader = cluster.leader()
    old_id = cluster.status(leader)["cluster_id"]
    assert old_id
    for node in cluster.nodes.values():
        node.kill()  # kill -9; the cameras keep running and keep their unacked frames
    acked = cluster.acked()
    before = {key: result for key, result in acked.items() if result[0] <= index}
    assert len(before) >= 30 and any(result[0] > index for result in acked.values())
    old_copy = os.path.join(cluster.workdir, "old-node-3")
    shutil.copytree(data_dir(cluster, 3), old_copy)  # a member of the old cluster, kept aside
    for node_id in cluster.nodes:
        shutil.rmtree(data_dir(cluster, node_id))
    ids = set()
    for node_id in cluster.nodes:
        code, out, err = restore(cluster, backup, node_id, data_dir(cluster, node_id))
        assert (code, err) == (0, ""), err
        assert f"index {index}, term {term}" in out
        ids.add(re.search(r"new cluster id (\w+)", out)[1])
    assert len(ids) == 1  # one new cluster
    restarted = time.time()
    cluster.start_nodes()
    cluster.leader()
    for node_id in cluster.nodes:
        cluster.wait(lambda: cluster.status(node_id)["last_applied"] >= index, 30, f"node {node_id} to apply")
        applied = cluster.applied(node_id)
        assert {key: applied.get(key) for key in before} == before  # same index, same result
    cluster.wait_for_ack_after(restarted)  # the cameras carry on with the restored cluster
    (new_id,) = ids
    assert new_id != old_id
    cluster.wait(lambda: all((cluster.status(n) or {}).get("cluster_id") == new_id for n in cluster.nodes), 15,
                 "every node to show the restored cluster's new id")  # fmt: skip
    # A member of the old cluster (node 3's old data dir) comes back: the restored nodes refuse it.
    cluster.nodes[3].stop()
    cluster.nodes[3] = node_daemon(cluster.config_path, 3, cluster.workdir, "--data-dir", old_copy)
    cluster.start_nodes(3)
    line = f"node 3 belongs to cluster {old_id}, this node to cluster {new_id}"
    cluster.wait(lambda: any(line in cluster.nodes[n].log_text() for n in (1, 2)), 15, "the old member's refusal")


def test_1b_restore_one_node_and_add_the_others(make_cluster, tmp_path, cluster_pki):
    """README "Backup and restore": restore node 1 alone (a config listing only it), start it,
    then start nodes 2 and 3 with --join and add them: they catch up from the restored node."""
    old = make_cluster().start_all()
    old.leader()
    old.wait_acks(20)
    backup = str(tmp_path / "one.pkb")
    index, _ = take_backup(old, backup)
    before = {key: result for key, result in old.acked().items() if result[0] <= index}
    old.stop_all()
    (tmp_path / "new").mkdir()
    new = Cluster(tmp_path / "new", nodes=1, joiners=2, pki=cluster_pki.dir)
    try:
        alone = os.path.join(new.workdir, "parkd-initial.toml")  # lists node 1 only
        code, out, err = parkctl(new, "restore", backup, "--config", alone, "--id", 1, "--data-dir", data_dir(new, 1))
        assert code == 0 and "voters 1;" in out, err
        new.start_nodes(1)
        new.leader(among=[1])
        for node_id in (2, 3):
            new.start_nodes(node_id)
            m = new.config.member(node_id)
            out = new.parkctl("add-node", node_id, m.raft, m.client, m.http)
            assert out.startswith(f"node {node_id} added and promoted to voter"), out
        for node_id in (1, 2, 3):
            new.wait(lambda: (new.status(node_id) or {}).get("last_applied", 0) >= index, 30, f"node {node_id}")
            applied = new.applied(node_id)
            assert {key: applied.get(key) for key in before} == before
    finally:
        new.stop_all()


def test_5_restore_refuses_a_flipped_byte_a_truncated_file_and_a_future_version(make_cluster, tmp_path):
    cluster = make_cluster().start_all()
    cluster.leader()
    cluster.wait_acks(5)
    good = tmp_path / "good.pkb"
    take_backup(cluster, good)
    data = good.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    future = bytearray(data[:-32])
    struct.pack_into(">I", future, len(MAGIC), 2)
    future += hashlib.sha256(future).digest()  # intact, but a format this parkd does not know
    cases = {
        "flipped.pkb": (bytes(flipped), "corrupt: its sha256 does not match"),
        "truncated.pkb": (data[: len(data) * 2 // 3], "truncated"),
        "future.pkb": (bytes(future), "backup format version 2"),
    }
    target = tmp_path / "restored"
    target.mkdir()
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        code, out, err = restore(cluster, tmp_path / name, 1, target / "node-1")
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert reason in err and "nothing written" in err
        assert os.listdir(target) == []  # no data dir, no temporary directory
    code, out, _ = restore(cluster, good, 1, target / "node-1")
    assert code == 0 and "new cluster id" in out
