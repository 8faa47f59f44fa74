"""OTA updates over AWS IoT Jobs: sign the stream's files, create the OTA update, read its executions, remove it.

How this works:

- ``signing_material`` picks the code-signing key and certificate: the user's (``--signing-key``/``--signing-cert``,
  an EC P-256 key and the certificate of its public key), or, with a CA at hand (``--local`` / ``--ca-cert``), a
  certificate with the codeSigning EKU issued from that CA and written next to the device certificates as
  ``code-signing.cert.pem`` with its key ``code-signing.private.key`` (0600).
- ``sign_digest`` signs a file's SHA-256 (ECDSA P-256 over SHA-256, DER): the digest the manifest recorded when the
  file was uploaded, so signing needs no download; the device checks the signature over the bytes it received.
- ``create_ota`` calls ``create_ota_update`` with ``customCodeSigning`` for the manifest's stream and things (or
  ``targets``), and records the OTA update, its job and the signing files in the manifest. AWS then builds the
  job (``AFR_OTA-<id>``) whose document names the stream, each file's size and id, the certificate path on the
  device and the signature (docs/ota.md).
- ``ota_status`` reads each target's job execution (``describe_job_execution``), waiting for terminal states up to
  ``wait`` seconds; ``cleanup_steps`` are the removal calls ``provisioner cleanup`` makes (cancel the job, then
  delete the OTA update and its job: AWS refuses to delete a job that is still in progress without force).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .aws import Api
from .certs import IssuingCA, write_private_file, write_public_file
from .errors import InputError, ManifestError, NotFound, ProvisionerError
from .manifest import RUN_ID_KEY, RUN_ID_MARKER, Manifest, ManifestStore, OtaUpdateRecord

__all__ = [
    "CODE_SIGNING_CERT_NAME",
    "CODE_SIGNING_KEY_NAME",
    "OtaOptions",
    "OtaStatus",
    "SigningMaterial",
    "cleanup_steps",
    "create_ota",
    "issue_code_signing",
    "load_signing",
    "ota_status",
    "sign_digest",
    "verify_digest",
]

log = logging.getLogger(__name__)

CODE_SIGNING_CERT_NAME = "code-signing.cert.pem"
CODE_SIGNING_KEY_NAME = "code-signing.private.key"
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "REMOVED", "CANCELED"})
_LIFETIME = datetime.timedelta(days=3650)


@dataclass(frozen=True, kw_only=True, slots=True)
class SigningMaterial:
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    cert_path: Path  # where the certificate is on this machine
    key_path: Path | None  # only when the provisioner issued the key (then cleanup removes it)


@dataclass(frozen=True, kw_only=True, slots=True)
class OtaOptions:
    ota_update_id: str | None = None
    targets: tuple[str, ...] = ()  # thing names; empty: every thing of the manifest
    cert_path_on_device: str | None = None  # default: the certificate's local path
    rollout_per_minute: int | None = None
    role_arn: str | None = None  # default: the manifest's stream role


def sign_digest(key: ec.EllipticCurvePrivateKey, sha256: bytes) -> bytes:
    """ECDSA over SHA-256 of a file, from its digest: the DER signature AWS's OTA agents verify."""
    return key.sign(sha256, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def verify_digest(cert_pem: bytes, sha256: bytes, signature: bytes) -> bool:
    public = x509.load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, sha256, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def load_signing(key_path: Path, cert_path: Path) -> SigningMaterial:
    """The user's code-signing key and certificate: EC P-256, and the certificate must be of that key."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert_pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
    except OSError as e:
        raise InputError(f"cannot read {e.filename}: {e.strerror}", hint="check --signing-key/--signing-cert") from e
    except (ValueError, TypeError) as e:
        raise InputError(f"cannot load the code-signing key or certificate: {e}", hint="PEM, key unencrypted") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InputError(
            f"{key_path} is not an EC P-256 key",
            hint="AWS's OTA agents verify ECDSA P-256 (prime256v1) signatures: "
            "openssl ecparam -name prime256v1 -genkey -noout -out key.pem",
        )
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise InputError(f"{cert_path} is not the certificate of {key_path}", hint="pass the matching pair")
    return SigningMaterial(key=key, cert_pem=cert_pem, cert_path=cert_path.resolve(), key_path=None)


def issue_code_signing(
    ca: IssuingCA, certs_dir: Path, *, api: Api | None = None, now: datetime.datetime | None = None
) -> SigningMaterial:
    """A code-signing key and certificate (EKU codeSigning, CN iot-stream-sim code signing) from ``ca``, written
    to ``certs_dir``; an existing pair issued by the same CA is reused (a resumed or repeated run)."""
    cert_path, key_path = certs_dir / CODE_SIGNING_CERT_NAME, certs_dir / CODE_SIGNING_KEY_NAME
    if cert_path.exists() and key_path.exists():
        try:
            existing = load_signing(key_path, cert_path)
            if x509.load_pem_x509_certificate(existing.cert_pem).issuer == ca.cert.subject:
                return replace(existing, key_path=key_path.resolve())
        except InputError:
            log.info("replacing the unusable code-signing pair in %s", certs_dir)
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    edwards = isinstance(ca.key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iot-stream-sim code signing")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(min(now + _LIFETIME, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(ca.key, None if edwards else hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if api is not None and api.dry_run:
        api.plan_local("write_file", path=str(cert_path))
        api.plan_local("write_file", path=str(key_path), mode="0600")
    else:
        write_private_file(key_path, key_pem)
        write_public_file(cert_path, cert_pem)
    return SigningMaterial(key=key, cert_pem=cert_pem, cert_path=cert_path.resolve(), key_path=key_path.resolve())


def _default_id(manifest: Manifest) -> str:
    base = f"iss-{manifest.run_id}"
    taken = {o.ota_update_id for o in manifest.ota_updates}
    if base not in taken:
        return base
    return next(f"{base}-{n}" for n in range(2, 10_000) if f"{base}-{n}" not in taken)


def _check_id(ota_update_id: str) -> str:
    if not 1 <= len(ota_update_id) <= 128 or not all(c.isalnum() or c in "_-" for c in ota_update_id):
        raise InputError(f"OTA update id {ota_update_id!r} must be 1-128 of a-z A-Z 0-9 _ -")
    return ota_update_id


def create_ota(api: Api, store: ManifestStore, options: OtaOptions, signing: SigningMaterial) -> OtaUpdateRecord:
    """Sign the manifest stream's files and create one OTA update for the target things (see the module doc)."""
    manifest = store.manifest
    stream = manifest.stream
    if stream is None:
        raise ManifestError("the manifest records no stream", hint="create one with `provisioner up` first")
    role_arn = options.role_arn or (manifest.role.arn if manifest.role is not None else None)
    if not role_arn:
        raise InputError("which role may AWS IoT use for the OTA update?", hint="pass --role-arn")
    names = [t.name for t in manifest.things]
    targets = list(options.targets) or names
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise InputError(f"{', '.join(unknown)} not in the manifest", hint=f"choose among {', '.join(names)}")
    if not targets:
        raise InputError("the manifest records no things", hint="create them with `provisioner things create`")
    ota_update_id = _check_id(options.ota_update_id or _default_id(manifest))
    if any(o.ota_update_id == ota_update_id for o in manifest.ota_updates):
        raise InputError(f"OTA update {ota_update_id} is already recorded", hint="choose another --ota-update-id")
    cert_on_device = options.cert_path_on_device or str(signing.cert_path)
    files = []
    for stream_file in stream.files:
        firmware = manifest.firmware_file(stream_file.file_id)
        if firmware is None or (firmware.bucket, firmware.key) != (stream_file.bucket, stream_file.key):
            raise ManifestError(
                f"the manifest has no firmware record for file {stream_file.file_id} of stream {stream.stream_id}",
                hint="update the stream with `provisioner stream update` so the manifest records its files",
            )
        signature = sign_digest(signing.key, bytes.fromhex(firmware.sha256))
        files.append(
            {
                "fileName": Path(firmware.key).name,
                "fileLocation": {"stream": {"streamId": stream.stream_id, "fileId": stream_file.file_id}},
                "codeSigning": {
                    "customCodeSigning": {
                        "signature": {"inlineDocument": signature},
                        "certificateChain": {"certificateName": cert_on_device},
                        "hashAlgorithm": "SHA256",
                        "signatureAlgorithm": "ECDSA",
                    }
                },
            }
        )
    identity = api.identity()
    prefix = f"arn:{identity.partition}:iot:{api.region}:{identity.account_id}"
    params: dict[str, Any] = {
        "otaUpdateId": ota_update_id,
        "description": f"iot-stream-sim {RUN_ID_MARKER.format(run_id=manifest.run_id)}",
        "targets": [f"{prefix}:thing/{t}" for t in targets],
        "protocols": ["MQTT"],
        "targetSelection": "SNAPSHOT",
        "files": files,
        "roleArn": role_arn,
        "tags": [{"Key": RUN_ID_KEY, "Value": manifest.run_id}],
    }
    if options.rollout_per_minute is not None:
        params["awsJobExecutionsRolloutConfig"] = {"maximumPerMinute": options.rollout_per_minute}
    answer = api.write(
        api.iot.create_ota_update,
        dry_result={
            "otaUpdateId": ota_update_id,
            "otaUpdateArn": f"{prefix}:otaupdate/{ota_update_id}",
            "awsIotJobId": f"AFR_OTA-{ota_update_id}",
            "awsIotJobArn": f"{prefix}:job/AFR_OTA-{ota_update_id}",
        },
        **params,
    )
    record = OtaUpdateRecord(
        ota_update_id=ota_update_id,
        ota_update_arn=str(answer.get("otaUpdateArn", "")),
        job_id=str(answer.get("awsIotJobId") or f"AFR_OTA-{ota_update_id}"),
        job_arn=str(answer.get("awsIotJobArn", "")),
        stream_id=stream.stream_id,
        targets=tuple(targets),
        signing_cert=signing.cert_path,
        signing_key=signing.key_path,
        cert_path_on_device=cert_on_device,
    )
    store.change(ota_updates=(*manifest.ota_updates, record))
    return record


@dataclass(frozen=True, kw_only=True, slots=True)
class ThingStatus:
    thing: str
    status: str  # the execution's status, or NOT_FOUND
    details: dict[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class OtaStatus:
    record: OtaUpdateRecord
    things: tuple[ThingStatus, ...]

    @property
    def counts(self) -> Counter[str]:
        return Counter(t.status for t in self.things)

    @property
    def ok(self) -> bool:
        return all(t.status == "SUCCEEDED" for t in self.things)

    @property
    def failed(self) -> tuple[ThingStatus, ...]:
        return tuple(t for t in self.things if t.status != "SUCCEEDED")

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        return f"OTA update {self.record.ota_update_id} (job {self.record.job_id}): {len(self.things)} things: {counts}"


def pick_update(manifest: Manifest, ota_update_id: str | None) -> OtaUpdateRecord:
    if not manifest.ota_updates:
        raise ManifestError("the manifest records no OTA update", hint="create one with `provisioner ota create`")
    if ota_update_id is None:
        return manifest.ota_updates[-1]
    for record in manifest.ota_updates:
        if record.ota_update_id == ota_update_id:
            return record
    known = ", ".join(o.ota_update_id for o in manifest.ota_updates)
    raise InputError(f"OTA update {ota_update_id} is not in the manifest", hint=f"recorded: {known}")


def ota_status(
    api: Api,
    record: OtaUpdateRecord,
    *,
    wait: float = 0.0,
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> OtaStatus:
    """Each target's execution; with ``wait`` > 0, read again every ``poll`` s until all are terminal or time is up."""
    deadline = clock() + wait
    while True:
        things = tuple(_thing_status(api, record.job_id, t) for t in record.targets)
        done = all(t.status in TERMINAL or t.status == "NOT_FOUND" for t in things)
        if done or clock() >= deadline:
            return OtaStatus(record=record, things=things)
        api.sleep(min(poll, max(0.0, deadline - clock())))


def _thing_status(api: Api, job_id: str, thing: str) -> ThingStatus:
    try:
        execution = api.read(api.iot.describe_job_execution, jobId=job_id, thingName=thing)["execution"]
    except NotFound:
        return ThingStatus(thing=thing, status="NOT_FOUND", details={})
    details = execution.get("statusDetails", {}).get("detailsMap", {}) or {}
    return ThingStatus(thing=thing, status=str(execution.get("status")), details=dict(details))


def cleanup_steps(api: Api, record: OtaUpdateRecord) -> list[tuple[str, Callable[[], object]]]:
    """The removal calls for one OTA update, in order; "not found" means already gone."""
    job_id, ota_update_id = record.job_id, record.ota_update_id

    def cancel() -> object:
        try:
            return api.write(api.iot.cancel_job, jobId=job_id, force=True)
        except ProvisionerError as e:
            if getattr(e, "code", None) == "InvalidRequestException":  # already COMPLETED: nothing to cancel
                return None
            raise

    def delete() -> object:
        try:
            return api.write(api.iot.delete_ota_update, otaUpdateId=ota_update_id, forceDeleteAWSJob=True)
        except NotFound:  # the OTA update is gone; its job may not be (removed by hand, half a cleanup)
            api.write(api.iot.delete_job, jobId=job_id, force=True)
            raise

    return [(f"job {job_id} (cancel)", cancel), (f"OTA update {ota_update_id} and job {job_id}", delete)]
