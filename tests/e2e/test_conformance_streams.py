"""Conformance, docs/protocol.md sections 1 and 4: codes that depend on the control plane, changed through boto3.

Roles deleted or unable to read, S3 objects deleted or overwritten, streams updated or deleted: each is done with
a real boto3 client against the emulated control plane while a raw paho client watches what a device would get.
Also the device ACL over mutual TLS (docs/protocol.md 1, device policy). Rule -> test: docs/conformance.md.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from local_iot.runner import LocalIot

from .conformance_client import Answer, RawClient, StreamProbe, encode, expect_blocks, expect_rejection

pytestmark = pytest.mark.e2e

THING = "conf-st-thing"
BUCKET = "conf-st-bucket"
HEALTHY = "conf_st_ok"
FORMATS = ("cbor", "json")
DATA = random.Random(11).randbytes(5_000)  # 20 blocks of 256 B, the last one 136 B
READ = ("s3:GetObject", "s3:GetObjectVersion")
IOT_TRUST: dict[str, Any] = {"Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}


def _document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **s} for s in statements]})


class World:
    """The control plane through boto3 (one bucket, roles and streams of this module) and the watching client."""

    def __init__(self, iot: LocalIot, client: RawClient) -> None:
        self.iot = iot
        self.s3, self.iam, self.control = iot.client("s3"), iot.client("iam"), iot.client("iot")
        self.client = client
        self.s3.create_bucket(Bucket=BUCKET)
        self.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        self.good_role = self.role("conf-st-good")
        self.healthy = self.stream(HEALTHY)

    def role(self, name: str, trust: dict[str, Any] = IOT_TRUST, actions: tuple[str, ...] = READ) -> str:
        arn: str = self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=_document(trust))["Role"]["Arn"]
        self.allow(name, actions)
        return arn

    def allow(self, role_name: str, actions: tuple[str, ...]) -> None:
        """Replace the role's inline policy: ``actions`` on every object of the bucket."""
        policy = _document({"Action": list(actions), "Resource": f"arn:aws:s3:::{BUCKET}/*"})
        self.iam.put_role_policy(RoleName=role_name, PolicyName="read", PolicyDocument=policy)

    def delete_role(self, name: str) -> None:
        self.iam.delete_role_policy(RoleName=name, PolicyName="read")
        self.iam.delete_role(RoleName=name)

    def stream(
        self, stream_id: str, data: bytes = DATA, *, role_arn: str | None = None, pin: bool = True
    ) -> StreamProbe:
        """Upload ``data`` as ``<stream_id>.bin``, create the stream (file 0) and watch it."""
        key = f"{stream_id}.bin"
        version = self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)["VersionId"]
        location = {"bucket": BUCKET, "key": key} | ({"version": version} if pin else {})
        self.control.create_stream(
            streamId=stream_id,
            files=[{"fileId": 0, "s3Location": location}],
            roleArn=role_arn or self.good_role,
            description=f"conformance {stream_id}",
        )
        return self.client.watch(THING, stream_id)

    def exchange(self, probe: StreamProbe, operation: str, fmt: str, doc: dict[str, Any]) -> list[Answer]:
        """Publish one request on ``probe``'s stream; every answer it got (a marker on a healthy stream ends it)."""
        probe.send(operation, fmt, encode(fmt, doc))
        assert self.healthy.until_marker(f"after-{probe.stream_id}") == []
        return probe.drain()  # one connection, one service: answers to the request came before the marker's

    def rejected(self, probe: StreamProbe, operation: str, fmt: str, doc: dict[str, Any], code: str) -> str:
        """Assert exactly one rejection with ``code`` (echoing the request's token); returns its message."""
        answers = self.exchange(probe, operation, fmt, doc)
        assert len(answers) == 1, [a.brief() for a in answers]
        return expect_rejection(answers[0], fmt=fmt, code=code, token=doc.get("c"))

    def served(self, probe: StreamProbe, fmt: str, doc: dict[str, Any], indices: list[int], data: bytes = DATA) -> None:
        answers = self.exchange(probe, "get", fmt, doc)
        expect_blocks(
            answers, fmt=fmt, data=data, block_size=doc["l"], indices=indices, file_id=doc["f"], token=doc.get("c")
        )

    def described(self, probe: StreamProbe, fmt: str) -> dict[str, Any]:
        answers = self.exchange(probe, "describe", fmt, {"c": "d"})
        assert [a.operation for a in answers] == ["description"], [a.brief() for a in answers]
        doc: dict[str, Any] = answers[0].doc
        return doc


@pytest.fixture(scope="module")
def world(local_iot: LocalIot) -> Iterator[World]:
    with RawClient.plain(local_iot.info, "conf-st-client") as client:
        yield World(local_iot, client)


GET = {"c": "tk", "f": 0, "l": 256, "o": 2, "n": 2}


# ---------------------------------------------------------------------------------------------- Unauthorized


def test_unauthorized_when_the_role_is_deleted(world: World) -> None:
    probe = world.stream("conf_st_role_gone", role_arn=world.role("conf-st-role-gone"))
    world.served(probe, "cbor", GET, [2, 3])  # read once: the cached bytes must not outlive the role
    world.delete_role("conf-st-role-gone")
    for fmt in FORMATS:
        world.rejected(probe, "get", fmt, GET, "Unauthorized")
        world.rejected(probe, "describe", fmt, {"c": "d"}, "Unauthorized")


@pytest.mark.parametrize("fmt", FORMATS)
def test_unauthorized_when_the_trust_policy_does_not_name_iot(world: World, fmt: str) -> None:
    trust = {"Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    probe = world.stream(f"conf_st_trust_{fmt}", role_arn=world.role(f"conf-st-trust-{fmt}", trust=trust))
    world.rejected(probe, "get", fmt, GET, "Unauthorized")
    world.rejected(probe, "describe", fmt, {"c": "d"}, "Unauthorized")


def test_trust_conditions_on_source_account_and_arn(world: World) -> None:
    """The confused-deputy conditions AWS recommends: they must match the stream's account and ARN."""
    account, region = world.iot.info["account_id"], world.iot.info["region"]
    right = IOT_TRUST | {
        "Condition": {
            "StringEquals": {"aws:SourceAccount": account},
            "ArnLike": {"aws:SourceArn": f"arn:aws:iot:{region}:{account}:*"},
        }
    }
    wrong = IOT_TRUST | {"Condition": {"StringEquals": {"aws:SourceAccount": "111122223333"}}}
    good = world.stream("conf_st_cond_ok", role_arn=world.role("conf-st-cond-ok", trust=right))
    bad = world.stream("conf_st_cond_bad", role_arn=world.role("conf-st-cond-bad", trust=wrong))
    world.served(good, "json", GET, [2, 3])
    world.rejected(bad, "get", "json", GET, "Unauthorized")


def test_unauthorized_without_s3_get_object(world: World) -> None:
    probe = world.stream("conf_st_noread", role_arn=world.role("conf-st-noread"))
    world.served(probe, "cbor", GET, [2, 3])
    world.allow("conf-st-noread", ("s3:ListBucket", "s3:GetObjectVersion"))  # everything but GetObject
    for fmt in FORMATS:
        world.rejected(probe, "get", fmt, GET, "Unauthorized")
    world.allow("conf-st-noread", READ)  # permission restored: served again
    world.served(probe, "json", GET, [2, 3])


def test_pinned_version_needs_get_object_version(world: World) -> None:
    pinned = world.stream("conf_st_nover", role_arn=world.role("conf-st-nover", actions=("s3:GetObject",)))
    world.rejected(pinned, "get", "cbor", GET, "Unauthorized")


# ------------------------------------------------------------------------------------------ ResourceNotFound


@pytest.mark.parametrize("pin", [False, True], ids=["current-version", "pinned-version"])
def test_resource_not_found_when_the_object_is_deleted(world: World, pin: bool) -> None:
    stream_id = f"conf_st_gone_{int(pin)}"
    probe = world.stream(stream_id, pin=pin)
    world.served(probe, "cbor", GET, [2, 3])  # cached now
    key = f"{stream_id}.bin"
    if pin:  # the pinned version itself is deleted for good
        version = world.control.describe_stream(streamId=stream_id)["streamInfo"]["files"][0]["s3Location"]["version"]
        world.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version)
    else:  # a delete marker becomes the current version
        world.s3.delete_object(Bucket=BUCKET, Key=key)
    for fmt in FORMATS:
        world.rejected(probe, "get", fmt, GET, "ResourceNotFound")
        world.rejected(probe, "describe", fmt, {"c": "d"}, "ResourceNotFound")


def test_resource_not_found_after_delete_stream(world: World) -> None:
    probe = world.stream("conf_st_deleted")
    world.served(probe, "json", GET, [2, 3])
    world.control.delete_stream(streamId="conf_st_deleted")
    for fmt in FORMATS:
        world.rejected(probe, "get", fmt, GET, "ResourceNotFound")
        world.rejected(probe, "describe", fmt, {}, "ResourceNotFound")


# ------------------------------------------------------------------------------------------- VersionMismatch


def test_version_mismatch_follows_update_stream(world: World) -> None:
    probe = world.stream("conf_st_version")
    for fmt in FORMATS:
        world.served(probe, fmt, GET | {"s": 1}, [2, 3])
        world.rejected(probe, "get", fmt, GET | {"s": 2}, "VersionMismatch")
        world.rejected(probe, "get", fmt, GET | {"s": 0}, "VersionMismatch")
    assert world.control.update_stream(streamId="conf_st_version", description="v2")["streamVersion"] == 2
    for fmt in FORMATS:
        assert world.described(probe, fmt)["s"] == 2
        world.rejected(probe, "get", fmt, GET | {"s": 1}, "VersionMismatch")
        world.served(probe, fmt, GET | {"s": 2}, [2, 3])
        world.served(probe, fmt, GET, [2, 3])  # no s: never checked
    # a new file list (file 1 added) is version 3, and the description lists the new file's size
    second = bytes(300)
    world.s3.put_object(Bucket=BUCKET, Key="conf_st_version-1.bin", Body=second)
    files = world.control.describe_stream(streamId="conf_st_version")["streamInfo"]["files"]
    files.append({"fileId": 1, "s3Location": {"bucket": BUCKET, "key": "conf_st_version-1.bin"}})
    assert world.control.update_stream(streamId="conf_st_version", files=files)["streamVersion"] == 3
    description = world.described(probe, "cbor")
    assert (description["s"], description["r"]) == (3, [{"f": 0, "z": len(DATA)}, {"f": 1, "z": 300}])
    world.rejected(probe, "get", "cbor", GET | {"s": 2}, "VersionMismatch")
    world.served(probe, "cbor", {"f": 1, "l": 256, "o": 1, "n": 1, "s": 3}, [1], data=second)


def test_absent_version_is_never_checked(world: World) -> None:
    probe = world.stream("conf_st_noversion")
    for _ in range(3):
        world.control.update_stream(streamId="conf_st_noversion", description="bumped")
    for fmt in FORMATS:
        world.served(probe, fmt, GET, [2, 3])
        world.rejected(probe, "get", fmt, GET | {"s": 1}, "VersionMismatch")


# ---------------------------------------------------------------------------------------------- ETagMismatch


def test_etag_mismatch_when_an_unpinned_object_is_overwritten(world: World) -> None:
    probe = world.stream("conf_st_etag", pin=False)
    world.served(probe, "cbor", GET, [2, 3])
    new = DATA[:-1] + bytes([DATA[-1] ^ 0xFF])  # same size, one byte differs
    world.s3.put_object(Bucket=BUCKET, Key="conf_st_etag.bin", Body=new)
    for fmt in FORMATS:
        world.rejected(probe, "get", fmt, GET, "ETagMismatch")
        world.rejected(probe, "describe", fmt, {"c": "d"}, "ETagMismatch")
    # update_stream records the current ETag again: the new bytes are served
    files = world.control.describe_stream(streamId="conf_st_etag")["streamInfo"]["files"]
    world.control.update_stream(streamId="conf_st_etag", files=files)
    world.served(probe, "json", {"f": 0, "l": 256, "o": 19, "n": 1}, [19], data=new)


def test_rewriting_identical_bytes_is_not_a_change(world: World) -> None:
    """S3's ETag of a simple PUT is the MD5 of the bytes: the same bytes again keep the recorded ETag."""
    probe = world.stream("conf_st_same", pin=False)
    world.s3.put_object(Bucket=BUCKET, Key="conf_st_same.bin", Body=DATA)
    world.served(probe, "cbor", GET, [2, 3])


def test_pinned_version_survives_an_overwrite(world: World) -> None:
    probe = world.stream("conf_st_pinned")
    world.s3.put_object(Bucket=BUCKET, Key="conf_st_pinned.bin", Body=bytes(len(DATA)))
    for fmt in FORMATS:
        world.served(probe, fmt, GET, [2, 3])  # the recorded version's bytes, not the zeros


# ---------------------------------------------------------------------------------------- check order (state)


@pytest.fixture(scope="module")
def broken(world: World) -> dict[str, StreamProbe]:
    """Streams with two faults each, made through boto3."""
    role_gone = world.stream("conf_st_o_role", role_arn=world.role("conf-st-o-role"))
    world.delete_role("conf-st-o-role")
    both_gone = world.stream("conf_st_o_both", role_arn=world.role("conf-st-o-both"), pin=False)
    world.delete_role("conf-st-o-both")
    world.s3.delete_object(Bucket=BUCKET, Key="conf_st_o_both.bin")
    object_gone = world.stream("conf_st_o_obj", pin=False)
    world.s3.delete_object(Bucket=BUCKET, Key="conf_st_o_obj.bin")
    changed = world.stream("conf_st_o_etag", pin=False)
    world.s3.put_object(Bucket=BUCKET, Key="conf_st_o_etag.bin", Body=b"changed")
    changed_noread = world.stream("conf_st_o_etag_nr", role_arn=world.role("conf-st-o-etag-nr"), pin=False)
    world.allow("conf-st-o-etag-nr", ("s3:ListBucket",))
    world.s3.put_object(Bucket=BUCKET, Key="conf_st_o_etag_nr.bin", Body=b"changed")
    return {
        "role": role_gone,
        "both": both_gone,
        "object": object_gone,
        "etag": changed,
        "etag-noread": changed_noread,
    }


PAST_END = {"c": "pe", "f": 0, "l": 256, "o": 20, "n": 1}
ORDER = [
    ("version-before-role", "role", GET | {"s": 7}, "VersionMismatch"),
    ("file-id-before-role", "role", GET | {"f": 3}, "ResourceNotFound"),
    ("role-before-range", "role", PAST_END, "Unauthorized"),
    ("role-before-object", "both", GET, "Unauthorized"),
    ("role-before-etag", "etag-noread", GET, "Unauthorized"),
    ("object-before-range", "object", PAST_END, "ResourceNotFound"),
    ("etag-before-range", "etag", PAST_END, "ETagMismatch"),
    ("version-before-etag", "etag", GET | {"s": 5}, "VersionMismatch"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("name", "stream", "doc", "code"), ORDER, ids=[o[0] for o in ORDER])
def test_check_order_with_stream_state(
    world: World, broken: dict[str, StreamProbe], fmt: str, name: str, stream: str, doc: dict[str, Any], code: str
) -> None:
    world.rejected(broken[stream], "get", fmt, doc, code)


# ------------------------------------------------------------------------------------------ ACL, mutual TLS


def test_device_cannot_receive_or_request_another_things_blocks(world: World, tmp_path: Path) -> None:
    """Device A (certificate CN conf-thing-a) over mutual TLS: its own stream works, thing B's is closed to it."""
    paths = world.iot.issue_device("conf-thing-a", tmp_path)
    as_b = world.client.watch("conf-thing-b", HEALTHY)  # the plain listener has no ACL: it plays device B
    with RawClient.mutual_tls(world.iot.info, "conf-thing-a", paths.cert_path, paths.key_path) as device_a:
        own = device_a.watch("conf-thing-a", HEALTHY)
        spy = device_a.watch("conf-thing-b", HEALTHY, require_grant=False)
        assert all(code.is_failure for code in spy.granted)  # refused in the SUBACK, as AWS does
        # A downloads its own blocks over TLS exactly like over the plain listener
        answers = own.ask("get", "cbor", cbor2.dumps({"c": "a", "f": 0, "l": 512, "o": 1, "n": 3}), 3)
        expect_blocks(answers, fmt="cbor", data=DATA, block_size=512, indices=[1, 2, 3], token="a")
        # B asks for blocks; B gets them, A (subscribed to B's topics) must not
        answers = as_b.ask("get", "cbor", cbor2.dumps({"c": "b", "f": 0, "l": 512, "o": 0, "n": 4}), 4)
        expect_blocks(answers, fmt="cbor", data=DATA, block_size=512, indices=[0, 1, 2, 3], token="b")
        # A's own request answered after B's blocks were routed: had A been sent any, they would be queued first
        assert own.until_marker("a-marker") == []
        assert spy.drain() == [], "device A received device B's answers"
        # A publishing a request on B's topic: the broker closes A's connection (as AWS does on a policy
        # violation) and the request never reaches the service
        forged = cbor2.dumps({"c": "a-as-b", "f": 0, "l": 512, "n": 1})
        device_a.publish(spy.topic("get", "cbor"), forged, wait=False)
        assert device_a.disconnects.get(timeout=10).is_failure
        # had the broker routed the forged request, the service would have answered it before this marker
        assert as_b.until_marker("b-marker") == []
        assert spy.drain() == []
