"""The read API of the HTTP port (CONTRACT §6): routes, parameters, documents.

    GET /api/v1/lots                          every lot: free / capacity
    GET /api/v1/lots/<id>                     one lot
    GET /api/v1/lots/<id>/history?window=S&points=N   the lot's trend over the last S seconds
    GET /api/v1/cameras[?lot=L]               every camera (of a lot) with its status
    GET /api/v1/cameras/<id>                  one camera
    GET /api/v1/cameras/<id>/frames?since=S&limit=N[&incarnation=I]
                                              one incarnation's frame history (default: the current one)
    GET /api/v1/cluster                       this node's own view of the cluster

Reads of the replicated state are linearizable by default: they wait for the
node's read barrier (``parkd/node/reads.py``: a read index confirmed by the
leader, then the local apply) and then answer from local state.
``?consistency=local`` answers from local state at once.  With no leader
known, or none confirming in time, the answer is 503 with ``Retry-After``.
``/api/v1/cluster`` always describes the answering node's own view (it is how
one finds out that there is no leader).  ``/api/v1/admin/*`` is handed to the
admin resource (``admin.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server

from parkd.http.errors import ApiError, JsonResource, Unavailable, error_response, json_response
from parkd.node.reads import ReadBarrier, ReadUnavailable
from parkd.raft.core import Role

DEFAULT_LIMIT = 1000  # frames per page
MAX_LIMIT = 10_000
DEFAULT_WINDOW = 3600  # seconds of lot history
MAX_WINDOW = 7 * 24 * 3600
DEFAULT_POINTS = 60
MAX_POINTS = 1000
MAX_CAMERA_ID = (1 << 32) - 1
MAX_SEQ = (1 << 63) - 1
MAX_INCARNATION = (1 << 64) - 1
CONSISTENCIES = ("linearizable", "local")

_DIGITS = re.compile(r"[0-9]{1,20}")


class ClusterStatus(Protocol):
    """What ``/api/v1/cluster`` tells of this node's Raft state (the driver has it)."""

    node_id: int
    role: Role
    term: int
    leader_id: int | None
    commit_index: int
    last_index: int


def camera_status(last_seen: float, now: float, interval: float) -> str:
    """CONTRACT §5: active while the last frame is younger than 3 intervals."""
    return "active" if now - last_seen < 3 * interval else "stale"


class Query:
    """The query string of one request, checked parameter by parameter."""

    def __init__(self, request, allowed: tuple[str, ...]):
        self.values: dict[str, str] = {}
        for raw_name, raw_values in (request.args or {}).items():
            name = _text(raw_name, "parameter name")
            if name not in allowed:
                known = ", ".join(allowed) or "none"
                raise ApiError(400, f"unknown parameter {name!r} (allowed: {known})")
            if len(raw_values) != 1:
                raise ApiError(400, f"parameter {name!r} given {len(raw_values)} times")
            self.values[name] = _text(raw_values[0], name)

    def integer(self, name: str, default: int | None, minimum: int, maximum: int) -> int | None:
        text = self.values.get(name)
        if text is None:
            return default
        if not _DIGITS.fullmatch(text) or not minimum <= int(text) <= maximum:
            raise ApiError(400, f"{name} must be a whole number in {minimum}..{maximum}, got {text!r}")
        return int(text)

    def consistency(self) -> str:
        value = self.values.get("consistency", "linearizable")
        if value not in CONSISTENCIES:
            raise ApiError(400, f"consistency must be 'linearizable' or 'local', got {value!r}")
        return value


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{what} is not valid UTF-8") from None


def parse_camera_id(text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_CAMERA_ID:
        raise ApiError(400, f"camera id must be a whole number in 1..{MAX_CAMERA_ID}, got {text!r}")
    return int(text)


def lot_json(lot) -> dict:
    return {
        "id": lot.id,
        "capacity": lot.capacity,
        "free": lot.free,
        "cameras": lot.cameras,
        "updated_at": lot.updated_at,
    }


def frame_json(frame) -> dict:
    return {
        "seq": frame.seq,
        "incarnation": frame.incarnation,
        "free": frame.free,
        "captured_at": frame.captured_at,
        "index": frame.index,
    }


class Api:
    """The JSON documents, computed from a node's local state.

    ``state``: the ParkingState; ``cluster``: the node's Raft status (the
    driver's read-only view); ``members``: the configuration's members with
    their addresses (MembershipManager.members); ``clock``: for camera status.
    """

    def __init__(self, state, cluster: ClusterStatus, members: Callable[[], list[dict]], clock,
                 lot_ids: tuple[str, ...], camera_interval: float,
                 reactor_lag: Callable[[], float] = lambda: 0.0, alarms: Callable[[], list[str]] = list,
                 identity=None):  # fmt: skip
        self.state = state
        self.identity = identity  # the node's ClusterIdentity (cluster id, versions, data dirs, standing)
        self.alarms = alarms  # the names of the alarms raised on this node (CONTRACT §10)
        self.reactor_lag = reactor_lag  # the worst lag of the last 10 s, seconds
        self.status = cluster
        self.members = members
        self.clock = clock
        self.lot_ids = lot_ids
        self.camera_interval = camera_interval

    def lots(self) -> dict:
        return {"lots": [lot_json(lot) for lot in self.state.lots()]}

    def lot(self, lot_id: str) -> dict:
        lot = self.state.lot(lot_id)
        if lot is None:
            raise self._unknown_lot(lot_id)
        return lot_json(lot)

    def lot_history(self, lot_id: str, window: int, points: int) -> dict:
        if lot_id not in self.lot_ids:
            raise self._unknown_lot(lot_id)
        end = self.clock.seconds()
        first, history = self.state.history(lot_id, end - window, end, points)
        points = [{"at": point.at, "free": point.free} for point in history]
        return {"lot": lot_id, "window": window, "start": first, "end": end, "points": points}

    def cameras(self, lot: str | None = None) -> dict:
        if lot is not None and lot not in self.lot_ids:
            raise self._unknown_lot(lot)
        views = [c for c in self.state.cameras() if lot is None or c.lot == lot]
        return {"cameras": [self._camera_json(c) for c in views]}

    def camera(self, camera_id: int) -> dict:
        doc = self._camera_json(self._known_camera(camera_id))
        doc["incarnations"] = [
            {"incarnation": i.incarnation, "last_seq": i.last_seq, "superseded_index": i.superseded_index}
            for i in self.state.incarnations(camera_id)
        ]
        return doc

    def frames(self, camera_id: int, since: int, limit: int, incarnation: int | None = None) -> dict:
        """One incarnation's frames (default: the camera's current one) with seq > ``since``."""
        camera = self._known_camera(camera_id)
        if incarnation is None:
            incarnation = camera.incarnation
        elif incarnation != camera.incarnation:
            known = [i.incarnation for i in self.state.incarnations(camera_id)]
            if incarnation not in known:
                raise ApiError(404, f"camera {camera_id} has no incarnation {incarnation} "
                                    f"(its incarnations, oldest first: {', '.join(map(str, known))})")  # fmt: skip
        frames = self.state.frames(camera_id, since=since, limit=limit, incarnation=incarnation)
        following = frames[-1].seq if len(frames) == limit else None
        return {
            "camera_id": camera_id,
            "incarnation": incarnation,
            "frames": [frame_json(f) for f in frames],
            "next_since": following,
        }

    def cluster(self) -> dict:
        status = self.status
        return {
            "node_id": status.node_id,
            "role": status.role.value,
            "term": status.term,
            "leader_id": status.leader_id,
            "commit_index": status.commit_index,
            "last_applied": self.state.last_applied(),
            "last_index": status.last_index,
            "members": self.members(),
            "reactor_lag_ms": round(self.reactor_lag() * 1000, 1),
            "alarms": self.alarms(),
            **self._identity_fields(),
        }

    def _identity_fields(self) -> dict:
        """Cluster id, versions, and per member whether its data dir is the one recorded (CONTRACT §10)."""
        identity = self.identity
        if identity is None:
            return {}
        members = self.members()
        for member in members:
            member["data_dir"] = identity.data_dir_status(member["id"])
        return {**identity.describe(), "members": members, "standing": identity.standing()}

    def standing(self) -> str | None:
        """Why this node may not answer ``consistency=local`` reads as a member (None: it may)."""
        return self.identity.standing() if self.identity is not None else None

    # -- helpers

    def _camera_json(self, c) -> dict:
        now = self.clock.seconds()
        return {
            "camera_id": c.camera_id,
            "lot": c.lot,
            "free": c.free,
            "last_seq": c.last_seq,
            "last_seen": c.last_seen,
            "status": camera_status(c.last_seen, now, self.camera_interval),
            "incarnation": c.incarnation,
            "enabled": c.enabled,
        }

    def _known_camera(self, camera_id: int):
        camera = self.state.camera(camera_id)
        if camera is None:
            raise ApiError(404, f"unknown camera {camera_id}")
        return camera

    def _unknown_lot(self, lot_id: str) -> ApiError:
        known = ", ".join(self.lot_ids) or "none"
        return ApiError(404, f"unknown lot {lot_id!r} (lots: {known})")


class ApiResource(JsonResource):
    """Everything under ``/api/``: routing, parameter checks and the read barrier."""

    log = Logger()

    def __init__(self, api: Api, reads: ReadBarrier, admin, on_read: Callable[[str, str, float], None]):
        super().__init__()
        self.api = api
        self.clock = api.clock
        self.reads = reads
        self.admin = admin
        self.on_read = on_read  # (consistency, outcome, seconds): the node's metrics

    def render(self, request):
        parts = list(request.postpath)
        if parts and parts[-1] == b"":
            parts.pop()
        if parts[:2] == [b"v1", b"admin"]:
            return self.admin.render(request, b"/".join(parts[2:]).decode("utf-8", errors="replace"))
        return super().render(request)

    def render_GET(self, request):
        try:
            answer, consistency = self._route(request)
        except ApiError as e:
            return error_response(request, e)
        if consistency == "local" and (why := self.api.standing()) is not None:
            self.on_read("local", "unavailable", 0.0)
            return error_response(request, ApiError(503, f"no local reads: {why}"))
        if consistency is None or consistency == "local":
            if consistency == "local":
                self.on_read("local", "ok", 0.0)
            return self._answer(request, answer)
        return self._after_read(request, answer)

    def _route(self, request) -> tuple[Callable[[], dict], str | None]:
        """(the document to compute, the consistency it needs); raises ApiError."""
        try:
            parts = [p.decode("utf-8") for p in request.postpath]
        except UnicodeDecodeError:
            raise ApiError(400, "path is not valid UTF-8") from None
        if parts and parts[-1] == "":  # a trailing slash
            parts.pop()
        api = self.api
        match parts:
            case ["v1", "cluster"]:
                Query(request, ("consistency",)).consistency()
                return api.cluster, None
            case ["v1", "lots"]:
                query = Query(request, ("consistency",))
                return api.lots, query.consistency()
            case ["v1", "lots", lot]:
                query = Query(request, ("consistency",))
                return (lambda: api.lot(lot)), query.consistency()
            case ["v1", "lots", lot, "history"]:
                query = Query(request, ("consistency", "window", "points"))
                window = query.integer("window", DEFAULT_WINDOW, 1, MAX_WINDOW)
                points = query.integer("points", DEFAULT_POINTS, 1, MAX_POINTS)
                return (lambda: api.lot_history(lot, window, points)), query.consistency()
            case ["v1", "cameras"]:
                query = Query(request, ("consistency", "lot"))
                lot = query.values.get("lot")
                return (lambda: api.cameras(lot)), query.consistency()
            case ["v1", "cameras", camera]:
                query = Query(request, ("consistency",))
                camera_id = parse_camera_id(camera)
                return (lambda: api.camera(camera_id)), query.consistency()
            case ["v1", "cameras", camera, "frames"]:
                query = Query(request, ("consistency", "since", "limit", "incarnation"))
                camera_id = parse_camera_id(camera)
                since = query.integer("since", 0, 0, MAX_SEQ)
                limit = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
                incarnation = query.integer("incarnation", None, 0, MAX_INCARNATION)
                return (lambda: api.frames(camera_id, since, limit, incarnation)), query.consistency()
        path = request.path.decode(errors="replace")
        raise ApiError(404, f"no such resource: {path}")

    def _answer(self, request, answer: Callable[[], dict]) -> bytes:
        try:
            return json_response(request, answer())
        except ApiError as e:
            return error_response(request, e)
        except Exception:
            self.log.failure("HTTP {path} failed", path=request.path.decode(errors="replace"))
            return error_response(request, ApiError(500, "internal error; see the node's log"))

    def _after_read(self, request, answer: Callable[[], dict]):
        gone = []
        started = self.clock.seconds()
        reading = self.reads.read()
        request.notifyFinish().addErrback(lambda _: (gone.append(True), reading.cancel()))

        def respond(_index):
            self.on_read("linearizable", "ok", self.clock.seconds() - started)
            if not gone:
                request.write(self._answer(request, answer))
                request.finish()

        def refuse(failure):
            if failure.check(defer.CancelledError):
                self.on_read("linearizable", "cancelled", self.clock.seconds() - started)
                return None
            if failure.check(ReadUnavailable):
                self.on_read("linearizable", failure.value.outcome, self.clock.seconds() - started)
                error = Unavailable(failure.getErrorMessage())
            else:
                self.log.failure("read barrier failed", failure)
                error = ApiError(500, "internal error")
            if not gone:
                request.write(error_response(request, error))
                request.finish()

        reading.addCallbacks(respond, refuse)
        return server.NOT_DONE_YET
