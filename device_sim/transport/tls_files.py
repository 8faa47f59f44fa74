"""The TLS files of a connection, checked before anything connects.

awscrt reads the certificate, key and CA only when a connection is made, and then says no more than
``1033 (AWS_IO_TLS_CTX_ERROR)``: not which file, not why. ``check_tls_files`` reads them with the ``cryptography``
package first and raises ``InvalidSettings`` naming the file and the fault (no PEM block, a corrupt or truncated
body, an encrypted key, a key that does not belong to the certificate), then, with ``crt=True``, builds the awscrt
TLS context once so that anything awscrt alone refuses is caught here too. A fleet checks each distinct file once
(``TlsFileChecker``): the CA is shared, and awscrt's context is built for the first device only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from device_sim.transport.crt import build_tls_context
from device_sim.transport.errors import InvalidSettings, Op, foreign_errors
from device_sim.transport.settings import TransportSettings

__all__ = ["TlsFileChecker", "check_tls_files"]

_HINT = "check the file, or issue the device's certificate and key again"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidSettings(f"cannot read the {what} {path}: {exc.strerror}", hint=_HINT) from exc


def _damage(data: bytes, label: bytes) -> str:
    """Why a PEM file with a ``label`` block did not load: truncated, or a corrupt body."""
    begins = data.count(b"-----BEGIN " + label)
    ends = data.count(b"-----END " + label)
    if begins > ends:
        return "truncated (a -----BEGIN line without its -----END line)"
    return "corrupt (the text between the -----BEGIN and -----END lines is not valid base64 DER)"


def _certificates(path: Path, what: str) -> list[Any]:
    from cryptography import x509

    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise InvalidSettings(f"the {what} {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", hint=_HINT)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidSettings(f"the {what} {path} does not load: {_damage(data, b'CERTIFICATE')}", hint=_HINT) from exc
    if data.count(b"-----BEGIN ") > len(certificates) or data.count(b"-----END ") > data.count(b"-----BEGIN "):
        raise InvalidSettings(f"the {what} {path} does not load: {_damage(data, b'CERTIFICATE')}", hint=_HINT)
    return certificates


def _private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "private key")
    if b"PRIVATE KEY-----" not in data:
        raise InvalidSettings(f"the private key {path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    if b"ENCRYPTED" in data:
        raise InvalidSettings(
            f"the private key {path} is encrypted",
            hint="awscrt needs an unencrypted key: openssl pkey -in KEY -out NEW",
        )
    try:
        # The RSA consistency check costs ~20 ms a key; comparing the public key with the certificate's catches
        # the mistakes that matter here (a key of another device).
        return serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as exc:
        raise InvalidSettings(f"the private key {path} does not load: {_damage(data, b'')}", hint=_HINT) from exc
    except Exception as exc:  # cryptography's UnsupportedAlgorithm
        raise InvalidSettings(f"the private key {path} does not load: {exc}", hint=_HINT) from exc


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def check_key_pair(cert: Path, key: Path) -> None:
    """The certificate and key load, and the key is the certificate's (``InvalidSettings`` naming the files)."""
    leaf = _certificates(cert, "certificate")[0]
    private = _private_key(key)
    if _public_der(leaf.public_key()) != _public_der(private.public_key()):
        raise InvalidSettings(
            f"the private key {key} does not belong to the certificate {cert}",
            hint="pass the key that was issued with this certificate",
        )


def check_ca(ca: Path) -> None:
    """Every certificate of the CA file loads."""
    _certificates(ca, "CA certificate")


def check_crt_context(settings: TransportSettings) -> None:
    """awscrt builds its TLS context from the settings' files (what a connect would do first)."""
    with foreign_errors(Op.SETUP, where=f"{settings.endpoint}:{settings.port}"):
        build_tls_context(settings)


def check_tls_files(settings: TransportSettings, *, crt: bool = True) -> None:
    """Everything a TLS connect would load, loaded now; ``InvalidSettings`` naming the file. No-op without TLS."""
    if settings.no_tls:
        return
    assert settings.cert is not None and settings.key is not None
    check_key_pair(settings.cert, settings.key)
    if settings.ca is not None:
        check_ca(settings.ca)
    if crt:
        check_crt_context(settings)


class TlsFileChecker:
    """``check_tls_files`` for many connections: each distinct file (and key pair) is read once, and awscrt's
    context is built for the first connection only (a fleet's files are made alike; a file awscrt alone refuses
    then fails every device the same way)."""

    def __init__(self) -> None:
        self._pairs: set[tuple[str, str]] = set()
        self._cas: set[str] = set()
        self._crt_checked = False

    def check(self, settings: TransportSettings) -> None:
        if settings.no_tls:
            return
        assert settings.cert is not None and settings.key is not None
        pair = (os.fspath(settings.cert), os.fspath(settings.key))
        if pair not in self._pairs:
            check_key_pair(settings.cert, settings.key)
            self._pairs.add(pair)
        if settings.ca is not None and os.fspath(settings.ca) not in self._cas:
            check_ca(settings.ca)
            self._cas.add(os.fspath(settings.ca))
        if not self._crt_checked:
            check_crt_context(settings)
            self._crt_checked = True
