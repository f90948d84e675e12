"""Trust files are read together and must fit; a problem is one line naming the file."""

import datetime
import os
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from parkd.trust import pki
from parkd.trust.identity import Identity
from parkd.trust.material import TrustError, TrustFiles, load_material
from parkd.trust.tls import https_client_context


def test_the_files_of_a_pki_load(cluster_pki):
    material = load_material(cluster_pki.files("node-2"), expect=Identity("node", 2))
    assert material.identity == Identity("node", 2)
    assert len(material.cas) == 1 and len(material.crl) == 1


@pytest.mark.parametrize(
    "change, message",
    [(dict(cert="camera-1.pem"), r"node-1.key: not the key of .*camera-1.pem"),
     (dict(ca="OTHER/ca.pem"), r"node-1.pem: not issued by the CA in .*other-ca/ca.pem"),
     (dict(crl="OTHER/crl.pem"), r"other-ca/crl.pem: not signed by the CA in"),
     (dict(cert="camera-998.pem", key="camera-998.key"), r"camera-998.pem: expired on 20"),
     (dict(key="ca.pem"), r"ca.pem: not an unencrypted PEM private key"),
     (dict(cert="ca.key"), r"ca.key: not a PEM certificate"),
     (dict(ca="missing.pem"), r"missing.pem: No such file or directory"),
     (dict(cert="ca.pem", key="ca.key"), r"ca.pem: names no parkd identity")],
)  # fmt: skip
def test_files_that_do_not_fit_are_refused_naming_the_file(cluster_pki, change, message):
    files = cluster_pki.files("node-1")
    paths = {k: (os.path.join(cluster_pki.other, v[6:]) if v.startswith("OTHER/") else os.path.join(cluster_pki.dir, v))
             for k, v in change.items()}  # fmt: skip
    with pytest.raises(TrustError, match=message):
        load_material(TrustFiles(**{**files.__dict__, **paths}))


def test_the_certificate_must_name_the_expected_identity(cluster_pki):
    with pytest.raises(TrustError, match="is node-1's certificate, expected node-2's"):
        load_material(cluster_pki.files("node-1"), expect=Identity("node", 2))


def test_a_certificate_not_yet_valid_or_a_stale_crl_is_refused(tmp_path, cluster_pki):
    d = str(tmp_path / "pki")
    pki.init(d)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
    pki.issue(d, [Identity("camera", 1)], not_before=later)
    with pytest.raises(TrustError, match="camera-1.pem: not valid before"):
        load_material(TrustFiles.in_pki(d, "camera-1"))
    pki.issue(d, [Identity("camera", 2)])
    ca_key = serialization.load_pem_private_key(open(os.path.join(d, "ca.key"), "rb").read(), None)
    ca = x509.load_pem_x509_certificate(open(os.path.join(d, "ca.pem"), "rb").read())
    yesterday = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    stale = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
             .last_update(yesterday - datetime.timedelta(days=1)).next_update(yesterday)
             .sign(ca_key, hashes.SHA256()))  # fmt: skip
    with open(os.path.join(d, "crl.pem"), "wb") as f:
        f.write(stale.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(TrustError, match=r"crl.pem: out of date since"):
        load_material(TrustFiles.in_pki(d, "camera-2"))


def test_a_ca_bundle_trusts_both_cas(tmp_path, cluster_pki):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(open(os.path.join(cluster_pki.other, "ca.pem"), "rb").read()
                       + open(os.path.join(cluster_pki.dir, "ca.pem"), "rb").read())  # fmt: skip
    files = cluster_pki.files("node-1")
    assert load_material(TrustFiles(str(bundle), files.cert, files.key, files.crl)).identity == Identity("node", 1)


def test_https_client_context_for_parkctl(tmp_path, cluster_pki):
    files = cluster_pki.files("operator-admin")
    assert https_client_context(files.ca).check_hostname
    https_client_context(files.ca, files.cert, files.key)
    with pytest.raises(TrustError, match="both"):
        https_client_context(files.ca, files.cert)
    with pytest.raises(TrustError, match="nope.pem: No such file"):
        https_client_context(str(tmp_path / "nope.pem"))
    with pytest.raises(TrustError, match="not a PEM certificate and its key"):
        https_client_context(files.ca, files.cert, cluster_pki.files("node-1").key)
    shutil.copy(files.key, tmp_path / "k.pem")
    with pytest.raises(TrustError, match="k.pem: not PEM CA certificates"):
        https_client_context(str(tmp_path / "k.pem"))
