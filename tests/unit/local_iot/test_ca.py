"""The local CA: files, modes, idempotence, and certificates that a strict RFC 5280 verifier accepts."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)

from local_iot.ca import CA_CERT_NAME, CA_KEY_NAME, CAError, LocalCA, write_device_files


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask of 0 would leave keys world-readable if the CA relied on it; the CA must not."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _store(ca: LocalCA) -> Store:
    return Store([ca.certificate])


def server_verifier(ca: LocalCA, name: x509.DNSName | x509.IPAddress) -> ServerVerifier:
    return PolicyBuilder().store(_store(ca)).build_server_verifier(name)


def client_verifier(ca: LocalCA) -> ClientVerifier:
    # The Web PKI profile demands a SAN on client certificates; AWS IoT device certificates carry none.
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    builder = PolicyBuilder().store(_store(ca))
    return builder.extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
    ).build_client_verifier()


def test_create_writes_ca_files_with_private_key_0600(tmp_path: Path, permissive_umask: None) -> None:
    ca = LocalCA.create(tmp_path / "ca")
    assert ca.cert_path == tmp_path / "ca" / CA_CERT_NAME
    assert ca.key_path == tmp_path / "ca" / CA_KEY_NAME
    assert mode(ca.key_path) == 0o600
    assert mode(ca.cert_path) == 0o644
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert not list(ca.cert_path.parent.glob(".*")), "no temporary files left behind"


def test_create_is_idempotent(tmp_path: Path) -> None:
    first = LocalCA.create(tmp_path)
    second = LocalCA.create(tmp_path)
    assert second.certificate == first.certificate
    assert second.key_path.read_bytes() == first.key_path.read_bytes()


def test_load_round_trips(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)
    loaded = LocalCA.load(ca.cert_path, ca.key_path)
    cert_pem, _ = loaded.issue_device_cert("thing-1")
    assert ca.verify_issued(cert_pem)


def test_load_refuses_missing_mismatched_and_non_ca_files(tmp_path: Path) -> None:
    a = LocalCA.create(tmp_path / "a")
    b = LocalCA.create(tmp_path / "b")
    with pytest.raises(CAError, match="missing"):
        LocalCA.load(tmp_path / "nope.pem", a.key_path)
    with pytest.raises(CAError, match="does not belong"):
        LocalCA.load(a.cert_path, b.key_path)
    leaf = write_device_files(tmp_path / "dev", "thing-1", *a.issue_device_cert("thing-1"))
    with pytest.raises(CAError, match="not a CA"):
        LocalCA.load(leaf.cert_path, leaf.key_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(CAError, match="cannot load"):
        LocalCA.load(garbage, a.key_path)
    # create() on a half-written directory reports it instead of silently making a second CA
    a.cert_path.unlink()
    with pytest.raises(CAError, match="missing"):
        LocalCA.create(tmp_path / "a")


def test_server_cert_has_dns_and_ip_sans_and_verifies(tmp_path: Path, permissive_umask: None) -> None:
    ca = LocalCA.create(tmp_path)
    cert_path, key_path = ca.issue_server_cert(tmp_path / "server")
    assert mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    now = datetime.datetime.now(datetime.UTC)
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = server_verifier(ca, name).verify(cert, [])
        assert chain[-1] == ca.certificate
    with pytest.raises(VerificationError):
        server_verifier(ca, x509.DNSName("example.com")).verify(cert, [])
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_server_cert_for_custom_hosts(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)
    cert_path, _ = ca.issue_server_cert(tmp_path, hosts=("broker.local", "10.0.0.5", "::1"))
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.local"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    with pytest.raises(ValueError, match="at least one host"):
        ca.issue_server_cert(tmp_path, hosts=())


def test_device_cert_cn_is_thing_name_with_client_auth(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)
    cert_pem, key_pem = ca.issue_device_cert("thing-a:01_x")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "thing-a:01_x"
    assert cert.issuer == ca.certificate.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verified = client_verifier(ca).verify(cert, [])
    assert verified.chain[-1] == ca.certificate
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == cert.public_key()
    assert ca.verify_issued(cert_pem)
    assert not LocalCA.create(tmp_path / "other").verify_issued(cert_pem)


def test_each_device_cert_has_its_own_key_and_serial(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)
    (c1, k1), (c2, k2) = ca.issue_device_cert("t"), ca.issue_device_cert("t")
    assert k1 != k2
    s1, s2 = (x509.load_pem_x509_certificate(c).serial_number for c in (c1, c2))
    assert s1 != s2


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "a#", "x" * 129, "thing a"])
def test_device_cert_refuses_names_that_are_not_thing_names(tmp_path: Path, bad: str) -> None:
    # The CN becomes an MQTT username substituted into an ACL pattern: '/', '+' and '#' must never get there.
    ca = LocalCA.create(tmp_path)
    with pytest.raises(ValueError, match="not a valid thing name"):
        ca.issue_device_cert(bad)


def test_write_device_files_names_and_modes(tmp_path: Path, permissive_umask: None) -> None:
    ca = LocalCA.create(tmp_path / "ca")
    paths = ca.issue_device_files(tmp_path / "certs", "thing-7")
    assert paths.cert_path == tmp_path / "certs" / "thing-7.cert.pem"
    assert paths.key_path == tmp_path / "certs" / "thing-7.private.key"
    assert mode(paths.key_path) == 0o600
    assert ca.verify_issued(paths.cert_path.read_bytes())
    # Overwriting an existing, wrongly-permissioned key file still yields 0600 (atomic replace, not reuse).
    paths.key_path.chmod(0o666)
    write_device_files(tmp_path / "certs", "thing-7", b"cert", b"key")
    assert mode(paths.key_path) == 0o600
    assert paths.key_path.read_bytes() == b"key"
