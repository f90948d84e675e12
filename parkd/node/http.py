"""The node's HTTP port (CONTRACT §6): JSON API, dashboard and metrics.

Routes (every node serves all of them):

    GET /api/v1/lots                          every lot: free / capacity
    GET /api/v1/lots/<id>                     one lot
    GET /api/v1/lots/<id>/history?window=S&points=N   the lot's trend over the last S seconds
    GET /api/v1/cameras[?lot=L]               every camera (of a lot) with its status
    GET /api/v1/cameras/<id>                  one camera
    GET /api/v1/cameras/<id>/frames?since=S&limit=N
    GET /api/v1/cluster                       this node's own view of the cluster
    POST /api/v1/admin/add-node               {"id", "raft", "client", "http"[, "wait", "timeout"]}
    POST /api/v1/admin/remove-node            {"id"[, "timeout"]}
    POST /api/v1/admin/transfer-leader        {["id", "timeout"]}
    GET /metrics                              Prometheus text format
    GET /                                     the dashboard (static files in parkd/web/)

Reads of the replicated state are linearizable by default: the node asks the
leader for a read index (ReadIndex, Raft dissertation §6.4; a follower's core
forwards the request), waits until its own state machine has applied that
index, and then answers from local state.  ``?consistency=local`` answers from
local state at once.  With no leader known, or none confirming in time, the
answer is 503 with ``Retry-After``.  ``/api/v1/cluster`` always describes the
answering node's own view (it is how one finds out that there is no leader).

The admin endpoints (membership changes, leadership transfer) take a JSON body
(``Content-Type: application/json``, which a cross-site form cannot send) and
answer once the change has committed: 200 with the new configuration, 400 for a
bad body, 409 when the leader refuses (with the reason), 421 on a node that is
not the leader (``leader_id`` and ``leader_http`` say where to go), 503 when no
leader is known, 504 when the change did not finish in time.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources as importlib_resources

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from parkd.config import ConfigError
from parkd.node.membership import (
    COMMIT_TIMEOUT,
    PROMOTE_TIMEOUT,
    TRANSFER_TIMEOUT,
    ChangeLost,
    ChangeRefused,
    ChangeTimeout,
    member_from_json,
)
from parkd.raft.core import NotLeader, ReadState

DEFAULT_LIMIT = 1000  # frames per page
MAX_LIMIT = 10_000
READ_TIMEOUT = 2.0  # seconds to obtain a read index and apply up to it
READ_ATTEMPTS = 3  # read index requests per HTTP read (a lost leadership answers 0)
READ_RETRY_DELAY = 0.05  # seconds before asking again after a failed read index
RETRY_AFTER = 1  # seconds, in the Retry-After header of a 503
DEFAULT_WINDOW = 3600  # seconds of lot history
MAX_WINDOW = 7 * 24 * 3600
DEFAULT_POINTS = 60
MAX_POINTS = 1000
MAX_CAMERA_ID = (1 << 32) - 1
MAX_SEQ = (1 << 63) - 1
CONSISTENCIES = ("linearizable", "local")
MAX_ADMIN_BODY = 64 * 1024  # bytes
MAX_ADMIN_TIMEOUT = 600.0  # seconds an admin request may ask to wait

_DIGITS = re.compile(r"[0-9]{1,19}")


# ------------------------------------------------------------------ errors


class ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.fields = fields or {}  # more members of the error document


class Unavailable(ApiError):
    """503: no leader known or none confirmed the read in time; try again."""

    def __init__(self, message: str):
        super().__init__(503, message, retry_after=RETRY_AFTER)


def json_response(request, body: dict, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode() + b"\n"


def error_response(request, error: ApiError) -> bytes:
    if error.retry_after is not None:
        request.setHeader(b"retry-after", str(error.retry_after).encode())
    return json_response(request, {"error": error.message, **error.fields}, error.status)


# ------------------------------------------------------------------ linearizable reads


@dataclass(eq=False)
class _Read:
    deferred: defer.Deferred
    started: float
    ctx: int = 0
    attempts: int = 0
    index: int = 0  # the read index, once the leader confirmed it
    timer: object = None
    retry: object = None
    done: bool = False
    order: int = field(default_factory=itertools.count().__next__)


class ReadBarrier:
    """Linearizable reads: a Deferred that fires once local state may answer.

    ``read()`` asks the core for a read index with a fresh context, waits for
    the matching ``ReadState`` (index 0 means leadership was lost: ask again, a
    few times), then waits until this node has applied that index.  It fails
    with :class:`Unavailable` when no leader is known or nothing arrives within
    ``timeout`` seconds.  Cancelling the Deferred (the client went away) drops
    the read.
    """

    def __init__(
        self,
        driver,
        clock,
        applied: int,
        timeout: float = READ_TIMEOUT,
        attempts: int = READ_ATTEMPTS,
        on_done: Callable[[str, float], None] | None = None,
    ):
        self.driver = driver
        self.clock = clock
        self.applied = applied
        self.timeout = timeout
        self.attempts = attempts
        self.on_done = on_done or (lambda outcome, seconds: None)
        # Contexts travel to the leader and back; start at a random point so a
        # late answer to a previous incarnation's request cannot match ours.
        self._contexts = itertools.count(random.SystemRandom().getrandbits(48) + 1)
        self._asking: dict[int, _Read] = {}
        self._waiting: list[tuple[int, int, _Read]] = []  # heap of (index, order, read)
        driver.read_state_listeners.append(self.read_state)
        driver.applied_listeners.append(self.applied_up_to)

    @property
    def pending(self) -> int:
        return len(self._asking) + sum(1 for _, _, r in self._waiting if not r.done)

    def read(self) -> defer.Deferred:
        """Fires with the read index once local state reflects every write acked before."""
        read = _Read(defer.Deferred(lambda d: self._drop(read)), self.clock.seconds())
        read.timer = self.clock.callLater(self.timeout, self._expire, read)
        self._ask(read)
        return read.deferred

    def _ask(self, read: _Read) -> None:
        read.retry = None
        if read.done:
            return
        read.attempts += 1
        read.ctx = next(self._contexts)
        self._asking[read.ctx] = read
        try:
            self.driver.read_index(read.ctx)
        except NotLeader:
            self._asking.pop(read.ctx, None)
            self._fail(read, "no_leader", "no leader known; try again shortly")

    def read_state(self, state: ReadState) -> None:
        read = self._asking.pop(state.ctx, None)
        if read is None or read.done:
            return
        if state.index == 0:  # leadership changed under the read: ask again
            if read.attempts >= self.attempts:
                self._fail(read, "no_leader", "the leader changed during the read; try again shortly")
            else:
                read.retry = self.clock.callLater(READ_RETRY_DELAY, self._ask, read)
            return
        read.index = state.index
        if self.applied >= read.index:
            self._finish(read)
        else:
            heapq.heappush(self._waiting, (read.index, read.order, read))

    def applied_up_to(self, index: int) -> None:
        self.applied = max(self.applied, index)
        while self._waiting and self._waiting[0][0] <= self.applied:
            _, _, read = heapq.heappop(self._waiting)
            if not read.done:
                self._finish(read)

    def _expire(self, read: _Read) -> None:
        read.timer = None
        if read.index:
            message = f"not caught up with the leader's commit index {read.index} within {self.timeout:g} s"
        else:
            message = f"no leader confirmed the read within {self.timeout:g} s; try again shortly"
        self._fail(read, "timeout", message)

    def _close(self, read: _Read) -> None:
        read.done = True
        self._asking.pop(read.ctx, None)
        for call in (read.timer, read.retry):
            if call is not None and call.active():
                call.cancel()
        read.timer = read.retry = None

    def _finish(self, read: _Read) -> None:
        self._close(read)
        self.on_done("ok", self.clock.seconds() - read.started)
        read.deferred.callback(read.index)

    def _fail(self, read: _Read, outcome: str, message: str) -> None:
        self._close(read)
        self.on_done(outcome, self.clock.seconds() - read.started)
        read.deferred.errback(Failure(Unavailable(message)))

    def _drop(self, read: _Read) -> None:
        if not read.done:
            self._close(read)
            self.on_done("cancelled", self.clock.seconds() - read.started)


# ------------------------------------------------------------------ parameters


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

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
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


# ------------------------------------------------------------------ views


def lot_json(lot) -> dict:
    return {
        "id": lot.id,
        "capacity": lot.capacity,
        "free": lot.free,
        "cameras": lot.cameras,
        "updated_at": lot.updated_at,
    }


def frame_json(frame) -> dict:
    return {"seq": frame.seq, "free": frame.free, "captured_at": frame.captured_at, "index": frame.index}


_HISTORY_FIRST = """
SELECT MIN(f.captured_at) FROM frames AS f JOIN cameras AS c ON c.camera_id = f.camera_id
WHERE c.lot = :lot AND f.captured_at >= :start AND f.captured_at <= :end
"""
_HISTORY = """
SELECT MIN(CAST((f.captured_at - :start) / :step AS INTEGER), :last) AS bucket, f.captured_at, f.free,
       MAX(f.log_index)
FROM frames AS f JOIN cameras AS c ON c.camera_id = f.camera_id
WHERE c.lot = :lot AND f.captured_at >= :start AND f.captured_at <= :end
GROUP BY bucket ORDER BY bucket
"""


def lot_history(engine, lot: str, start: float, end: float, points: int) -> tuple[float | None, list[dict]]:
    """The lot's free spaces over [start, end] in at most ``points`` equal steps.

    The steps divide the part of the window that has frames (from the first
    frame in it to ``end``), so a young cluster still gets a detailed trend.
    A lot's value is the newest judgement (in log order) of any of its cameras
    (see parkd.parking.state), so each step reports its frame with the highest
    log index (SQLite takes the bare columns from the MAX row).  Steps without
    a frame are left out.  Returns (the first frame's time or None, points).
    """
    import sqlalchemy as sa  # the node already depends on it; keep import-time small

    with engine.connect() as conn:
        first = conn.scalar(sa.text(_HISTORY_FIRST), {"lot": lot, "start": start, "end": end})
        if first is None:
            return None, []
        step = max((end - first) / points, 1e-6)
        params = {"lot": lot, "start": first, "end": end, "step": step, "last": points - 1}
        rows = conn.execute(sa.text(_HISTORY), params)
        return first, [{"at": at, "free": free} for _, at, free, _ in rows]


class Api:
    """The JSON documents, computed from a node's local state."""

    def __init__(self, node):
        self.node = node

    def lots(self) -> dict:
        return {"lots": [lot_json(lot) for lot in self.node.state.lots()]}

    def lot(self, lot_id: str) -> dict:
        for lot in self.node.state.lots():
            if lot.id == lot_id:
                return lot_json(lot)
        raise self._unknown_lot(lot_id)

    def lot_history(self, lot_id: str, window: int, points: int) -> dict:
        if lot_id not in self._lot_ids():
            raise self._unknown_lot(lot_id)
        end = self.node.reactor.seconds()
        first, history = lot_history(self.node.engine, lot_id, end - window, end, points)
        return {"lot": lot_id, "window": window, "start": first, "end": end, "points": history}

    def cameras(self, lot: str | None = None) -> dict:
        if lot is not None and lot not in self._lot_ids():
            raise self._unknown_lot(lot)
        views = [c for c in self.node.state.cameras() if lot is None or c.lot == lot]
        return {"cameras": [self._camera_json(c) for c in views]}

    def camera(self, camera_id: int) -> dict:
        return self._camera_json(self._known_camera(camera_id))

    def frames(self, camera_id: int, since: int, limit: int) -> dict:
        self._known_camera(camera_id)
        frames = self.node.state.frames(camera_id, since=since, limit=limit)
        following = frames[-1].seq if len(frames) == limit else None
        return {"camera_id": camera_id, "frames": [frame_json(f) for f in frames], "next_since": following}

    def cluster(self) -> dict:
        core = self.node.core
        return {
            "node_id": core.id,
            "role": core.role.value,
            "term": core.term,
            "leader_id": core.leader_id,
            "commit_index": core.commit_index,
            "last_applied": self.node.state.last_applied(),
            "last_index": core.last_index,
            "members": self.node.membership.members(),
        }

    # -- helpers

    def _camera_json(self, c) -> dict:
        now = self.node.reactor.seconds()
        interval = self.node.settings.config.camera.interval
        return {
            "camera_id": c.camera_id,
            "lot": c.lot,
            "free": c.free,
            "last_seq": c.last_seq,
            "last_seen": c.last_seen,
            "status": camera_status(c.last_seen, now, interval),
        }

    def _known_camera(self, camera_id: int):
        camera = self.node.state.camera(camera_id)
        if camera is None:
            raise ApiError(404, f"unknown camera {camera_id}")
        return camera

    def _lot_ids(self) -> list[str]:
        return [lot.id for lot in self.node.settings.config.lots]

    def _unknown_lot(self, lot_id: str) -> ApiError:
        known = ", ".join(self._lot_ids()) or "none"
        return ApiError(404, f"unknown lot {lot_id!r} (lots: {known})")


# ------------------------------------------------------------------ admin


ADMIN_OPERATIONS = ("add-node", "remove-node", "transfer-leader")


class Admin:
    """``POST /api/v1/admin/<operation>``: membership changes and leadership transfer.

    Each operation checks its JSON body (400), asks the node's
    MembershipManager and answers once the outcome is known.
    """

    log = Logger()

    def __init__(self, node):
        self.node = node

    def render(self, request, operation: str):
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            method = request.method.decode(errors="replace")
            return error_response(request, ApiError(405, f"method {method} not allowed (use POST)"))
        try:
            if operation not in ADMIN_OPERATIONS:
                raise ApiError(404, f"no such admin operation {operation!r} (known: {', '.join(ADMIN_OPERATIONS)})")
            if request.args:
                raise ApiError(400, "admin operations take a JSON body, not query parameters")
            body = read_json_body(request)
            deferred, answer = getattr(self, operation.replace("-", "_"))(body)
        except ApiError as e:
            return error_response(request, e)
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def respond(result):
            if not gone:
                request.write(self._answer(request, lambda: answer(result)))
                request.finish()

        def refuse(failure):
            if gone:
                return None
            request.write(error_response(request, self._error(failure, operation)))
            request.finish()

        deferred.addCallbacks(respond, refuse)
        return server.NOT_DONE_YET

    # -- operations: (Deferred, result -> document)

    def add_node(self, body: dict):
        fields = Fields(body, ("id", "raft", "client", "http", "wait", "timeout"))
        try:
            member = member_from_json({k: body.get(k) for k in ("id", "raft", "client", "http") if k in body}, "body")
        except ConfigError as e:
            raise ApiError(400, str(e)) from None
        wait = fields.choice("wait", ("learner", "voter"), "learner")
        timeout = fields.timeout(PROMOTE_TIMEOUT if wait == "voter" else COMMIT_TIMEOUT)
        deferred = self.node.membership.add_node(member, wait_voter=wait == "voter", timeout=timeout)
        return deferred, lambda membership: self._membership_doc(member.id, membership)

    def remove_node(self, body: dict):
        fields = Fields(body, ("id", "timeout"))
        node_id = fields.node_id("id", required=True)
        timeout = fields.timeout(COMMIT_TIMEOUT)
        deferred = self.node.membership.remove_node(node_id, timeout=timeout)
        return deferred, lambda membership: self._membership_doc(node_id, membership)

    def transfer_leader(self, body: dict):
        fields = Fields(body, ("id", "timeout"))
        target = fields.node_id("id", required=False)
        timeout = fields.timeout(TRANSFER_TIMEOUT)
        previous = self.node.core.leader_id
        deferred = self.node.membership.transfer_leader(target, timeout=timeout)
        core = self.node.core
        return deferred, lambda leader: {"leader_id": leader, "previous_leader_id": previous, "term": core.term}

    # -- documents

    def _membership_doc(self, node_id: int, membership) -> dict:
        if node_id in membership.voters:
            status = "voter"
        elif node_id in membership.learners:
            status = "learner"
        else:
            status = "removed"
        return {
            "node_id": node_id,
            "status": status,
            "config_index": membership.index,
            "voters": list(membership.voters),
            "learners": list(membership.learners),
            "members": self.node.membership.members(),
        }

    def _answer(self, request, document: Callable[[], dict]) -> bytes:
        try:
            return json_response(request, document())
        except Exception:
            self.log.failure("HTTP {path} failed", path=request.path.decode(errors="replace"))
            return error_response(request, ApiError(500, "internal error; see the node's log"))

    def _error(self, failure: Failure, operation: str) -> ApiError:
        error = failure.value
        if isinstance(error, NotLeader):
            return self._not_leader(error.leader_id)
        if isinstance(error, ChangeRefused):
            return ApiError(409, error.reason)
        if isinstance(error, ChangeLost):
            return ApiError(503, str(error), retry_after=RETRY_AFTER)
        if isinstance(error, ChangeTimeout):
            return ApiError(504, str(error))
        if isinstance(error, ApiError):
            return error
        self.log.failure("admin {operation} failed", failure, operation=operation)
        return ApiError(500, "internal error; see the node's log")

    def _not_leader(self, leader_id: int | None) -> ApiError:
        me = self.node.core.id
        if leader_id is None or leader_id == me:
            return ApiError(503, f"node {me} knows no leader; try again shortly", retry_after=RETRY_AFTER,
                            fields={"leader_id": None, "leader_http": None})  # fmt: skip
        member = self.node.membership.address(leader_id)
        http = str(member.http) if member is not None else None
        where = f"node {leader_id}" + (f" at {http}" if http else "")
        return ApiError(421, f"node {me} is not the leader; send this to {where}",
                        fields={"leader_id": leader_id, "leader_http": http})  # fmt: skip


def read_json_body(request) -> dict:
    """The request's JSON object (an empty body is ``{}``); ApiError 400/413/415."""
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    raw = request.content.read(MAX_ADMIN_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_ADMIN_BODY:
        raise ApiError(413, f"body larger than {MAX_ADMIN_BODY} bytes")
    if not raw.strip():
        return {}
    if kind != b"application/json":
        raise ApiError(415, "send the body as Content-Type: application/json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


class Fields:
    """The members of an admin request body, checked one by one (ApiError 400)."""

    def __init__(self, body: dict, allowed: tuple[str, ...]):
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r} (allowed: {', '.join(allowed)})")
        self.body = body

    def node_id(self, name: str, required: bool) -> int | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise ApiError(400, f"{name}: missing (a node id)")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CAMERA_ID:
            raise ApiError(400, f"{name}: expected a node id in 1..{MAX_CAMERA_ID}, got {value!r}")
        return value

    def timeout(self, default: float) -> float:
        value = self.body.get("timeout")
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_ADMIN_TIMEOUT:
            raise ApiError(400, f"timeout: expected seconds in (0, {MAX_ADMIN_TIMEOUT:g}], got {value!r}")
        return float(value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.body.get(name, default)
        if value not in options:
            raise ApiError(400, f"{name}: expected one of {', '.join(options)}, got {value!r}")
        return value


# ------------------------------------------------------------------ resources


class JsonResource(resource.Resource):
    """GET and HEAD only; everything else is a JSON 405."""

    isLeaf = True

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            method = request.method.decode(errors="replace")
            return error_response(request, ApiError(405, f"method {method} not allowed (use GET)"))
        return self.render_GET(request)


class ApiResource(JsonResource):
    """Everything under ``/api/``: routing, parameter checks and the read barrier."""

    log = Logger()

    def __init__(self, node, reads: ReadBarrier, metrics=None):
        super().__init__()
        self.api = Api(node)
        self.admin = Admin(node)
        self.reads = reads
        self.metrics = metrics

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
        if consistency is None or consistency == "local":
            if self.metrics is not None and consistency == "local":
                self.metrics.read("local", "ok", 0.0)
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
                query = Query(request, ("consistency", "since", "limit"))
                camera_id = parse_camera_id(camera)
                since = query.integer("since", 0, 0, MAX_SEQ)
                limit = query.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
                return (lambda: api.frames(camera_id, since, limit)), query.consistency()
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
        reading = self.reads.read()
        request.notifyFinish().addErrback(lambda _: (gone.append(True), reading.cancel()))

        def respond(_index):
            if not gone:
                request.write(self._answer(request, answer))
                request.finish()

        def refuse(failure):
            if gone or failure.check(defer.CancelledError):
                return None
            error = failure.value if failure.check(ApiError) else ApiError(500, "internal error")
            if not failure.check(ApiError):
                self.log.failure("read barrier failed", failure)
            request.write(error_response(request, error))
            request.finish()

        reading.addCallbacks(respond, refuse)
        return server.NOT_DONE_YET


class MetricsResource(JsonResource):
    """``/metrics``: the node's registry in Prometheus text format, rendered in the reactor thread."""

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        if request.postpath not in ([], [b""]):
            return error_response(request, ApiError(404, f"no such resource: {request.path.decode(errors='replace')}"))
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.metrics.registry)


class NotFound(JsonResource):
    def render_GET(self, request):
        return error_response(request, ApiError(404, f"no such resource: {request.path.decode(errors='replace')}"))


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
        if kind is None or name not in self._names():
            return error_response(request, ApiError(404, f"no such resource: {request.path.decode(errors='replace')}"))
        with open(os.path.join(self.directory, name), "rb") as f:
            body = f.read()
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        return body

    def _names(self) -> set[str]:
        return set(os.listdir(self.directory))


class Root(resource.Resource):
    """``/`` is the dashboard; ``/api``, ``/metrics``, ``/static`` the rest; anything else 404."""

    def __init__(self, web_dir: str):
        super().__init__()
        self.index = WebFiles(web_dir, "index.html")

    def getChild(self, path, request):
        if path == b"" and request.postpath == []:
            return self.index
        return NotFound()


def web_dir() -> str:
    return str(importlib_resources.files("parkd") / "web")


def build_site(node, metrics=None, reads: ReadBarrier | None = None) -> server.Site:
    """The HTTP port of ``node`` (a NodeService, or a double with the same attributes)."""
    if metrics is None:
        from parkd.node.metrics import NodeMetrics

        metrics = NodeMetrics(node)
    if reads is None:
        reads = ReadBarrier(node.driver, node.reactor, node.state.last_applied(), on_done=metrics.read_linearizable)
    directory = web_dir()
    root = Root(directory)
    root.putChild(b"api", ApiResource(node, reads, metrics))
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"static", WebFiles(directory))
    site = server.Site(root, reactor=node.reactor)
    site.noisy = False
    site.metrics = metrics
    site.reads = reads
    return site
