"""Health of a node over HTTP (CONTRACT §10): ``GET /livez`` and ``GET /readyz``.

``/livez`` is 200 while the node's reactor answers (this resource runs on it)
and its Raft driver has not failed; a driver waiting for disk space is alive.
``/readyz`` runs :class:`Readiness`, a small list of checks, and is 200 when
every one passes, else 503:

- ``leader``: the node knows a leader;
- ``applied``: the node has applied to within ``ready_lag`` entries of the
  highest commit index it knows, the leader's (a follower learns it from the
  leader's appends and heartbeats: ``leader_commit - applied_index <= ready_lag``);
- ``alarms``: no alarm is raised (the list of raised alarms' names);
- ``standing``: the node is a member in good standing (``NodeService.standing()``:
  not a brand-new data dir that no leader has given the cluster's state yet).

Both answer ``{"ok": bool, "checks": {name: detail, ...}}`` (``/readyz`` also
``"failing"``: the names of the checks that failed) and need no client
certificate, even with ``public_reads = false`` (``site.Root`` lets them
through): load balancers and systemd ask them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parkd.http.errors import JsonResource, json_response, not_found

PATHS = (b"livez", b"readyz")


@dataclass(frozen=True)
class Check:
    """One check's outcome: its ``name``, whether it passed, and what ``/readyz`` shows of it."""

    name: str
    ok: bool
    detail: Any


def leader_check(driver) -> Callable[[], Check]:
    def check() -> Check:
        leader = driver.leader_id
        return Check("leader", leader is not None, {"ok": leader is not None, "leader_id": leader})

    return check


def applied_check(driver, ready_lag: int) -> Callable[[], Check]:
    def check() -> Check:
        applied, commit = driver.applied_index, driver.leader_commit
        ok = commit - applied <= ready_lag
        return Check("applied", ok, {"ok": ok, "applied_index": applied, "leader_commit_index": commit,
                                     "lag": max(0, commit - applied), "ready_lag": ready_lag})  # fmt: skip

    return check


def alarms_check(alarms) -> Callable[[], Check]:
    def check() -> Check:
        raised = alarms.active()
        return Check("alarms", not raised, raised)

    return check


def standing_check(standing: Callable[[], str | None]) -> Callable[[], Check]:
    def check() -> Check:
        why = standing()
        return Check("standing", why is None, {"ok": why is None, "reason": why})

    return check


class Readiness:
    """``/readyz``: every check must pass.  A check is a function returning a :class:`Check`."""

    def __init__(self, *checks: Callable[[], Check]):
        self.checks = list(checks)

    def report(self) -> dict:
        results = [check() for check in self.checks]
        failing = [r.name for r in results if not r.ok]
        return {"ok": not failing, "checks": {r.name: r.detail for r in results}, "failing": failing}


def node_readiness(driver, alarms, standing: Callable[[], str | None], ready_lag: int) -> Readiness:
    """``/readyz``'s checks of a node's parts: its driver, its alarms and its standing in the cluster."""
    return Readiness(
        leader_check(driver),
        applied_check(driver, ready_lag),
        alarms_check(alarms),
        standing_check(standing),
    )


def liveness(driver, reactor_lag: Callable[[], float]) -> Callable[[], dict]:
    """``/livez``'s report: the reactor answered (with its recent worst lag) and Raft runs."""

    def report() -> dict:
        running = not driver.failed
        return {
            "ok": running,
            "checks": {
                "reactor": {"ok": True, "lag_ms": round(reactor_lag() * 1000, 1)},
                "raft": {"ok": running, "stalled": driver.stalled},
            },
        }

    return report


class HealthResource(JsonResource):
    """A report as JSON: 200 when its ``ok`` is true, else 503."""

    def __init__(self, report: Callable[[], dict]):
        super().__init__()
        self.report = report

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return not_found(request)
        body = self.report()
        return json_response(request, body, 200 if body["ok"] else 503)
