"""The exact real-account call sequence of ``provisioner ota create``, ``ota status`` and the OTA part of cleanup
(botocore Stubber), with the user's own signing key: the signature in create_ota_update must verify over the
firmware's SHA-256 with the user's certificate."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.cleanup import cleanup_manifest, find_run
from provisioner.errors import InputError
from provisioner.manifest import (
    FirmwareObject,
    Manifest,
    ManifestStore,
    RoleRecord,
    StreamFileRecord,
    StreamRecord,
    ThingRecord,
    load_manifest,
)
from provisioner.ota import OtaOptions, create_ota, load_signing, ota_status, verify_digest
from tests.unit.provisioner.test_provisioner_stubber import ACCOUNT, REGION, Stubbed

FIRMWARE = b"firmware bytes" * 100
SHA = hashlib.sha256(FIRMWARE).hexdigest()
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/iot-stream-sim-stream-r1"
PREFIX = f"arn:aws:iot:{REGION}:{ACCOUNT}"
JOB = "AFR_OTA-iss-r1"


class Signed:
    """Equal to signature bytes that verify over the firmware's SHA-256 with ``cert_pem``."""

    def __init__(self, cert_pem: bytes) -> None:
        self.cert_pem = cert_pem

    def __eq__(self, other: object) -> bool:
        return isinstance(other, bytes) and verify_digest(self.cert_pem, bytes.fromhex(SHA), other)

    def __repr__(self) -> str:
        return "Signed(<a valid ECDSA P-256 signature>)"


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubbed]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    s = Stubbed()
    for stubber in s.stubbers.values():
        stubber.activate()
    yield s
    for stubber in s.stubbers.values():
        stubber.assert_no_pending_responses()
        stubber.deactivate()


def _manifest() -> Manifest:
    return Manifest(
        run_id="r1",
        region=REGION,
        account_id=ACCOUNT,
        created_at="2026-01-01T00:00:00Z",
        firmware=(
            FirmwareObject(
                file_id=0,
                bucket="fw-bucket",
                key="iot-stream-sim/r1/0/fw.bin",
                version_id="v1",
                size=len(FIRMWARE),
                sha256=SHA,
                etag='"e"',
                source="file:fw.bin",
            ),
        ),
        role=RoleRecord(name="iot-stream-sim-stream-r1", arn=ROLE_ARN, created=True),
        stream=StreamRecord(
            stream_id="fw-test",
            stream_arn=f"{PREFIX}:stream/fw-test",
            version=1,
            description="",
            role_arn=ROLE_ARN,
            files=(StreamFileRecord(file_id=0, bucket="fw-bucket", key="iot-stream-sim/r1/0/fw.bin", version_id="v1"),),
        ),
        things=(ThingRecord(name="sim-0"), ThingRecord(name="sim-1")),
    )


def _signing_pair(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my code signing")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_path, cert_path = tmp_path / "signing.key", tmp_path / "signing.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _identity(s: Stubbed) -> None:
    s.ok("sts", "get_caller_identity", {"UserId": "AIDA", "Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/a"})


def test_ota_create_makes_exactly_these_calls_on_a_real_account(stubbed: Stubbed, tmp_path: Path) -> None:
    s = stubbed
    key_path, cert_path = _signing_pair(tmp_path)
    signing = load_signing(key_path, cert_path)
    _identity(s)
    expected: dict[str, Any] = {
        "otaUpdateId": "iss-r1",
        "description": "iot-stream-sim [iot-stream-sim:run-id=r1]",
        "targets": [f"{PREFIX}:thing/sim-1"],
        "protocols": ["MQTT"],
        "targetSelection": "SNAPSHOT",
        "files": [
            {
                "fileName": "fw.bin",
                "fileLocation": {"stream": {"streamId": "fw-test", "fileId": 0}},
                "codeSigning": {
                    "customCodeSigning": {
                        "signature": {"inlineDocument": Signed(cert_path.read_bytes())},
                        "certificateChain": {"certificateName": "/certs/ota.pem"},
                        "hashAlgorithm": "SHA256",
                        "signatureAlgorithm": "ECDSA",
                    }
                },
            }
        ],
        "roleArn": ROLE_ARN,
        "tags": [{"Key": "iot-stream-sim:run-id", "Value": "r1"}],
        "awsJobExecutionsRolloutConfig": {"maximumPerMinute": 20},
    }
    answer = {
        "otaUpdateId": "iss-r1",
        "awsIotJobId": JOB,
        "otaUpdateArn": f"{PREFIX}:otaupdate/iss-r1",
        "awsIotJobArn": f"{PREFIX}:job/{JOB}",
        "otaUpdateStatus": "CREATE_PENDING",
    }
    s.ok("iot", "create_ota_update", answer, expected)
    path = tmp_path / "run.json"
    store = ManifestStore(_manifest(), path)
    options = OtaOptions(targets=("sim-1",), cert_path_on_device="/certs/ota.pem", rollout_per_minute=20)
    record = create_ota(s.api(), store, options, signing)
    assert s.order == ["sts.GetCallerIdentity", "iot.CreateOTAUpdate"]
    assert record.job_id == JOB and record.signing_key is None and record.targets == ("sim-1",)
    assert load_manifest(path).ota_updates == (record,)

    s.ok("iot", "describe_job_execution", {
        "execution": {"jobId": JOB, "status": "FAILED", "statusDetails": {"detailsMap": {"reason": "sig"}}}
    }, {"jobId": JOB, "thingName": "sim-1"})  # fmt: skip
    status = ota_status(s.api(), record)
    assert not status.ok and status.failed[0].details == {"reason": "sig"}

    s.ok("iot", "cancel_job", {"jobId": JOB}, {"jobId": JOB, "force": True})
    s.ok("iot", "delete_ota_update", {}, {"otaUpdateId": "iss-r1", "forceDeleteAWSJob": True})
    manifest = load_manifest(path)
    bare = Manifest(
        run_id="r1", region=REGION, account_id=ACCOUNT, created_at="", ota_updates=manifest.ota_updates
    )  # only the OTA update: what cleanup does for it
    report = cleanup_manifest(s.api(), bare, delete_local_files=True)
    assert report.ok and s.order[-2:] == ["iot.CancelJob", "iot.DeleteOTAUpdate"]
    assert cert_path.exists()  # the user's own certificate is never deleted


def test_a_completed_job_needs_no_cancel_and_a_gone_update_deletes_its_job(stubbed: Stubbed, tmp_path: Path) -> None:
    s = stubbed
    key_path, cert_path = _signing_pair(tmp_path)
    _identity(s)
    s.ok("iot", "create_ota_update", {"otaUpdateId": "x", "awsIotJobId": "AFR_OTA-x"})
    store = ManifestStore(_manifest(), tmp_path / "run.json")
    record = create_ota(s.api(), store, OtaOptions(ota_update_id="x"), load_signing(key_path, cert_path))
    s.error("iot", "cancel_job", "InvalidRequestException", 400, {"jobId": "AFR_OTA-x", "force": True})
    s.error("iot", "delete_ota_update", "ResourceNotFoundException", 404)
    s.ok("iot", "delete_job", {}, {"jobId": "AFR_OTA-x", "force": True})
    bare = Manifest(run_id="r1", region=REGION, account_id=ACCOUNT, created_at="", ota_updates=(record,))
    report = cleanup_manifest(s.api(), bare, delete_local_files=False)
    assert report.ok and s.order[-3:] == ["iot.CancelJob", "iot.DeleteOTAUpdate", "iot.DeleteJob"]


def test_unknown_targets_are_refused_before_any_call(stubbed: Stubbed, tmp_path: Path) -> None:
    key_path, cert_path = _signing_pair(tmp_path)
    store = ManifestStore(_manifest(), tmp_path / "run.json")
    with pytest.raises(InputError, match="nope not in the manifest"):
        create_ota(stubbed.api(), store, OtaOptions(targets=("nope",)), load_signing(key_path, cert_path))
    assert stubbed.order == []


def _stub_find_run_until_ota(s: Stubbed) -> None:
    """find_run's calls before the OTA search: the run's stream (in fw-bucket), no things, policy or role."""
    _identity(s)
    stream = {"streamId": "fw-test", "streamArn": f"{PREFIX}:stream/fw-test", "streamVersion": 1}
    s.ok("iot", "list_streams", {"streams": [{**stream, "description": "fw [iot-stream-sim:run-id=r1]"}]})
    files = [{"fileId": 0, "s3Location": {"bucket": "fw-bucket", "key": "iot-stream-sim/r1/0/fw.bin"}}]
    info = {**stream, "description": "fw [iot-stream-sim:run-id=r1]", "files": files, "roleArn": ROLE_ARN}
    s.ok("iot", "describe_stream", {"streamInfo": info}, {"streamId": "fw-test"})
    s.ok("iot", "list_things", {"things": []})
    s.error("iot", "get_policy", "ResourceNotFoundException", 404, {"policyName": "iot-stream-sim-device-r1"})
    s.error("iam", "get_role", "NoSuchEntity", 404, {"RoleName": "iot-stream-sim-stream-r1"})
    s.error("s3", "get_bucket_tagging", "NoSuchTagSet", 404, {"Bucket": "fw-bucket"})


def _ota_info(ota_update_id: str, run_id: str) -> dict[str, Any]:
    return {
        "otaUpdateInfo": {
            "otaUpdateId": ota_update_id,
            "otaUpdateArn": f"{PREFIX}:otaupdate/{ota_update_id}",
            "description": f"iot-stream-sim [iot-stream-sim:run-id={run_id}]",
            "targets": [f"{PREFIX}:thing/sim-0", f"{PREFIX}:thing/sim-1"],
            "otaUpdateFiles": [
                {"fileName": "fw.bin", "fileLocation": {"stream": {"streamId": "fw-test", "fileId": 0}}}
            ],
            "otaUpdateStatus": "CREATE_COMPLETE",
            "awsIotJobId": f"AFR_OTA-{ota_update_id}",
            "awsIotJobArn": f"{PREFIX}:job/AFR_OTA-{ota_update_id}",
        }
    }


def test_cleanup_by_run_id_finds_the_runs_ota_update_and_removes_it_before_the_stream(stubbed: Stubbed) -> None:
    s = stubbed
    _stub_find_run_until_ota(s)
    # two pages; only the update whose description carries the run's marker is the run's
    s.ok("iot", "list_ota_updates", {"otaUpdates": [{"otaUpdateId": "other"}], "nextToken": "t"}, {"maxResults": 250})
    s.ok("iot", "get_ota_update", _ota_info("other", "r2"), {"otaUpdateId": "other"})
    s.ok("iot", "list_ota_updates", {"otaUpdates": [{"otaUpdateId": "iss-r1"}]}, {"maxResults": 250, "nextToken": "t"})
    s.ok("iot", "get_ota_update", _ota_info("iss-r1", "r1"), {"otaUpdateId": "iss-r1"})
    found = find_run(s.api(), "r1")
    assert found.warnings == ()
    (record,) = found.manifest.ota_updates
    assert (record.ota_update_id, record.job_id, record.stream_id) == ("iss-r1", JOB, "fw-test")
    assert record.targets == ("sim-0", "sim-1")

    s.ok("iot", "cancel_job", {"jobId": JOB}, {"jobId": JOB, "force": True})
    s.ok("iot", "delete_ota_update", {}, {"otaUpdateId": "iss-r1", "forceDeleteAWSJob": True})
    s.ok("iot", "delete_stream", {}, {"streamId": "fw-test"})
    s.ok("s3", "list_object_versions", {"Versions": []}, {"Bucket": "fw-bucket", "Prefix": "iot-stream-sim/r1/"})
    s.ok("s3", "list_multipart_uploads", {}, {"Bucket": "fw-bucket", "Prefix": "iot-stream-sim/r1/"})
    report = cleanup_manifest(s.api(), found.manifest, delete_local_files=False)
    assert report.ok and report.removed[:3] == (
        f"job {JOB} (cancel)",
        f"OTA update iss-r1 and job {JOB}",
        "stream fw-test",
    )
    assert s.order == [
        "sts.GetCallerIdentity",
        "iot.ListStreams",
        "iot.DescribeStream",
        "iot.ListThings",
        "iot.GetPolicy",
        "iam.GetRole",
        "s3.GetBucketTagging",
        "iot.ListOTAUpdates",
        "iot.GetOTAUpdate",
        "iot.ListOTAUpdates",
        "iot.GetOTAUpdate",
        "iot.CancelJob",
        "iot.DeleteOTAUpdate",
        "iot.DeleteStream",
        "s3.ListObjectVersions",
        "s3.ListMultipartUploads",
    ]


def test_cleanup_by_run_id_warns_when_the_endpoint_lacks_list_ota_updates(stubbed: Stubbed) -> None:
    s = stubbed
    _stub_find_run_until_ota(s)
    # LocalStack's answer for an operation it does not implement
    message = "API action 'ListOTAUpdates' for service 'iot' not yet implemented or pro feature"
    s.stubbers["iot"].add_client_error(
        "list_ota_updates", service_error_code="InternalFailure", service_message=message, http_status_code=501
    )
    found = find_run(s.api(), "r1")
    assert found.manifest.ota_updates == () and found.manifest.stream is not None
    (warning,) = found.warnings
    assert warning.startswith("OTA updates not searched: iot.list_ota_updates is not implemented by this endpoint")
