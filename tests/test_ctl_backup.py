"""``parkctl backup FILE`` (CONTRACT §10 "Backup"): follows to the leader, checks the stream, never a partial FILE.

The nodes are real HTTP servers on loopback that stream a real backup file (or
a broken one: cut short as by a node killed mid-stream, one byte flipped).
"""

from __future__ import annotations

import io
import os

import pytest

from parkd import ctl
from parkd.ctl_backup import ProgressLine

from backups import backup_file
from httpfake import JSONHandler, LocalHTTPServer


class StreamingNode(LocalHTTPServer):
    """Answers ``GET /api/v1/admin/backup`` with ``answer()``: ("stream", bytes, cut_at) or (status, JSON doc)."""

    def __init__(self, answer):
        self.answer = answer
        self.asked = 0
        node = self

        class Handler(JSONHandler):
            def do_GET(self):
                node.asked += 1
                kind, body, *rest = node.answer()
                if kind == "stream":
                    cut = rest[0] if rest else None
                    self.send_response(200)
                    self.send_header("content-type", "application/octet-stream")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body if cut is None else body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_json(kind, body)

        super().__init__(Handler)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    path, header, _ = backup_file(tmp_path_factory.mktemp("ctl-backup"), frames=3_000)
    return path.read_bytes(), header


@pytest.fixture
def serve():
    nodes = []

    def make(answer):
        nodes.append(StreamingNode(answer))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


def run(*argv, tty=False):
    out, err = io.StringIO(), (Terminal() if tty else io.StringIO())
    code = ctl.main(list(argv), out=out, err=err, environ={})
    return code, out.getvalue(), err.getvalue()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_backup_writes_the_checked_file_and_says_index_term_and_size(made, serve, tmp_path):
    data, header = made
    node = serve(lambda: ("stream", data))
    code, out, err = run("--cluster", node.address, "backup", str(tmp_path / "b.pkb"))
    assert (code, err) == (0, "")
    assert (tmp_path / "b.pkb").read_bytes() == data
    assert f"index {header.index}, term {header.term}, {len(data)} bytes" in out
    assert os.listdir(tmp_path) == ["b.pkb"]


def test_backup_follows_a_follower_to_the_leader(made, serve, tmp_path):
    data, _ = made
    leader = serve(lambda: ("stream", data))
    follower = serve(lambda: (421, {"error": "node 2 is not the leader", "leader_id": 1,
                                    "leader_http": leader.address}))  # fmt: skip
    code, _, err = run("--cluster", follower.address, "backup", str(tmp_path / "b.pkb"))
    assert (code, err) == (0, "")
    assert (follower.asked, leader.asked) == (1, 1)


def refused(tmp_path, argv, keep=()):
    code, out, err = run(*argv)
    assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == sorted(keep)  # no FILE, no temporary file
    return err


def test_a_stream_cut_short_leaves_no_file(made, serve, tmp_path):
    data, _ = made
    node = serve(lambda: ("stream", data, len(data) // 2))  # the node was killed mid-stream
    err = refused(tmp_path, ["--cluster", node.address, "backup", str(tmp_path / "b.pkb")])
    assert f"of {len(data)} bytes" in err


def test_a_stream_cut_short_leaves_an_older_file_as_it_was(made, serve, tmp_path):
    data, _ = made
    (tmp_path / "b.pkb").write_bytes(b"last week's backup")
    node = serve(lambda: ("stream", data, len(data) - 40))
    refused(tmp_path, ["--cluster", node.address, "backup", str(tmp_path / "b.pkb")], keep=["b.pkb"])
    assert (tmp_path / "b.pkb").read_bytes() == b"last week's backup"


def test_a_corrupted_stream_leaves_no_file(made, serve, tmp_path):
    data, _ = made
    broken = bytearray(data)
    broken[len(data) // 2] ^= 0x10
    node = serve(lambda: ("stream", bytes(broken)))
    err = refused(tmp_path, ["--cluster", node.address, "backup", str(tmp_path / "b.pkb")])
    assert "not usable: corrupt: its sha256 does not match" in err and "b.pkb not written" in err


def test_a_stream_that_is_not_a_backup_is_refused(serve, tmp_path):
    node = serve(lambda: ("stream", b"<html>a proxy's page</html>" * 100))
    err = refused(tmp_path, ["--cluster", node.address, "backup", str(tmp_path / "b.pkb")])
    assert "not a parkd backup" in err


def test_a_refusal_is_one_line(serve, tmp_path):
    node = serve(lambda: (401, {"error": "admin requests need an operator certificate"}))
    err = refused(tmp_path, ["--cluster", node.address, "backup", str(tmp_path / "b.pkb")])
    assert "operator certificate" in err


def test_progress_on_a_terminal(made, serve, tmp_path):
    data, _ = made
    node = serve(lambda: ("stream", data))
    code, _, err = run("--cluster", node.address, "backup", str(tmp_path / "b.pkb"), tty=True)
    assert code == 0
    assert "\rbackup " in err and "MiB (100%)" in err


def test_no_progress_elsewhere():
    err = io.StringIO()
    progress = ProgressLine(err, "backup")
    progress(10, 100)
    progress.end()
    assert err.getvalue() == ""


def test_progress_is_throttled():
    now = [0.0]
    err = Terminal()
    progress = ProgressLine(err, "backup", every=0.5, clock=lambda: now[0])
    for done in range(1, 10):
        progress(done, 100)
    now[0] = 1.0
    progress(50, 100)
    assert err.getvalue().count("\r") == 2
