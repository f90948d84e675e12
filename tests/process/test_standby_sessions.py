"""A camera fails over to a node it holds a standby TLS session with, and resumes it (real twistd processes).

The camera daemon (``--standby-spread 0.5``) gets a session with each node it
is not on; then its node is killed (kill -9) and its next connection, to one
of the others, resumes that session instead of a full handshake
(:mod:`parkd.camera.standby`), and its frames are acked exactly once.
"""

from __future__ import annotations

import ast
import re
import time

from parkd.launcher import camera_daemon, wait_for

ROUND = "standby TLS sessions with the other nodes"


def handshakes(camera) -> list[tuple[int, str]]:
    """(node's client port, "full handshake" or "session resumed") of each TLS connection, in order."""
    return [(int(port), how) for port, how in re.findall(r"TLS with [\d.]+:(\d+): (full handshake|session resumed)",
                                                         camera.log_text())]  # fmt: skip


def test_a_camera_fails_over_by_resuming_its_standby_session_with_the_new_node(make_cluster):
    cluster = make_cluster()
    cluster.start_nodes()
    cluster.leader()
    cluster.cameras[9] = camera_daemon(cluster.config_path, 9, "north", cluster.workdir, "--standby-spread", "0.5")
    camera = cluster.add_camera(9, "north")
    cluster.wait_acks(3, timeout=20)
    wait_for(lambda: ROUND in camera.log_text(), 30, "the camera's first round of standby sessions")
    round_line = next(line for line in camera.log_text().splitlines() if ROUND in line)
    counts = ast.literal_eval(round_line.split(ROUND + ": ", 1)[1])
    assert sum(counts.values()) == 2 and "failed" not in counts, round_line  # a session with each other node
    before = handshakes(camera)
    assert before[0][1] == "full handshake"
    home = next(m.id for m in cluster.config.members if m.client.port == before[-1][0])

    cluster.nodes[home].kill()
    killed = time.time()
    wait_for(lambda: len(handshakes(camera)) > len(before), 30, "the camera on another node")
    port, how = handshakes(camera)[len(before)]
    assert port != cluster.config.member(home).client.port and how == "session resumed"
    cluster.wait_for_ack_after(killed)
    cluster.check_exactly_once(node_ids=cluster.alive_nodes())
