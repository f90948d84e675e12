"""``parkctl pki``: exit 0 done, 1 refused, 2 usage; one line on stderr, no traceback."""

import io
import os

import pytest

from parkd import ctl


def parkctl(*argv, tty=False):
    out, err = io.StringIO(), (_Terminal() if tty else io.StringIO())
    code = ctl.main(list(argv), out=out, err=err, environ={})
    return code, out.getvalue(), err.getvalue()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_init_issue_revoke(tmp_path):
    d = str(tmp_path / "pki")
    assert parkctl("pki", "init", d) == (0, f"wrote {d}/ca.pem, {d}/ca.key, {d}/crl.pem\n", "")
    assert parkctl("pki", "issue", d, "node", "3", "--host", "10.0.0.3", "--host", "n3.example") == (
        0, f"wrote {d}/node-3.pem, {d}/node-3.key\n", "")  # fmt: skip
    code, out, err = parkctl("pki", "issue", d, "camera", "1-3")
    assert (code, err) == (0, "") and out.startswith(f"issued 3 camera certificates (camera-1 .. camera-3) in {d} in ")
    assert parkctl("pki", "issue", d, "operator", "alice", "--days", "90")[0] == 0
    revoked = f"revoked camera-2 in {d}/crl.pem; send SIGHUP to the nodes\n"
    assert parkctl("pki", "revoke", d, "camera-2") == (0, revoked, "")
    assert parkctl("pki", "revoke", d, "camera-2") == (0, "camera-2 was already revoked\n", "")
    assert sorted(os.listdir(d)) == sorted(
        ["ca.pem", "ca.key", "crl.pem", "node-3.pem", "node-3.key", "operator-alice.pem", "operator-alice.key"]
        + [f"camera-{i}.{ext}" for i in (1, 2, 3) for ext in ("pem", "key")])  # fmt: skip


def test_a_long_range_shows_progress_on_a_terminal_only(tmp_path):
    d = str(tmp_path / "pki")
    parkctl("pki", "init", d)
    code, _, err = parkctl("pki", "issue", d, "camera", "1-1000", tty=True)
    assert code == 0
    assert err == "\rissued 500/1000 camera certificates\rissued 1000/1000 camera certificates\n"
    assert parkctl("pki", "issue", d, "camera", "1001-1600")[2] == ""


@pytest.mark.parametrize(
    "argv, message",
    [(["init"], "the following arguments are required: DIR"),
     (["issue", "D", "robot", "1"], "invalid choice: 'robot'"),
     (["issue", "D", "camera", "007"], "bad camera id '007'"),
     (["issue", "D", "camera", "9-2"], "bad camera range '9-2'"),
     (["issue", "D", "node", "0"], "bad node id '0'"),
     (["issue", "D", "operator", "a b"], "bad operator name 'a b'"),
     (["issue", "D", "camera", "1", "--host", "10.0.0.1"], "--host is for node certificates only"),
     (["issue", "D", "node", "1", "--host", "a b"], "bad host 'a b'"),
     (["issue", "D", "node", "1", "--days", "-3"], "invalid number of days '-3'"),
     (["revoke", "D", "camera-1x"], "bad camera id '1x'"), (["revoke", "D", "robot-1"], "bad identity 'robot-1'"),
     ([], "the following arguments are required: PKI-COMMAND")],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_line(tmp_path, argv, message):
    argv = [str(tmp_path / "pki") if a == "D" else a for a in argv]
    code, out, err = parkctl("pki", *argv)
    assert code == 2 and out == ""
    assert err.startswith("parkctl: ") and message in err and err.count("\n") == 1


def test_refusals_exit_1_with_one_line_naming_the_file(tmp_path):
    d = str(tmp_path / "pki")
    parkctl("pki", "init", d)
    parkctl("pki", "issue", d, "camera", "5")
    for argv, message in [
        (["init", d], f"{d}/ca.pem: already exists (refusing to overwrite it; move it away first)"),
        (["issue", d, "camera", "1-9"], f"{d}/camera-5.pem: already exists"),
        (["issue", str(tmp_path / "none"), "node", "1"], f"{tmp_path}/none/ca.pem: no such file"),
        (["revoke", d, "camera-6"], f"{d}/camera-6.pem: no such file"),
    ]:
        code, out, err = parkctl("pki", *argv)
        assert (code, out) == (1, "")
        assert err.startswith(f"parkctl: {message}") and err.count("\n") == 1
    assert not os.path.exists(os.path.join(d, "camera-1.pem"))


def test_pki_commands_need_no_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no etc/parkd.toml here, no $PARKD_CLUSTER
    assert parkctl("pki", "init", "pki")[0] == 0
