"""The HTTP port of a node: the resource tree, the dashboard's files, and the listener.

    /                the dashboard (static files in parkd/web/, package data)
    /static/<file>   its other files
    /api/...         the read API (api.py) and, under /api/v1/admin/, the admin API (admin.py)
    /metrics         Prometheus text format (metrics.py)
    /livez, /readyz  health (health.py), open to everyone

:func:`build_site` takes the node's narrow parts; :class:`HttpService` (the
process layer's wiring, see ``parkd/tap.py``) builds it from a started
``NodeService`` and listens.
"""

from __future__ import annotations

import os
from importlib import resources as importlib_resources

from twisted.application import service
from twisted.internet import defer
from twisted.web import resource, server

from parkd.startup import fail_on_config_error, listen_now
from parkd.http.access import Access
from parkd.http.admin import Admin
from parkd.http.api import Api, ApiResource
from parkd.http.channel import EagerHTTPChannel
from parkd.http.errors import JsonResource, NotFound, error_response, not_found
from parkd.http.health import PATHS as HEALTH_PATHS
from parkd.http.health import HealthResource, Readiness, liveness, node_readiness
from parkd.http.metrics import MetricsResource, NodeMetrics

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}


class WebFiles(JsonResource):
    """The dashboard's files (``parkd/web/``, package data): only the files there, by name."""

    def __init__(self, directory: str, name: str | None = None):
        super().__init__()
        self.directory = directory
        self.fixed = name  # serve this one file whatever the path (the page at /)

    def render_GET(self, request):
        if self.fixed is not None:
            name = self.fixed
        elif len(request.postpath) == 1:
            name = request.postpath[0].decode("utf-8", errors="replace")
        else:
            name = ""
        kind = CONTENT_TYPES.get(os.path.splitext(name)[1])
        if kind is None or name not in set(os.listdir(self.directory)):
            return not_found(request)
        with open(os.path.join(self.directory, name), "rb") as f:
            body = f.read()
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        return body


class AccessRefused(JsonResource):
    """Any method: the error of an access refusal (401)."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def render(self, request):
        return error_response(request, self.error)


class Root(resource.Resource):
    """``/`` is the dashboard; ``/api``, ``/metrics``, ``/static`` the rest; anything else 404.

    Every read needs what ``access`` says (admin requests are checked by the admin resource);
    ``/livez`` and ``/readyz`` need nothing.
    """

    def __init__(self, web_dir: str, access: Access = Access()):
        super().__init__()
        self.index = WebFiles(web_dir, "index.html")
        self.access = access

    def getChildWithDefault(self, path, request):
        if path not in HEALTH_PATHS and not (path == b"api" and request.postpath[:2] == [b"v1", b"admin"]):
            refusal = self.access.read_refusal(request)
            if refusal is not None:
                return AccessRefused(refusal)
        return super().getChildWithDefault(path, request)

    def getChild(self, path, request):
        if path == b"" and request.postpath == []:
            return self.index
        return NotFound()


class ApiSite(server.Site):
    """twisted.web's Site, with an access log line only for requests that failed (status 400 and up),
    and connections that write each response in one piece, at once (:mod:`parkd.http.channel`).

    A line per successful request took a tenth of a linearizable read's CPU on
    the node (py-spy: ``HTTPFactory.log`` and the log observer), and at
    thousands of reads a second it would drown the node's log.
    """

    protocol = EagerHTTPChannel

    def log(self, request) -> None:
        if request.code >= 400:
            super().log(request)


def web_dir() -> str:
    return str(importlib_resources.files("parkd") / "web")


def build_site(*, clock, state, driver, membership, reads, metrics: NodeMetrics, lot_ids, camera_interval,
               alarms, readiness: Readiness, access: Access = Access(), registry=None,
               backups=None, identity=None) -> server.Site:  # fmt: skip
    """The HTTP port over a node's parts: ``state`` (ParkingState), ``driver`` (Raft
    status), ``membership`` (members and admin operations), ``reads`` (ReadBarrier),
    ``alarms`` (the node's Alarms), ``readiness`` (``/readyz``'s checks), ``registry``
    (the camera registry's admin operations), ``backups`` (BackupTaker), ``identity``
    (the ClusterIdentity: cluster id, versions, data dirs, standing); ``access`` says
    who may read and who may administer."""
    api = Api(state, driver, membership.members, clock, tuple(lot_ids), camera_interval, metrics.reactor_lag.recent_max,
              alarms=alarms.active, identity=identity)  # fmt: skip
    directory = web_dir()
    root = Root(directory, access)
    root.putChild(b"livez", HealthResource(liveness(driver, metrics.reactor_lag.recent_max)))
    root.putChild(b"readyz", HealthResource(readiness.report))
    root.putChild(b"api", ApiResource(api, reads, Admin(membership, driver, access, registry, backups), metrics.read))
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"static", WebFiles(directory))
    site = ApiSite(root, reactor=clock)
    site.noisy = False
    return site


class HttpService(service.Service):
    """Listens on ``node``'s HTTP port once the node has started (stops first)."""

    def __init__(self, node, listen: str):
        self.node = node
        self.listen = listen
        self.port = None
        self.metrics: NodeMetrics | None = None

    @fail_on_config_error
    def startService(self) -> None:
        node = self.node
        config = node.settings.config
        lot_ids = [lot.id for lot in config.lots]
        state = node.store.state
        self.metrics = NodeMetrics(node.driver, state, node.peers, node.intake, lot_ids, clock=node.reactor)
        self.metrics.watch_disk(node.disk, node.alarms)
        self.metrics.watch_reads(node.reads)
        self.metrics.reactor_lag.start()
        node.housekeeping.observe(self.metrics)
        trust = node.trust
        access = Access(tls=trust is not None, public_reads=config.tls.public_reads if config.tls else True)
        site = build_site(
            clock=node.reactor, state=state, driver=node.driver, membership=node.membership, reads=node.reads,
            metrics=self.metrics, lot_ids=lot_ids, camera_interval=config.camera.interval, access=access,
            registry=node.registry, backups=node.backups,
            alarms=node.alarms, identity=node.identity,
            readiness=node_readiness(node.driver, node.alarms, node.standing, config.cluster.ready_lag),
        )  # fmt: skip
        listening = site if trust is None else trust.server(site, "https", clients="optional")
        self.port = listen_now(node.reactor, self.listen, listening, "http port")
        super().startService()

    def stopService(self):
        super().stopService()
        if self.metrics is not None:
            self.metrics.reactor_lag.stop()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
