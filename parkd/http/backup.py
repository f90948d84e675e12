"""``GET /api/v1/admin/backup``: the leader streams a backup file (CONTRACT §10 "Backup").

The admin resource (``admin.py``) checks the operator certificate first, then
hands the request here.  Answers: 200 with the file (``application/octet-stream``,
``Content-Length`` the file's size, ``X-Parkd-Backup-Index`` / ``-Term`` its index
and term, a ``Content-Disposition`` file name); 421 on a follower, naming the
leader (``leader_id``, ``leader_http``); 409 while this node takes another
backup; 507 while its ``nospace`` alarm is raised; 503 with ``Retry-After`` when no leader confirms the read index; 405
for another method; 400 for query parameters.  A stream that fails after the
200 is cut short: the client sees fewer bytes than ``Content-Length`` (and the
file's own length and digest tell it too).  The work is ``parkd/node/backup.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from parkd.http.errors import RETRY_AFTER, ApiError, error_response
from parkd.node.backup import BackupBusy, BackupNoSpace
from parkd.node.reads import ReadUnavailable
from parkd.parking.backup import backup_name
from parkd.raft.core import NotLeader

log = Logger()


def render_backup(request, backups, not_leader: Callable[[int | None], ApiError]):
    """Answer one backup request (see the module docstring); ``not_leader`` makes the 421 (or 503)."""
    if request.method != b"GET":
        request.setHeader(b"allow", b"GET")
        method = request.method.decode(errors="replace")
        return error_response(request, ApiError(405, f"method {method} not allowed (use GET)"))
    if request.args:
        return error_response(request, ApiError(400, "backup takes no query parameters"))
    if backups is None:
        return error_response(request, ApiError(404, "this node takes no backups"))
    try:
        taking = backups.take()
    except NotLeader as e:
        return error_response(request, not_leader(e.leader_id))
    except BackupBusy as e:
        return error_response(request, ApiError(409, str(e)))
    except BackupNoSpace as e:
        return error_response(request, ApiError(507, str(e)))
    gone, sending = [], []

    def left(_):
        gone.append(True)
        for backup in sending:
            backup.stop()

    request.notifyFinish().addErrback(left)

    def ready(backup):
        if gone:  # the client left during the copy
            backup.discard()
            return
        sending.append(backup)
        header = backup.header
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(backup.size).encode())
        request.setHeader(b"content-disposition", f'attachment; filename="{backup_name(header)}"'.encode())
        request.setHeader(b"x-parkd-backup-index", str(header.index).encode())
        request.setHeader(b"x-parkd-backup-term", str(header.term).encode())
        backup.send(request).addCallbacks(lambda _: finish(), cut)

    def finish():
        if not gone:
            request.finish()

    def cut(failure: Failure):
        if not gone:  # a read failed mid-stream: the client must not take it for a whole file
            request.loseConnection()

    def failed(failure: Failure):
        error = failure.value
        if isinstance(error, ReadUnavailable):
            answer = ApiError(503, f"cannot take a backup now: {error}", retry_after=RETRY_AFTER)
        else:
            log.failure("taking a backup failed", failure)
            answer = ApiError(500, f"taking a backup failed: {error}")
        if not gone:
            request.write(error_response(request, answer))
            request.finish()

    taking.addCallbacks(ready, failed)
    return server.NOT_DONE_YET
