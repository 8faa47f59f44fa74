"""The exact real-account call sequence of ``provisioner up`` (botocore Stubber: no AWS account is reachable here),
including the IAM trust and inline policy documents and the device policy; plus the retry rules (IAM propagation,
throttling) with an injected clock, and what a dry run plans."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from provisioner.aws import Api, Clients
from provisioner.errors import AwsError, Throttled
from provisioner.manifest import ManifestStore, load_manifest
from provisioner.pacing import Backoff
from provisioner.up import UpOptions, open_run, up

ACCOUNT = "111122223333"
REGION = "us-east-1"
RUN = "r1"
ROLE_NAME = "iot-stream-sim-stream-r1"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE_NAME}"
POLICY = "iot-stream-sim-device-r1"
KEY = "iot-stream-sim/r1/0/firmware-1048576-seed7-0.bin"
TAGS = [{"Key": "iot-stream-sim:run-id", "Value": RUN}]


class JsonDoc:
    """Equal to a JSON string that parses to ``doc`` (policy documents compared as documents, not as text)."""

    def __init__(self, doc: Any) -> None:
        self.doc = doc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and json.loads(other) == self.doc

    def __repr__(self) -> str:
        return f"JsonDoc({self.doc!r})"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Stubbed:
    """Four stubbed clients and the global order of the calls made on them."""

    def __init__(self) -> None:
        session = boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name=REGION)
        self.clients = {name: session.client(name) for name in ("s3", "iam", "iot", "sts")}
        self.stubbers = {name: Stubber(client) for name, client in self.clients.items()}
        self.order: list[str] = []
        for name, client in self.clients.items():
            client.meta.events.register(
                "provide-client-params", lambda model, _n=name, **_: self.order.append(f"{_n}.{model.name}")
            )
        self.clock = FakeClock()

    def api(self, *, dry_run: bool = False) -> Api:
        c = self.clients
        clients = Clients(s3=c["s3"], iam=c["iam"], iot=c["iot"], sts=c["sts"], region=REGION, endpoint_url=None)
        return Api(clients, dry_run=dry_run, tps=10, clock=self.clock, sleep=self.clock.sleep)

    def ok(self, service: str, method: str, response: dict[str, Any], params: dict[str, Any] | None = None) -> None:
        self.stubbers[service].add_response(method, response, params)

    def error(self, service: str, method: str, code: str, status: int, params: dict[str, Any] | None = None) -> None:
        self.stubbers[service].add_client_error(
            method, service_error_code=code, service_message=f"{code} message", http_status_code=status,
            expected_params=params,
        )  # fmt: skip


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubbed]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    s = Stubbed()
    for stubber in s.stubbers.values():
        stubber.activate()
    yield s
    for stubber in s.stubbers.values():
        stubber.deactivate()


TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "iot.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": ACCOUNT},
                "ArnLike": {"aws:SourceArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:*"},
            },
        }
    ],
}
READ_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": [f"arn:aws:s3:::fw-bucket/{KEY}"],
        }
    ],
}
STREAMS = "$aws/things/${iot:Connection.Thing.ThingName}/streams/*"
JOBS = "$aws/things/${iot:Connection.Thing.ThingName}/jobs/*"
DEVICE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:client/${{iot:Connection.Thing.ThingName}}",
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": [
                f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/{STREAMS}",
                f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/{JOBS}",
            ],
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": [
                f"arn:aws:iot:{REGION}:{ACCOUNT}:topicfilter/{STREAMS}",
                f"arn:aws:iot:{REGION}:{ACCOUNT}:topicfilter/{JOBS}",
            ],
        },
    ],
}
FIRMWARE = hashlib.shake_256(b"iot-stream-sim firmware:7:0").digest(1 << 20)


def _options(tmp_path: Path) -> UpOptions:
    return UpOptions(
        stream_id="fw-test",
        bucket="fw-bucket",
        generate=("1MiB",),
        seed=7,
        create_bucket=True,
        create_role=True,
        things=2,
        thing_prefix="sim",
        certs_dir=tmp_path / "certs",
    )


def _stub_reads(s: Stubbed) -> None:
    s.ok("sts", "get_caller_identity", {"UserId": "AIDA", "Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/a"})
    s.error("s3", "head_bucket", "404", 404, {"Bucket": "fw-bucket"})
    s.error("iot", "describe_stream", "ResourceNotFoundException", 404, {"streamId": "fw-test"})
    s.error("iot", "get_policy", "ResourceNotFoundException", 404, {"policyName": POLICY})
    s.ok(
        "iot",
        "describe_endpoint",
        {"endpointAddress": "abc123-ats.iot.us-east-1.amazonaws.com"},
        {"endpointType": "iot:Data-ATS"},
    )


def test_up_makes_exactly_these_calls_on_a_real_account(stubbed: Stubbed, tmp_path: Path) -> None:
    s = stubbed
    _stub_reads(s)
    s.ok("s3", "create_bucket", {"Location": "/fw-bucket"}, {"Bucket": "fw-bucket"})
    s.ok("s3", "put_bucket_tagging", {}, {"Bucket": "fw-bucket", "Tagging": {"TagSet": TAGS}})
    s.ok(
        "s3",
        "put_bucket_versioning",
        {},
        {"Bucket": "fw-bucket", "VersioningConfiguration": {"Status": "Enabled"}},
    )
    s.ok(
        "s3",
        "put_object",
        {"ETag": '"etag0"', "VersionId": "ver0"},
        {"Bucket": "fw-bucket", "Key": KEY, "Body": FIRMWARE, "ContentType": "application/octet-stream"},
    )
    role = {"Path": "/", "RoleName": ROLE_NAME, "RoleId": "AROA1234567890123456", "Arn": ROLE_ARN}
    s.ok(
        "iam",
        "create_role",
        {"Role": {**role, "CreateDate": "2025-01-01T00:00:00Z"}},
        {
            "RoleName": ROLE_NAME,
            "AssumeRolePolicyDocument": JsonDoc(TRUST_POLICY),
            "Description": "AWS IoT stream role of iot-stream-sim run r1",
            "Tags": TAGS,
        },
    )
    s.ok(
        "iam",
        "put_role_policy",
        {},
        {"RoleName": ROLE_NAME, "PolicyName": "iot-stream-sim-read-firmware", "PolicyDocument": JsonDoc(READ_POLICY)},
    )
    stream_arn = f"arn:aws:iot:{REGION}:{ACCOUNT}:stream/fw-test"
    s.ok(
        "iot",
        "create_stream",
        {"streamId": "fw-test", "streamArn": stream_arn, "streamVersion": 1},
        {
            "streamId": "fw-test",
            "description": "iot-stream-sim firmware stream [iot-stream-sim:run-id=r1]",
            "files": [{"fileId": 0, "s3Location": {"bucket": "fw-bucket", "key": KEY, "version": "ver0"}}],
            "roleArn": ROLE_ARN,
            "tags": TAGS,
        },
    )
    policy_arn = f"arn:aws:iot:{REGION}:{ACCOUNT}:policy/{POLICY}"
    s.ok(
        "iot",
        "create_policy",
        {"policyName": POLICY, "policyArn": policy_arn},
        {"policyName": POLICY, "policyDocument": JsonDoc(DEVICE_POLICY), "tags": TAGS},
    )
    s.ok(
        "iot",
        "list_things",
        {"things": []},
        {"attributeName": "iot-stream-sim:run-id", "attributeValue": RUN, "maxResults": 250},
    )
    for i in range(2):
        name, cert_id = f"sim-{i}", f"{i}" * 64
        cert_arn = f"arn:aws:iot:{REGION}:{ACCOUNT}:cert/{cert_id}"
        s.ok(
            "iot",
            "create_thing",
            {"thingName": name, "thingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{name}", "thingId": f"id{i}"},
            {"thingName": name, "attributePayload": {"attributes": {"iot-stream-sim:run-id": RUN}}},
        )
        s.ok(
            "iot",
            "create_keys_and_certificate",
            {
                "certificateArn": cert_arn,
                "certificateId": cert_id,
                "certificatePem": f"CERT {i}",
                "keyPair": {"PublicKey": "PUB", "PrivateKey": f"KEY {i}"},
            },
            {"setAsActive": True},
        )
        s.ok("iot", "attach_policy", {}, {"policyName": POLICY, "target": cert_arn})
        s.ok("iot", "attach_thing_principal", {}, {"thingName": name, "principal": cert_arn})

    api = s.api()
    store = open_run(api, tmp_path / "run.json", run_id=RUN)
    manifest = up(api, store, _options(tmp_path))

    for stubber in s.stubbers.values():
        stubber.assert_no_pending_responses()
    per_thing = ["iot.CreateThing", "iot.CreateKeysAndCertificate", "iot.AttachPolicy", "iot.AttachThingPrincipal"]
    assert s.order == [
        "sts.GetCallerIdentity",
        "s3.HeadBucket",
        "iot.DescribeStream",
        "iot.GetPolicy",
        "iot.DescribeEndpoint",
        "s3.CreateBucket",
        "s3.PutBucketTagging",
        "s3.PutBucketVersioning",
        "s3.PutObject",
        "iam.CreateRole",
        "iam.PutRolePolicy",
        "iot.CreateStream",
        "iot.CreatePolicy",
        "iot.ListThings",
        *per_thing,
        *per_thing,
    ]
    # Paced at 10 calls/s with the injected clock: 22 calls take 2.1 s of (virtual) sleeping.
    assert len(s.order) == 22
    assert sum(s.clock.slept) == pytest.approx(2.1)

    saved = load_manifest(tmp_path / "run.json")
    assert saved == manifest
    assert saved.firmware[0].version_id == "ver0" and saved.firmware[0].etag == "etag0"
    assert saved.firmware[0].sha256 == hashlib.sha256(FIRMWARE).hexdigest()
    assert saved.stream is not None and saved.stream.version == 1
    assert saved.mqtt is not None and (saved.mqtt.host, saved.mqtt.port) == (
        "abc123-ats.iot.us-east-1.amazonaws.com",
        8883,
    )
    assert saved.role is not None and saved.role.created and saved.role.arn == ROLE_ARN
    key = tmp_path / "certs" / "sim-1.private.key"
    assert key.read_text() == "KEY 1" and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "certs" / "sim-1.cert.pem").read_text() == "CERT 1"
    root = x509.load_pem_x509_certificate((tmp_path / "certs" / "AmazonRootCA1.pem").read_bytes())
    assert root.subject.rfc4514_string() == "CN=Amazon Root CA 1,O=Amazon,C=US"
    assert saved.mqtt.ca_path == tmp_path / "certs" / "AmazonRootCA1.pem"
    assert root.fingerprint(hashes.SHA256()).hex().startswith("8ecde688")
    assert [t.name for t in saved.things if t.complete] == ["sim-0", "sim-1"]


def test_dry_run_reads_but_plans_every_change(stubbed: Stubbed, tmp_path: Path) -> None:
    s = stubbed
    _stub_reads(s)  # only the reads are stubbed: any mutating call would fail the Stubber
    s.ok("iot", "list_things", {"things": []})
    api = s.api(dry_run=True)
    store = open_run(api, tmp_path / "run.json", run_id=RUN, dry_run=True)
    up(api, store, _options(tmp_path))
    for stubber in s.stubbers.values():
        stubber.assert_no_pending_responses()
    planned = [f"{c.service}.{c.operation}" for c in api.planned]
    per_thing = [
        "iot.create_thing",
        "iot.create_keys_and_certificate",
        "local.write_file",
        "local.write_file",
        "iot.attach_policy",
        "iot.attach_thing_principal",
    ]
    assert planned == [
        "s3.create_bucket",
        "s3.put_bucket_tagging",
        "s3.put_bucket_versioning",
        "s3.put_object",
        "iam.create_role",
        "iam.put_role_policy",
        "iot.create_stream",
        "local.write_file",
        "iot.create_policy",
        *per_thing,
        *per_thing,
    ]
    create_role = next(c for c in api.planned if c.operation == "create_role")
    assert json.loads(create_role.params["AssumeRolePolicyDocument"]) == TRUST_POLICY
    assert "<1048576 bytes>" in next(c for c in api.planned if c.operation == "put_object").render()
    assert not (tmp_path / "run.json").exists()
    assert not (tmp_path / "certs").exists()


def _create_stream_store(s: Stubbed, tmp_path: Path) -> tuple[Api, ManifestStore]:
    s.ok("sts", "get_caller_identity", {"UserId": "AIDA", "Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/a"})
    api = s.api()
    return api, open_run(api, tmp_path / "run.json", run_id=RUN)


def test_create_stream_waits_for_a_new_role_with_a_bound(stubbed: Stubbed, tmp_path: Path) -> None:
    from provisioner.streams import create_stream
    from provisioner.validation import StreamFileSpec

    s = stubbed
    api, store = _create_stream_store(s, tmp_path)
    message = f"Role {ROLE_ARN} cannot be assumed by iot.amazonaws.com"
    for _ in range(2):
        s.stubbers["iot"].add_client_error("create_stream", "InvalidRequestException", message, 400)
    s.ok(
        "iot", "create_stream", {"streamId": "fw", "streamArn": "arn:aws:iot:us-east-1:1:stream/fw", "streamVersion": 1}
    )
    files = [StreamFileSpec(file_id=0, bucket="fw-bucket", key="k", version_id="v")]
    backoff = Backoff(attempts=4, first=2.0, cap=10.0)
    record = create_stream(
        api, store, stream_id="fw", description="d", files=files, role_arn=ROLE_ARN, retry_role=True, backoff=backoff
    )
    assert record.version == 1
    retry_sleeps = [d for d in s.clock.slept if d >= 1.0]
    assert retry_sleeps == [2.0, 4.0]

    # Still not assumable after the bound: the error surfaces with a hint.
    for _ in range(4):
        s.stubbers["iot"].add_client_error("create_stream", "InvalidRequestException", message, 400)
    with pytest.raises(AwsError, match=r"cannot be assumed.*trust policy"):
        create_stream(
            api, store, stream_id="fw2", description="d", files=files, role_arn=ROLE_ARN, retry_role=True,
            backoff=backoff,
        )  # fmt: skip
    s.stubbers["iot"].assert_no_pending_responses()

    # A given role (retry_role=False) is not waited for.
    s.stubbers["iot"].add_client_error("create_stream", "InvalidRequestException", message, 400)
    before = len(s.clock.slept)
    with pytest.raises(AwsError, match="InvalidRequestException"):
        create_stream(api, store, stream_id="fw3", description="d", files=files, role_arn=ROLE_ARN, retry_role=False)
    assert [d for d in s.clock.slept[before:] if d >= 1.0] == []


def test_throttling_is_retried_then_reported(stubbed: Stubbed) -> None:
    s = stubbed
    api = s.api()
    s.stubbers["iot"].add_client_error("list_streams", "ThrottlingException", "Rate exceeded", 429)
    s.stubbers["iot"].add_client_error("list_streams", "ThrottlingException", "Rate exceeded", 429)
    s.ok("iot", "list_streams", {"streams": []})
    assert api.read(api.iot.list_streams)["streams"] == []
    assert [d for d in s.clock.slept if d >= 1.0] == [1.0, 2.0]
    for _ in range(6):
        s.stubbers["iot"].add_client_error("list_streams", "ThrottlingException", "Rate exceeded", 429)
    with pytest.raises(Throttled, match="lower --tps"):
        api.read(api.iot.list_streams)
    s.stubbers["iot"].assert_no_pending_responses()
