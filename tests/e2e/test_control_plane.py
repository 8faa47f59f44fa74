"""The control plane with real boto3 clients: moto's S3/IAM/IoT/STS, the stream API, and MotoCatalog.

One control plane serves the module; moto's state is process-global, so every test uses its own names (and
the paging test its own region) instead of resetting, and the reset test runs in a child process.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_sim.protocol import ErrorCode
from local_iot.catalog import CatalogError
from local_iot.control_plane import ControlPlane, ControlPlaneError
from local_iot.streams_backend import streams_backends

pytestmark = pytest.mark.e2e

TRUST_IOT = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlane]:
    with ControlPlane() as plane:
        yield plane


@pytest.fixture(scope="module")
def iot(cp: ControlPlane) -> Any:
    return cp.client("iot")


@pytest.fixture(scope="module")
def raw_iot(cp: ControlPlane) -> Any:
    """An iot client that sends whatever it is given, so the server's own validation is what answers."""
    return cp.client("iot", config=Config(parameter_validation=False))


@pytest.fixture(scope="module")
def s3(cp: ControlPlane) -> Any:
    return cp.client("s3")


@pytest.fixture(scope="module")
def iam(cp: ControlPlane) -> Any:
    return cp.client("iam")


@dataclass(frozen=True, kw_only=True, slots=True)
class Obj:
    bucket: str
    key: str
    version: str
    etag: str
    data: bytes


def put_object(s3: Any, *, versioned: bool = True, data: bytes | None = None) -> Obj:
    bucket = _uid("fw")
    s3.create_bucket(Bucket=bucket)
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    data = data if data is not None else uuid.uuid4().bytes * 64
    answer = s3.put_object(Bucket=bucket, Key="firmware.bin", Body=data)
    return Obj(
        bucket=bucket, key="firmware.bin", version=answer.get("VersionId", "null"), etag=answer["ETag"], data=data
    )


def make_role(iam: Any, *, trust: dict[str, Any] = TRUST_IOT, policy: dict[str, Any] | None = None) -> str:
    name = _uid("stream-role")
    arn: str = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    if policy is not None:
        iam.put_role_policy(RoleName=name, PolicyName="read", PolicyDocument=json.dumps(policy))
    return arn


def read_policy(resource: str, actions: tuple[str, ...] = ("s3:GetObject", "s3:GetObjectVersion")) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": resource}]}


def files(obj: Obj, *, pinned: bool = True, file_id: int = 0) -> list[dict[str, Any]]:
    location = {"bucket": obj.bucket, "key": obj.key}
    if pinned:
        location["version"] = obj.version
    return [{"fileId": file_id, "s3Location": location}]


ROLE = "arn:aws:iam::123456789012:role/stream-role"


# -- the stream API ------------------------------------------------------------------------------------------------


def test_create_then_describe(cp: ControlPlane, iot: Any, s3: Any) -> None:
    obj = put_object(s3)
    sid = _uid("fw")
    created = iot.create_stream(streamId=sid, description="firmware 1.0", files=files(obj), roleArn=ROLE)
    arn = f"arn:aws:iot:{cp.region}:{cp.account_id}:stream/{sid}"
    assert (created["streamId"], created["streamArn"], created["streamVersion"]) == (sid, arn, 1)
    assert created["description"] == "firmware 1.0"
    info = iot.describe_stream(streamId=sid)["streamInfo"]
    assert info["streamVersion"] == 1
    assert info["roleArn"] == ROLE
    assert info["files"] == files(obj)
    assert info["createdAt"] == info["lastUpdatedAt"]
    assert abs(info["createdAt"] - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)


def test_create_records_the_etag_of_each_file(cp: ControlPlane, iot: Any, s3: Any) -> None:
    pinned, current = put_object(s3), put_object(s3, versioned=False)
    sid = _uid("fw")
    iot.create_stream(
        streamId=sid, files=files(pinned, file_id=3) + files(current, pinned=False, file_id=7), roleArn=ROLE
    )
    record = cp.catalog.get_stream(sid)
    assert record is not None and record.version == 1
    first, second = record.file(3), record.file(7)
    assert first is not None and (first.version_id, first.etag) == (pinned.version, pinned.etag)
    assert second is not None and (second.version_id, second.etag) == (None, current.etag)
    assert record.file(0) is None


def test_duplicate_create_is_resource_already_exists(cp: ControlPlane, iot: Any, s3: Any) -> None:
    obj = put_object(s3)
    sid = _uid("fw")
    iot.create_stream(streamId=sid, files=files(obj), roleArn=ROLE)
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as caught:
        iot.create_stream(streamId=sid, files=files(obj), roleArn=ROLE)
    assert caught.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert caught.value.response["resourceId"] == sid
    assert caught.value.response["resourceArn"] == f"arn:aws:iot:{cp.region}:{cp.account_id}:stream/{sid}"


def test_update_bumps_the_version_and_keeps_what_is_omitted(cp: ControlPlane, iot: Any, s3: Any) -> None:
    old, new = put_object(s3), put_object(s3)
    sid = _uid("fw")
    iot.create_stream(streamId=sid, description="v1", files=files(old), roleArn=ROLE)
    updated = iot.update_stream(streamId=sid, files=files(new, file_id=1))
    assert updated["streamVersion"] == 2
    assert updated["description"] == "v1"
    info = iot.describe_stream(streamId=sid)["streamInfo"]
    assert info["files"] == files(new, file_id=1) and info["roleArn"] == ROLE
    assert info["lastUpdatedAt"] >= info["createdAt"]
    other_role = ROLE + "-2"
    assert iot.update_stream(streamId=sid, description="v3", roleArn=other_role)["streamVersion"] == 3
    info = iot.describe_stream(streamId=sid)["streamInfo"]
    assert (info["description"], info["roleArn"], info["files"]) == ("v3", other_role, files(new, file_id=1))
    record = cp.catalog.get_stream(sid)
    assert record is not None and record.files[0].etag == new.etag


def test_stream_version_stops_at_65535(cp: ControlPlane) -> None:
    iot = cp.client("iot", region_name="eu-north-1")
    iot.create_stream(streamId="old", files=GOOD_FILES, roleArn=ROLE)
    backend = streams_backends[cp.account_id]["eu-north-1"]
    for _ in range(65533):  # the same call the HTTP handler makes, without 65533 round trips
        backend.update_stream("old", description="again")
    assert iot.update_stream(streamId="old", description="last")["streamVersion"] == 65535
    with pytest.raises(iot.exceptions.LimitExceededException):
        iot.update_stream(streamId="old", description="one too many")
    assert iot.describe_stream(streamId="old")["streamInfo"]["streamVersion"] == 65535


def test_unknown_stream_is_resource_not_found(iot: Any) -> None:
    sid = _uid("missing")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_stream(streamId=sid)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_stream(streamId=sid, description="x")
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as caught:
        iot.delete_stream(streamId=sid)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_delete_removes_the_stream(cp: ControlPlane, iot: Any, s3: Any) -> None:
    obj = put_object(s3)
    sid = _uid("fw")
    iot.create_stream(streamId=sid, files=files(obj), roleArn=ROLE)
    assert iot.delete_stream(streamId=sid)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert cp.catalog.get_stream(sid) is None
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_stream(streamId=sid)
    assert iot.create_stream(streamId=sid, files=files(obj), roleArn=ROLE)["streamVersion"] == 1


def _file(file_id: Any = 0, bucket: Any = "fw-bucket", key: Any = "k", **extra: Any) -> dict[str, Any]:
    return {"fileId": file_id, "s3Location": {"bucket": bucket, "key": key, **extra}}


GOOD_FILES = [_file()]

INVALID_CREATES = {
    "stream id with a dot": {"streamId": "fw.1"},
    "stream id of 129 chars": {"streamId": "a" * 129},
    "stream id with a space": {"streamId": "fw 1"},
    "description of 2029 chars": {"description": "d" * 2029},
    "description with a NUL": {"description": "a\x00b"},
    "description with a newline": {"description": "line\nline"},
    "no files": {"files": []},
    "51 files": {"files": [_file(i) for i in range(51)]},
    "files missing": {"files": None},
    "file id 256": {"files": [_file(256)]},
    "file id -1": {"files": [_file(-1)]},
    "file id not an int": {"files": [_file("1")]},
    "duplicate file ids": {"files": [_file(4), _file(4, key="other")]},
    "no s3Location": {"files": [{"fileId": 0}]},
    "empty bucket": {"files": [_file(bucket="")]},
    "empty key": {"files": [_file(key="")]},
    "empty version": {"files": [_file(version="")]},
    "role arn of 19 chars": {"roleArn": "arn:aws:iam::1:role"},
    "role arn of 2049 chars": {"roleArn": "arn:aws:iam::123456789012:role/" + "r" * 2018},
    "role arn missing": {"roleArn": None},
    "tag key of 129 chars": {"tags": [{"Key": "k" * 129, "Value": "v"}]},
    "tag key with a #": {"tags": [{"Key": "a#b", "Value": "v"}]},
    "tag key with aws: prefix": {"tags": [{"Key": "aws:x", "Value": "v"}]},
    "tag value of 257 chars": {"tags": [{"Key": "k", "Value": "v" * 257}]},
    "duplicate tag keys": {"tags": [{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}]},
}


@pytest.mark.parametrize("change", INVALID_CREATES.values(), ids=INVALID_CREATES.keys())
def test_create_validation_is_invalid_request(raw_iot: Any, change: dict[str, Any]) -> None:
    request = {"streamId": _uid("fw"), "files": GOOD_FILES, "roleArn": ROLE, **change}
    request = {k: v for k, v in request.items() if v is not None}
    with pytest.raises(raw_iot.exceptions.InvalidRequestException) as caught:
        raw_iot.create_stream(**request)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert caught.value.response["Error"]["Message"]
    if "streamId" not in change:  # nothing was created
        with pytest.raises(raw_iot.exceptions.ResourceNotFoundException):
            raw_iot.describe_stream(streamId=request["streamId"])


def test_limits_at_the_edge_are_accepted(iot: Any) -> None:
    sid = "a" * 128
    answer = iot.create_stream(
        streamId=sid,
        description="é" * 2028,
        files=[_file(i) for i in range(49)] + [_file(255)],
        roleArn="arn:aws:iam::123456789012:role/" + "r" * 2017,
        tags=[{"Key": "k" * 128, "Value": "v" * 256}, {"Key": "run id: 7/a=b+c@d_e", "Value": ""}],
    )
    assert answer["streamVersion"] == 1
    assert len(iot.describe_stream(streamId=sid)["streamInfo"]["files"]) == 50
    iot.delete_stream(streamId=sid)


INVALID_UPDATES = {
    "no files": {"files": []},
    "duplicate file ids": {"files": [_file(1), _file(1)]},
    "role arn too short": {"roleArn": "arn:aws:iam::"},
    "description with a control char": {"description": "\x07"},
}


@pytest.mark.parametrize("change", INVALID_UPDATES.values(), ids=INVALID_UPDATES.keys())
def test_update_validation_is_invalid_request(iot: Any, raw_iot: Any, change: dict[str, Any]) -> None:
    sid = _uid("fw")
    iot.create_stream(streamId=sid, files=GOOD_FILES, roleArn=ROLE)
    with pytest.raises(raw_iot.exceptions.InvalidRequestException):
        raw_iot.update_stream(streamId=sid, **change)
    assert iot.describe_stream(streamId=sid)["streamInfo"]["streamVersion"] == 1


def test_bad_stream_id_in_describe_and_delete_is_invalid_request(raw_iot: Any) -> None:
    for call in (raw_iot.describe_stream, raw_iot.delete_stream):
        with pytest.raises(raw_iot.exceptions.InvalidRequestException):
            call(streamId="no.dots")


def test_list_streams_pages_in_creation_order(cp: ControlPlane) -> None:
    iot = cp.client("iot", region_name="ap-southeast-2")  # a region no other test uses: the list is exactly ours
    ids = [f"page-{i}" for i in range(7)]
    for i, sid in enumerate(ids):
        iot.create_stream(streamId=sid, description=f"n{i}", files=GOOD_FILES, roleArn=ROLE)
    first = iot.list_streams(maxResults=3, ascendingOrder=True)
    assert [s["streamId"] for s in first["streams"]] == ids[:3]
    assert first["streams"][0] == {
        "streamId": "page-0",
        "streamArn": f"arn:aws:iot:ap-southeast-2:{cp.account_id}:stream/page-0",
        "streamVersion": 1,
        "description": "n0",
    }
    second = iot.list_streams(maxResults=3, ascendingOrder=True, nextToken=first["nextToken"])
    third = iot.list_streams(maxResults=3, ascendingOrder=True, nextToken=second["nextToken"])
    assert [s["streamId"] for s in second["streams"] + third["streams"]] == ids[3:]
    assert "nextToken" not in third
    newest_first = iot.list_streams()
    assert [s["streamId"] for s in newest_first["streams"]] == ids[::-1]
    assert "nextToken" not in newest_first
    pages = iot.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 2})
    assert [s["streamId"] for page in pages for s in page["streams"]] == ids[::-1]
    iot.delete_stream(streamId="page-3")
    after_delete = iot.list_streams(maxResults=3, ascendingOrder=True, nextToken=first["nextToken"])
    assert [s["streamId"] for s in after_delete["streams"]] == ["page-4", "page-5", "page-6"]


def test_list_streams_default_page_is_25(cp: ControlPlane) -> None:
    iot = cp.client("iot", region_name="ca-central-1")
    for i in range(26):
        iot.create_stream(streamId=f"many-{i:02d}", files=GOOD_FILES, roleArn=ROLE)
    page = iot.list_streams(ascendingOrder=True)
    assert len(page["streams"]) == 25 and "nextToken" in page
    rest = iot.list_streams(ascendingOrder=True, nextToken=page["nextToken"])
    assert [s["streamId"] for s in rest["streams"]] == ["many-25"]


@pytest.mark.parametrize(
    "arguments", [{"maxResults": 0}, {"maxResults": 251}, {"nextToken": "not-a-token"}], ids=["0", "251", "token"]
)
def test_list_streams_validation(raw_iot: Any, arguments: dict[str, Any]) -> None:
    with pytest.raises(raw_iot.exceptions.InvalidRequestException):
        raw_iot.list_streams(**arguments)


def test_stream_tags(cp: ControlPlane, iot: Any) -> None:
    sid = _uid("fw")
    arn = iot.create_stream(streamId=sid, files=GOOD_FILES, roleArn=ROLE, tags=[{"Key": "run-id", "Value": "r1"}])[
        "streamArn"
    ]
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "run-id", "Value": "r1"}]
    iot.tag_resource(resourceArn=arn, tags=[{"Key": "owner", "Value": "ci"}, {"Key": "run-id", "Value": "r2"}])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [
        {"Key": "run-id", "Value": "r2"},
        {"Key": "owner", "Value": "ci"},
    ]
    iot.untag_resource(resourceArn=arn, tagKeys=["run-id"])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "owner", "Value": "ci"}]
    iot.update_stream(streamId=sid, description="tags survive updates")
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "owner", "Value": "ci"}]
    iot.delete_stream(streamId=sid)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.list_tags_for_resource(resourceArn=arn)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.tag_resource(resourceArn=arn, tags=[{"Key": "k", "Value": "v"}])
    iot.create_stream(streamId=sid, files=GOOD_FILES, roleArn=ROLE)
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == []


def test_tags_of_other_iot_resources(cp: ControlPlane, iot: Any) -> None:
    policy_arn = iot.create_policy(policyName=_uid("p"), policyDocument=json.dumps(read_policy("*")))["policyArn"]
    iot.tag_resource(resourceArn=policy_arn, tags=[{"Key": "run-id", "Value": "r9"}])
    assert iot.list_tags_for_resource(resourceArn=policy_arn)["tags"] == [{"Key": "run-id", "Value": "r9"}]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_tags_for_resource(resourceArn="not-an-arn")


def test_reset_clears_streams_and_moto_state() -> None:
    script = """
from local_iot.control_plane import ControlPlane
with ControlPlane() as cp:
    iot, s3 = cp.client("iot"), cp.client("s3")
    s3.create_bucket(Bucket="reset-bucket")
    iot.create_stream(streamId="s", files=[{"fileId": 0, "s3Location": {"bucket": "b", "key": "k"}}],
                      roleArn="arn:aws:iam::123456789012:role/r")
    before = (len(iot.list_streams()["streams"]), len(s3.list_buckets()["Buckets"]), cp.catalog.get_stream("s") is None)
    cp.reset()
    after = (len(iot.list_streams()["streams"]), len(s3.list_buckets()["Buckets"]), cp.catalog.get_stream("s") is None)
    iot.create_stream(streamId="s", files=[{"fileId": 0, "s3Location": {"bucket": "b", "key": "k"}}],
                      roleArn="arn:aws:iam::123456789012:role/r")
    print(before, after, iot.describe_stream(streamId="s")["streamInfo"]["streamVersion"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "(1, 1, False) (0, 0, True) 1"


# -- moto's own services through the same endpoint -----------------------------------------------------------------


def test_s3_versioned_bucket(s3: Any) -> None:
    obj = put_object(s3)
    second = s3.put_object(Bucket=obj.bucket, Key=obj.key, Body=b"second")
    assert second["VersionId"] != obj.version
    assert s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read() == b"second"
    assert s3.get_object(Bucket=obj.bucket, Key=obj.key, VersionId=obj.version)["Body"].read() == obj.data
    assert s3.get_bucket_versioning(Bucket=obj.bucket)["Status"] == "Enabled"


def test_iam_role_and_sts_identity(cp: ControlPlane, iam: Any) -> None:
    arn = make_role(iam, policy=read_policy("arn:aws:s3:::b/*"))
    name = arn.rsplit("/", 1)[1]
    assert arn == f"arn:aws:iam::{cp.account_id}:role/{name}"
    assert iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"] == TRUST_IOT
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == ["read"]
    assert cp.client("sts").get_caller_identity()["Account"] == cp.account_id == "123456789012"


def _certificate(subject: str, issuer_key: Any, issuer: x509.Name | None, *, ca: bool) -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key or key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key


def test_iot_thing_with_ca_signed_certificate_and_policy(iot: Any) -> None:
    ca_pem, ca_key = _certificate("local-iot test CA", None, None, ca=True)
    ca_name = x509.load_pem_x509_certificate(ca_pem.encode()).subject
    thing = _uid("sim")
    device_pem, _ = _certificate(thing, ca_key, ca_name, ca=False)
    ca_id = iot.register_ca_certificate(caCertificate=ca_pem, setAsActive=True)["certificateId"]
    registered = iot.register_certificate(certificatePem=device_pem, caCertificatePem=ca_pem, setAsActive=True)
    der = x509.load_pem_x509_certificate(device_pem.encode()).public_bytes(serialization.Encoding.DER)
    assert registered["certificateId"] == hashlib.sha256(der).hexdigest()  # AWS's certificate id
    description = iot.describe_certificate(certificateId=registered["certificateId"])["certificateDescription"]
    assert description["status"] == "ACTIVE" and description["certificatePem"] == device_pem
    by_ca = iot.list_certificates_by_ca(caCertificateId=ca_id)["certificates"]
    assert [c["certificateId"] for c in by_ca] == [registered["certificateId"]]
    iot.create_thing(thingName=thing)
    policy_name = _uid("device-policy")
    prefix = "arn:aws:iot:us-east-1:123456789012"
    iot.create_policy(
        policyName=policy_name,
        policyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{prefix}:client/${{iot:ClientId}}"},
                    {
                        "Effect": "Allow",
                        "Action": ["iot:Publish", "iot:Receive"],
                        "Resource": f"{prefix}:topic/$aws/things/${{iot:Connection.Thing.ThingName}}/streams/*",
                    },
                ],
            }
        ),
    )
    iot.attach_policy(policyName=policy_name, target=registered["certificateArn"])
    iot.attach_thing_principal(thingName=thing, principal=registered["certificateArn"])
    assert iot.list_thing_principals(thingName=thing)["principals"] == [registered["certificateArn"]]
    attached = iot.list_attached_policies(target=registered["certificateArn"])["policies"]
    assert [p["policyName"] for p in attached] == [policy_name]
    without_ca, _ = _certificate(_uid("sim"), ca_key, ca_name, ca=False)
    assert iot.register_certificate_without_ca(certificatePem=without_ca, status="ACTIVE")["certificateId"]


def test_describe_endpoint_is_a_placeholder(iot: Any) -> None:
    address = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert address.endswith("-ats.iot.us-east-1.amazonaws.com")  # moto's invented host: use local-iot.json instead


def test_control_plane_lifecycle_errors() -> None:
    plane = ControlPlane()
    with pytest.raises(ControlPlaneError):
        _ = plane.endpoint_url
    with plane:
        taken = plane.port
        with pytest.raises(ControlPlaneError, match="choose another port"):
            ControlPlane(port=taken).start()
        assert plane.environment()["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{taken}"
    plane.stop()  # stopping twice is harmless


def test_unknown_aws_profile_is_a_clear_start_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(ControlPlaneError, match="unset it"):
        ControlPlane().start()


# -- MotoCatalog ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Setup:
    sid: str
    obj: Obj
    role: str


def setup_stream(
    iot: Any,
    s3: Any,
    iam: Any,
    *,
    pinned: bool = True,
    versioned: bool = True,
    trust: dict[str, Any] = TRUST_IOT,
    policy: dict[str, Any] | None = None,
) -> Setup:
    obj = put_object(s3, versioned=versioned)
    role = make_role(iam, trust=trust, policy=policy or read_policy(f"arn:aws:s3:::{obj.bucket}/*"))
    sid = _uid("fw")
    iot.create_stream(streamId=sid, files=files(obj, pinned=pinned), roleArn=role)
    return Setup(sid=sid, obj=obj, role=role)


def check(cp: ControlPlane, sid: str) -> None:
    record = cp.catalog.get_stream(sid)
    assert record is not None
    cp.catalog.check_access(record, record.files[0])


def rejected(cp: ControlPlane, sid: str) -> ErrorCode:
    with pytest.raises(CatalogError) as caught:
        check(cp, sid)
    assert caught.value.message
    return caught.value.code


def test_catalog_allows_a_good_role_and_reads_the_pinned_version(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    setup = setup_stream(iot, s3, iam)
    check(cp, setup.sid)
    record = cp.catalog.get_stream(setup.sid)
    assert record is not None
    assert cp.catalog.read(record.files[0]) == setup.obj.data
    assert cp.catalog.get_stream(_uid("missing")) is None


def test_catalog_missing_role_is_unauthorized(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    setup = setup_stream(iot, s3, iam)
    name = setup.role.rsplit("/", 1)[1]
    iam.delete_role_policy(RoleName=name, PolicyName="read")
    iam.delete_role(RoleName=name)
    assert rejected(cp, setup.sid) is ErrorCode.UNAUTHORIZED


TRUSTS = {
    "lambda only": (
        {"Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:*"}]},
        False,
    ),
    "iot but wrong action": (
        {"Statement": [{"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:TagSession"}]},
        False,
    ),
    "source account condition of another account": (
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": ["lambda.amazonaws.com", "iot.amazonaws.com"]},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"aws:SourceAccount": "999999999999"}},
                }
            ]
        },
        False,
    ),
    "source account and arn conditions that match": (
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "iot.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                    "Condition": {
                        "StringEquals": {"aws:SourceAccount": "123456789012"},
                        "ArnLike": {"aws:SourceArn": "arn:aws:iot:us-east-1:123456789012:*"},
                    },
                }
            ]
        },
        True,
    ),
    "allow then deny": (
        {
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"},
                {"Effect": "Deny", "Principal": "*", "Action": "sts:*"},
            ]
        },
        False,
    ),
}


@pytest.mark.parametrize(("trust", "allowed"), TRUSTS.values(), ids=TRUSTS.keys())
def test_catalog_evaluates_the_trust_policy(
    cp: ControlPlane, iot: Any, s3: Any, iam: Any, trust: dict[str, Any], allowed: bool
) -> None:
    setup = setup_stream(iot, s3, iam, trust=trust)
    if allowed:
        check(cp, setup.sid)
    else:
        assert rejected(cp, setup.sid) is ErrorCode.UNAUTHORIZED


PERMISSIONS = {
    "no s3 permission": (("s3:ListBucket",), "arn:aws:s3:::{bucket}/*", True, False),
    "other bucket": (("s3:GetObject*",), "arn:aws:s3:::other-bucket/*", False, False),
    "wildcard action on exact object": (("s3:Get*",), "arn:aws:s3:::{bucket}/firmware.bin", True, True),
    "GetObject only, pinned": (("s3:GetObject",), "arn:aws:s3:::{bucket}/*", True, False),
    "GetObject only, unpinned": (("s3:GetObject",), "arn:aws:s3:::{bucket}/*", False, True),
}


@pytest.mark.parametrize(("actions", "resource", "pinned", "allowed"), PERMISSIONS.values(), ids=PERMISSIONS.keys())
def test_catalog_evaluates_the_role_permissions(
    cp: ControlPlane, iot: Any, s3: Any, iam: Any, actions: tuple[str, ...], resource: str, pinned: bool, allowed: bool
) -> None:
    obj = put_object(s3)
    role = make_role(iam, policy=read_policy(resource.format(bucket=obj.bucket), actions))
    sid = _uid("fw")
    iot.create_stream(streamId=sid, files=files(obj, pinned=pinned), roleArn=role)
    if allowed:
        check(cp, sid)
    else:
        assert rejected(cp, sid) is ErrorCode.UNAUTHORIZED


def test_catalog_reads_attached_managed_policies(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    obj = put_object(s3)
    role = make_role(iam)
    document = json.dumps(read_policy(f"arn:aws:s3:::{obj.bucket}/*"))
    policy_arn = iam.create_policy(PolicyName=_uid("read"), PolicyDocument=document)["Policy"]["Arn"]
    sid = _uid("fw")
    iot.create_stream(streamId=sid, files=files(obj), roleArn=role)
    assert rejected(cp, sid) is ErrorCode.UNAUTHORIZED
    iam.attach_role_policy(RoleName=role.rsplit("/", 1)[1], PolicyArn=policy_arn)
    check(cp, sid)


def test_catalog_deleted_object_is_resource_not_found(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    unversioned = setup_stream(iot, s3, iam, versioned=False, pinned=False)
    s3.delete_object(Bucket=unversioned.obj.bucket, Key=unversioned.obj.key)
    assert rejected(cp, unversioned.sid) is ErrorCode.RESOURCE_NOT_FOUND
    pinned = setup_stream(iot, s3, iam)
    s3.delete_object(Bucket=pinned.obj.bucket, Key=pinned.obj.key, VersionId=pinned.obj.version)
    assert rejected(cp, pinned.sid) is ErrorCode.RESOURCE_NOT_FOUND
    record = cp.catalog.get_stream(pinned.sid)
    assert record is not None
    with pytest.raises(CatalogError) as caught:
        cp.catalog.read(record.files[0])
    assert caught.value.code is ErrorCode.RESOURCE_NOT_FOUND
    marker = setup_stream(iot, s3, iam, pinned=False)
    s3.delete_object(Bucket=marker.obj.bucket, Key=marker.obj.key)  # a delete marker becomes the current version
    assert rejected(cp, marker.sid) is ErrorCode.RESOURCE_NOT_FOUND


def test_catalog_overwritten_unpinned_object_is_etag_mismatch(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    setup = setup_stream(iot, s3, iam, pinned=False)
    record = cp.catalog.get_stream(setup.sid)
    assert record is not None
    cp.catalog.overwrite_object(record.files[0], b"new firmware")
    assert rejected(cp, setup.sid) is ErrorCode.ETAG_MISMATCH
    with pytest.raises(CatalogError) as caught:
        cp.catalog.read(record.files[0])
    assert caught.value.code is ErrorCode.ETAG_MISMATCH
    assert s3.get_object(Bucket=setup.obj.bucket, Key=setup.obj.key)["Body"].read() == b"new firmware"
    assert cp.catalog.bump_stream_version(setup.sid) == 2  # re-records the ETag of the current object
    check(cp, setup.sid)
    bumped = cp.catalog.get_stream(setup.sid)
    assert bumped is not None and cp.catalog.read(bumped.files[0]) == b"new firmware"
    assert iot.describe_stream(streamId=setup.sid)["streamInfo"]["streamVersion"] == 2


def test_catalog_pinned_version_survives_an_overwrite(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    setup = setup_stream(iot, s3, iam)
    record = cp.catalog.get_stream(setup.sid)
    assert record is not None
    cp.catalog.overwrite_object(record.files[0], b"newer")
    check(cp, setup.sid)
    assert cp.catalog.read(record.files[0]) == setup.obj.data
    versions = s3.list_object_versions(Bucket=setup.obj.bucket)["Versions"]
    assert len(versions) == 2


def test_catalog_object_created_after_the_stream(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    bucket = _uid("fw")
    s3.create_bucket(Bucket=bucket)
    role = make_role(iam, policy=read_policy(f"arn:aws:s3:::{bucket}/*"))
    sid = _uid("fw")
    iot.create_stream(streamId=sid, files=[_file(bucket=bucket, key="late.bin")], roleArn=role)
    assert rejected(cp, sid) is ErrorCode.RESOURCE_NOT_FOUND
    s3.put_object(Bucket=bucket, Key="late.bin", Body=b"late")
    assert rejected(cp, sid) is ErrorCode.ETAG_MISMATCH
    iot.update_stream(streamId=sid, files=[_file(bucket=bucket, key="late.bin")])
    check(cp, sid)


def test_catalog_bump_of_unknown_stream(cp: ControlPlane) -> None:
    with pytest.raises(CatalogError) as caught:
        cp.catalog.bump_stream_version(_uid("missing"))
    assert caught.value.code is ErrorCode.RESOURCE_NOT_FOUND


def test_catalog_from_another_thread_sees_whole_updates(cp: ControlPlane, iot: Any, s3: Any, iam: Any) -> None:
    setup = setup_stream(iot, s3, iam)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                record = cp.catalog.get_stream(setup.sid)
                assert record is not None and record.files[0].etag == setup.obj.etag
                cp.catalog.check_access(record, record.files[0])
                seen.append(record.version)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            iot.update_stream(streamId=setup.sid, files=files(setup.obj))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    assert seen == sorted(seen) and seen and seen[-1] <= 21
    record = cp.catalog.get_stream(setup.sid)
    assert record is not None and record.version == 21
