"""``/livez`` and ``/readyz`` (CONTRACT §10) and the disk's metrics, on a node double.

Readiness: a known leader, applied within ``ready_lag`` of the leader's commit
index, no alarm; each check named in the answer.  Neither needs a client
certificate, even when reads do.
"""

from __future__ import annotations

from test_metrics import scrape, value

from parkd.http.access import Access
from parkd.node.alarms import NOSPACE
from parkd.node.disk import MIB
from parkd.raft.core import Role

READY_LAG = 1000  # the default of [cluster] ready_lag: FakeNode's config has no [cluster]


def readyz(node):
    r = node.get("/readyz")
    assert r.headers["content-type"] == "application/json"
    return r.status, r.json()


def test_a_follower_that_knows_the_leader_and_is_caught_up_is_ready(node):
    node.apply(7, 1, 40)
    node.driver.leader_commit = 1
    status, body = readyz(node)
    assert status == 200
    assert body == {
        "ok": True,
        "checks": {
            "leader": {"ok": True, "leader_id": 1},
            "applied": {"ok": True, "applied_index": 1, "leader_commit_index": 1, "lag": 0, "ready_lag": READY_LAG},
            "alarms": [],
            "standing": {"ok": True, "reason": None},
        },
        "failing": [],
    }


def test_without_a_leader_the_node_is_not_ready(node):
    node.driver.leader_id = None
    node.driver.role = Role.PRE_CANDIDATE
    status, body = readyz(node)
    assert status == 503 and body["ok"] is False
    assert body["failing"] == ["leader"] and body["checks"]["leader"] == {"ok": False, "leader_id": None}


def test_ready_within_ready_lag_of_the_leaders_commit_index_and_not_beyond(node):
    node.apply(7, 1, 40)
    node.driver.leader_commit = 1 + READY_LAG  # what the leader's appends said
    assert readyz(node)[0] == 200
    node.driver.leader_commit = 2 + READY_LAG
    status, body = readyz(node)
    assert status == 503 and body["failing"] == ["applied"]
    assert body["checks"]["applied"]["lag"] == READY_LAG + 1
    node.apply(7, 2, 41)
    assert readyz(node)[0] == 200


def test_an_alarm_makes_the_node_unready_until_it_clears(node):
    node.free_disk = 100 * MIB  # below the default 256 MiB
    node.disk.check()
    status, body = readyz(node)
    assert status == 503 and body["failing"] == ["alarms"] and body["checks"]["alarms"] == [NOSPACE]
    assert node.get("/api/v1/cluster").json()["alarms"] == [NOSPACE]
    node.free_disk = 1000 * MIB
    node.disk.check()
    assert readyz(node)[0] == 200 and node.get("/api/v1/cluster").json()["alarms"] == []


def test_livez_answers_while_the_reactor_runs_and_says_whether_raft_is_stalled(node):
    r = node.get("/livez")
    assert r.status == 200
    assert r.json() == {"ok": True, "checks": {"reactor": {"ok": True, "lag_ms": 0.0},
                                               "raft": {"ok": True, "stalled": False}}}  # fmt: skip
    node.driver.stalled = True  # waiting for disk space is alive: a restart would not help
    assert node.get("/livez").status == 200 and node.get("/livez").json()["checks"]["raft"]["stalled"] is True
    node.driver.failed = True  # the Ready loop stopped: the process is going down
    assert node.get("/livez").status == 503


def test_health_needs_no_client_certificate_even_when_reads_do(node):
    node.build_site(access=Access(tls=True, public_reads=False))
    assert node.get("/api/v1/lots").status == 401  # a read without a certificate
    assert node.get("/readyz").status == 200 and node.get("/livez").status == 200
    assert node.get("/readyz", method="HEAD").status == 200


def test_health_paths_take_nothing_below_them(node):
    assert node.get("/readyz/more").status == 404 and node.get("/livez/x").status == 404
    assert node.post("/readyz", {}).response().status == 405


def test_disk_metrics_and_alarms(node):
    node.free_disk = 300 * MIB
    node.disk.check()
    samples = scrape(node)
    assert value(samples, "parkd_disk_free_bytes") == 300 * MIB
    assert value(samples, "parkd_db_bytes") == 0  # FakeNode's database lives in memory
    assert samples["parkd_alarm", (("name", NOSPACE),)] == 0
    assert value(samples, "parkd_frames_refused_total", alarm=NOSPACE) == 0
    node.free_disk = 10 * MIB
    node.disk.check()
    node.alarms.frame_refusal()
    samples = scrape(node)
    assert value(samples, "parkd_disk_free_bytes") == 10 * MIB
    assert samples["parkd_alarm", (("name", NOSPACE),)] == 1
    assert value(samples, "parkd_frames_refused_total", alarm=NOSPACE) == 1
