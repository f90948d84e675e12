"""The camera daemon's service tree (``twistd parkd camera``)."""

from __future__ import annotations

import itertools

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from parkd.daemon import JsonLogService
from parkd.proto import parkd_pb2 as pb
from parkd.wire import CAMERA_SIDE, EnvelopeProtocol


class CameraProtocol(EnvelopeProtocol):
    rules = CAMERA_SIDE

    def connectionMade(self) -> None:
        s = self.factory.settings
        self.sendEnvelope(pb.Envelope(hello=pb.Hello(camera_id=s.camera_id, lot=s.lot)))
        self.log.info("camera {camera_id} connected to {peer}", camera_id=s.camera_id, peer=self.transport.getPeer())

    def envelopeReceived(self, kind, body) -> None:
        self.log.info("camera received {kind}", kind=kind)


class _RotatingEndpoint:
    """Connects to the cluster's nodes in turn, one per attempt."""

    def __init__(self, reactor, addresses):
        self._endpoints = itertools.cycle([HostnameEndpoint(reactor, a.host, a.port) for a in addresses])

    def connect(self, factory):
        return next(self._endpoints).connect(factory)


def build_camera_service(settings, reactor) -> service.MultiService:
    top = service.MultiService()
    if settings.log_json:
        JsonLogService(settings.log_json).setServiceParent(top)
    factory = Factory.forProtocol(CameraProtocol)
    factory.settings = settings
    factory.clock = reactor
    ClientService(_RotatingEndpoint(reactor, settings.cluster), factory, clock=reactor).setServiceParent(top)
    return top
