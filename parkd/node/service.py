"""The node daemon's service tree (``twistd parkd node``)."""

from __future__ import annotations

import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from parkd.config import ConfigError
from parkd.daemon import JsonLogService, fail_on_config_error, listen_now
from parkd.node.ports import ClientPortFactory, RaftPortFactory


def open_data_dir(path: str) -> str:
    """Create the data directory if needed and check it is writable."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--data-dir: cannot create {path!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--data-dir: {path!r} is not writable")
    return path


class NodeService(service.Service):
    """Opens the database and the three listeners; closes them on stop."""

    log = Logger()

    def __init__(self, settings, reactor):
        self.settings = settings
        self.reactor = reactor
        self.ports = []
        self.engine = None

    @fail_on_config_error
    def startService(self) -> None:
        from sqlalchemy import create_engine, text

        s = self.settings
        path = os.path.join(open_data_dir(s.data_dir), "node.db")
        self.engine = create_engine(f"sqlite:///{path}")
        try:
            with self.engine.begin() as conn:
                conn.execute(text("PRAGMA journal_mode=WAL"))
        except Exception as e:
            raise ConfigError(f"--data-dir: cannot open database {path!r}: {e}") from None
        size = s.config.cluster.max_message_bytes
        self.ports = [
            listen_now(self.reactor, s.listen_raft, RaftPortFactory(self.reactor, size), "raft port"),
            listen_now(self.reactor, s.listen_client, ClientPortFactory(self.reactor, size), "client port"),
            listen_now(self.reactor, s.listen_http, _quiet(server.Site(_Placeholder(s.node_id))), "http port"),
        ]
        service.Service.startService(self)
        self.log.info(
            "node {node_id} started: raft={raft} client={client} http={http} data={data_dir}",
            node_id=s.node_id,
            raft=s.listen_raft,
            client=s.listen_client,
            http=s.listen_http,
            data_dir=s.data_dir,
        )

    def stopService(self):
        service.Service.stopService(self)
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        self.ports = []

        def closed(_):
            if self.engine is not None:
                self.engine.dispose()
                self.engine = None
            self.log.info("node {node_id} stopped: listeners and database closed", node_id=self.settings.node_id)

        return defer.gatherResults(stopping).addCallback(closed)


class _Placeholder(resource.Resource):
    isLeaf = True

    def __init__(self, node_id: int):
        super().__init__()
        self.node_id = node_id

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b'{"node_id": %d}' % self.node_id


def _quiet(factory):
    factory.noisy = False
    return factory


def build_node_service(settings, reactor) -> service.MultiService:
    top = service.MultiService()
    if settings.log_json:
        JsonLogService(settings.log_json).setServiceParent(top)
    NodeService(settings, reactor).setServiceParent(top)
    return top
