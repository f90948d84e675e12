"""The nemesis counts only the faults that took effect, by kind (no cluster needed)."""

import random

from parkd.chaos.nemesis import KINDS, Fault, Run, inject, isolate_leader, kill_follower, kill_leader, summary


class Node:
    def __init__(self, alive=True):
        self.running = alive
        self.killed = 0

    def alive(self):
        return self.running

    def kill(self):
        self.killed += 1
        self.running = False


class Cluster:
    """What the faults ask of a ChaosCluster: its nodes and its leader."""

    def __init__(self, leader=None, dead=()):
        self.nodes = {i: Node(i not in dead) for i in (1, 2, 3)}
        self.known_leader = leader

    def leader(self):
        return self.known_leader


def test_a_fault_without_its_target_is_skipped_and_says_why():
    rng = random.Random(0)
    assert inject("kill-leader", kill_leader, Cluster(), rng) == Fault("kill-leader", "no leader", effective=False)
    assert not inject("isolate-leader", isolate_leader, Cluster(), rng).effective
    cluster = Cluster(leader=1, dead=(2, 3))
    assert inject("kill-follower", kill_follower, cluster, rng).effective is False  # nobody to kill
    assert not any(node.killed for node in cluster.nodes.values())
    cluster = Cluster(leader=2)
    assert inject("kill-leader", kill_leader, cluster, rng) == Fault("kill-leader", "kill -9 leader 2")
    assert cluster.nodes[2].killed == 1


def test_runs_count_effective_faults_by_kind_and_the_summary_shows_them():
    one = Run(1, [Fault("kill-leader", "kill -9 leader 1"), Fault("kill-leader", "no leader", False),
                  Fault("pause", "SIGSTOP node 2")], acked=10, seconds=30.2)  # fmt: skip
    two = Run(2, [Fault("pause", "SIGSTOP node 3")], acked=5, violations=["x"], seconds=20.0)
    assert [str(f) for f in one.faults] == ["kill -9 leader 1", "kill-leader skipped: no leader", "SIGSTOP node 2"]
    assert len(one.effective) == 2 and len(one.skipped) == 1
    assert set(one.by_kind()) == set(KINDS) and one.by_kind()["kill-leader"] == 1
    lines = summary([one, two]).splitlines()
    assert lines[0] == ("| seed | faults | kill-leader | kill-follower | pause | partition | isolate-leader | one-way "
                        "| full-restart | skipped | frames acked | violations | seconds |")  # fmt: skip
    assert lines[2:] == [
        "| 1 | 2 | 1 | 0 | 1 | 0 | 0 | 0 | 0 | 1 | 10 | 0 | 30 |",
        "| 2 | 1 | 0 | 0 | 1 | 0 | 0 | 0 | 0 | 0 | 5 | 1 | 20 |",
        "| all 2 | 3 | 1 | 0 | 2 | 0 | 0 | 0 | 0 | 1 | 15 | 1 | 50 |",
    ]
