"""Framing and message conversion for the raft and client ports (CONTRACT §4).

Every message is a 4-byte big-endian length followed by one protobuf
``Envelope``.  :class:`EnvelopeProtocol` is the one framing class both ports
use; a :class:`PortRules` value says which messages a side may receive and
whether it may answer bad input with an ``Error`` before closing.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from parkd.config import DEFAULT_MAX_MESSAGE_BYTES
from parkd.proto import parkd_pb2 as pb
from parkd.ratelimit import RateLimitedLog
from parkd.sockets import send_eagerly, write_eagerly_on
from parkd.raft import messages
from parkd.raft.types import Entry, EntryKind

# The raft port's protocol, sent in the PeerHello that opens each raft connection.  Raised
# when a release sends what the previous one cannot read; nodes refuse a peer of another
# major version (the number's hundreds): parkd/node/cluster_identity.py.
PROTOCOL_VERSION = 100
# How long a peer that was sent an Error gets to read it before we abort.
CLOSE_GRACE_SECONDS = 5.0
# An Error's message (and its log line) may quote what the peer sent: keep it short.
MAX_REASON_CHARS = 500


class MessageTooLarge(ValueError):
    """Raised on send when an encoded message exceeds the configured limit."""


@dataclass(frozen=True)
class PortRules:
    """What one side of one port accepts."""

    name: str
    accepts: frozenset[str]
    answers_with_error: bool


RAFT_MESSAGES = frozenset(
    {
        "vote_request",
        "vote_response",
        "append_entries",
        "append_response",
        "install_snapshot",
        "snapshot_response",
        "timeout_now",
        "propose",
        "read_index_request",
        "read_index_response",
    }
)

# Raft port: peers only, a PeerHello first (parkd/node/cluster_identity.py); no Error
# message (the peer just reconnects).
RAFT_PORT = PortRules("raft", RAFT_MESSAGES | {"peer_hello"}, answers_with_error=False)
# Client port, node side: what cameras and tools send.
CLIENT_PORT = PortRules("client", frozenset({"hello", "submit_frame"}), answers_with_error=True)
# Client port, camera side: what nodes answer.
CAMERA_SIDE = PortRules(
    "camera", frozenset({"frame_ack", "redirect", "unavailable", "error"}), answers_with_error=False
)


class EnvelopeProtocol(Int32StringReceiver):
    """Length-prefixed ``Envelope`` framing with limits and bad-input handling.

    Subclasses set ``rules`` and implement :meth:`envelopeReceived`.  Bad input
    (oversized prefix, undecodable body, empty or unknown message, a message not
    allowed here) is logged once, answered with an ``Error`` where the port allows
    one, and closes the connection; nothing after it on that connection is read.
    """

    log = Logger()
    rules: PortRules = CLIENT_PORT
    MAX_LENGTH = DEFAULT_MAX_MESSAGE_BYTES
    rejected = False
    _corked: list[bytes] | None = None  # messages held by cork()

    def makeConnection(self, transport) -> None:
        write_eagerly_on(transport)  # small one-way messages wait for neither Nagle nor a poll
        super().makeConnection(transport)

    def sendString(self, string: bytes) -> None:
        """Int32StringReceiver's, written with :func:`parkd.sockets.send_eagerly` (``sendEncoded`` checks the size)."""
        data = struct.pack(self.structFormat, len(string)) + string
        if self._corked is not None:
            self._corked.append(data)
        else:
            send_eagerly(self.transport, data)

    def cork(self) -> None:
        """Hold the messages sent from now on until :meth:`uncork`, which writes them in one piece.

        A node acks the frames of one applied batch this way, and a camera sends
        the frames that the acks of one read let out: one write per connection
        (one ``send``, one TLS record) instead of one per frame.
        """
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write the messages held since :meth:`cork`, in order, and stop holding."""
        held, self._corked = self._corked, None
        if held:
            send_eagerly(self.transport, b"".join(held))

    def stringReceived(self, data: bytes) -> None:
        if self.rejected:
            return
        envelope = pb.Envelope()
        try:
            envelope.ParseFromString(data)
        except DecodeError:
            self.reject(pb.Error.MALFORMED, f"undecodable message of {len(data)} bytes")
            return
        kind = envelope.WhichOneof("body")
        if kind is None:
            self.reject(pb.Error.MALFORMED, "empty or unknown message")
        elif kind not in self.rules.accepts:
            self.reject(pb.Error.NOT_ALLOWED, f"{kind} is not allowed on the {self.rules.name} port")
        else:
            self.envelopeReceived(kind, getattr(envelope, kind))

    def envelopeReceived(self, kind: str, message) -> None:
        """Handle one accepted message; ``kind`` is the ``oneof`` field name."""
        raise NotImplementedError

    def lengthLimitExceeded(self, length: int) -> None:
        self.reject(pb.Error.TOO_LARGE, f"message of {length} bytes exceeds the limit of {self.MAX_LENGTH}")

    def reject(self, code: int, reason: str) -> None:
        """Log once, answer with an ``Error`` if allowed, and close."""
        if self.rejected:
            return
        self.rejected = True
        self.uncork()  # what was sent before the refusal goes out before it
        reason = clip(reason)
        self.paused = True  # stop Int32StringReceiver from parsing what is buffered
        refusals = getattr(self.factory, "refusals", None)  # one line each, a summary under a flood
        (refusals.emit if refusals is not None else self.log.warn)(
            "closing {port} connection from {peer}: {reason}",
            port=self.rules.name,
            peer=_peer(self.transport),
            reason=reason,
            code=pb.Error.Code.Name(code),
        )
        self.transport.pauseProducing()
        if self.rules.answers_with_error:
            self.sendEnvelope(pb.Envelope(error=pb.Error(code=code, message=reason)))
            self.transport.loseConnection()
            clock = getattr(self.factory, "clock", None)
            if clock is not None:
                self._abort_call = clock.callLater(CLOSE_GRACE_SECONDS, self.transport.abortConnection)
        else:
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        call = getattr(self, "_abort_call", None)
        if call is not None and call.active():
            call.cancel()

    def sendEnvelope(self, envelope: pb.Envelope) -> None:
        """Encode and send; raises :class:`MessageTooLarge` above ``MAX_LENGTH``."""
        self.sendEncoded(envelope.SerializeToString())

    def sendEncoded(self, data: bytes) -> None:
        if len(data) > self.MAX_LENGTH:
            raise MessageTooLarge(f"message of {len(data)} bytes exceeds the limit of {self.MAX_LENGTH}")
        self.sendString(data)


class EnvelopeFactory(Factory):
    """A factory whose protocols share a size limit and a clock."""

    noisy = False

    def __init__(self, clock, max_length: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.clock = clock
        self.max_length = max_length
        port = self.protocol.rules.name if hasattr(self.protocol, "rules") else "a"
        self.refusals = RateLimitedLog(
            EnvelopeProtocol.log, f"closed {{count}} more {port} port connections for bad input in the last {{window}} s",
            clock=clock,
        )  # fmt: skip

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        proto.MAX_LENGTH = self.max_length
        return proto


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters: a quoted lot id may be megabytes long."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def frame_envelope(envelope: pb.Envelope) -> bytes:
    """One message as it goes on the wire: 4-byte big-endian length, then the body."""
    body = envelope.SerializeToString()
    return len(body).to_bytes(4, "big") + body


def split_envelopes(data: bytes) -> list[pb.Envelope]:
    """The whole messages in a captured byte stream (tools and tests)."""
    out = []
    while len(data) >= 4:
        length = int.from_bytes(data[:4], "big")
        envelope = pb.Envelope()
        envelope.ParseFromString(data[4 : 4 + length])
        out.append(envelope)
        data = data[4 + length :]
    return out


def _peer(transport) -> str:
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:  # a transport double may have no peer
        return "?"


# ------------------------------------------------ raft message <-> Envelope

_RAFT_TYPES = {
    "vote_request": messages.VoteRequest,
    "vote_response": messages.VoteResponse,
    "append_entries": messages.AppendEntries,
    "append_response": messages.AppendResponse,
    "install_snapshot": messages.InstallSnapshot,
    "snapshot_response": messages.SnapshotResponse,
    "timeout_now": messages.TimeoutNow,
    "propose": messages.Propose,
    "read_index_request": messages.ReadIndexRequest,
    "read_index_response": messages.ReadIndexResponse,
}
_RAFT_KINDS = {cls: kind for kind, cls in _RAFT_TYPES.items()}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _RAFT_TYPES.values()}


class BadMessage(ValueError):
    """A well-framed message whose fields make no sense (e.g. unknown entry kind)."""


# No term, index or offset on the raft port may exceed this.  Nothing legitimate
# comes near it; SQLite stores signed 64-bit integers, and a node must be able to
# count up from any term it accepts (from 2**64 - 1 the next term cannot even be
# encoded): a larger one used to stop the node's Ready loop for good.
MAX_WIRE_INT = 1 << 62


def check_raft_message(message: messages.Message) -> None:
    """Raise :class:`BadMessage` for what no correct peer sends.

    Node ids start at 1; integers stay within :data:`MAX_WIRE_INT`; the entries of
    an AppendEntries are a piece of a leader's log (:func:`messages.append_problem`).
    The core drops such appends too; refusing here also closes the connection and
    says why in the log.
    """
    name = type(message).__name__
    if not message.src or not message.dst:
        raise BadMessage(f"{name} from node {message.src} to node {message.dst}: node ids start at 1")
    for field in _FIELDS[type(message)]:
        value = getattr(message, field)
        if type(value) is int and value > MAX_WIRE_INT:
            raise BadMessage(f"{name}.{field} {value} exceeds {MAX_WIRE_INT}")
    if isinstance(message, messages.AppendEntries):
        problem = messages.append_problem(message)
        if problem:
            raise BadMessage(problem)


def raft_to_envelope(message: messages.Message) -> pb.Envelope:
    """Convert a core message to its ``Envelope``."""
    cls = type(message)
    kind = _RAFT_KINDS[cls]
    envelope = pb.Envelope()
    body = getattr(envelope, kind)
    for name in _FIELDS[cls]:
        value = getattr(message, name)
        if name == "entries":
            add = body.entries.add  # in place: half the cost of building LogEntry objects to copy in
            for e in value:
                add(index=e.index, term=e.term, kind=e.kind, data=e.data)
        elif isinstance(value, tuple):
            getattr(body, name).extend(value)
        else:
            setattr(body, name, value)
    return envelope


def raft_from_envelope(kind: str, body) -> messages.Message:
    """Convert a received ``oneof`` body back to a core message."""
    cls = _RAFT_TYPES[kind]
    values = {}
    for name in _FIELDS[cls]:
        value = getattr(body, name)
        if name == "entries":
            value = tuple(_entry_from_pb(e) for e in value)
        elif not isinstance(value, (int, bool, bytes, float, str)):
            value = tuple(value)  # repeated scalar fields
        values[name] = value
    return cls(**values)


_ENTRY_KINDS = {kind.value: kind for kind in EntryKind}  # a dict lookup: EntryKind(value) is 10 times slower


def _entry_from_pb(e: pb.LogEntry) -> Entry:
    kind = _ENTRY_KINDS.get(e.kind)
    if kind is None:
        raise BadMessage(f"log entry {e.index} has unknown kind {e.kind}")
    return Entry(e.index, e.term, kind, e.data)
