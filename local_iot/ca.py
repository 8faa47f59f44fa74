"""A local certificate authority for the emulator's mutual-TLS listener.

How this works: ``LocalCA.create(directory)`` makes (or, when present, loads) a self-signed CA whose key is an
EC P-256 key (accepted by OpenSSL in mosquitto and by s2n in awscrt). The CA signs one server certificate for the
broker (SANs ``localhost`` and ``127.0.0.1`` so a client may dial either) and any number of device certificates
whose subject CN is the thing name: mosquitto's ``use_identity_as_username`` turns that CN into the MQTT username,
and the ACL pattern ``$aws/things/%u/streams/#`` then limits each device to its own thing's topics.

Every private key is written with mode 0600 from creation (``os.open(..., 0o600)``), never chmod-ed afterwards, and
files are replaced atomically so a reader never sees half a PEM.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_sim.fileio import atomic_write
from device_sim.protocol.topics import valid_thing_name

log = logging.getLogger(__name__)

CA_CERT_NAME = "ca.cert.pem"
CA_KEY_NAME = "ca.private.key"
SERVER_CERT_NAME = "server.cert.pem"
SERVER_KEY_NAME = "server.private.key"
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")

_CLOCK_SKEW = datetime.timedelta(days=1)  # not_before lies a day back so a slightly wrong clock still accepts
_CA_LIFETIME = datetime.timedelta(days=3650)
_LEAF_LIFETIME = datetime.timedelta(days=3650)


class CAError(Exception):
    """The CA files cannot be used (missing, unreadable, not a CA, or the key does not match the certificate)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CertPaths:
    """Where a certificate and its private key were written."""

    cert_path: Path
    key_path: Path


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 from the moment the file exists."""
    _write_atomic(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write ``data`` (a certificate) to ``path`` atomically with mode 0644."""
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=mode)  # exactly ``mode``, whatever the umask; 0600 until renamed


def device_file_paths(directory: str | os.PathLike[str], thing_name: str) -> CertPaths:
    """The file names used for a device's credentials: ``<thing>.cert.pem`` and ``<thing>.private.key``."""
    d = Path(directory)
    return CertPaths(cert_path=d / f"{thing_name}.cert.pem", key_path=d / f"{thing_name}.private.key")


def write_device_files(
    directory: str | os.PathLike[str], thing_name: str, cert_pem: bytes, key_pem: bytes
) -> CertPaths:
    """Write a device's certificate and key as ``<thing>.cert.pem`` / ``<thing>.private.key`` (key mode 0600)."""
    paths = device_file_paths(directory, thing_name)
    write_public_file(paths.cert_path, cert_pem)
    write_private_file(paths.key_path, key_pem)
    return paths


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _parse_host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class LocalCA:
    """A certificate authority on disk: ``ca.cert.pem`` and ``ca.private.key`` (0600)."""

    def __init__(self, *, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path):
        self._cert = cert
        self._key = key
        self.cert_path = cert_path
        self.key_path = key_path

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, common_name: str = "local-iot CA") -> LocalCA:
        """Load the CA in ``directory``, or create one there when it has none. Idempotent."""
        d = Path(directory)
        cert_path, key_path = d / CA_CERT_NAME, d / CA_KEY_NAME
        if cert_path.exists() or key_path.exists():
            return cls.load(cert_path, key_path)
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        # The key first: a crash in between leaves a key without a certificate, which load() reports clearly.
        write_private_file(key_path, _key_pem(key))
        write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        log.info("created local CA %s in %s", common_name, d)
        return cls(cert=cert, key=key, cert_path=cert_path, key_path=key_path)

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> LocalCA:
        """Load an existing CA. Raises CAError when the files are missing, malformed or do not belong together."""
        cp, kp = Path(cert_path), Path(key_path)
        try:
            cert = x509.load_pem_x509_certificate(cp.read_bytes())
            key = serialization.load_pem_private_key(kp.read_bytes(), password=None)
        except FileNotFoundError as e:
            raise CAError(f"CA file {e.filename} is missing: delete the CA directory to create a new CA") from e
        except (OSError, ValueError, TypeError) as e:
            raise CAError(f"cannot load the CA from {cp} and {kp}: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"{kp} is not an EC private key; this CA only uses EC P-256 keys")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise CAError(f"the key {kp} does not belong to the certificate {cp}")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CAError(f"{cp} is not a CA certificate (basicConstraints CA:TRUE missing)")
        return cls(cert=cert, key=key, cert_path=cp, key_path=kp)

    def _leaf(
        self,
        subject_cn: str,
        key: ec.EllipticCurvePrivateKey,
        eku: x509.ObjectIdentifier,
        sans: Iterable[x509.GeneralName] = (),
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(key_cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        names = list(sans)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def issue_server_cert(
        self, directory: str | os.PathLike[str], hosts: Iterable[str] = DEFAULT_HOSTS
    ) -> tuple[Path, Path]:
        """Write ``server.cert.pem`` and ``server.private.key`` (0600) for ``hosts`` (DNS names or IP addresses)."""
        host_list = list(dict.fromkeys(hosts))
        if not host_list:
            raise ValueError("issue_server_cert needs at least one host name or IP address")
        key = _new_key()
        cert = self._leaf(host_list[0], key, ExtendedKeyUsageOID.SERVER_AUTH, [_parse_host(h) for h in host_list])
        d = Path(directory)
        cert_path, key_path = d / SERVER_CERT_NAME, d / SERVER_KEY_NAME
        write_private_file(key_path, _key_pem(key))
        write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        log.info("issued server certificate for %s in %s", ", ".join(host_list), d)
        return cert_path, key_path

    def issue_device_cert(self, thing_name: str) -> tuple[bytes, bytes]:
        """A new key and a certificate with subject CN = ``thing_name`` and clientAuth; returns (cert_pem, key_pem)."""
        if not valid_thing_name(thing_name):
            raise ValueError(f"{thing_name!r} is not a valid thing name: use 1-128 characters from a-z A-Z 0-9 : _ -")
        key = _new_key()
        cert = self._leaf(thing_name, key, ExtendedKeyUsageOID.CLIENT_AUTH)
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_device_files(self, directory: str | os.PathLike[str], thing_name: str) -> CertPaths:
        """``issue_device_cert`` and ``write_device_files`` in one call."""
        cert_pem, key_pem = self.issue_device_cert(thing_name)
        return write_device_files(directory, thing_name, cert_pem, key_pem)

    def verify_issued(self, cert_pem: bytes) -> bool:
        """True when ``cert_pem`` was signed by this CA."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
