"""Test support for the provisioner tests: AWS's stream calls for moto's in-process mock, which lacks them.

``FakeStreams`` is a fake of AWS (like moto itself), not of our code: it answers iot create/describe/update/
delete/list_stream with AWS's shapes and error codes, for every boto3 client created while it is installed
(it joins botocore's builtin handlers, as moto's own stubber does). The tests at the bottom check the fake.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.handlers
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws

ACCOUNT = "123456789012"
REGION = "us-east-1"
STREAM_OPERATIONS = ("CreateStream", "DescribeStream", "UpdateStream", "DeleteStream", "ListStreams")


@dataclass
class FakeStreams:
    account: str = ACCOUNT
    region: str = REGION
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Answer the next N create_stream calls with AWS's "role cannot be assumed" InvalidRequestException.
    role_not_ready: int = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeStreams:
        handlers = [
            ("before-parameter-build.iot", self._capture),
            ("before-call.iot", self._answer),
            *botocore.handlers.BUILTIN_HANDLERS,
        ]
        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", handlers)
        return self

    def _capture(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if model.name in STREAM_OPERATIONS:
            context["fake_streams_params"] = copy.deepcopy(params)

    def _answer(self, model: Any, context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if model.name not in STREAM_OPERATIONS:
            return None
        params = context.get("fake_streams_params", {})
        self.calls.append((model.name, params))
        try:
            body = getattr(self, f"_{model.name}")(params)
        except _AwsError as e:
            parsed = {
                "Error": {"Code": e.code, "Message": e.message},
                "ResponseMetadata": {"HTTPStatusCode": e.status},
                **e.extra,
            }
            return AWSResponse("https://iot.fake", e.status, {}, None), parsed
        body["ResponseMetadata"] = {"HTTPStatusCode": 200}
        return AWSResponse("https://iot.fake", 200, {}, None), body

    def _arn(self, stream_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:stream/{stream_id}"

    def _CreateStream(self, p: dict[str, Any]) -> dict[str, Any]:
        sid = p["streamId"]
        if self.role_not_ready > 0:
            self.role_not_ready -= 1
            raise _AwsError("InvalidRequestException", f"Role {p['roleArn']} cannot be assumed by the service", 400)
        if sid in self.streams:
            raise _AwsError(
                "ResourceAlreadyExistsException",
                "Stream already exists",
                409,
                {"resourceId": sid, "resourceArn": self._arn(sid)},
            )
        self.streams[sid] = {
            "streamId": sid,
            "streamArn": self._arn(sid),
            "streamVersion": 1,
            "description": p.get("description", ""),
            "files": p["files"],
            "roleArn": p["roleArn"],
            "tags": p.get("tags", []),
        }
        return {k: self.streams[sid][k] for k in ("streamId", "streamArn", "description", "streamVersion")}

    def _get(self, sid: str) -> dict[str, Any]:
        if sid not in self.streams:
            raise _AwsError("ResourceNotFoundException", f"Stream {sid} not found", 404)
        return self.streams[sid]

    def _DescribeStream(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self._get(p["streamId"])
        return {"streamInfo": {k: v for k, v in s.items() if k != "tags"}}

    def _UpdateStream(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self._get(p["streamId"])
        for key in ("description", "files", "roleArn"):
            if key in p:
                s[key] = p[key]
        s["streamVersion"] += 1
        return {k: s[k] for k in ("streamId", "streamArn", "description", "streamVersion")}

    def _DeleteStream(self, p: dict[str, Any]) -> dict[str, Any]:
        self._get(p["streamId"])
        del self.streams[p["streamId"]]
        return {}

    def _ListStreams(self, p: dict[str, Any]) -> dict[str, Any]:
        keys = ("streamId", "streamArn", "streamVersion", "description")
        return {"streams": [{k: s[k] for k in keys} for s in self.streams.values()]}


class _AwsError(Exception):
    def __init__(self, code: str, message: str, status: int, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.extra = code, message, status, extra or {}


@contextmanager
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStreams]:
    """Dummy credentials, no endpoint override, moto's in-process mock, and FakeStreams."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    fake = FakeStreams().install(monkeypatch)
    with mock_aws():
        yield fake


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStreams]:
    with fake_aws(monkeypatch) as fake:
        yield fake


# --- tests of the fake itself -----------------------------------------------------------------------------------


def test_fake_streams_versions_and_errors(aws_env: FakeStreams) -> None:
    iot = boto3.client("iot", region_name=REGION)
    files = [{"fileId": 0, "s3Location": {"bucket": "b", "key": "k", "version": "v"}}]
    role = "arn:aws:iam::123456789012:role/r"
    assert iot.create_stream(streamId="s", files=files, roleArn=role)["streamVersion"] == 1
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as exc:
        iot.create_stream(streamId="s", files=files, roleArn=role)
    assert exc.value.response["resourceId"] == "s"
    assert iot.update_stream(streamId="s", description="x")["streamVersion"] == 2
    assert iot.describe_stream(streamId="s")["streamInfo"]["description"] == "x"
    assert [s["streamId"] for s in iot.list_streams()["streams"]] == ["s"]
    iot.delete_stream(streamId="s")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_stream(streamId="s")
    # Everything else still goes to moto.
    assert iot.list_things()["things"] == []
