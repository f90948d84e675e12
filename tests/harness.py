"""A real cluster of twistd processes for end-to-end tests.

Nodes and cameras run exactly as an operator runs them; the harness reads
their JSON logs (CONTRACT §8) and each node's database to check what cameras
were told against what every node applied.
"""

from __future__ import annotations

import io
import os
import signal

from parkd import ctl
from parkd.chaos import checker
from parkd.config import load_config
from parkd.launcher import (Timeout, camera_daemon, get_json, http_request, node_daemon, wait_for, wait_listening,
                            write_config)


def initial_config(path: str, out: str, members: int) -> str:
    """``path`` without the [[node]] tables of ids above ``members`` (the cluster before it grew)."""
    with open(path) as f:
        blocks = f.read().split("\n\n")
    keep = []
    for block in blocks:
        if block.startswith("[[node]]"):
            node_id = int(next(line for line in block.splitlines() if line.startswith("id = "))[5:])
            if node_id > members:
                continue
        keep.append(block)
    with open(out, "w") as f:
        f.write("\n\n".join(keep))
    return out


CAMERAS = {1: "north", 2: "south", 3: "east"}  # camera id -> lot, one per lot


class Cluster:
    """``nodes`` initial members; ``joiners`` more nodes that start with ``--join`` (ids after them).

    The initial members start from a file that lists only them (their start-up
    configuration); joiners and cameras use ``config_path``, which lists every node.
    """

    def __init__(self, tmp_path, nodes=3, lots=None, interval=0.1, election_timeout_ms=600, heartbeat_ms=50,
                 node_args=(), joiners=0, pki=None):  # fmt: skip
        """``pki``: a test PKI's directory (every port speaks TLS), or None (``insecure = true``)."""
        self.workdir = str(tmp_path)
        self.config_path = write_config(
            os.path.join(self.workdir, "parkd.toml"),
            nodes=nodes + joiners,
            lots=lots or {"north": 100, "south": 60, "east": 250},
            election_timeout_ms=election_timeout_ms,
            heartbeat_ms=heartbeat_ms,
            camera_interval=interval,
            pki=pki,
        )
        self.config = load_config(self.config_path)
        self.interval = interval
        self.initial = [m.id for m in self.config.members][:nodes]
        start = self.config_path
        if joiners:
            start = initial_config(self.config_path, os.path.join(self.workdir, "parkd-initial.toml"), nodes)
        self.nodes = {
            m.id: node_daemon(start, m.id, self.workdir, *node_args) if m.id in self.initial
            else node_daemon(self.config_path, m.id, self.workdir, "--join", *node_args)
            for m in self.config.members
        }  # fmt: skip
        self.cameras = {}

    # ------------------------------------------------------------ processes

    def start_nodes(self, *ids):
        for node_id in ids or self.initial:
            self.nodes[node_id].start()
        for node_id in ids or self.initial:
            wait_listening(self.config, node_id, self.nodes[node_id])

    def start_all(self, cameras=None):
        """Every founding node, then a camera per lot (``CAMERAS`` unless given)."""
        self.start_nodes()
        for camera_id, lot in (cameras or CAMERAS).items():
            self.add_camera(camera_id, lot)
        return self

    def restart_node(self, node_id):
        self.nodes[node_id].start()
        wait_listening(self.config, node_id, self.nodes[node_id])

    def add_camera(self, camera_id, lot):
        if camera_id not in self.cameras:
            self.cameras[camera_id] = camera_daemon(self.config_path, camera_id, lot, self.workdir)
        return self.cameras[camera_id].start()

    def stop_all(self):
        for daemon in [*self.cameras.values(), *self.nodes.values()]:
            daemon.signal(signal.SIGTERM)
        codes = {d.name: d.stop(signalled=True) for d in [*self.cameras.values(), *self.nodes.values()]}
        return codes

    def kill_all(self):
        for daemon in [*self.cameras.values(), *self.nodes.values()]:
            daemon.kill()

    def alive_nodes(self):
        return [i for i, d in self.nodes.items() if d.alive()]

    # ------------------------------------------------------------ HTTP

    def operator_env(self) -> dict[str, str]:
        """The environment that gives parkctl the test PKI's operator certificate (empty without TLS)."""
        if self.config.tls is None:
            return {}
        pki = os.path.dirname(self.config.tls.ca)
        return {"PARKD_CERT": os.path.join(pki, "operator-admin.pem"), "PARKD_KEY": os.path.join(pki, "operator-admin.key")}

    def parkctl(self, *args) -> str:
        """Run ``parkctl --config <this cluster> ARGS`` as the test operator; its output (it must succeed)."""
        out, err = io.StringIO(), io.StringIO()
        code = ctl.main(["--config", self.config_path, *map(str, args)], out=out, err=err, environ=self.operator_env())
        assert code == 0, err.getvalue()
        return out.getvalue()

    def get(self, node_id, path, timeout=2.0):
        """GET a JSON document from a node's HTTP port (HTTPS with TLS), or None if it does not answer."""
        return get_json(self.config, node_id, path, timeout)

    def status(self, node_id, timeout=2.0):
        return self.get(node_id, "/api/v1/cluster?consistency=local", timeout)

    def leader(self, timeout=20.0, among=None):
        """The id of the one leader the live nodes agree on (waits for it)."""

        def agreed():
            ids = among or self.alive_nodes()
            statuses = [self.status(i) for i in ids]
            leaders = {s["node_id"] for s in statuses if s and s["role"] == "leader"}
            views = {s["leader_id"] for s in statuses if s}
            if len(leaders) == 1 and views == leaders:
                return leaders.pop()
            return None

        return wait_for(agreed, timeout, "one agreed leader")

    def wait_ready(self, timeout=30.0):
        """Wait until every live node answers ``/readyz`` with 200: a member in good standing
        (it applied the cluster's id), caught up, with room on its disk."""

        def is_ready(node_id):
            try:
                return http_request(self.config, node_id, "/readyz", timeout=2.0)[0] == 200
            except OSError:  # not answering (yet)
                return False

        return wait_for(lambda: all(is_ready(n) for n in self.alive_nodes()), timeout, "every node ready")

    # ------------------------------------------------------------ evidence

    def events(self, daemon, event):
        return checker.read_events(daemon.json_path, event)

    def db_path(self, node_id):
        return os.path.join(self.workdir, f"node-{node_id}", "node.db")

    def acked(self):
        """{(camera_id, incarnation, seq): (index, free)} from every camera's frame_acked events."""
        evidence = checker.collect([c.json_path for c in self.cameras.values()], {}, {})
        assert evidence.conflicting_acks == []
        return evidence.acked

    def applied(self, node_id):
        """{(camera_id, incarnation, seq): (index, free)} from the node's database."""
        return checker.read_frames(self.db_path(node_id))

    def wait_acks(self, count, since=0, timeout=30.0):
        """Wait until cameras logged at least ``count`` acks more than ``since``."""
        return wait_for(lambda: len(self.acked()) >= since + count, timeout, f"{count} more acks")

    def check_exactly_once(self, node_ids=None, timeout=30.0):
        """Every acked frame applied once on every node (``node_ids``), at the same
        index with the same result; identical histories; one leader per term;
        current values from the highest seq (:mod:`parkd.chaos.checker`).

        Cameras may still be running: a follower may not have applied the newest
        acked frame yet, so the evidence is collected again until it is clean or
        ``timeout`` runs out (a real violation -- a frame applied twice, a lost
        or changed result -- never goes away, so waiting hides none)."""
        node_ids = node_ids or list(self.nodes)
        last = {}

        def clean():
            last["evidence"] = evidence = checker.collect(
                [c.json_path for c in self.cameras.values()],
                {n: self.nodes[n].json_path for n in node_ids},
                {n: self.db_path(n) for n in node_ids},
            )
            last["violations"] = checker.check(evidence)
            return not last["violations"]

        try:
            wait_for(clean, timeout, "the run's evidence to be clean", interval=0.5)
        except Timeout:
            pass  # the assertion below names what is wrong
        assert last["violations"] == [], "\n".join(last["violations"])
        return last["evidence"].acked, last["evidence"].frames

    def check_converged(self, *node_ids, timeout=10.0):
        """:meth:`check_exactly_once`, then wait until ``node_ids`` hold the same frame history.

        Once the cameras stopped, a follower learns the newest commit with the
        leader's next heartbeat (100 ms): a frame committed as they stopped may
        not be applied there yet.  Returns the evidence's (acked, frames).
        """
        last = {}

        def same():
            last["acked"], last["frames"] = self.check_exactly_once()
            return all(last["frames"][n] == last["frames"][node_ids[0]] for n in node_ids)

        try:
            wait_for(same, timeout, f"nodes {node_ids} to hold the same history", interval=0.2)
        except Timeout:
            pass  # the caller's assertion shows the difference
        return last["acked"], last["frames"]

    def wait_for_ack_after(self, moment, timeout=30.0):
        """Wall-clock time of the first ack of a frame captured after ``moment``.

        Frames captured earlier may be acked after ``moment`` from entries the
        old leader had already committed; they say nothing about failover.
        """

        def first():
            times = [
                e["log_time"]
                for camera in self.cameras.values()
                for e in self.events(camera, "frame_acked")
                if (e.get("captured_at") or 0) > moment
            ]
            return min(times) if times else None

        return wait_for(first, timeout, "an ack after the kill")

    @staticmethod
    def wait(predicate, timeout, what):
        return wait_for(predicate, timeout, what)
