"""The HTTP API, metrics and parkctl against a real 3-node cluster (twistd processes).

One cluster for the module; the last test takes the majority down.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from parkd.launcher import http_request
from parkd.proto import parkd_pb2 as pb

pytestmark = [pytest.mark.process, pytest.mark.slow]


def http_get(cluster, node_id, path, timeout=5.0):
    """(status, headers, body bytes) of a GET to a node, whatever the status."""
    return http_request(cluster.config, node_id, path, timeout)


def get_json(cluster, node_id, path):
    status, _, body = http_get(cluster, node_id, path)
    assert status == 200, (node_id, path, status, body)
    return json.loads(body)


def metrics(cluster, node_id) -> dict:
    status, headers, body = http_get(cluster, node_id, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


class RawCamera:
    """A camera speaking the client protocol directly: send one frame, wait for its ack.

    With ``tls`` (the cluster's ``[tls]`` settings) it speaks TLS with its own
    certificate (``camera-ID`` of the test PKI).
    """

    def __init__(self, address, camera_id, lot, tls=None):
        self.sock = socket.create_connection((address.host, address.port), timeout=5)
        if tls is not None:
            pki = os.path.dirname(tls.ca)
            context = ssl.create_default_context(cafile=tls.ca)
            context.load_cert_chain(os.path.join(pki, f"camera-{camera_id}.pem"), os.path.join(pki, f"camera-{camera_id}.key"))
            self.sock = context.wrap_socket(self.sock, server_hostname=address.host)
        self.camera_id, self.lot = camera_id, lot
        self.buffer = b""
        self.send(pb.Envelope(hello=pb.Hello(camera_id=camera_id, lot=lot)))

    def send(self, envelope):
        data = envelope.SerializeToString()
        self.sock.sendall(struct.pack(">I", len(data)) + data)

    def receive(self) -> pb.Envelope:
        while True:
            if len(self.buffer) >= 4:
                (size,) = struct.unpack(">I", self.buffer[:4])
                if len(self.buffer) >= 4 + size:
                    envelope = pb.Envelope.FromString(self.buffer[4 : 4 + size])
                    self.buffer = self.buffer[4 + size :]
                    return envelope
            chunk = self.sock.recv(65536)
            assert chunk, "node closed the connection"
            self.buffer += chunk

    def frame(self, seq) -> pb.FrameAck:
        frame = pb.SubmitFrame(camera_id=self.camera_id, lot=self.lot, seq=seq, captured_at=time.time(),
                               payload=os.urandom(16))  # fmt: skip
        self.send(pb.Envelope(submit_frame=frame))
        envelope = self.receive()
        assert envelope.WhichOneof("body") == "frame_ack", envelope
        return envelope.frame_ack

    def close(self):
        self.sock.close()


def test_every_node_serves_every_endpoint(live_cluster):
    cluster = live_cluster
    leader = cluster.leader()

    # The fixture waited for 9 acks in all; this test reads more than that promises,
    # which a loaded machine may not have reached yet: frames 1 and 2 of camera 1 and
    # frames of every camera acked, and a match index for every member on the leader
    # (a follower whose link to the leader is still in its start-up reconnect backoff
    # has answered no append yet).
    def ready():
        acked = cluster.acked()
        view = cluster.get(leader, "/api/v1/cluster?consistency=local")
        return (
            {(1, 1), (1, 2)} <= {(camera_id, seq) for camera_id, _, seq in acked}
            and {camera_id for camera_id, *_ in acked} == {1, 2, 3}
            and view is not None
            and all(m["match_index"] for m in view["members"])
        )

    cluster.wait(ready, 30, "frames of every camera acked and a match index for every member")

    # A camera is active while its last frame is younger than 3 × 0.1 s (CONTRACT §5): on
    # a loaded machine one read can find a camera's newest applied frame older than
    # that, so each node gets a bounded while to show all three active.
    def all_active(node_id):
        cameras = get_json(cluster, node_id, "/api/v1/cameras")["cameras"]
        return cameras if {c["status"] for c in cameras} == {"active"} else None

    for node_id in cluster.nodes:
        view = get_json(cluster, node_id, "/api/v1/cluster")
        assert view["node_id"] == node_id and view["leader_id"] == leader
        assert [m["id"] for m in view["members"]] == [1, 2, 3]
        assert (view["role"] == "leader") == (node_id == leader)
        matches = [m["match_index"] for m in view["members"]]
        assert all(matches) if node_id == leader else matches == [None] * 3
        lots = get_json(cluster, node_id, "/api/v1/lots")["lots"]
        assert {lot["id"]: lot["capacity"] for lot in lots} == {"north": 100, "south": 60, "east": 250}
        assert all(lot["free"] is not None and lot["cameras"] == 1 for lot in lots)
        cameras = cluster.wait(lambda: all_active(node_id), 10, f"node {node_id} to show every camera active")
        assert [(c["camera_id"], c["lot"], c["status"]) for c in cameras] == [
            (1, "north", "active"), (2, "south", "active"), (3, "east", "active")]  # fmt: skip
        frames = get_json(cluster, node_id, "/api/v1/cameras/1/frames?since=0&limit=2")
        assert [f["seq"] for f in frames["frames"]] == [1, 2] and frames["next_since"] == 2
        history = get_json(cluster, node_id, "/api/v1/lots/north/history")
        assert history["points"] and history["points"][-1]["free"] <= 100
        status, headers, page = http_get(cluster, node_id, "/")
        assert status == 200 and b"dashboard.js" in page
        status, _, body = http_get(cluster, node_id, "/api/v1/cameras/x/frames")
        assert status == 400 and "camera id" in json.loads(body)["error"]
        status, _, body = http_get(cluster, node_id, "/api/v1/cameras/999")
        assert status == 404 and json.loads(body) == {"error": "unknown camera 999"}


def test_a_follower_read_right_after_an_ack_includes_the_frame(live_cluster):
    """Linearizable: the ack came from the leader; the follower is asked at once, every time."""
    cluster = live_cluster
    leader = cluster.leader()
    follower = next(i for i in cluster.nodes if i != leader)
    camera = RawCamera(cluster.config.member(leader).client, 50, "north", cluster.config.tls)
    local_misses = 0
    try:
        for seq in range(1, 31):
            ack = camera.frame(seq)
            assert ack.seq == seq
            seen = get_json(cluster, follower, "/api/v1/cameras/50")
            assert seen["last_seq"] >= seq, (seq, seen)
            frames = get_json(cluster, follower, f"/api/v1/cameras/50/frames?since={seq - 1}")["frames"]
            assert frames[0] == {"seq": seq, "incarnation": 0, "free": ack.free,
                                 "captured_at": frames[0]["captured_at"], "index": ack.index}  # fmt: skip
            ack = camera.frame(seq + 1000)
            status, _, body = http_get(cluster, follower, "/api/v1/cameras/50?consistency=local")
            local_misses += status != 200 or json.loads(body)["last_seq"] < seq + 1000
    finally:
        camera.close()
    # Not asserted (timing): how often a local read on the follower missed the frame just acked.
    print(f"local reads on the follower right after an ack that missed it: {local_misses}/30")


def test_concurrent_reads_batched_on_leader_and_follower_see_every_write_acked_before_them(live_cluster):
    """§6.4 batching stays linearizable: 8 keep-alive readers (4 on the leader, 4 on a
    follower) read while a camera writes; each read must show at least the newest
    frame acked before the read started, though reads share read index requests."""
    cluster = live_cluster
    leader = cluster.leader()
    follower = next(i for i in cluster.nodes if i != leader)
    camera = RawCamera(cluster.config.member(leader).client, 51, "south", cluster.config.tls)
    camera.frame(1)
    lock = threading.Lock()
    acked, done, reads, stale = [1], threading.Event(), [], []

    def reader(node_id):
        address = cluster.config.member(node_id).http
        context = ssl.create_default_context(cafile=cluster.config.tls.ca)
        connection = http.client.HTTPSConnection(address.host, address.port, timeout=5, context=context)
        try:
            while not done.is_set():
                with lock:
                    floor = acked[0]  # acked before this read starts
                connection.request("GET", "/api/v1/cameras/51")
                response = connection.getresponse()
                body = response.read()
                seen = json.loads(body)["last_seq"] if response.status == 200 else None
                with lock:
                    reads.append(node_id)
                    if seen is None or seen < floor:
                        stale.append((node_id, floor, response.status, body[:200]))
        finally:
            connection.close()

    threads = [threading.Thread(target=reader, args=(node,), daemon=True) for node in [leader, follower] * 4]
    for thread in threads:
        thread.start()
    try:
        for seq in range(2, 61):
            assert camera.frame(seq).seq == seq
            with lock:
                acked[0] = seq
    finally:
        done.set()
        camera.close()
        for thread in threads:
            thread.join(10)
    assert stale == []
    assert reads.count(leader) >= 20 and reads.count(follower) >= 20, (reads.count(leader), reads.count(follower))


def test_metrics_on_a_live_cluster(live_cluster):
    cluster = live_cluster
    leader = cluster.leader()
    before = metrics(cluster, leader)
    cluster.wait_acks(6, since=len(cluster.acked()))
    for node_id in cluster.nodes:
        m = metrics(cluster, node_id)
        is_leader = node_id == leader
        assert m["parkd_is_leader", ()] == int(is_leader)
        assert m["parkd_role", (("role", "leader"),)] == int(is_leader)
        assert m["parkd_leader_id", ()] == leader
        assert m["parkd_term", ()] >= 1
        assert m["parkd_commit_index", ()] >= m["parkd_applied_index", ()] > 0
        assert m["parkd_leader_changes_total", ()] >= 1
        assert m["parkd_sqlite_commit_seconds_count", ()] > 0
        for lot in ("north", "south", "east"):
            assert m["parkd_frames_applied_total", (("lot", lot),)] > 0
        if is_leader:
            for peer in cluster.nodes:
                assert m["parkd_peer_match_index", (("peer", str(peer)),)] > 0
                assert m["parkd_peer_replication_lag", (("peer", str(peer)),)] >= 0
        for peer in cluster.nodes:
            if peer != node_id:
                assert m["parkd_peer_connected", (("peer", str(peer)),)] == 1
    # Cameras are connected somewhere, and their acks were timed there.
    total = [metrics(cluster, n) for n in cluster.nodes]
    assert sum(m["parkd_connected_cameras", ()] for m in total) == 3
    assert sum(m["parkd_ack_latency_seconds_count", ()] for m in total) > 0
    assert sum(m["parkd_proposals_total", (("outcome", "accepted"),)] for m in total) > 0
    after = metrics(cluster, leader)
    assert after["parkd_commit_index", ()] > before["parkd_commit_index", ()]


def test_parkctl_against_the_cluster(live_cluster):
    cluster = live_cluster
    leader = cluster.leader()
    parkctl = os.path.join(os.path.dirname(sys.executable), "parkctl")

    def run(*args):
        return subprocess.run([parkctl, *args], capture_output=True, text=True, timeout=30)

    done = run("--config", cluster.config_path, "status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2].startswith(f"leader: node {leader}, term ")
    assert lines[-1] == f"cluster: {cluster.status(leader)['cluster_id']}"  # CONTRACT §10
    assert sum("leader *" in line for line in lines) == 1
    one = str(cluster.config.member(leader).http)
    done = run("--cluster", one, "--tls-ca", cluster.config.tls.ca, "--json", "status")
    assert done.returncode == 0 and json.loads(done.stdout)["leader_id"] == leader
    assert [n["reachable"] for n in json.loads(done.stdout)["nodes"]] == [True] * 3
    done = run("--config", cluster.config_path, "--json", "lots")
    assert done.returncode == 0 and len(json.loads(done.stdout)["lots"]) == 3
    done = run("--config", cluster.config_path, "cameras")
    assert done.returncode == 0
    assert {line.split()[0] for line in done.stdout.splitlines()[1:]} >= {"1", "2", "3"}


def test_without_a_majority_reads_are_503_and_local_reads_still_answer(live_cluster):
    cluster = live_cluster
    leader = cluster.leader()
    survivor = next(i for i in cluster.nodes if i != leader)
    for node_id in cluster.nodes:
        if node_id != survivor:
            cluster.nodes[node_id].kill()

    def no_leader():
        status, headers, body = http_get(cluster, survivor, "/api/v1/lots")
        return (status, headers, body) if status == 503 else None

    status, headers, body = cluster.wait(no_leader, 20, "a 503 from the node left alone")
    assert headers["retry-after"] == "1"
    assert "error" in json.loads(body)
    cluster.wait(lambda: get_json(cluster, survivor, "/api/v1/cluster")["leader_id"] is None, 20, "no leader known")
    status, headers, body = http_get(cluster, survivor, "/api/v1/lots")
    assert status == 503 and json.loads(body) == {"error": "no leader known; try again shortly"}
    local = get_json(cluster, survivor, "/api/v1/lots?consistency=local")["lots"]
    assert all(lot["free"] is not None for lot in local)
    parkctl = os.path.join(os.path.dirname(sys.executable), "parkctl")
    address = str(cluster.config.member(survivor).http)
    done = subprocess.run([parkctl, "--cluster", address, "--tls-ca", cluster.config.tls.ca, "lots"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("parkctl: no node could answer (")
    assert done.stderr.count("\n") == 1
