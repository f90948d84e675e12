"""Hostile input on real processes (issue 7): every port of a leader and a follower
gets garbage, oversized length prefixes, messages for the other port, random
envelopes and a burst of bad HTTP requests while a camera sends frames.

Afterwards every node is alive, the camera is still acknowledged, every acked
frame is applied exactly once everywhere, nothing but the camera's frames was
applied on any node, and no log holds a traceback.  The in-process fuzzers
(tests/fuzz) search the same inputs far more thoroughly; this checks that the
running daemons behave as the units do.

The cluster runs in plaintext (``insecure = true``), so the hostile bytes reach
the raft and client protocols themselves; what TLS refuses before that is
tests/process/test_trust.py's job.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import sys
from pathlib import Path

from parkd.chaos import checker
from parkd.proto import parkd_pb2 as pb
from parkd.raft import messages as m
from parkd.raft.types import Entry, EntryKind
from parkd.wire import raft_to_envelope, split_envelopes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
from fuzzkit import CLIENT_KINDS, RAFT_KINDS, frame, framed, random_envelope  # noqa: E402  (tests/fuzz)

CAMERA = 1
OUTSIDERS = (4, 99, 2**32 - 1)  # node ids that are not members


def exchange(address, data: bytes, wait: float = 1.0) -> tuple[bytes, bool]:
    """Send ``data`` on a fresh connection; (what came back, whether the node closed it)."""
    with socket.create_connection((address.host, address.port), timeout=wait) as s:
        try:
            s.sendall(data)
        except OSError:  # the node may close before reading everything
            return b"", True
        received = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return received, False
            except OSError:
                return received, True
            if not chunk:
                return received, True
            received += chunk


def envelopes_in(data: bytes) -> list[pb.Envelope]:
    """Parse what a protocol wrote (parkd.wire.split_envelopes)."""
    return split_envelopes(data)


def raft(message) -> bytes:
    return frame(raft_to_envelope(message))


# ------------------------------------------------------------------ the client port


def attack_client_port(address, rng: random.Random) -> None:
    hello = frame(pb.Envelope(hello=pb.Hello(camera_id=2, lot="north")))

    def submit(**fields):
        return frame(pb.Envelope(submit_frame=pb.SubmitFrame(**{"camera_id": 2, "lot": "north", "seq": 1,
                                                                "captured_at": 1.7e9, **fields})))  # fmt: skip

    closed_with = {
        b"\xff" * 64: pb.Error.TOO_LARGE,
        struct.pack("!I", 2**31): pb.Error.TOO_LARGE,
        framed(b"\xff\xff\xff\xff"): pb.Error.MALFORMED,
        framed(b""): pb.Error.MALFORMED,
        raft(m.TimeoutNow(10**6, 1, 2)): pb.Error.NOT_ALLOWED,  # a raft message: wrong port
        frame(pb.Envelope(frame_ack=pb.FrameAck(camera_id=CAMERA, seq=1))): pb.Error.NOT_ALLOWED,
        frame(pb.Envelope(hello=pb.Hello(camera_id=2, lot="\x00" * 200_000))): pb.Error.UNKNOWN_LOT,
    }
    for data, code in closed_with.items():
        answer, closed = exchange(address, data)
        assert closed and [e.error.code for e in envelopes_in(answer)] == [code], (data[:40], answer[:200])
    # A camera that said Hello and sends only bad frames: each refused, the connection kept.
    bad_frames = [submit(lot="south"), submit(seq=0), submit(seq=2**64 - 1), submit(captured_at=float("nan")),
                  submit(captured_at=float("inf")), submit(camera_id=3), submit(payload=b"x" * (2 << 20))]  # fmt: skip
    answer, closed = exchange(address, hello + b"".join(bad_frames), wait=1.0)
    codes = [e.error.code for e in envelopes_in(answer)]
    assert not closed and len(codes) == len(bad_frames) and pb.Error.PAYLOAD_TOO_LARGE in codes, codes
    # Random envelopes with fields at their extremes (no known lot: nothing can be a valid frame).
    for _ in range(8):
        stream = b"".join(frame(random_envelope(rng, CLIENT_KINDS + ["frame_ack", "append_entries"]))
                          for _ in range(rng.randint(1, 6)))  # fmt: skip
        exchange(address, stream, wait=0.2)


# ------------------------------------------------------------------ the raft port


def attack_raft_port(address, node_id: int, term: int, rng: random.Random) -> None:
    """Bad input is cut off at once; well-formed input is either stale, from outsiders
    (whose replies carry no authority) or a pre-vote, so the leader stays."""
    refused = [
        b"\xff" * 64,
        struct.pack("!I", 2**31),
        framed(b"\xff\xff\xff\xff"),
        framed(b""),
        frame(pb.Envelope(hello=pb.Hello(camera_id=2, lot="north"))),  # a client message: wrong port
        raft(m.AppendEntries(2**63, 99, node_id, 0, 0, (), 0)),  # a term SQLite cannot store (F2)
        raft(m.TimeoutNow(2**64 - 1, 1, node_id)),
        raft(m.VoteRequest(term, 0, node_id, 10**6, term)),  # node id 0 (F2)
        raft(m.AppendEntries(term, 99, node_id, 0, 0, (Entry(5, term),), 5)),  # a hole in the log (F3)
        raft(m.AppendEntries(term + 1, 99, node_id, 0, 0, (Entry(1, term + 1, EntryKind.CONFIG, b"zz"),), 1)),  # F4
    ]
    unknown_kind = raft_to_envelope(m.AppendEntries(term - 1, 99, node_id, 0, 0, (Entry(1, term - 1),), 0))
    unknown_kind.append_entries.entries[0].kind = 9
    refused.append(frame(unknown_kind))
    for data in refused:
        answer, closed = exchange(address, data)
        assert closed and answer == b"", data[:40]  # the raft port aborts, without an Error
    harmless = [
        m.AppendResponse(term + 50, 99, node_id, True, 10**6),  # outsiders' replies carry no authority
        m.VoteResponse(term + 50, 4, node_id, True),
        m.ReadIndexRequest(term + 50, 99, node_id, 7),
        m.SnapshotResponse(term + 50, 99, node_id, 5, 0, True),
        m.VoteRequest(term + 3, 99, node_id, 10**6, term + 3, pre_vote=True),  # refused: the leader is alive
        m.Propose(max(term - 1, 0), 99, node_id, (b"garbage", b"\x01" * 30)),  # committed, rejected when applied
        m.InstallSnapshot(max(term - 1, 0), 99, node_id, 10**6, term, 0, b"junk", True, (1, 2, 3)),
    ]
    exchange(address, b"".join(raft(x) for x in harmless), wait=0.2)
    # Random well-formed raft messages of stale terms, from anyone to anyone.
    for _ in range(10):
        stream = b""
        for _ in range(rng.randint(1, 5)):
            envelope = random_envelope(rng, RAFT_KINDS)
            body = getattr(envelope, envelope.WhichOneof("body"))
            body.term = rng.randrange(term)
            for entry in getattr(body, "entries", ()):
                entry.term = min(entry.term, body.term)
            stream += frame(envelope)
        exchange(address, stream, wait=0.2)


# ------------------------------------------------------------------ HTTP

BAD_PATHS = [
    "/api/v1/cameras/0", "/api/v1/cameras/-1", "/api/v1/cameras/4294967296", "/api/v1/cameras/99999999999999999999",
    "/api/v1/cameras/%ff", "/api/v1/cameras/%EF%BC%97", "/api/v1/cameras/1/frames?since=-1",
    "/api/v1/cameras/1/frames?limit=0", "/api/v1/cameras/1/frames?limit=10001", "/api/v1/cameras/1/frames?since=1e3",
    "/api/v1/cameras/1/frames?since=9223372036854775808", "/api/v1/cameras/1/frames?since=1&since=2",
    "/api/v1/lots?consistency=eventual", "/api/v1/lots?consistency=", "/api/v1/lots?x=1", "/api/v1/lots?%zz=%zz",
    "/api/v1/lots/west", "/api/v1/lots/%00", "/api/v1/lots/north/history?window=0",
    "/api/v1/lots/north/history?points=1001", "/api/v1/cameras?lot=%ff", "/api/v1/nothing", "/api/v2/lots",
    "/api/v1/cameras/7/frames/extra", "/api/v1/" + "a/" * 200, "/api/v1/lots?" + "a=1&" * 300,
]  # fmt: skip


def get(address, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection(address.host, address.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        conn.close()


def attack_http(address, rng: random.Random) -> int:
    requests = [("GET", path, None) for path in BAD_PATHS]
    requests += [(method, "/api/v1/lots", None) for method in ("POST", "PUT", "DELETE", "PATCH")]
    requests += [("POST", f"/api/v1/admin/{op}", body) for op in ("add-node", "remove-node", "nothing")
                 for body in (b"{", b"[]", b'{"id": "x"}', b'{"id": 0}', b"\xff" * 10)]  # fmt: skip
    for _ in range(20):
        junk = "".join(rng.choice("abc019%-_.~/?&=;+") for _ in range(rng.randint(1, 30)))
        requests.append(("GET", "/api/v1/" + junk, None))
    for method, path, body in requests:
        headers = {"Content-Type": "application/json"} if body is not None else None
        status, kind, data = get(address, method, path, body, headers)
        assert status in (200, 400, 404, 405, 409, 413, 415, 421, 503), (method, path, status, data[:200])
        assert kind.startswith("application/json"), (path, kind)
        document = json.loads(data)
        assert status == 200 or isinstance(document.get("error"), str), (path, document)
    return len(requests)


# ------------------------------------------------------------------ the test


def test_hostile_input_on_every_port_leaves_the_cluster_serving(make_cluster):
    cluster = make_cluster(lots={"north": 100}, tls=False)  # the bytes reach the ports' protocols
    cluster.start_nodes()
    cluster.add_camera(CAMERA, "north")
    leader = cluster.leader()
    cluster.wait_acks(5)
    follower = min(n for n in cluster.nodes if n != leader)
    term = cluster.status(leader)["term"]
    rng = random.Random(7)

    for node_id in (leader, follower):
        member = cluster.config.member(node_id)
        attack_client_port(member.client, rng)
        attack_raft_port(member.raft, node_id, term, rng)
        assert attack_http(member.http, rng) >= 60
    cluster.leader()  # (the same one, unless the machine is so slow that a heartbeat came late)

    # One forged append of a higher term that would rewrite committed entries (F5): the
    # follower takes the term (Raft) and refuses the rest; the cluster elects again.
    forged = raft(m.AppendEntries(term + 1, 99, follower, 0, 0, (Entry(1, term + 1, data=b"forged"),), 1))
    answer, closed = exchange(cluster.config.member(follower).raft, forged)
    assert closed and answer == b""

    assert sorted(cluster.alive_nodes()) == sorted(cluster.nodes)
    cluster.leader()
    cluster.wait_acks(10, since=len(cluster.acked()))
    cluster.cameras[CAMERA].stop()
    cluster.check_exactly_once()
    for node_id in cluster.nodes:
        applied = checker.read_frames(cluster.db_path(node_id))
        assert applied and {camera for camera, *_ in applied} == {CAMERA}, node_id
    for node_id, daemon in cluster.nodes.items():
        text = daemon.log_text()
        assert "Traceback" not in text and "Unhandled Error" not in text, f"node {node_id}:\n{text[-3000:]}"
        if node_id in (leader, follower):
            assert text.count("closing raft connection") >= 10 and text.count("closing client connection") >= 7
