import datetime
import io
import os
from dataclasses import dataclass

import pytest

from parkd import ctl
from parkd.config import load_config
from parkd.launcher import write_config
from parkd.trust import TrustFiles, parse_identity
from parkd.trust import pki as pki_tools


@pytest.fixture
def cluster_config(tmp_path):
    """A 3-node loopback config with fresh ports: (path, Config)."""
    path = write_config(str(tmp_path / "parkd.toml"), nodes=3, lots={"north": 100, "south": 60})
    return path, load_config(path)


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    return str(path)


@dataclass(frozen=True)
class ClusterPKI:
    """The test session's PKI (``cluster_pki``): read it, never change it.

    ``dir``: a CA with node-1..9, camera-1..100, operator-admin, ``revoked``
    (camera-999, in ``dir``/crl.pem) and ``expired`` (camera-998, valid for a
    day a month ago).  ``other``: a second CA (the "wrong CA") with node-1,
    camera-1 and operator-admin.  Tests that revoke make their own PKI.
    """

    dir: str
    other: str
    revoked: str = "camera-999"
    expired: str = "camera-998"

    def files(self, identity: str, crl: bool = True) -> TrustFiles:
        return TrustFiles.in_pki(self.dir, identity, crl)

    def other_files(self, identity: str) -> TrustFiles:
        return TrustFiles.in_pki(self.other, identity, crl=False)


def _parkctl(*argv: str) -> None:
    err = io.StringIO()
    assert ctl.main(list(argv), out=io.StringIO(), err=err) == 0, err.getvalue()


@pytest.fixture(scope="session")
def cluster_pki(tmp_path_factory) -> ClusterPKI:
    """A test PKI made once per session with ``parkctl pki`` (EC keys: fast); see ClusterPKI."""
    root = tmp_path_factory.mktemp("pki")
    made = ClusterPKI(str(root / "ca"), str(root / "other-ca"))
    for directory in (made.dir, made.other):
        _parkctl("pki", "init", directory)
        _parkctl("pki", "issue", directory, "node", "1")
        _parkctl("pki", "issue", directory, "camera", "1")
        _parkctl("pki", "issue", directory, "operator", "admin")
    for i in range(2, 10):
        _parkctl("pki", "issue", made.dir, "node", str(i))
    _parkctl("pki", "issue", made.dir, "camera", "2-100")
    _parkctl("pki", "issue", made.dir, "camera", "999")
    _parkctl("pki", "revoke", made.dir, made.revoked)
    a_month_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    pki_tools.issue(made.dir, [parse_identity(made.expired)], days=1, not_before=a_month_ago)
    return made


def pytest_collection_modifyitems(items):
    # Process tests start real daemons; run them after the fast unit tests.
    items.sort(key=lambda item: "process" in item.keywords)


os.environ.setdefault("PYTHONUNBUFFERED", "1")

