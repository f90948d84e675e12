"""The etcd comparison of ``make bench``, without an etcd: the client's requests and parsing, the
failover arithmetic, and how bench.py combines rounds and prints etcd next to parkd.

The benchmark itself (benchmarks/peer_etcd.py against a real 3-member etcd) is not part of
``make test``; it runs with ``python benchmarks/bench.py --only etcd``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import bench  # noqa: E402
import etcd_client  # noqa: E402
import peer_etcd  # noqa: E402
from etcd_client import EtcdError  # noqa: E402

from parkd.trust import TrustFiles  # noqa: E402

# What etcd 3.4.23's gateway and binaries print (recorded from Debian's etcd-server/etcd-client).
STATUS_REPLY = {
    "header": {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437", "revision": "7",
               "raft_term": "2"},
    "version": "3.4.23", "dbSize": "20480", "leader": "10276657743932975437", "raftIndex": "12", "raftTerm": "2",
}  # fmt: skip
NO_LEADER = b'{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}'
ETCD_VERSION = "etcd Version: 3.4.23\nGit SHA: Not provided (use ./build instead of go build)\nGo Version: go1.19.8\n"
ETCDCTL_VERSION = "etcdctl version: 3.4.23\nAPI version: 3.4\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_put_body_carries_key_and_value_in_base64():
    body = etcd_client.put_body(b"/k/\x00", b"v" * 100)
    assert base64.b64decode(body["key"]) == b"/k/\x00"
    assert base64.b64decode(body["value"]) == b"v" * 100
    assert json.loads(json.dumps(body)) == body


def test_range_body_asks_for_a_linearizable_read_by_default():
    assert etcd_client.range_body(b"/k") == {"key": b64(b"/k"), "serializable": False}
    assert etcd_client.range_body(b"/k", serializable=True)["serializable"] is True


def test_parse_reply_returns_the_reply():
    assert etcd_client.parse_reply(200, json.dumps(STATUS_REPLY).encode()) == STATUS_REPLY


@pytest.mark.parametrize(
    "status, body, message",
    [
        (503, NO_LEADER, "HTTP 503: etcdserver: no leader"),
        (200, NO_LEADER, "HTTP 200: etcdserver: no leader"),  # an error body is an error, whatever the status
        (502, b"Bad Gateway", "HTTP 502: not JSON: b'Bad Gateway'"),
        (200, b"[1, 2]", "HTTP 200: not a JSON object"),
        (404, b"{}", "HTTP 404: no message"),
    ],
)
def test_parse_reply_raises_etcd_error(status, body, message):
    with pytest.raises(EtcdError) as caught:
        etcd_client.parse_reply(status, body)
    assert str(caught.value).startswith(message)


def test_range_value_finds_the_key_and_decodes_it():
    reply = {"header": {}, "count": "1",
             "kvs": [{"key": b64(b"/k"), "value": b64(b"frame"), "create_revision": "2", "mod_revision": "2"}]}  # fmt: skip
    assert etcd_client.range_value(reply, b"/k") == b"frame"
    assert etcd_client.range_value(reply, b"/other") is None


def test_range_value_of_a_missing_key_and_of_an_empty_value():
    assert etcd_client.range_value({"header": {}}, b"/k") is None  # no "kvs" at all when nothing matched
    assert etcd_client.range_value({"kvs": [{"key": b64(b"/k")}]}, b"/k") == b""  # proto3 JSON leaves out ""


def test_is_leader():
    assert etcd_client.is_leader(STATUS_REPLY)
    assert not etcd_client.is_leader({**STATUS_REPLY, "leader": "42"})
    assert not etcd_client.is_leader({**STATUS_REPLY, "leader": "0"})  # during an election
    assert not etcd_client.is_leader({"leader": "0", "header": {"member_id": "0"}})
    assert not etcd_client.is_leader({})


def test_only_loopback_addresses():
    assert etcd_client.loopback_address("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert etcd_client.loopback_address("::1:2379") == ("::1", 2379)
    for bad in ("10.0.0.1:2379", "0.0.0.0:2379", "localhost:2379", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            etcd_client.loopback_address(bad)


def test_versions_from_the_binaries_output():
    assert peer_etcd.parse_version(ETCD_VERSION, "etcd Version") == "3.4.23"
    assert peer_etcd.parse_version(ETCDCTL_VERSION, "etcdctl version") == "3.4.23"
    assert peer_etcd.parse_version("API version: 3.4\n", "etcdctl version") is None
    assert peer_etcd.go_version(ETCD_VERSION) == "go1.19.8"


def probe(submitted, done, ok):
    p = peer_etcd.Probe(submitted)
    p.done, p.ok = done, ok
    return p


def test_failover_counts_only_puts_submitted_after_the_kill():
    probes = [
        probe(9.0, 10.5, True),  # submitted before the kill: it says nothing about the new leader
        probe(10.02, 10.03, False),  # refused during the election
        probe(10.04, 11.40, True),  # succeeds once a leader is elected
        probe(11.30, 11.35, True),  # submitted later, succeeded earlier: the first success
        probe(11.32, None, False),  # still in flight
    ]
    assert peer_etcd.first_success_after(probes, killed_at=10.0) == pytest.approx(1.35)
    assert peer_etcd.first_success_after(probes[:2], killed_at=10.0) is None


def test_record_is_100_bytes():
    assert len(peer_etcd.record(7)) == 100 and peer_etcd.record(7) != peer_etcd.record(8)


class Gateway(BaseHTTPRequestHandler):
    """A stand-in for etcd's JSON gateway that remembers the keys put and the connections used."""

    protocol_version = "HTTP/1.1"  # keep-alive, as etcd's Go HTTP server

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.connections.add(self.client_address)
        if self.path == "/v3/kv/put":
            self.server.store[request["key"]] = request["value"]
            status, reply = 200, {"header": {"revision": str(len(self.server.store))}}
        elif self.path == "/v3/kv/range" and request.get("serializable") is False:
            value = self.server.store.get(request["key"])
            kvs = {"kvs": [{"key": request["key"], "value": value}], "count": "1"} if value is not None else {}
            status, reply = 200, {"header": {}, **kvs}
        else:
            status, reply = 503, json.loads(NO_LEADER)
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(tls: ssl.SSLContext | None = None):
    """A :class:`Gateway` on 127.0.0.1 in a thread of its own (behind ``tls`` when given), shut down after."""
    server = HTTPServer(("127.0.0.1", 0), Gateway)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.store, server.connections = {}, set()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def gateway():
    with serving() as server:
        yield server


def test_client_puts_and_reads_over_one_keep_alive_connection(gateway):
    client = etcd_client.Client(f"127.0.0.1:{gateway.server_address[1]}", timeout=5)
    try:
        for i in range(5):
            client.put(b"/k%d" % i, b"value %d" % i)
        assert client.get(b"/k3") == b"value 3"
        assert client.get(b"/missing") is None
        with pytest.raises(EtcdError, match="no leader"):
            client.status()  # the stand-in answers every other path with etcd's no-leader error
        assert client.get(b"/k4") == b"value 4"  # the connection survives an error reply
    finally:
        client.close()
    assert gateway.store[b64(b"/k0")] == b64(b"value 0")
    assert len(gateway.connections) == 1


@pytest.fixture
def https_gateway(cluster_pki):
    """The stand-in behind TLS, as an etcd started with ``peer_etcd.tls_flags`` serves: node-1's
    certificate, client certificates required and checked against the cluster's CA."""
    files = TrustFiles.in_pki(cluster_pki.dir, "node-1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    context.load_verify_locations(files.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    with serving(context) as server:
        yield server


def test_client_speaks_https_with_the_cluster_context_over_one_connection(https_gateway, cluster_pki):
    address = f"127.0.0.1:{https_gateway.server_address[1]}"
    client = etcd_client.Client(address, timeout=5, tls=peer_etcd.client_tls(cluster_pki.dir))
    try:
        for i in range(3):
            client.put(b"/t%d" % i, b"over TLS %d" % i)
        assert client.get(b"/t2") == b"over TLS 2"
    finally:
        client.close()
    assert len(https_gateway.connections) == 1
    plain = etcd_client.Client(address, timeout=5)  # plain HTTP gets no answer from a TLS port
    with pytest.raises(peer_etcd.FAILURES):
        plain.put(b"/t9", b"in the clear")
    plain.close()
    assert b64(b"/t9") not in https_gateway.store


def test_tls_flags_give_each_member_its_node_certificate_on_both_ports_and_require_clients_to_have_one():
    flags = peer_etcd.tls_flags("/pki", 1)
    value = dict(zip(flags, flags[1:]))
    assert value["--cert-file"] == value["--peer-cert-file"] == "/pki/node-2.pem"
    assert value["--key-file"] == value["--peer-key-file"] == "/pki/node-2.key"
    assert value["--trusted-ca-file"] == value["--peer-trusted-ca-file"] == "/pki/ca.pem"
    assert "--client-cert-auth" in flags and "--peer-client-cert-auth" in flags


def test_a_tls_cluster_listens_on_https_urls_only(tmp_path, cluster_pki):
    cluster = peer_etcd.EtcdCluster("/usr/bin/etcd", str(tmp_path), pki=cluster_pki.dir)
    args = cluster.members[0].args
    value = dict(zip(args, args[1:]))
    for flag in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                 "--initial-advertise-peer-urls"):  # fmt: skip
        assert value[flag].startswith("https://127.0.0.1:"), flag
    assert "http://" not in value["--initial-cluster"] and cluster.tls is not None
    plain = peer_etcd.EtcdCluster("/usr/bin/etcd", str(tmp_path))
    assert "--cert-file" not in plain.members[0].args and plain.tls is None


def test_combine_takes_the_median_of_each_figure_over_the_rounds():
    rounds = [
        {"p50_ms": 3.0, "runs_s": [1.0, 2.0], "version": "3.4.23"},
        {"error": "RuntimeError: boom"},
        {"p50_ms": 10.0, "runs_s": [3.0], "version": "3.4.23"},
        {"p50_ms": 4.0, "runs_s": [], "version": "3.4.23"},
    ]
    combined = bench.combine(rounds)
    assert combined["p50_ms"] == 4.0  # the median, not the mean; the failed round left out
    assert combined["runs_s"] == [1.0, 2.0, 3.0]
    assert combined["version"] == "3.4.23"
    assert combined["rounds"] == rounds
    assert bench.combine([{"p50_ms": 3.0}]) == {"p50_ms": 3.0}  # one round: nothing to keep
    assert bench.combine([{"error": "a"}, {"error": "b"}]) == {"error": "b"}


def line(text: str, label: str) -> list[str]:
    found = [row for row in text.splitlines() if row.startswith(f"| {label}")]
    assert len(found) == 1, text
    return [cell.strip() for cell in found[0].strip("|").split("|")]


ETCD = {"version": "3.4.23", "go": "go1.19.8", "put_p50_ms": 1.5, "put_p99_ms": 4.0, "read_p50_ms": 0.8,
        "read_p99_ms": 3.0, "read_rate": 2500.0, "failover_median_s": 1.3, "client_cpu_s": 9.0}  # fmt: skip


def test_table_prints_etcd_and_the_ratio_next_to_parkd():
    text = bench.table({"latency": {"p50_ms": 3.0, "p99_ms": 8.0}, "failover": {"median_s": 0.65, "max_s": 0.9},
                        "etcd": ETCD}, 3)  # fmt: skip
    assert line(text, "Low-load ack latency, TLS")[1:4] == ["3.0 / 8.0", "1.5 / 4.0", "2.00"]
    assert line(text, "kill -9 leader")[1:4] == ["0.65 / 0.9", "1.3", "0.50"]
    assert line(text, "Linearizable read, HTTPS: p50 / p99 (ms), leader")[1:4] == ["—", "0.8 / 3.0", ""]  # not measured
    assert line(text, "Linearizable reads/s, HTTPS")[1:4] == ["—", "2,500", ""]
    assert "etcd 3.4.23 (go1.19.8)" in text and "medians of 3 round(s)" in text


READS = {"leader_p50_ms": 1.6, "leader_p99_ms": 6.0, "follower_p50_ms": 2.4, "follower_p99_ms": 9.0, "rate": 1250.0,
         "plain_leader_p50_ms": 1.2, "plain_leader_p99_ms": 5.0, "plain_follower_p50_ms": 2.0,
         "plain_follower_p99_ms": 7.0, "plain_rate": 2000.0}  # fmt: skip


def test_table_prints_the_read_rows_next_to_etcds_reads():
    text = bench.table({"reads": READS, "etcd": ETCD}, 3)
    assert line(text, "Linearizable read, HTTPS: p50 / p99 (ms), leader")[1:5] == ["1.6 / 6.0", "0.8 / 3.0", "2.00",
                                                                                  "p50 ≤ 2"]  # fmt: skip
    assert line(text, "Linearizable read, plaintext: p50 / p99 (ms), leader")[1:4] == ["1.2 / 5.0", "0.8 / 3.0", "1.50"]
    assert line(text, "Linearizable read, HTTPS: p50 / p99 (ms), follower")[1:5] == ["2.4 / 9.0", "0.8 / 3.0", "3.00",
                                                                                    "p50 ≤ 3"]  # fmt: skip
    assert line(text, "Linearizable reads/s, HTTPS")[1:5] == ["1,250", "2,500", "0.50", "≥ 3,000"]
    assert line(text, "Linearizable reads/s, plaintext")[1:4] == ["2,000", "2,500", "0.80"]


class Lots(BaseHTTPRequestHandler):
    """A stand-in for a node's read API: one lot, keep-alive; ``/api/v1/lots/busy`` answers 503."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.connections.add(self.client_address)
        lot = self.path.rsplit("/", 1)[1]
        status, doc = (503, {"error": "no leader known"}) if lot == "busy" else (200, {"id": "north", "free": 3})
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_read_client_checks_each_answer_over_one_keep_alive_connection():
    import reads
    from parkd.config import parse_address

    server = HTTPServer(("127.0.0.1", 0), Lots)
    server.connections = set()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    member = types.SimpleNamespace(http=parse_address(f"127.0.0.1:{server.server_address[1]}", "http"))
    config = types.SimpleNamespace(tls=None, member=lambda node_id: member)
    try:
        figures = reads.read_latency(config, 1, "north", count=30)
        assert figures["reads"] == 30 and figures["errors"] == 0 and figures["p50_ms"] > 0
        assert len(server.connections) == 1
        with pytest.raises(reads.ReadError, match="asked for lot 'south'"):
            reads.ReadClient(config, 1, "south").read()
        with pytest.raises(reads.ReadError, match="HTTP 503"):
            reads.ReadClient(config, 1, "busy").read()
        rate = reads.read_throughput(config, 1, "north", clients=4, seconds=0.5)
        assert rate["rate"] > 0 and rate["errors"] == 0 and rate["clients"] == 4
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_table_prints_the_follower_latency_and_the_cpu_per_ack_next_to_etcd():
    latency = {"p50_ms": 1.2, "p99_ms": 5.0, "follower_p50_ms": 1.8, "follower_p99_ms": 6.0, "cpu_ms_per_ack": 1.5,
               "follower_cpu_ms_per_ack": 2.0}  # fmt: skip
    text = bench.table({"latency": latency, "throughput": {"rate": 9000.0, "cpu_ms_per_ack": 0.4},
                        "etcd": {**ETCD, "put_cpu_ms": 0.75}})  # fmt: skip
    assert line(text, "Low-load ack latency with the camera on a follower")[1:4] == ["1.8 / 6.0", "1.5 / 4.0", "1.20"]
    assert line(text, "CPU per acked frame, 3 nodes (ms), one frame in flight, camera on the leader")[1:4] == [
        "1.50", "0.75", "2.00"]
    assert line(text, "CPU per acked frame, 3 nodes (ms), one frame in flight, camera on a follower")[1:4] == [
        "2.00", "0.75", "2.67"]
    assert line(text, "CPU per acked frame, 3 nodes (ms), at saturation")[1:4] == ["0.40", "", ""]


def test_table_prints_the_like_for_like_rows_next_to_etcd_with_tls():
    latency = {"p50_ms": 1.6, "p99_ms": 2.8, "follower_p50_ms": 2.4, "follower_p99_ms": 3.6, "cpu_ms_per_ack": 2.1}
    etcd = {**ETCD, "tls_put_p50_ms": 1.28, "tls_put_p99_ms": 2.4, "tls_put_cpu_ms": 1.75}
    text = bench.table({"latency": latency, "etcd": etcd})
    assert line(text, "Like for like, TLS on both: ack p50 / p99 (ms), camera on the leader")[1:4] == [
        "1.6 / 2.8", "1.28 / 2.4", "1.25"]
    assert line(text, "Like for like, TLS on both: ack p50 / p99 (ms), camera on a follower")[1:4] == [
        "2.4 / 3.6", "1.28 / 2.4", "1.88"]
    assert line(text, "Like for like, TLS on both: CPU per acked frame")[1:4] == ["2.10", "1.75", "1.20"]
    assert line(text, "Low-load ack latency, TLS")[1:4] == ["1.6 / 2.8", "1.5 / 4.0", "1.07"]  # plaintext etcd
    assert "plain HTTP on its client and peer ports, except in the rows" in text


def test_table_without_etcd_keeps_parkd_rows_only():
    text = bench.table({"latency": {"p50_ms": 3.0, "p99_ms": 8.0}})
    assert line(text, "Low-load ack latency, TLS")[1:4] == ["3.0 / 8.0", "", ""]
    assert "Linearizable" not in text and "etcd 3" not in text


def test_table_says_when_etcd_could_not_be_measured():
    etcd = {"error": "not measured: apt-get is not available", "unavailable": "apt-get is not available"}
    text = bench.table({"latency": {"p50_ms": 3.0, "p99_ms": 8.0}, "etcd": etcd})
    assert line(text, "Low-load ack latency, TLS")[1:4] == ["3.0 / 8.0", "", ""]
    assert "Linearizable" not in text
    assert text.splitlines()[-1] == "etcd NOT MEASURED: apt-get is not available"


# ------------------------------------------------------------------ TLS next to plaintext


class StandInCluster:
    """What tls_and_plaintext needs of a BenchCluster: a context manager that knows whether it speaks TLS."""

    started: list = []

    def __init__(self, workdir, tls):
        self.tls = tls
        StandInCluster.started.append(tls)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_tls_and_plaintext_take_turns_abba_then_baab_and_give_the_ratio():
    seen = []

    def measure(cluster):
        seen.append("T" if cluster.tls else "P")
        return {"rate": 90.0 + len(seen) if cluster.tls else 100.0, "note": "x"}

    step = bench.tls_and_plaintext(measure, ("rate",), cluster=StandInCluster)
    first = step("/nowhere")
    second = step("/nowhere")
    assert "".join(seen) == "TPPT" "PTTP"
    assert StandInCluster.started[-4:] == [True, False, True, False]  # both clusters up during each step
    assert first == {"rate": 92.5, "plain_rate": 100.0, "rate_tls_ratio": 0.925}  # medians of the two runs
    assert second["rate"] == 96.5 and second["rate_tls_ratio"] == 0.965  # TLS ran 6th and 7th


def test_table_prints_tls_and_plaintext_rows_with_their_ratios_and_the_storm():
    text = bench.table({
        "throughput": {"rate": 4500.0, "plain_rate": 5000.0, "rate_tls_ratio": 0.9},
        "latency": {"p50_ms": 6.0, "p99_ms": 12.0, "plain_p50_ms": 5.0, "plain_p99_ms": 11.0, "p50_ms_tls_ratio": 1.2,
                    "follower_p50_ms": 8.0, "plain_follower_p50_ms": 7.0, "follower_p50_ms_tls_ratio": 1.143},
        "scale": {"cameras": 10000, "p99_ms": 120.0, "errors": 0, "node_rss_mb": 300.0, "storm_t99_s": 8.5,
                  "storm_t100_s": "> 60", "handshakes_peak_per_s": 310, "storm_resumed_share": "98%",
                  "node_rss_after_storm_mb": 350.0},
    })  # fmt: skip
    assert line(text, "Durable throughput, TLS")[1] == "4,500"
    assert line(text, "Durable throughput, plaintext")[1] == "5,000"
    assert line(text, "Durable throughput TLS / plaintext")[1::3] == ["0.90", "≥ 0.85"]
    assert line(text, "Low-load ack latency, plaintext")[1] == "5.0 / 11.0"
    assert line(text, "Low-load ack latency p50 TLS / plaintext, camera on the leader")[1] == "1.20"
    assert line(text, "Low-load ack latency p50 TLS / plaintext, camera on a follower")[1] == "1.14"
    assert line(text, "10000 TLS cameras")[1] == "120.0 / 0 / 300.0"
    assert line(text, "Reconnect storm")[1] == "8.5 / > 60"
    assert line(text, "Storm: TLS handshakes/s")[1] == "310 / 98% / 350.0"


def test_the_storm_row_counts_the_hellos_a_node_logs(tmp_path):
    """The handshakes/s of the reconnect storm come from the nodes' accepted-Hello lines (it once counted 0)."""
    from twisted.logger import Logger, jsonFileLogObserver

    from parkd.node.ports import CAMERA_CONNECTED

    path = tmp_path / "node-1.json"
    with open(path, "w", encoding="utf-8") as f:
        log = Logger(observer=jsonFileLogObserver(f))
        log.info(CAMERA_CONNECTED, camera_id=7, lot="north", incarnation=1)
        log.info("camera {camera_id} connected elsewhere", camera_id=8)
        log.info(CAMERA_CONNECTED, camera_id=9, lot="south", incarnation=2)
    assert len(bench.hellos_in(str(path), since=0)) == 2
    os.rename(path, f"{path}.1")  # the log rotated during the storm: the older lines are in FILE.1
    with open(path, "w", encoding="utf-8") as f:
        Logger(observer=jsonFileLogObserver(f)).info(CAMERA_CONNECTED, camera_id=10, lot="north", incarnation=3)
    assert len(bench.hellos_in(str(path), since=0)) == 3
