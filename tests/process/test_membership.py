"""Membership changes on real twistd nodes under camera load (issue 6).

Joiners start with ``--join`` from a file that lists every node; the first three
start from a file that lists only them.  Changes go through parkctl (in-process,
and the installed script once).  Cameras know every node's client port.  After
each scenario every frame a camera logged as acked must be applied exactly once
on every remaining node, at the same index, with the same result.
"""

import os
import signal
import subprocess
import sys

from parkd.chaos import checker

CAMERAS = {1: "north", 2: "south", 3: "east"}
# A snapshot every 60 entries, 10 kept below it: joiners catch up through
# InstallSnapshot, and CONFIG entries are compacted away within seconds.
SMALL_SNAPSHOTS = ("--snapshot-entries", "60", "--snapshot-margin", "10")


def start(make_cluster, joiners):
    cluster = make_cluster(joiners=joiners, node_args=SMALL_SNAPSHOTS)
    cluster.start_nodes()
    for camera_id, lot in CAMERAS.items():
        cluster.add_camera(camera_id, lot)
    cluster.leader(among=cluster.initial)
    cluster.wait_acks(10)
    return cluster


def add(cluster, node_id, script=False):
    """Start ``node_id`` with --join and add it; parkctl returns once it is a voter."""
    cluster.start_nodes(node_id)
    m = cluster.config.member(node_id)
    args = ["add-node", node_id, m.raft, m.client, m.http]
    if script:
        command = [os.path.join(os.path.dirname(sys.executable), "parkctl"), "--config", cluster.config_path,
                   *map(str, args)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **cluster.operator_env()})  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = done.stdout
    else:
        out = cluster.parkctl(*args)
    assert out.startswith(f"node {node_id} added and promoted to voter"), out


def remove(cluster, node_id, members):
    """Remove ``node_id`` (the leader too), wait for a leader among the rest, stop the node."""
    cluster.parkctl("remove-node", node_id)
    rest = [n for n in members if n != node_id]
    cluster.leader(among=rest)
    cluster.nodes[node_id].stop()
    return rest


def voters(cluster, members):
    view = cluster.status(cluster.leader(among=members))
    return {m["id"]: m["membership"] for m in view["members"]}


def knows(cluster, node_id, members):
    """``node_id`` follows a leader and lists ``members`` as voters, with their addresses."""
    view = cluster.status(node_id)
    return (
        view is not None
        and view["leader_id"] is not None
        and [(m["id"], m["membership"]) for m in view["members"]] == [(i, "voter") for i in members]
        and all(m["http"] == str(cluster.config.member(m["id"]).http) for m in view["members"])
    )


def more_acks(cluster, count=10):
    cluster.wait_acks(count, since=len(cluster.acked()))


def finish(cluster, members):
    for camera in cluster.cameras.values():
        camera.stop()
    acked, _ = cluster.check_exactly_once(members)
    assert {camera for camera, *_ in acked} == set(CAMERAS)
    return acked


def events(cluster, node_id, name):
    return checker.read_events(cluster.nodes[node_id].json_path, name)


def test_grow_three_to_five_and_shrink_to_three_under_load(make_cluster):
    cluster = start(make_cluster, joiners=2)
    members = [1, 2, 3]
    add(cluster, 4, script=True)
    add(cluster, 5)
    members += [4, 5]
    assert voters(cluster, members) == {i: "voter" for i in members}
    more_acks(cluster)
    # Config in the log wins: an initial node restarted with its 3-node file, and a
    # joiner restarted (with --join again), both come back as one of five voters and
    # know every address, after the entries that added 4 and 5 were compacted away.
    leader = cluster.leader(among=members)
    restarted = (next(n for n in (1, 2, 3) if n != leader), next(n for n in (4, 5) if n != leader))
    promoted_5 = max(e["index"] for e in events(cluster, restarted[0], "member_promoted"))
    for node_id in restarted:
        cluster.wait(lambda: max([e["upto"] for e in events(cluster, node_id, "snapshot_taken")], default=0)
                     >= promoted_5, 30, f"node {node_id} to compact its log past the promotion of 5")  # fmt: skip
    for node_id in restarted:
        cluster.nodes[node_id].signal(signal.SIGTERM)
    for node_id in restarted:
        cluster.nodes[node_id].stop()
    cluster.start_nodes(*restarted)
    cluster.wait(lambda: all(knows(cluster, n, members) for n in restarted), 15, f"{restarted} to rejoin the five")
    more_acks(cluster)
    leader = cluster.leader(among=members)
    members = remove(cluster, leader, members)  # the leader steps down once its removal commits
    more_acks(cluster)
    follower = next(n for n in (4, 5, 1, 2, 3) if n in members and n != cluster.leader(among=members))
    members = remove(cluster, follower, members)
    assert voters(cluster, members) == {i: "voter" for i in members}
    more_acks(cluster)
    finish(cluster, members)
    # Each node logs the changes it applied, in log order; one that installed a
    # snapshot did not apply the entries the snapshot covers.
    expected = [("member_added", 4), ("member_promoted", 4), ("member_added", 5), ("member_promoted", 5),
                ("member_removed", leader), ("member_removed", follower)]  # fmt: skip
    for node_id in members:
        logged = sorted((e["index"], e["parkd_event"], e["member_id"])
                        for name in ("member_added", "member_promoted", "member_removed")
                        for e in events(cluster, node_id, name))  # fmt: skip
        changes = [change for _, *change in logged]
        assert [tuple(c) for c in changes] == [c for c in expected if list(c) in changes], node_id
        if "installed snapshot" not in cluster.nodes[node_id].log_text():
            assert [tuple(c) for c in changes] == expected


def test_rolling_replacement_of_every_node_loses_nothing(make_cluster):
    cluster = start(make_cluster, joiners=3)
    members = [1, 2, 3]
    leader = cluster.nodes[cluster.leader(among=members)]
    cluster.wait(lambda: cluster.events(leader, "snapshot_taken"), 30, "the leader to compact its log")
    for new, old in ((4, 1), (5, 2), (6, 3)):
        add(cluster, new)
        members.append(new)
        more_acks(cluster, 5)
        members = remove(cluster, old, members)
        more_acks(cluster, 5)
    assert members == [4, 5, 6]
    assert "installed snapshot" in cluster.nodes[4].log_text()  # the log's start was gone
    assert voters(cluster, members) == {4: "voter", 5: "voter", 6: "voter"}
    acked = finish(cluster, members)
    first = min(index for index, _ in acked.values())
    assert first < 50  # frames from the very start, from before any of these nodes existed
