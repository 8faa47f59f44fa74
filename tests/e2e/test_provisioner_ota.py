"""``provisioner ota create/status`` and cleanup against local_iot (``--local``), with raw paho devices doing the job.

The signature in the job document is checked here with the code-signing certificate the provisioner wrote, over the
firmware bytes read back from S3: what a device checks.
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from local_iot.ca import CertPaths
from local_iot.runner import LocalIot, LocalIotSettings
from provisioner.cli import main
from provisioner.manifest import load_manifest
from tests.e2e.jobs_client import JobsDevice

pytestmark = pytest.mark.e2e
FAST = ["--tps", "1000"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def iot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalIot]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with LocalIot(LocalIotSettings(state_dir=tmp_path / "state")) as emulator:
        yield emulator


def test_ota_create_status_and_cleanup_on_local_iot(iot: LocalIot, tmp_path: Path) -> None:
    state, manifest_path, certs = tmp_path / "state", tmp_path / "run.json", tmp_path / "certs"
    result = run(
        "up", "--local", state, "--stream-id", "fw-ota", "--generate", "64KiB", "--seed", "3", "--bucket", "fw-ota",
        "--create-bucket", "--create-role", "--things", "2", "--thing-prefix", "ota", "--certs-dir", certs,
        "--manifest", manifest_path, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    dry = run("ota", "create", "--local", state, "--manifest", manifest_path, "--dry-run", *FAST)
    assert dry.exit_code == 0, dry.output
    assert "iot.create_ota_update(otaUpdateId=" in dry.output and not (certs / "code-signing.cert.pem").exists()

    created = run("ota", "create", "--local", state, "--manifest", manifest_path, "--rollout-per-minute", "100", *FAST)
    assert created.exit_code == 0, created.output
    manifest = load_manifest(manifest_path)
    (record,) = manifest.ota_updates
    assert record.job_id == f"AFR_OTA-{record.ota_update_id}" and record.targets == ("ota-0", "ota-1")
    key_path = certs / "code-signing.private.key"
    assert record.signing_key == key_path.resolve() and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((certs / "code-signing.cert.pem").read_bytes())
    assert ExtendedKeyUsageOID.CODE_SIGNING in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    # the job document as a device gets it: signature over the S3 bytes verifies with the written certificate
    firmware = manifest.firmware[0]
    data = iot.client("s3").get_object(Bucket=firmware.bucket, Key=firmware.key)["Body"].read()
    devices = [JobsDevice(iot, t.name, CertPaths(cert_path=t.cert_path, key_path=t.key_path)) for t in manifest.things]
    try:
        status = run("ota", "status", "--local", state, "--manifest", manifest_path)
        assert status.exit_code == 1 and "0 SUCCEEDED" not in status.output and "2 QUEUED" in status.output

        for device, outcome in zip(devices, ("SUCCEEDED", "FAILED"), strict=True):
            kind, answer = device.request("start-next", {"clientToken": "c"})
            assert kind == "accepted"
            document = answer["execution"]["jobDocument"]["afr_ota"]
            (entry,) = document["files"]
            assert document["streamname"] == "fw-ota" and entry["filesize"] == len(data) == firmware.size
            assert entry["certfile"] == str((certs / "code-signing.cert.pem").resolve())
            signature = base64.b64decode(entry["sig-sha256-ecdsa"])
            public = cert.public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))  # raises InvalidSignature when wrong
            body = {"status": outcome, "statusDetails": {"reason": "ok" if outcome == "SUCCEEDED" else "bad"}}
            assert device.request(f"{record.job_id}/update", body)[0] == "accepted"
    finally:
        for device in devices:
            device.close()

    status = run("ota", "status", "--local", state, "--manifest", manifest_path, "--wait", "5")
    assert status.exit_code == 1, status.output
    assert "ota-0  SUCCEEDED    ok" in status.output and "1 FAILED, 1 SUCCEEDED" in status.output
    assert "not SUCCEEDED: ota-1 (FAILED)" in status.output

    cleanup = run("cleanup", "--local", state, "--manifest", manifest_path, *FAST)
    assert cleanup.exit_code == 0, cleanup.output
    client = iot.client("iot")
    # moto's state is per process: other tests' jobs may be listed too, never this run's
    assert record.ota_update_id not in [u["otaUpdateId"] for u in client.list_ota_updates()["otaUpdates"]]
    assert record.job_id not in [j["jobId"] for j in client.list_jobs()["jobs"]]
    assert not key_path.exists() and not (certs / "code-signing.cert.pem").exists()


def test_ota_create_against_aws_needs_a_signing_key(iot: LocalIot, tmp_path: Path) -> None:
    state, manifest_path = tmp_path / "state", tmp_path / "run.json"
    result = run(
        "up", "--local", state, "--stream-id", "fw-k", "--generate", "4KiB", "--bucket", "fw-key", "--create-bucket",
        "--create-role", "--things", "1", "--certs-dir", tmp_path / "certs", "--manifest", manifest_path, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    env = {**iot.environment()}
    refused = CliRunner(env=env).invoke(main, ["ota", "create", "--manifest", str(manifest_path)])
    assert refused.exit_code == 2 and "--signing-key and --signing-cert" in refused.output
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "c.pem").write_bytes((tmp_path / "certs" / "sim-0.cert.pem").read_bytes())
    wrong = CliRunner(env=env).invoke(
        main,
        [
            "ota",
            "create",
            "--manifest",
            str(manifest_path),
            "--signing-key",
            str(tmp_path / "k.pem"),
            "--signing-cert",
            str(tmp_path / "c.pem"),
        ],
    )
    assert wrong.exit_code == 2 and "not an EC P-256 key" in wrong.output
    assert json.loads(manifest_path.read_text())["ota_updates"] == []


def test_cleanup_by_run_id_removes_the_runs_ota_update_and_its_job(iot: LocalIot, tmp_path: Path) -> None:
    state, manifest_path = tmp_path / "state", tmp_path / "run.json"
    result = run(
        "up", "--local", state, "--stream-id", "fw-rid", "--generate", "4KiB", "--bucket", "fw-rid",
        "--create-bucket", "--create-role", "--things", "1", "--thing-prefix", "rid", "--certs-dir",
        tmp_path / "certs", "--manifest", manifest_path, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    created = run("ota", "create", "--local", state, "--manifest", manifest_path, *FAST)
    assert created.exit_code == 0, created.output
    manifest = load_manifest(manifest_path)
    (record,) = manifest.ota_updates
    client = iot.client("iot")
    assert client.describe_job(jobId=record.job_id)["job"]["status"] == "IN_PROGRESS"
    manifest_path.unlink()  # the manifest is lost: the account is all cleanup has

    cleanup = run("cleanup", "--local", state, "--run-id", manifest.run_id, *FAST)
    assert cleanup.exit_code == 0, cleanup.output
    assert "warning" not in cleanup.output
    lines = cleanup.output.splitlines()
    ota_line = lines.index(f"removed       OTA update {record.ota_update_id} and job {record.job_id}")
    assert (
        lines.index(f"removed       job {record.job_id} (cancel)")
        < ota_line
        < lines.index("removed       stream fw-rid")
    )
    # moto's state is per process: other tests' OTA updates and jobs may be listed too, never this run's
    assert record.ota_update_id not in [u["otaUpdateId"] for u in client.list_ota_updates()["otaUpdates"]]
    assert record.job_id not in [j["jobId"] for j in client.list_jobs()["jobs"]]
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_job(jobId=record.job_id)
