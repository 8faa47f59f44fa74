"""The provisioner CLI against moto's in-process AWS (S3, IAM, IoT) plus FakeStreams for the five stream calls:
up -> manifest -> cleanup leaves nothing (list calls prove it), bad inputs create nothing, an interrupted
``things create`` resumes, update bumps the version, cleanup by run id, dry run, given roles and buckets."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
import pytest
from botocore.exceptions import EndpointConnectionError
from click.testing import CliRunner, Result
from cryptography import x509

from provisioner.cli import main
from provisioner.manifest import load_manifest
from tests.unit.provisioner.test_provisioner_helpers import REGION, FakeStreams, fake_aws

FAST = ["--tps", "100000"]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStreams]:
    with fake_aws(monkeypatch) as fake:
        yield fake


def run(*args: str | Path) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def up_args(tmp_path: Path, *extra: str | Path) -> list[str | Path]:
    return [
        "up",
        "--stream-id",
        "fw-test",
        "--generate",
        "1MiB",
        "--seed",
        "7",
        "--bucket",
        "fw-bucket",
        "--create-bucket",
        "--create-role",
        "--things",
        "3",
        "--thing-prefix",
        "sim",
        "--certs-dir",
        tmp_path / "certs",
        "--manifest",
        tmp_path / "run.json",
        *FAST,
        *extra,
    ]


def leftovers() -> dict[str, list[str]]:
    """What the account holds, by list calls."""
    s3, iam, iot = (boto3.client(n, region_name=REGION) for n in ("s3", "iam", "iot"))
    objects = []
    for bucket in s3.list_buckets()["Buckets"]:
        page = s3.list_object_versions(Bucket=bucket["Name"])
        objects += [f"{bucket['Name']}/{v['Key']}" for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    return {
        "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]],
        "objects": objects,
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"]],
        "things": [t["thingName"] for t in iot.list_things()["things"]],
        "certificates": [c["certificateId"] for c in iot.list_certificates()["certificates"]],
        "policies": [p["policyName"] for p in iot.list_policies()["policies"]],
        "streams": [s["streamId"] for s in iot.list_streams()["streams"]],
    }


NOTHING: dict[str, list[str]] = {
    k: [] for k in ("buckets", "objects", "roles", "things", "certificates", "policies", "streams")
}


def test_up_then_cleanup_leaves_nothing(aws_env: FakeStreams, tmp_path: Path) -> None:
    firmware = tmp_path / "extra.bin"
    firmware.write_bytes(b"\x01" * 5000)
    result = run(*up_args(tmp_path, "--file", firmware))
    assert result.exit_code == 0, result.output
    assert "stream         fw-test version 1" in result.output
    assert "device-sim download --manifest" in result.output

    manifest = load_manifest(tmp_path / "run.json")
    assert [(f.file_id, f.size) for f in manifest.firmware] == [(0, 1 << 20), (1, 5000)]
    assert manifest.stream is not None and manifest.stream.version == 1
    assert [f.version_id for f in manifest.stream.files] == [f.version_id for f in manifest.firmware]
    assert all(f.version_id for f in manifest.firmware)
    stream = aws_env.streams["fw-test"]
    assert [f["s3Location"]["version"] for f in stream["files"]] == [f.version_id for f in manifest.firmware]
    assert {"Key": "iot-stream-sim:run-id", "Value": manifest.run_id} in stream["tags"]
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.get_bucket_versioning(Bucket="fw-bucket")["Status"] == "Enabled"
    body = s3.get_object(Bucket="fw-bucket", Key=manifest.firmware[1].key, VersionId=manifest.firmware[1].version_id)
    assert body["Body"].read() == b"\x01" * 5000

    iot = boto3.client("iot", region_name=REGION)
    assert [t.name for t in manifest.things if t.complete] == ["sim-0", "sim-1", "sim-2"]
    for thing in manifest.things:
        assert iot.list_thing_principals(thingName=thing.name)["principals"] == [thing.certificate_arn]
        policies = iot.list_attached_policies(target=thing.certificate_arn)["policies"]
        assert [p["policyName"] for p in policies] == [f"iot-stream-sim-device-{manifest.run_id}"]
        assert thing.key_path is not None and stat.S_IMODE(thing.key_path.stat().st_mode) == 0o600
    left = leftovers()
    assert len(left["things"]) == 3 and len(left["certificates"]) == 3 and left["streams"] == ["fw-test"]

    result = run("cleanup", "--manifest", tmp_path / "run.json", *FAST)
    assert result.exit_code == 0, result.output
    assert "0 not removed" in result.output
    assert leftovers() == NOTHING
    assert not (tmp_path / "certs").exists()

    again = run("cleanup", "--manifest", tmp_path / "run.json", *FAST)
    assert again.exit_code == 0, again.output
    assert again.output.rstrip().splitlines()[-1].startswith("0 removed,")


@pytest.mark.parametrize(
    ("extra", "exit_code", "message"),
    [
        (["--stream-id", "fw test"], 2, "invalid stream id 'fw test'"),
        (["--generate", "1KiB"] * 50, 2, "51 files given: a stream holds at most 50 files"),
        (["--file", "0=FILE", "--file", "0=FILE"], 2, "duplicate file ids [0]"),
        (["--file", "MISSING"], 2, "does not exist or is not a file"),
        (["--role-arn", "arn:aws:iam::123456789012:role/nope"], 2, "role arn:aws:iam::123456789012:role/nope does"),
        (["--things", "1", "--thing-prefix", "bad/prefix"], 2, "invalid thing name"),
        (["--ca-cert", "FILE"], 2, "--ca-cert and --ca-key go together"),
    ],
    ids=["bad-stream-id", "51-files", "duplicate-file-ids", "missing-file", "unknown-role", "bad-prefix", "ca-half"],
)
def test_bad_input_is_refused_and_creates_nothing(
    aws_env: FakeStreams, tmp_path: Path, extra: list[str], exit_code: int, message: str
) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    extra = [e.replace("FILE", str(f)).replace("MISSING", str(tmp_path / "missing.bin")) for e in extra]
    args = up_args(tmp_path, *extra)
    if "--role-arn" in extra:
        args.remove("--create-role")
    result = run(*args)
    assert result.exit_code == exit_code, result.output
    assert message in " ".join(result.output.split())
    assert result.output.startswith("Error: ")
    assert leftovers() == NOTHING
    assert not (tmp_path / "run.json").exists()
    assert not (tmp_path / "certs").exists()


def test_unversioned_or_missing_bucket_is_refused(aws_env: FakeStreams, tmp_path: Path) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="plain")
    args = [a if a != "fw-bucket" else "plain" for a in up_args(tmp_path)]
    args.remove("--create-bucket")
    result = run(*args)
    assert result.exit_code == 2
    assert "bucket plain is not versioned" in result.output and "--force-unversioned" in result.output
    assert leftovers() == {**NOTHING, "buckets": ["plain"]}

    missing = [a if a != "plain" else "absent" for a in args]
    result = run(*missing)
    assert result.exit_code == 2
    assert "bucket absent does not exist: add --create-bucket" in " ".join(result.output.split())
    assert leftovers() == {**NOTHING, "buckets": ["plain"]}

    # Forced: it works, and cleanup removes our objects but leaves the bucket it did not create.
    result = run(*args, "--force-unversioned", "--things", "1")
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "run.json")
    assert manifest.bucket is not None and not manifest.bucket.created
    assert manifest.firmware[0].version_id is None
    assert run("cleanup", "--manifest", tmp_path / "run.json", *FAST).exit_code == 0
    assert leftovers() == {**NOTHING, "buckets": ["plain"]}


def test_existing_stream_is_refused_with_a_hint(aws_env: FakeStreams, tmp_path: Path) -> None:
    boto3.client("iot", region_name=REGION).create_stream(
        streamId="fw-test",
        files=[{"fileId": 0, "s3Location": {"bucket": "b", "key": "k"}}],
        roleArn="arn:aws:iam::123456789012:role/other",
    )
    result = run(*up_args(tmp_path))
    assert result.exit_code == 5
    assert "stream fw-test already exists: use `provisioner stream update` or another --stream-id" in " ".join(
        result.output.split()
    )
    assert leftovers() == {**NOTHING, "streams": ["fw-test"]}


class FailOn:
    """Make the n-th call of an IoT operation fail like a dropped connection (for every client created)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, operation: str, n: int) -> None:
        self.operation, self.n, self.seen = operation, n, 0
        self.counts: dict[str, int] = {}
        handlers = [("before-call.iot", self), *botocore.handlers.BUILTIN_HANDLERS]
        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", handlers)

    def __call__(self, model: Any, **_: Any) -> None:
        self.counts[model.name] = self.counts.get(model.name, 0) + 1
        if model.name == self.operation:
            self.seen += 1
            if self.seen == self.n:
                raise EndpointConnectionError(endpoint_url="https://iot.us-east-1.amazonaws.com")


def test_interrupted_things_create_resumes(
    aws_env: FakeStreams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest_path = tmp_path / "run.json"
    things = ["things", "create", "--things", "5", "--certs-dir", tmp_path / "certs", "--manifest", manifest_path]
    things += ["--mqtt-endpoint", "127.0.0.1:8883", *FAST]
    failer = FailOn(monkeypatch, "AttachPolicy", 3)  # thing sim-2 fails after its certificate was made
    result = run(*things)
    assert result.exit_code == 9, result.output
    assert "could not be sent" in result.output
    recorded = load_manifest(manifest_path)
    assert [(t.name, t.complete) for t in recorded.things] == [("sim-0", True), ("sim-1", True), ("sim-2", False)]
    assert recorded.things[2].certificate_arn is not None
    assert failer.counts["CreateKeysAndCertificate"] == 3

    failer.n = 0  # no more failures
    failer.counts.clear()
    result = run(*things)
    assert result.exit_code == 0, result.output
    # Resumed: certificates only for sim-3 and sim-4; sim-2 kept its certificate and got attached.
    assert failer.counts["CreateKeysAndCertificate"] == 2
    assert failer.counts["CreateThing"] == 2
    final = load_manifest(manifest_path)
    assert [t.name for t in final.things if t.complete] == [f"sim-{i}" for i in range(5)]
    assert final.things[2].certificate_arn == recorded.things[2].certificate_arn
    left = leftovers()
    assert len(left["things"]) == 5 and len(left["certificates"]) == 5, "no orphan certificates"

    # A third run changes nothing; deleting a key file makes the thing get a new certificate.
    failer.counts.clear()
    assert run(*things).exit_code == 0
    assert "CreateKeysAndCertificate" not in failer.counts
    assert final.things[0].key_path is not None
    final.things[0].key_path.unlink()
    assert run(*things).exit_code == 0
    assert failer.counts["CreateKeysAndCertificate"] == 1
    assert len(leftovers()["certificates"]) == 5, "the lost certificate was retired"

    assert run("cleanup", "--manifest", manifest_path, *FAST).exit_code == 0
    assert leftovers() == NOTHING


def test_update_bumps_the_version(aws_env: FakeStreams, tmp_path: Path) -> None:
    assert run(*up_args(tmp_path)).exit_code == 0
    manifest_path = tmp_path / "run.json"
    before = load_manifest(manifest_path)
    result = run("stream", "update", "--manifest", manifest_path, "--generate", "2KiB", "--seed", "9", *FAST)
    assert result.exit_code == 0, result.output
    assert "stream fw-test: version 1 -> 2" in result.output
    after = load_manifest(manifest_path)
    assert after.stream is not None and after.stream.version == 2
    assert [f.size for f in after.firmware] == [2048]
    assert after.stream.files[0].key == after.firmware[0].key != before.firmware[0].key
    assert aws_env.streams["fw-test"]["files"][0]["s3Location"]["key"] == after.firmware[0].key
    assert after.role is not None
    iam = boto3.client("iam", region_name=REGION)
    policy = iam.get_role_policy(RoleName=after.role.name, PolicyName="iot-stream-sim-read-firmware")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    assert policy["Statement"][0]["Resource"] == [f"arn:aws:s3:::fw-bucket/{after.firmware[0].key}"]

    result = run("stream", "update", "--manifest", manifest_path, "--description", "second", *FAST)
    assert "version 2 -> 3" in result.output
    assert aws_env.streams["fw-test"]["description"].startswith("second [iot-stream-sim:run-id=")

    # Both the old and the new object (all versions under the run's prefix) go with cleanup.
    assert run("cleanup", "--manifest", manifest_path, *FAST).exit_code == 0
    assert leftovers() == NOTHING


def test_cleanup_by_run_id(aws_env: FakeStreams, tmp_path: Path) -> None:
    assert run(*up_args(tmp_path)).exit_code == 0
    run_id = load_manifest(tmp_path / "run.json").run_id
    (tmp_path / "run.json").unlink()
    result = run("cleanup", "--run-id", run_id, *FAST)
    assert result.exit_code == 0, result.output
    assert leftovers() == NOTHING
    # moto in-process lacks list_ota_updates: said, not a crash (local_iot has it: tests/e2e/test_provisioner_ota.py)
    assert "warning       OTA updates not searched: iot.list_ota_updates is not implemented" in result.output
    assert result.output.rstrip().endswith("0 not removed, 1 warning")


def test_cleanup_reports_what_it_could_not_remove(aws_env: FakeStreams, tmp_path: Path) -> None:
    assert run(*up_args(tmp_path)).exit_code == 0
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket="fw-bucket", Key="someone-else.txt", Body=b"keep")
    result = run("cleanup", "--manifest", tmp_path / "run.json", *FAST)
    assert result.exit_code == 10
    assert "NOT removed   bucket fw-bucket" in result.output
    assert leftovers() == {**NOTHING, "buckets": ["fw-bucket"], "objects": ["fw-bucket/someone-else.txt"]}


def test_dry_run_creates_nothing(aws_env: FakeStreams, tmp_path: Path) -> None:
    result = run(*up_args(tmp_path, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "Dry run: nothing was created." in result.output
    assert "iot.create_stream(streamId='fw-test'" in result.output
    assert "3 x iot.create_thing" in result.output
    assert leftovers() == NOTHING
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "certs").exists()


def test_given_role_is_used_and_kept(aws_env: FakeStreams, tmp_path: Path) -> None:
    iam = boto3.client("iam", region_name=REGION)
    arn = iam.create_role(RoleName="mine", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    args = up_args(tmp_path, "--role-arn", arn)
    args.remove("--create-role")
    assert run(*args).exit_code == 0
    manifest = load_manifest(tmp_path / "run.json")
    assert manifest.role is not None and not manifest.role.created and manifest.role.arn == arn
    assert aws_env.streams["fw-test"]["roleArn"] == arn
    assert run("cleanup", "--manifest", tmp_path / "run.json", *FAST).exit_code == 0
    assert leftovers() == {**NOTHING, "roles": ["mine"]}


def _write_ca(tmp_path: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "own CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_own_ca_issues_and_registers(aws_env: FakeStreams, tmp_path: Path) -> None:
    ca_cert, ca_key = _write_ca(tmp_path)
    extra = ["--ca-cert", ca_cert, "--ca-key", ca_key, "--mqtt-endpoint", "127.0.0.1:18883", "--things", "2"]
    result = run(*up_args(tmp_path, *extra))
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "run.json")
    assert manifest.mqtt is not None and (manifest.mqtt.host, manifest.mqtt.port) == ("127.0.0.1", 18883)
    assert manifest.mqtt.ca_path == tmp_path / "certs" / "root-ca.pem"
    assert manifest.mqtt.ca_path.read_bytes() == ca_cert.read_bytes()
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    iot = boto3.client("iot", region_name=REGION)
    for thing in manifest.things:
        assert thing.cert_path is not None and thing.certificate_id is not None
        pem = thing.cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(ca)
        assert cert.subject.rfc4514_string() == f"CN={thing.name}"
        described = iot.describe_certificate(certificateId=thing.certificate_id)["certificateDescription"]
        assert described["status"] == "ACTIVE"
        assert described["certificatePem"] == pem.decode()
    assert run("cleanup", "--manifest", tmp_path / "run.json", *FAST).exit_code == 0
    assert leftovers() == NOTHING


def test_step_by_step_commands(aws_env: FakeStreams, tmp_path: Path) -> None:
    m = tmp_path / "run.json"
    fw = ["firmware", "upload", "--bucket", "fw-bucket", "--create-bucket", "--generate", "4KiB", "--manifest", m]
    assert run(*fw, *FAST).exit_code == 0
    result = run("stream", "create", "--stream-id", "s1", "--create-role", "--manifest", m, *FAST)
    assert result.exit_code == 0, result.output
    assert "stream s1 created: version 1" in result.output
    things = ["things", "create", "--things", "2", "--certs-dir", tmp_path / "c", "--manifest", m]
    assert run(*things, *FAST).exit_code == 0
    listed = run("stream", "list", *FAST)
    assert listed.output.startswith("s1\tversion 1\tiot-stream-sim firmware stream [iot-stream-sim:run-id=")
    described = run("stream", "describe", "--manifest", m, *FAST)
    assert json.loads(described.output)["streamId"] == "s1"
    missing = run("stream", "describe", "--stream-id", "nope", *FAST)
    assert missing.exit_code == 6 and "ResourceNotFoundException" in missing.output
    assert run("stream", "delete", "--manifest", m, *FAST).output.strip() == "stream s1 deleted"
    assert load_manifest(m).stream is None
    assert run("cleanup", "--manifest", m, *FAST).exit_code == 0
    assert leftovers() == NOTHING


def test_cleanup_refuses_another_account(aws_env: FakeStreams, tmp_path: Path) -> None:
    assert run(*up_args(tmp_path, "--things", "0")).exit_code == 0
    path = tmp_path / "run.json"
    data = json.loads(path.read_text())
    data["account_id"] = "999999999999"
    path.write_text(json.dumps(data))
    result = run("cleanup", "--manifest", path, *FAST)
    assert result.exit_code == 3
    assert "account 999999999999" in result.output and "--profile/--region" in " ".join(result.output.split())
    assert leftovers()["streams"] == ["fw-test"]


def test_cleanup_needs_one_selector(aws_env: FakeStreams) -> None:
    result = run("cleanup", *FAST)
    assert result.exit_code == 2
    assert "exactly one of --manifest and --run-id" in result.output


def test_cleanup_dry_run_removes_nothing(aws_env: FakeStreams, tmp_path: Path) -> None:
    assert run(*up_args(tmp_path, "--things", "1")).exit_code == 0
    before = leftovers()
    result = run("cleanup", "--manifest", tmp_path / "run.json", "--dry-run", *FAST)
    assert result.exit_code == 0, result.output
    assert "Dry run: nothing was removed." in result.output
    assert "iot.delete_stream(streamId='fw-test')" in result.output
    assert "iot.update_certificate(" in result.output and "newStatus='INACTIVE'" in result.output
    assert leftovers() == before
    assert (tmp_path / "certs" / "sim-0.private.key").exists()
