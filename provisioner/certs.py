"""Device credentials on disk: issuing from your own CA, writing keys 0600, and the server root CA.

* ``load_ca`` / ``issue_device_certificate``: an EC P-256 device key and a certificate with subject CN = thing name,
  signed by the CA given with ``--ca-cert/--ca-key`` (EC, RSA or Ed25519 CA keys). Registered with AWS IoT by
  ``register_certificate_without_ca``, so the CA itself need not be registered.
* ``write_private_file`` creates the file with mode 0600 from the start (``os.open(..., 0o600)``, then an atomic
  rename); the key never exists with wider permissions.
* ``amazon_root_ca1`` takes Amazon Root CA 1 (the root of AWS IoT's ATS endpoints) from the CA bundle botocore
  ships, checked against its pinned SHA-256 fingerprint: no download needed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import botocore  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_sim.fileio import atomic_write

from .errors import InputError, OutputError

AMAZON_ROOT_CA1_NAME = "AmazonRootCA1.pem"
AMAZON_ROOT_CA1_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"
AMAZON_ROOT_CA1_SHA256 = "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e"
LOCAL_ROOT_CA_NAME = "root-ca.pem"
_LIFETIME = datetime.timedelta(days=3650)
_SKEW = datetime.timedelta(days=1)
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----", re.DOTALL)

CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


@dataclass(frozen=True, kw_only=True, slots=True)
class IssuingCA:
    cert: x509.Certificate
    key: CAKey
    cert_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def load_ca(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> IssuingCA:
    """Load ``--ca-cert``/``--ca-key``; InputError when missing, malformed, not a CA, or not a matching pair."""
    cp, kp = Path(cert_path), Path(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cp.read_bytes())
        key = serialization.load_pem_private_key(kp.read_bytes(), password=None)
    except OSError as e:
        raise InputError(f"cannot read CA file {e.filename}: {e.strerror}", hint="check --ca-cert/--ca-key") from e
    except (ValueError, TypeError) as e:
        raise InputError(f"cannot load the CA from {cp} and {kp}: {e}", hint="PEM files, key unencrypted") from e
    if not isinstance(key, CAKey):
        raise InputError(f"{kp} holds an unsupported key type {type(key).__name__}", hint="use an EC or RSA CA key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise InputError(f"the key {kp} does not belong to the certificate {cp}", hint="pass the CA's own key")
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise InputError(f"{cp} is not a CA certificate (basicConstraints CA:TRUE missing)")
    return IssuingCA(cert=cert, key=key, cert_path=cp.resolve())


def issue_device_certificate(
    ca: IssuingCA, thing_name: str, *, now: datetime.datetime | None = None
) -> tuple[bytes, bytes]:
    """A new EC P-256 key and a client certificate for ``thing_name`` (CN), as PEM ``(cert, key)``."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(min(now + _LIFETIME, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    algorithm = None if isinstance(ca.key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    cert = builder.sign(ca.key, algorithm)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def device_paths(certs_dir: Path, thing_name: str) -> tuple[Path, Path]:
    """``(<certs-dir>/<thing>.cert.pem, <certs-dir>/<thing>.private.key)``."""
    return certs_dir / f"{thing_name}.cert.pem", certs_dir / f"{thing_name}.private.key"


def write_private_file(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from creation."""
    _write_atomic(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, mode=mode)  # exactly ``mode``, whatever the umask; 0600 until renamed
    except OSError as e:
        raise _write_error(path, e) from e


def _write_error(path: Path, e: OSError) -> OutputError:
    return OutputError(
        f"cannot write {path}: {e.strerror or e}",
        hint="fix --certs-dir (writable, space left), then run the same command again (it resumes)",
    )


def amazon_root_ca1() -> bytes:
    """Amazon Root CA 1 as PEM, from botocore's bundled CA store, verified by fingerprint."""
    bundle = Path(botocore.__file__).parent / "cacert.pem"
    try:
        text = bundle.read_bytes()
    except OSError:
        text = b""
    for match in _PEM_BLOCK.finditer(text):
        der = base64.b64decode(b"".join(match.group(1).split()))
        if hashlib.sha256(der).hexdigest() == AMAZON_ROOT_CA1_SHA256:
            return match.group(0) + b"\n"
    raise InputError(
        "Amazon Root CA 1 is not in botocore's CA bundle",
        hint=f"download it from {AMAZON_ROOT_CA1_URL} and pass it with --root-ca",
    )
