"""Protocols of the node's raft and client ports."""

from __future__ import annotations

from parkd.proto import parkd_pb2 as pb
from parkd.wire import (
    CLIENT_PORT,
    RAFT_PORT,
    BadMessage,
    EnvelopeFactory,
    EnvelopeProtocol,
    raft_from_envelope,
)


class RaftPortProtocol(EnvelopeProtocol):
    """Inbound peer connection: one-way Raft messages handed to the factory."""

    rules = RAFT_PORT

    def envelopeReceived(self, kind, body) -> None:
        try:
            message = raft_from_envelope(kind, body)
        except BadMessage as e:
            self.reject(pb.Error.MALFORMED, str(e))
            return
        self.factory.deliver(message)


class RaftPortFactory(EnvelopeFactory):
    protocol = RaftPortProtocol

    def __init__(self, clock, max_length, deliver=None):
        super().__init__(clock, max_length)
        self.deliver = deliver or (lambda message: None)


class ClientPortProtocol(EnvelopeProtocol):
    """A camera's connection: Hello, then frames."""

    rules = CLIENT_PORT
    camera_id = None

    def envelopeReceived(self, kind, body) -> None:
        if kind == "hello":
            self.camera_id = body.camera_id
            self.log.info("camera {camera_id} connected (lot {lot})", camera_id=body.camera_id, lot=body.lot)
        else:
            self.sendEnvelope(
                pb.Envelope(unavailable=pb.Unavailable(retry_after_ms=1000, reason="not accepting frames yet"))
            )


class ClientPortFactory(EnvelopeFactory):
    protocol = ClientPortProtocol
