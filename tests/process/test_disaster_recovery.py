"""Cluster identity on real processes (issue 13, process tests 2 and 6; CONTRACT §10).

- a lost majority: ``--force-new-cluster`` on the survivor, fresh nodes added, and an
  old member that comes back with its old data dir kept out;
- a follower that lost its data dir: the cluster says so and the README procedure
  (remove, wipe, ``--join``, add) brings it back;
- a node of another cluster is refused with both cluster ids in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from parkd.launcher import http_request, node_daemon, wait_listening

FORCE = "--force-new-cluster"


def member_args(cluster, node_id):
    m = cluster.config.member(node_id)
    return ["add-node", node_id, m.raft, m.client, m.http]


def wipe(cluster, node_id):
    """Delete the node's data dir; its JSON log, the evidence of what that data dir applied, goes aside
    (the next data dir applies the same entries again)."""
    shutil.rmtree(os.path.join(cluster.workdir, f"node-{node_id}"))
    log = cluster.nodes[node_id].json_path
    if os.path.exists(log):
        os.replace(log, f"{log}.{time.monotonic_ns()}.lost")


def voters(cluster, node_id):
    status = cluster.status(node_id)
    return sorted(m["id"] for m in status["members"] if m["membership"] == "voter") if status else None


def log_has(daemon, text):
    return text in daemon.log_text()


def holds_for(seconds, predicate):
    """``predicate`` stays true for ``seconds`` (checked every 0.2 s); False at its first failure."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not predicate():
            return False
        time.sleep(0.2)  # bounded-poll
    return True


def test_force_new_cluster_recovers_a_lost_majority_and_keeps_old_members_out(make_cluster):
    cluster = make_cluster(joiners=2)
    cluster.start_all()
    leader = cluster.leader(among=cluster.initial)
    cluster.wait(lambda: (cluster.status(leader) or {}).get("cluster_id"), 10, "a cluster id")
    cluster_id = cluster.status(leader)["cluster_id"]
    cluster.wait_acks(30)
    survivor = next(i for i in cluster.initial if i != leader)
    lost = [i for i in cluster.initial if i != survivor]
    old_member = lost[1]
    for node_id in lost:
        cluster.nodes[node_id].kill()
    old_dir = os.path.join(cluster.workdir, f"node-{old_member}")
    shutil.copytree(old_dir, old_dir + "-kept")  # the machine that comes back later
    for node_id in lost:
        wipe(cluster, node_id)
    cluster.nodes[survivor].kill()
    acked = cluster.acked()
    present = set(acked) & set(cluster.applied(survivor))  # acked, and on the survivor at the loss
    assert present

    cluster.nodes[survivor].args.append(FORCE)
    started = time.time()
    cluster.restart_node(survivor)
    cluster.nodes[survivor].args.remove(FORCE)
    assert cluster.leader(timeout=10, among=[survivor]) == survivor
    assert voters(cluster, survivor) == [survivor]
    assert cluster.status(survivor)["cluster_id"] == cluster_id  # the same cluster, from its own data
    cluster.wait_for_ack_after(started, timeout=20)  # it serves writes again within seconds
    [forced] = cluster.events(cluster.nodes[survivor], "cluster_forced")
    assert forced["node_id"] == survivor and forced["log_level"].name == "critical"

    for node_id in (4, 5):  # fresh nodes
        cluster.start_nodes(node_id)
        out = cluster.parkctl(*member_args(cluster, node_id))
        assert out.startswith(f"node {node_id} added and promoted to voter"), out
    assert voters(cluster, survivor) == sorted([survivor, 4, 5])
    applied = cluster.applied(survivor)
    assert {k: acked[k] for k in present} == {k: applied[k] for k in present}  # nothing of it lost

    os.rename(old_dir + "-kept", old_dir)
    term = cluster.status(survivor)["term"]
    cluster.restart_node(old_member)  # its old data dir, its old configuration {1, 2, 3}
    cluster.wait(lambda: log_has(cluster.nodes[survivor], f"node {old_member} runs on data dir"), 15,
                 "the survivor to refuse the old member")  # fmt: skip
    assert holds_for(3, lambda: (s := cluster.status(survivor)) and (s["role"], s["term"]) == ("leader", term))
    cluster.nodes[old_member].kill()
    for camera in cluster.cameras.values():
        camera.stop()
    cluster.check_exactly_once(node_ids=[survivor, 4, 5])


def test_a_follower_that_lost_its_data_dir_is_refused_and_the_procedure_brings_it_back(make_cluster):
    cluster = make_cluster()
    cluster.start_all()
    leader = cluster.leader()
    cluster.wait(lambda: all((cluster.status(i) or {}).get("cluster_id") for i in cluster.initial), 10,
                 "every node to know the cluster id")  # fmt: skip
    cluster.wait(lambda: all(m["data_dir"] == "ok" for m in cluster.status(leader)["members"]), 10,
                 "every member's data dir recorded")  # fmt: skip
    cluster.wait_acks(20)
    wiped = next(i for i in cluster.initial if i != leader)
    cluster.nodes[wiped].kill()
    wipe(cluster, wiped)
    cluster.restart_node(wiped)  # same id, same start-up file, an empty data dir

    def flagged():
        members = {m["id"]: m for m in cluster.status(leader)["members"]}
        return members[wiped]["data_dir"] == "changed"

    cluster.wait(flagged, 10, "the leader to show the wiped member's data dir as changed")
    assert log_has(cluster.nodes[leader], f"node {wiped} came back with a new data dir")
    assert log_has(cluster.nodes[leader], f"parkctl remove-node {wiped}")
    status, _, body = http_request(cluster.config, wiped, "/api/v1/lots?consistency=local")
    assert status == 503 and "not a member in good standing" in json.loads(body)["error"]
    status, _, body = http_request(cluster.config, wiped, "/readyz")
    assert status == 503 and "standing" in json.loads(body)["failing"]

    # The README procedure: remove it, wipe its data dir, start it with --join, add it.
    cluster.parkctl("remove-node", wiped)
    cluster.nodes[wiped].kill()
    wipe(cluster, wiped)
    cluster.nodes[wiped].args.append("--join")
    cluster.start_nodes(wiped)
    out = cluster.parkctl(*member_args(cluster, wiped))
    assert out.startswith(f"node {wiped} added and promoted to voter"), out
    cluster.wait(lambda: all(m["data_dir"] == "ok" for m in cluster.status(leader)["members"]), 10,
                 "the new data dir recorded")  # fmt: skip
    cluster.wait(lambda: http_request(cluster.config, wiped, "/api/v1/lots?consistency=local")[0] == 200, 15,
                 "local reads on the node added again")  # fmt: skip
    for camera in cluster.cameras.values():
        camera.stop()
    cluster.check_exactly_once()


def test_a_node_of_another_cluster_is_refused_with_both_ids(make_cluster):
    cluster = make_cluster(joiners=1)
    cluster.start_nodes()
    leader = cluster.leader(among=cluster.initial)
    cluster.wait(lambda: all((cluster.status(i) or {}).get("cluster_id") for i in cluster.initial), 10,
                 "every node to know the cluster id")  # fmt: skip
    ours = cluster.status(leader)["cluster_id"]
    term = cluster.status(leader)["term"]

    # Node 4 first runs a cluster of its own (a start-up file with only itself).
    with open(cluster.config_path) as f:
        blocks = f.read().split("\n\n")
    solo = os.path.join(cluster.workdir, "solo.toml")
    with open(solo, "w") as f:
        f.write("\n\n".join(b for b in blocks if not b.startswith("[[node]]") or "\nid = 4\n" in b + "\n"))
    other = node_daemon(solo, 4, os.path.join(cluster.workdir, "solo"), "--data-dir",
                        os.path.join(cluster.workdir, "node-4"))  # fmt: skip
    cluster.nodes[4] = other
    other.start()
    wait_listening(cluster.config, 4, other)
    cluster.wait(lambda: (cluster.status(4) or {}).get("cluster_id"), 15, "node 4's own cluster id")
    theirs = cluster.status(4)["cluster_id"]
    assert theirs != ours
    other.stop()

    # Then it starts with the file of the three (and itself): it dials them, and is refused.
    cluster.nodes[4] = node_daemon(cluster.config_path, 4, cluster.workdir)
    cluster.start_nodes(4)
    line = f"node 4 belongs to cluster {theirs}, this node to cluster {ours}"
    cluster.wait(lambda: any(log_has(cluster.nodes[i], line) for i in cluster.initial), 15, "the refusal")
    assert cluster.leader(among=cluster.initial) == leader and cluster.status(leader)["term"] == term
