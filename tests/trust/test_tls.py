"""Real TLS connections on 127.0.0.1 through the reactor: who gets in, who is refused, and why.

Every refusal must also be one log line on the side that refused; tests wait
for those lines (or for the connection's end) with bounded timeouts.
"""

import gc
import http.client
import os
import shutil
import ssl

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, error, reactor, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, TLSVersion, optionsForClientTLS
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from parkd.trust import Identity, RateLimitedLog, Trust, TrustFiles, https_client_context, peer_identity, pki
from parkd.trust.tls import REFUSALS_SUMMARY
from parkd.http.access import Access
from parkd.wire import EnvelopeFactory, EnvelopeProtocol

TIMEOUT = 5.0  # seconds any one step may take


# ------------------------------------------------------------------ harness


class LogWatch:
    """The trust layer's log lines, and Deferreds that fire when one appears."""

    def __init__(self):
        self.lines: list[str] = []
        self._waiting: list[tuple[str, defer.Deferred]] = []

    def __call__(self, event):
        if not event.get("log_namespace", "").startswith("parkd.trust"):
            return
        line = formatEvent(event)
        self.lines.append(line)
        for text, d in list(self._waiting):
            if text in line:
                self._waiting.remove((text, d))
                d.callback(line)

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def wait_for(self, text: str) -> defer.Deferred:
        """Fires with the first line containing ``text`` (already logged or to come)."""
        for line in self.lines:
            if text in line:
                return defer.succeed(line)
        d = defer.Deferred()
        self._waiting.append((text, d))
        return d.addTimeout(TIMEOUT, reactor)


@pytest.fixture
def logs():
    watch = LogWatch()
    globalLogPublisher.addObserver(watch)
    yield watch
    globalLogPublisher.removeObserver(watch)


class Tell(Protocol):
    """Server side: answers each message with who the client is."""

    def dataReceived(self, data):
        tls = self.transport
        self.transport.write(f"you are {peer_identity(tls)}; resumed {tls.resumed}".encode())


class Ask(Protocol):
    """Client side: asks once on connect; ``answers`` gets each reply, ``closed`` fires with why it ended."""

    def connectionMade(self):
        self.answers = defer.DeferredQueue()
        self.closed = defer.Deferred()
        self.transport.write(b"who am I?")

    def dataReceived(self, data):
        self.answers.put(data.decode())

    def connectionLost(self, reason):
        self.closed.callback(reason.getErrorMessage())

    def answer(self) -> defer.Deferred:
        """The next reply, or the reason the connection ended first (as a string starting with "closed: ")."""
        d = defer.Deferred()
        self.answers.get().addCallback(lambda a: d.called or d.callback(a))
        self.closed.addCallback(lambda why: d.called or d.callback(f"closed: {why}") or why)
        return d.addTimeout(TIMEOUT, reactor)


async def listen(trust: Trust, **options):
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        trust.server(Factory.forProtocol(Tell), "test port", **options))  # fmt: skip
    return port


@pytest.fixture
def ports():
    """Listening ports to close after the test."""
    opened = []
    yield opened
    for port in opened:
        port.stopListening()


def tcp(port):
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=TIMEOUT)


async def ask(endpoint) -> tuple[Ask, str]:
    """Connect, ask, and return the protocol and its first answer (or "closed: ...")."""
    protocol = await endpoint.connect(Factory.forProtocol(Ask)).addTimeout(TIMEOUT, reactor)
    return protocol, await protocol.answer()


def hostile(cluster_pki, cert: TrustFiles | None):
    """A client that trusts the cluster's CA and presents ``cert`` (None: no certificate), not via Trust."""
    ca = Certificate.loadPEM(open(os.path.join(cluster_pki.dir, "ca.pem"), "rb").read())
    own = None
    if cert is not None:
        own = PrivateCertificate.loadPEM(open(cert.cert, "rb").read() + open(cert.key, "rb").read())
    return lambda port: wrapClientTLS(optionsForClientTLS("localhost", trustRoot=ca, clientCertificate=own), tcp(port))


class Raw(Protocol):
    """Plain TCP: sends ``hello`` (maybe nothing), records what comes back and when it is closed."""

    def __init__(self, hello: bytes):
        self.hello = hello
        self.received = b""
        self.closed = defer.Deferred()

    def connectionMade(self):
        if self.hello:
            self.transport.write(self.hello)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(reason.getErrorMessage())


# ------------------------------------------------------------------ who gets in


@pytest_twisted.ensureDeferred
async def test_a_good_certificate_is_accepted_with_its_identity_on_both_sides(cluster_pki, ports, logs):
    server = Trust(cluster_pki.files("node-1"))
    ports.append(port := await listen(server))
    camera = Trust(cluster_pki.files("camera-7"), expect=Identity("camera", 7))
    protocol, answer = await ask(camera.client_endpoint(tcp(port), "camera link", expect="node"))
    assert answer == "you are camera-7; resumed False"
    assert peer_identity(protocol.transport) == Identity("node", 1)
    assert protocol.transport.getHandle().get_protocol_version_name() == "TLSv1.3"
    protocol.transport.loseConnection()
    await protocol.closed
    assert logs.matching("failed") == []


@pytest_twisted.ensureDeferred
async def test_a_client_may_require_one_node_and_refuses_another(cluster_pki, ports, logs):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1"))))
    peer = Trust(cluster_pki.files("node-2"))
    _, answer = await ask(peer.client_endpoint(tcp(port), "peer 3", expect=Identity("node", 3)))
    assert answer.startswith("closed: ")
    assert "peer 3: TLS with 127.0.0.1:" in await logs.wait_for("node-1 is not node-3")
    _, answer = await ask(peer.client_endpoint(tcp(port), "peer 1", expect=Identity("node", 1)))
    assert answer == "you are node-2; resumed False"


@pytest_twisted.ensureDeferred
async def test_the_raft_port_admits_nodes_only(cluster_pki, ports, logs):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1")), allow=("node",)))
    _, answer = await ask(Trust(cluster_pki.files("camera-1")).client_endpoint(tcp(port), "camera", expect="node"))
    assert answer.startswith("closed: ")
    await logs.wait_for("test port: TLS with 127.0.0.1:")
    assert logs.matching("camera-1 may not connect here (only node-*)")
    _, answer = await ask(Trust(cluster_pki.files("node-4")).client_endpoint(tcp(port), "peer", expect="node"))
    assert answer == "you are node-4; resumed False"


@pytest_twisted.ensureDeferred
async def test_https_takes_clients_without_a_certificate_but_checks_one_that_is_sent(cluster_pki, ports, logs):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1")), clients="optional"))
    connect = hostile(cluster_pki, None)
    assert (await ask(connect(port)))[1] == "you are None; resumed False"
    connect = hostile(cluster_pki, cluster_pki.files("operator-admin"))
    assert (await ask(connect(port)))[1] == "you are operator-admin; resumed False"
    connect = hostile(cluster_pki, cluster_pki.other_files("operator-admin"))
    assert (await ask(connect(port)))[1].startswith("closed: ")
    await logs.wait_for("unable to get local issuer certificate (another CA?) (CN=operator-admin)")


# ------------------------------------------------------------------ who is refused, and the line that says so


@pytest.mark.parametrize(
    "who, line",
    [(None, "no client certificate"),
     ("other:camera-1", "unable to get local issuer certificate (another CA?) (CN=camera-1)"),
     ("camera-998", "certificate has expired (CN=camera-998)"),
     ("camera-999", "certificate revoked (CN=camera-999)")],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_mutual_tls_refuses_bad_clients_with_one_line(cluster_pki, ports, logs, who, line):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1"))))
    if who is None:
        cert = None
    elif who.startswith("other:"):
        cert = cluster_pki.other_files(who[6:])
    else:
        cert = cluster_pki.files(who)
    protocol, answer = await ask(hostile(cluster_pki, cert)(port))
    assert answer.startswith("closed: ")
    logged = await logs.wait_for("test port: TLS with 127.0.0.1:")
    assert logged.endswith(f"failed: {line}")
    assert len(logs.matching("test port:")) == 1


@pytest_twisted.ensureDeferred
async def test_a_revoked_certificate_is_refused_only_where_the_crl_is_configured(cluster_pki, ports):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1", crl=False))))
    assert (await ask(hostile(cluster_pki, cluster_pki.files("camera-999"))(port)))[1].startswith("you are camera-999")


@pytest_twisted.ensureDeferred
async def test_a_client_with_the_crl_refuses_a_revoked_server(own_pki, ports, logs):
    d, _ = own_pki
    pki.revoke(d, "node-1")
    ports.append(port := await listen(Trust(TrustFiles.in_pki(d, "node-1", crl=False))))
    camera = Trust(TrustFiles.in_pki(d, "camera-1"))
    assert (await ask(camera.client_endpoint(tcp(port), "to node 1", expect="node")))[1].startswith("closed: ")
    assert (await logs.wait_for("to node 1:")).endswith("failed: certificate revoked (CN=node-1)")
    assert (await logs.wait_for("test port:")).endswith("failed: refused by the peer (alert: certificate revoked)")


@pytest_twisted.ensureDeferred
async def test_a_camera_certificate_cannot_serve(cluster_pki, ports, logs):
    ports.append(port := await listen(Trust(cluster_pki.files("camera-2"))))
    client = Trust(cluster_pki.files("camera-1"))
    assert (await ask(client.client_endpoint(tcp(port), "to camera 2", expect="camera")))[1].startswith("closed: ")
    assert (await logs.wait_for("to camera 2:")).endswith("failed: unsupported certificate purpose (CN=camera-2)")


@pytest_twisted.ensureDeferred
async def test_a_flood_of_bad_handshakes_is_summed_up(cluster_pki, ports, logs):
    refusals = RateLimitedLog(Logger(namespace="parkd.trust.test"), REFUSALS_SUMMARY, burst=5, window=60.0)
    factory = Trust(cluster_pki.files("node-1"), refusals=refusals).server(Factory.forProtocol(Tell), "test port")
    ports.append(port := await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory))
    connect = hostile(cluster_pki, cluster_pki.files("camera-998"))
    answers = await defer.gatherResults([defer.ensureDeferred(ask(connect(port))) for _ in range(40)])
    assert all(answer.startswith("closed: ") for _, answer in answers)
    deadline = reactor.seconds() + TIMEOUT
    while factory.protocols and reactor.seconds() < deadline:  # bounded-poll: the server's side of the closes
        await task.deferLater(reactor, 0.01)
    refusals.stop()  # the summary now, not at the end of the minute
    assert len(logs.matching("certificate has expired")) == 5
    assert logs.matching("more failed") == ["35 more failed TLS handshakes in the last 60 s"]


@pytest.mark.parametrize("hello", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 64])
@pytest_twisted.ensureDeferred
async def test_plain_tcp_to_a_tls_port_is_closed_with_one_line(cluster_pki, ports, logs, hello):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1"))))
    raw = await tcp(port).connect(Factory.forProtocol(lambda: Raw(hello))).addTimeout(TIMEOUT, reactor)
    await raw.closed.addTimeout(TIMEOUT, reactor)
    line = await logs.wait_for("test port: TLS with 127.0.0.1:")
    assert "failed: " in line and "not finished" not in line
    assert b"HTTP" not in raw.received


@pytest.mark.parametrize("hello", [b"", b"\x16\x03\x01\x02\x00\x01"])  # nothing, or the start of a ClientHello
@pytest_twisted.ensureDeferred
async def test_a_handshake_that_does_not_finish_in_time_is_cut(cluster_pki, ports, logs, hello):
    server = Trust(cluster_pki.files("node-1"), handshake_timeout=0.3)
    ports.append(port := await listen(server))
    started = reactor.seconds()
    raw = await tcp(port).connect(Factory.forProtocol(lambda: Raw(hello))).addTimeout(TIMEOUT, reactor)
    await raw.closed.addTimeout(TIMEOUT, reactor)
    assert 0.25 < reactor.seconds() - started < TIMEOUT
    assert (await logs.wait_for("test port:")).endswith("failed: TLS handshake not finished within 0.3 s")


@pytest_twisted.ensureDeferred
async def test_a_finished_handshake_is_not_cut_later(cluster_pki, ports, logs):
    server = Trust(cluster_pki.files("node-1"), handshake_timeout=0.2)
    ports.append(port := await listen(server))
    protocol, _ = await ask(Trust(cluster_pki.files("camera-1")).client_endpoint(tcp(port), "c", expect="node"))
    await defer.Deferred().addTimeout(0.4, reactor).addErrback(lambda _: None)  # outlive the deadline
    protocol.transport.write(b"still there?")
    assert await protocol.answer() == "you are camera-1; resumed False"
    assert logs.matching("failed") == []


# ------------------------------------------------------------------ sessions and reload


@pytest_twisted.ensureDeferred
async def test_a_client_endpoint_resumes_its_session(cluster_pki, ports):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1"))))
    endpoint = Trust(cluster_pki.files("camera-3")).client_endpoint(tcp(port), "camera", expect="node")
    for expected in ("resumed False", "resumed True", "resumed True"):
        protocol, answer = await ask(endpoint)
        assert answer == f"you are camera-3; {expected}"
        assert peer_identity(protocol.transport) == Identity("node", 1)
        protocol.transport.loseConnection()
        await protocol.closed


@pytest_twisted.ensureDeferred
async def test_a_client_that_reloaded_starts_a_fresh_session(cluster_pki, ports):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1"))))
    camera = Trust(cluster_pki.files("camera-4"))
    endpoint = camera.client_endpoint(tcp(port), "camera", expect="node")
    for reload, expected in ((False, "resumed False"), (False, "resumed True"), (True, "resumed False")):
        if reload:
            assert camera.reload()
        protocol, answer = await ask(endpoint)
        assert answer == f"you are camera-4; {expected}"
        protocol.transport.loseConnection()
        await protocol.closed


@pytest.fixture
def own_pki(tmp_path):
    """A private PKI for tests that change files: node-1, camera-1, camera-2, and a spare node-1 in ``spare``."""
    d = str(tmp_path / "pki")
    pki.init(d)
    pki.issue(d, [Identity("node", 1), Identity("camera", 1), Identity("camera", 2)])
    spare = str(tmp_path / "spare")
    os.mkdir(spare)
    for name in ("ca.pem", "ca.key"):
        shutil.copy(os.path.join(d, name), spare)
    pki.issue(spare, [Identity("node", 1)])
    return d, spare


def serial(protocol) -> int:
    return protocol.transport.getPeerCertificate().get_serial_number()


@pytest_twisted.ensureDeferred
async def test_reload_uses_new_files_for_new_connections_and_keeps_open_ones(own_pki, ports, logs):
    d, spare = own_pki
    server = Trust(TrustFiles.in_pki(d, "node-1"))
    ports.append(port := await listen(server))
    camera = Trust(TrustFiles.in_pki(d, "camera-1"))
    old, _ = await ask(camera.client_endpoint(tcp(port), "camera", expect="node"))
    for ext in ("pem", "key"):
        shutil.copy(os.path.join(spare, f"node-1.{ext}"), os.path.join(d, f"node-1.{ext}"))
    assert server.reload()
    await logs.wait_for("TLS reloaded: node-1, certificate serial")
    new, answer = await ask(camera.client_endpoint(tcp(port), "camera", expect="node"))
    assert answer == "you are camera-1; resumed False"
    assert serial(new) != serial(old)
    assert serial(new) == server.material.cert.serial_number
    old.transport.write(b"still there?")  # the connection made before the reload stays
    assert await old.answer() == "you are camera-1; resumed False"


@pytest_twisted.ensureDeferred
async def test_a_bad_file_on_reload_keeps_the_old_files_and_says_so_once(own_pki, ports, logs):
    d, _ = own_pki
    server = Trust(TrustFiles.in_pki(d, "node-1"))
    ports.append(port := await listen(server))
    before = server.material.cert.serial_number
    with open(os.path.join(d, "node-1.pem"), "w") as f:
        f.write("half a certificate")
    assert not server.reload()
    assert logs.matching("TLS reload failed") == [
        f"TLS reload failed, still using the previous files: {d}/node-1.pem: not a PEM certificate"]
    new, answer = await ask(Trust(TrustFiles.in_pki(d, "camera-1")).client_endpoint(tcp(port), "c", expect="node"))
    assert answer == "you are camera-1; resumed False"
    assert serial(new) == before


@pytest_twisted.ensureDeferred
async def test_a_certificate_revoked_after_start_is_refused_after_reload_even_with_a_session(own_pki, ports, logs):
    d, _ = own_pki
    server = Trust(TrustFiles.in_pki(d, "node-1"))
    ports.append(port := await listen(server))
    endpoint = Trust(TrustFiles.in_pki(d, "camera-2")).client_endpoint(tcp(port), "camera", expect="node")
    protocol, answer = await ask(endpoint)
    assert answer == "you are camera-2; resumed False"
    protocol.transport.loseConnection()
    await protocol.closed
    pki.revoke(d, "camera-2")
    assert server.reload()
    _, answer = await ask(endpoint)
    assert answer.startswith("closed: ")
    assert (await logs.wait_for("test port:")).endswith("failed: certificate revoked (CN=camera-2)")


class WhoAmI(Resource):
    isLeaf = True

    def render_GET(self, request):
        return f"{peer_identity(request)}".encode()


def https_get(port: int, context) -> str:
    return https_status(port, context)[1]


def https_status(port: int, context) -> tuple[int, str]:
    connection = http.client.HTTPSConnection("localhost", port, timeout=TIMEOUT, context=context)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_https_for_parkctl_and_curl_names_the_operator_of_a_request(cluster_pki, ports):
    site = Trust(cluster_pki.files("node-1")).server(Site(WhoAmI()), "https", clients="optional")
    ports.append(port := await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site))
    files = cluster_pki.files("operator-admin")
    number = port.getHost().port
    assert await threads.deferToThread(https_get, number, https_client_context(files.ca)) == "None"
    operator = https_client_context(files.ca, files.cert, files.key)
    assert await threads.deferToThread(https_get, number, operator) == "operator-admin"
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that trusts another CA refuses the node
        await threads.deferToThread(https_get, number, https_client_context(cluster_pki.other_files("node-1").ca))


@pytest_twisted.ensureDeferred
async def test_tls_below_1_2_is_refused(cluster_pki, ports, logs):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1"))))
    ca = Certificate.loadPEM(open(os.path.join(cluster_pki.dir, "ca.pem"), "rb").read())
    files = cluster_pki.files("camera-1")
    own = PrivateCertificate.loadPEM(open(files.cert, "rb").read() + open(files.key, "rb").read())
    old = optionsForClientTLS("localhost", trustRoot=ca, clientCertificate=own, extraCertificateOptions={
        "insecurelyLowerMinimumTo": TLSVersion.TLSv1_0, "lowerMaximumSecurityTo": TLSVersion.TLSv1_1})  # fmt: skip
    assert (await ask(wrapClientTLS(old, tcp(port))))[1].startswith("closed: ")
    assert "failed: " in await logs.wait_for("test port: TLS with")


class Quitter(Protocol):
    def connectionMade(self):
        self.transport.loseConnection()  # before the handshake could finish

    def connectionLost(self, reason):
        self.factory.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_closing_our_own_connection_during_the_handshake_is_no_failure(cluster_pki, ports, logs):
    ports.append(port := await listen(Trust(cluster_pki.files("node-1"))))
    factory = Factory.forProtocol(Quitter)
    factory.closed = defer.Deferred()
    endpoint = Trust(cluster_pki.files("camera-1")).client_endpoint(tcp(port), "quitter", expect="node")
    await endpoint.connect(factory).addTimeout(TIMEOUT, reactor)
    await factory.closed.addTimeout(TIMEOUT, reactor)
    await logs.wait_for("test port: TLS with")  # the server saw a client leave mid-handshake
    assert logs.matching("quitter") == []


class Remembers(Protocol):
    """Server side: answers each message, and tells why its connection ended."""

    ended = None  # set per factory: a DeferredQueue of the types of the reasons

    def dataReceived(self, data):
        self.transport.write(b"ok")

    def connectionLost(self, reason):
        self.factory.ended.put(type(reason.value))


@pytest_twisted.ensureDeferred
async def test_connections_lost_without_a_tls_close_leave_nothing_for_the_garbage_collector(cluster_pki, ports):
    # Twisted makes the reason inside an ``except`` block; its traceback held the
    # frame that held it: a cycle of ~20 objects per lost connection (both ends),
    # collected by young collections of 52-384 ms when thousands dropped at once.
    factory = Factory.forProtocol(Remembers)
    factory.ended = defer.DeferredQueue()
    ports.append(port := await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Trust(cluster_pki.files("node-1")).server(factory, "test port")))  # fmt: skip
    endpoint = Trust(cluster_pki.files("camera-7")).client_endpoint(tcp(port), "camera link", expect="node")
    clients = [(await ask(endpoint))[0] for _ in range(6)]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable stays in gc.garbage to be looked at
    try:
        for i, client in enumerate(clients):
            if i % 2:
                client.transport.abortConnection()  # a reset
            else:
                client.transport.transport.loseConnection()  # TCP closed under TLS: "Unexpected EOF"
        reasons = [await factory.ended.get().addTimeout(TIMEOUT, reactor) for _ in clients]
        await defer.gatherResults([client.closed for client in clients]).addTimeout(TIMEOUT, reactor)
        gc.collect()
        garbage = [o for o in gc.garbage  # only what TLS left: other code's garbage is not this test's
                   if isinstance(o, SSL.Error) or (isinstance(o, Failure) and isinstance(o.value, SSL.Error))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert garbage == []
    assert set(reasons) == {error.ConnectionLost}


# ------------------------------------------------------------------ eager writes under TLS


class Framed(EnvelopeProtocol):
    """The framing both ports use, recording each message as it arrives."""

    def connectionMade(self):
        self.received = defer.DeferredQueue()

    def stringReceived(self, data):
        self.received.put(data)


@pytest_twisted.ensureDeferred
async def test_the_framing_protocol_has_its_tls_records_written_eagerly_on_both_sides(cluster_pki, ports):
    servers = []
    factory = EnvelopeFactory(reactor, 1024)
    factory.protocol = lambda: servers.append(Framed()) or servers[-1]
    ports.append(port := await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Trust(cluster_pki.files("node-1")).server(factory, "test port")))  # fmt: skip
    camera = Trust(cluster_pki.files("camera-7"), expect=Identity("camera", 7))
    client_factory = EnvelopeFactory(reactor, 1024)
    client_factory.protocol = Framed
    endpoint = camera.client_endpoint(tcp(port), "camera link", expect="node")
    client = await endpoint.connect(client_factory).addTimeout(TIMEOUT, reactor)
    client.sendEncoded(b"hello")
    assert await servers[0].received.get().addTimeout(TIMEOUT, reactor) == b"hello"
    servers[0].sendEncoded(b"ack")
    assert await client.received.get().addTimeout(TIMEOUT, reactor) == b"ack"
    assert client.transport.eager_writes and servers[0].transport.eager_writes
    client.transport.loseConnection()


# ------------------------------------------------------------------ admin over HTTPS: operators only


class AdminOnly(Resource):
    """What the HTTP port's admin API asks of each request (parkd.http.access), as a status and a message."""

    isLeaf = True

    def render_GET(self, request):
        refusal = Access(tls=True).admin_refusal(request)
        request.setResponseCode(200 if refusal is None else refusal.status)
        return (str(refusal) if refusal is not None else "ok").encode()


@pytest.mark.parametrize(
    "who, status, says",
    [(None, 401, "need an operator certificate"), ("camera-7", 403, "camera-7 is not an operator"),
     ("node-2", 403, "node-2 is not an operator"), ("operator-admin", 200, "ok")],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_admin_needs_an_operator_certificate_401_without_one_403_with_another(cluster_pki, ports, who, status,
                                                                                     says):  # fmt: skip
    site = Trust(cluster_pki.files("node-1")).server(Site(AdminOnly()), "https", clients="optional")
    ports.append(port := await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site))
    ca = cluster_pki.files("operator-admin").ca
    if who is None:
        context = https_client_context(ca)
    else:
        files = cluster_pki.files(who)
        context = https_client_context(ca, files.cert, files.key)
    answer = await threads.deferToThread(https_status, port.getHost().port, context)
    assert answer[0] == status and says in answer[1]
