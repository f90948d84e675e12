"""The node's HTTP port: JSON API (CONTRACT §6)."""

from __future__ import annotations

import json

from twisted.web import resource, server


def json_response(request, body: dict, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode() + b"\n"


class ClusterResource(resource.Resource):
    """``/api/v1/cluster``: this node's view of the cluster."""

    isLeaf = True

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        core = self.node.core
        config = self.node.settings.config
        matches = core.match_indexes
        return json_response(
            request,
            {
                "node_id": core.id,
                "role": core.role.value,
                "term": core.term,
                "leader_id": core.leader_id,
                "commit_index": core.commit_index,
                "last_applied": self.node.state.last_applied(),
                "members": [
                    {
                        "id": m.id,
                        "raft": str(m.raft),
                        "client": str(m.client),
                        "http": str(m.http),
                        "match_index": matches.get(m.id),
                        **_debug(self.node, m.id),
                    }
                    for m in config.members
                ],
            },
        )


def camera_status(last_seen: float, now: float, interval: float) -> str:
    """CONTRACT §5: active while the last frame is younger than 3 intervals."""
    return "active" if now - last_seen < 3 * interval else "stale"


class CamerasResource(resource.Resource):
    """``/api/v1/cameras``: every camera's current value and status."""

    isLeaf = True

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        now = self.node.reactor.seconds()
        interval = self.node.settings.config.camera.interval
        cameras = [
            {
                "camera_id": c.camera_id,
                "lot": c.lot,
                "free": c.free,
                "last_seq": c.last_seq,
                "last_seen": c.last_seen,
                "status": camera_status(c.last_seen, now, interval),
            }
            for c in self.node.state.cameras()
        ]
        return json_response(request, {"cameras": cameras})


def _debug(node, peer):
    pr = node.core._progress.get(peer)
    link = node.peers.links.get(peer)
    out = {}
    if pr is not None:
        out.update(next=pr.next, state=pr.state.value, probe_sent=pr.probe_sent, inflight=len(pr.inflight))
    if link is not None:
        out.update(sent=link.sent, dropped=link.dropped, connected=link.proto is not None,
                   writable=bool(link.proto and link.proto.writable))
    return out


class NotFound(resource.Resource):
    isLeaf = True

    def render(self, request):
        return json_response(request, {"error": f"no such resource: {request.path.decode(errors='replace')}"}, 404)


def build_site(node) -> server.Site:
    root = resource.Resource()
    api = resource.Resource()
    v1 = resource.Resource()
    root.putChild(b"api", api)
    api.putChild(b"v1", v1)
    v1.putChild(b"cluster", ClusterResource(node))
    v1.putChild(b"cameras", CamerasResource(node))
    root.putChild(b"", NotFound())
    site = server.Site(root)
    site.noisy = False
    return site
