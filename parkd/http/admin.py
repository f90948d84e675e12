"""The admin API of the HTTP port: membership changes, leadership transfer, the camera registry, backups.

    POST /api/v1/admin/add-node               {"id", "raft", "client", "http"[, "wait", "timeout"]}
    POST /api/v1/admin/remove-node            {"id"[, "timeout"]}
    POST /api/v1/admin/transfer-leader        {["id", "timeout"]}
    POST /api/v1/admin/camera-disable         {"id"[, "timeout"]}
    POST /api/v1/admin/camera-enable          {"id"[, "timeout"]}
    GET  /api/v1/admin/backup                 the leader streams a backup file (``backup.py``)

Each takes a JSON body (``Content-Type: application/json``, which a cross-site
form cannot send) and answers once the change has committed (a camera change:
once it is applied on the leader): 200 with the new configuration (a camera
change: ``{"camera_id", "enabled", "index"}``), 400 for a bad body, 404 for a
camera that never sent a frame, 409 when the leader refuses (with the reason),
421 on a node that is not the leader (``leader_id`` and ``leader_http`` say
where to go), 503 when no leader is known, 504 when the change did not finish
in time.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from parkd.config import ConfigError
from parkd.http.access import Access
from parkd.http.backup import render_backup
from parkd.http.errors import RETRY_AFTER, ApiError, error_response, json_response
from parkd.node.addresses import member_from_json
from parkd.node.membership import (
    COMMIT_TIMEOUT,
    PROMOTE_TIMEOUT,
    TRANSFER_TIMEOUT,
    ChangeLost,
    ChangeRefused,
    ChangeTimeout,
)
from parkd.node.registry import UnknownCamera
from parkd.raft.confchange import MAX_NODE_ID
from parkd.raft.core import NotLeader

MAX_ADMIN_BODY = 64 * 1024  # bytes
MAX_ADMIN_TIMEOUT = 600.0  # seconds an admin request may ask to wait
MAX_CAMERA_ID = (1 << 32) - 1


ADMIN_OPERATIONS = ("add-node", "remove-node", "transfer-leader", "camera-disable", "camera-enable")


class Admin:
    """``POST /api/v1/admin/<operation>``: membership changes, leadership transfer, the camera registry;
    ``GET /api/v1/admin/backup``.

    Each operation checks its JSON body (400), asks the node's
    MembershipManager (``membership``) or CameraRegistry (``registry``) and
    answers once the outcome is known; ``status`` is the node's Raft status
    (the driver's read-only view).  A backup is the BackupTaker's (``backups``).
    """

    log = Logger()

    def __init__(self, membership, status, access: Access = Access(), registry=None, backups=None):
        self.membership = membership
        self.status = status
        self.access = access
        self.registry = registry
        self.backups = backups  # the node's BackupTaker

    def render(self, request, operation: str):
        refusal = self.access.admin_refusal(request)
        if refusal is not None:
            return error_response(request, refusal)
        if operation == "backup":
            return render_backup(request, self.backups, self._not_leader)
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
            error = self._error(failure, operation)  # logs an unexpected failure even if nobody waits
            if not gone:
                request.write(error_response(request, error))
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
        deferred = self.membership.add_node(member, wait_voter=wait == "voter", timeout=timeout)
        return deferred, lambda membership: self._membership_doc(member.id, membership)

    def remove_node(self, body: dict):
        fields = Fields(body, ("id", "timeout"))
        node_id = fields.node_id("id", required=True)
        timeout = fields.timeout(COMMIT_TIMEOUT)
        deferred = self.membership.remove_node(node_id, timeout=timeout)
        return deferred, lambda membership: self._membership_doc(node_id, membership)

    def transfer_leader(self, body: dict):
        fields = Fields(body, ("id", "timeout"))
        target = fields.node_id("id", required=False)
        timeout = fields.timeout(TRANSFER_TIMEOUT)
        status = self.status
        previous = status.leader_id
        cancelling = status.transferee if target == status.node_id else None  # its own id cancels (§3.10)
        deferred = self.membership.transfer_leader(target, timeout=timeout)

        def document(leader):
            return {"leader_id": leader, "previous_leader_id": previous, "term": status.term, "cancelled": cancelling}

        return deferred, document

    def camera_disable(self, body: dict):
        return self._camera(body, enabled=False)

    def camera_enable(self, body: dict):
        return self._camera(body, enabled=True)

    def _camera(self, body: dict, enabled: bool):
        fields = Fields(body, ("id", "timeout"))
        camera_id = fields.identifier("id", "a camera id", MAX_CAMERA_ID, required=True)
        timeout = fields.timeout(COMMIT_TIMEOUT)
        if self.registry is None:
            raise ApiError(404, "this node has no camera registry")
        deferred = self.registry.set_enabled(camera_id, enabled, timeout=timeout)
        return deferred, lambda change: {"camera_id": change.camera_id, "enabled": change.enabled,
                                         "index": change.index}  # fmt: skip

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
            "members": self.membership.members(),
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
        if isinstance(error, UnknownCamera):
            return ApiError(404, str(error))
        if isinstance(error, ApiError):
            return error
        self.log.failure("admin {operation} failed", failure, operation=operation)
        return ApiError(500, "internal error; see the node's log")

    def _not_leader(self, leader_id: int | None) -> ApiError:
        me = self.status.node_id
        if leader_id is None or leader_id == me:
            return ApiError(503, f"node {me} knows no leader; try again shortly", retry_after=RETRY_AFTER,
                            fields={"leader_id": None, "leader_http": None})  # fmt: skip
        member = self.membership.address(leader_id)
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
        return self.identifier(name, "a node id", MAX_NODE_ID, required)

    def identifier(self, name: str, what: str, maximum: int, required: bool) -> int | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise ApiError(400, f"{name}: missing ({what})")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
            raise ApiError(400, f"{name}: expected {what} in 1..{maximum}, got {value!r}")
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
