"""Trust on real processes (CONTRACT §9): every refusal is clear, and honest cameras never notice.

A 3-node TLS cluster with a camera per lot runs throughout; hostile clients
(no TLS, another CA, an expired or revoked certificate, a certificate of the
wrong identity for what it sends, a handshake that never finishes, a burst of
1,000 bad handshakes) come and go.  After each, the refusal is one log line on
the node (a summary under a flood), the honest cameras are still acked, and at
the end every acked frame is applied exactly once on every node.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time

import pytest

from harness import Cluster
from parkd.launcher import wait_for
from parkd.proto import parkd_pb2 as pb
from parkd.raft import messages as m
from parkd.wire import frame_envelope, raft_to_envelope

HANDSHAKE_TIMEOUT = 1.0  # seconds: the nodes cut a handshake that does not finish by then


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, cluster_pki):
    made = Cluster(tmp_path_factory.mktemp("trust"), pki=cluster_pki.dir, interval=0.2,
                   node_args=("--tls-handshake-timeout", str(HANDSHAKE_TIMEOUT)))  # fmt: skip
    try:
        made.start_all()
        made.leader()
        made.wait_acks(6)
        yield made
    finally:
        made.stop_all()


def connect(address, files=None, ca=None, timeout=5.0):
    """A TLS connection to ``address`` presenting ``files`` (TrustFiles), or plain TCP without ``ca``."""
    sock = socket.create_connection((address.host, address.port), timeout=timeout)
    if ca is None:
        return sock
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False  # node certificates name 127.0.0.1; identity is checked by the node
    if files is not None:
        context.load_cert_chain(files.cert, files.key)
    return context.wrap_socket(sock)


def exchange(sock, *envelopes, wait=5.0) -> list[pb.Envelope]:
    """Send ``envelopes``, then read what comes back until the node closes (or ``wait`` passes)."""
    received, buffer = [], b""
    try:
        for envelope in envelopes:
            sock.sendall(frame_envelope(envelope))
        sock.settimeout(wait)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">I", buffer[:4])[0]:
                size = struct.unpack(">I", buffer[:4])[0]
                received.append(pb.Envelope.FromString(buffer[4 : 4 + size]))
                buffer = buffer[4 + size :]
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
        pass  # a refused handshake shows as an alert or a reset
    finally:
        sock.close()
    return received


def hello(camera_id, lot="north"):
    return pb.Envelope(hello=pb.Hello(camera_id=camera_id, lot=lot))


def forged_frame(camera_id, seq, lot="north"):
    frame = pb.SubmitFrame(camera_id=camera_id, lot=lot, seq=seq, captured_at=time.time(), payload=b"forged")
    return pb.Envelope(submit_frame=frame)


def node_log(cluster, node_id) -> str:
    return cluster.nodes[node_id].log_text()


def log_mentions(cluster, node_id, text, timeout=10.0):
    return wait_for(lambda: text in node_log(cluster, node_id), timeout, f"node {node_id} to log {text!r}")


def still_acked(cluster):
    """The honest cameras keep being acked (a few more acks within a bounded time)."""
    cluster.wait_acks(3, since=len(cluster.acked()), timeout=15)


def applied_seqs(cluster, node_id, camera_id):
    return {seq for (camera, _incarnation, seq) in cluster.applied(node_id) if camera == camera_id}


# ------------------------------------------------------------------ no TLS, wrong CA, expired, revoked


def test_the_demos_forged_frame_over_plain_tcp_is_refused(cluster):
    """The issue's attack: Hello(camera 1) + SubmitFrame(seq 2**40) from any process on the machine."""
    leader = cluster.leader()
    answers = exchange(connect(cluster.config.member(leader).client), hello(1), forged_frame(1, 2**40))
    assert answers == []  # no TLS: the bytes never reach the client protocol
    log_mentions(cluster, leader, "client port: TLS with 127.0.0.1")
    assert 2**40 not in applied_seqs(cluster, leader, 1)
    still_acked(cluster)


@pytest.mark.parametrize("port", ["raft", "http"])
def test_plain_tcp_to_the_other_tls_ports_is_refused(cluster, port):
    node = cluster.leader()
    sock = connect(getattr(cluster.config.member(node), port))
    data = b"GET /api/v1/lots HTTP/1.0\r\n\r\n" if port == "http" else frame_envelope(hello(1))
    sock.sendall(data)
    assert exchange(sock) == []
    log_mentions(cluster, node, f"{'https' if port == 'http' else 'raft port'}: TLS with 127.0.0.1")


@pytest.mark.parametrize(
    "who, reason",
    [("other", "unable to get local issuer certificate"), ("expired", "certificate has expired"),
     ("revoked", "certificate revoked")],
)  # fmt: skip
def test_a_certificate_the_node_must_not_trust_is_refused(cluster, cluster_pki, who, reason):
    files = {"other": cluster_pki.other_files("camera-1"), "expired": cluster_pki.files(cluster_pki.expired),
             "revoked": cluster_pki.files(cluster_pki.revoked)}[who]  # fmt: skip
    node = cluster.leader()
    sock = connect(cluster.config.member(node).client, files, ca=cluster.config.tls.ca)
    assert exchange(sock, hello(1), forged_frame(1, 2**40)) == []
    log_mentions(cluster, node, reason)
    assert 2**40 not in applied_seqs(cluster, node, 1)
    still_acked(cluster)


# ------------------------------------------------------------------ the right CA, the wrong identity


def test_a_camera_may_speak_only_for_itself(cluster, cluster_pki):
    node = cluster.leader()
    sock = connect(cluster.config.member(node).client, cluster_pki.files("camera-5"), ca=cluster.config.tls.ca)
    answers = exchange(sock, hello(1), forged_frame(1, 2**40))
    assert [a.error.code for a in answers] == [pb.Error.PERMISSION_DENIED]
    assert "camera-5 may not speak for camera 1" in answers[0].error.message
    log_mentions(cluster, node, "camera-5 may not speak for camera 1")
    assert 2**40 not in applied_seqs(cluster, node, 1)


def test_a_node_certificate_sends_no_frames(cluster, cluster_pki):
    node = cluster.leader()
    sock = connect(cluster.config.member(node).client, cluster_pki.files("node-2"), ca=cluster.config.tls.ca)
    answers = exchange(sock, hello(1), forged_frame(1, 2**40))
    assert [a.error.code for a in answers] == [pb.Error.PERMISSION_DENIED]
    assert "node-2 is not a camera" in answers[0].error.message


def test_a_camera_certificate_cannot_reach_the_raft_port(cluster, cluster_pki):
    node = cluster.leader()
    sock = connect(cluster.config.member(node).raft, cluster_pki.files("camera-1"), ca=cluster.config.tls.ca)
    vote = m.VoteRequest(10**6, 1, node, 10**9, 10**6)
    assert exchange(sock, raft_to_envelope(vote)) == []
    log_mentions(cluster, node, "camera-1 may not connect here (only node-*)")
    assert cluster.status(node)["term"] < 10**6


def test_a_node_may_send_only_its_own_messages(cluster, cluster_pki):
    """node-2's certificate, messages claiming to be node 1's: closed, logged, no effect."""
    leader = cluster.leader()
    victim = next(i for i in cluster.nodes if i not in (leader, 2))
    term = cluster.status(victim)["term"]
    sock = connect(cluster.config.member(victim).raft, cluster_pki.files("node-2"), ca=cluster.config.tls.ca)
    forged = m.AppendEntries(term + 100, 1, victim, 0, 0, (), 0)  # a higher term from "node 1"
    assert exchange(sock, raft_to_envelope(forged)) == []
    log_mentions(cluster, victim, "AppendEntries from node 1 on a connection of node-2")
    assert cluster.status(victim)["term"] < term + 100
    still_acked(cluster)


# ------------------------------------------------------------------ slow and many


def test_a_handshake_that_never_finishes_is_cut_and_stalls_nothing(cluster):
    node = cluster.leader()
    sock = connect(cluster.config.member(node).client)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then silence
    started = time.monotonic()
    sock.settimeout(HANDSHAKE_TIMEOUT + 10)
    try:
        assert sock.recv(1024) == b""
    except ConnectionError:
        pass
    waited = time.monotonic() - started
    assert HANDSHAKE_TIMEOUT * 0.8 <= waited <= HANDSHAKE_TIMEOUT + 5, waited
    # One line, or (earlier tests refused handshakes in the same 10 s window) counted in the summary.
    lines = (f"TLS handshake not finished within {HANDSHAKE_TIMEOUT:g} s", "more failed TLS handshakes in the last")
    wait_for(lambda: any(line in node_log(cluster, node) for line in lines), 15, "the refusal logged")
    still_acked(cluster)


def test_a_burst_of_bad_handshakes_is_summed_up_and_loses_no_acked_frame(cluster, cluster_pki):
    node = cluster.leader()
    address = cluster.config.member(node).client
    files, ca = cluster_pki.other_files("camera-1"), cluster.config.tls.ca
    before = len(cluster.acked())
    failures = []

    def attack(count):
        for _ in range(count):
            try:
                exchange(connect(address, files, ca=ca, timeout=10), hello(1), wait=2)
            except OSError as e:
                failures.append(e)

    threads = [threading.Thread(target=attack, args=(125,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert len(failures) < 1000  # the node answered (refused) the handshakes, it did not just drop them
    log_mentions(cluster, node, "more failed TLS handshakes in the last", timeout=20)
    lines = node_log(cluster, node).count("unable to get local issuer certificate")
    assert lines < 200, f"{lines} lines for 1,000 refusals: not rate-limited"
    cluster.wait_acks(5, since=before, timeout=20)
    cluster.check_exactly_once()


def test_a_camera_with_the_right_certificate_is_acked(cluster):
    """The other side of every refusal above: the honest cameras' frames arrive exactly once."""
    acked, _ = cluster.check_exactly_once()
    assert {camera for camera, _, _ in acked} >= {1, 2, 3}
    assert os.path.exists(cluster.config.tls.ca)
