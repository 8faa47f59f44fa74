"""local_iot.iam_eval: the subset of IAM evaluation the stream service relies on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local_iot.iam_eval import AccessRequest, is_allowed

GET = AccessRequest(action="s3:GetObject", resource="arn:aws:s3:::fw-bucket/app/v1.bin")
ASSUME = AccessRequest(
    action="sts:AssumeRole",
    service_principal="iot.amazonaws.com",
    context={"aws:SourceAccount": "123456789012", "aws:SourceArn": "arn:aws:iot:us-east-1:123456789012:stream/s1"},
)


def doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(**fields: Any) -> dict[str, Any]:
    return {"Effect": "Allow", **fields}


def deny(**fields: Any) -> dict[str, Any]:
    return {"Effect": "Deny", **fields}


PERMISSION_CASES = {
    "exact": ([allow(Action="s3:GetObject", Resource="arn:aws:s3:::fw-bucket/app/v1.bin")], True),
    "action wildcard, any case": ([allow(Action="S3:get*", Resource="*")], True),
    "question mark": ([allow(Action="s3:GetObjec?", Resource="arn:aws:s3:::fw-bucket/app/v?.bin")], True),
    "resource list": (
        [allow(Action=["s3:ListBucket", "s3:GetObject"], Resource=["x", "arn:aws:s3:::fw-bucket/*"])],
        True,
    ),
    "resource is case-sensitive": ([allow(Action="s3:GetObject", Resource="arn:aws:s3:::FW-bucket/*")], False),
    "other action": ([allow(Action="s3:PutObject", Resource="*")], False),
    "no statement": ([], False),
    "deny wins": ([allow(Action="s3:*", Resource="*"), deny(Action="s3:GetObject", Resource="*")], False),
    "deny elsewhere": (
        [allow(Action="s3:*", Resource="*"), deny(Action="s3:*", Resource="arn:aws:s3:::other/*")],
        True,
    ),
    "NotAction": ([allow(NotAction="s3:Delete*", Resource="*")], True),
    "NotAction excluding it": ([allow(NotAction="s3:Get*", Resource="*")], False),
    "NotResource": ([allow(Action="s3:GetObject", NotResource="arn:aws:s3:::secret/*")], True),
    "no resource element": ([allow(Action="s3:GetObject")], False),
    "unknown condition operator": (
        [allow(Action="s3:GetObject", Resource="*", Condition={"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}})],
        False,
    ),
}


@pytest.mark.parametrize(("statements", "expected"), PERMISSION_CASES.values(), ids=PERMISSION_CASES.keys())
def test_permission_policies(statements: list[dict[str, Any]], expected: bool) -> None:
    assert is_allowed([doc(*statements)], GET) is expected


def test_statement_may_be_a_single_object_and_documents_combine() -> None:
    single = json.dumps({"Statement": allow(Action="s3:GetObject", Resource="*")})
    assert is_allowed([single], GET)
    assert not is_allowed([single, doc(deny(Action="*", Resource="*"))], GET)


def test_documents_that_are_not_json_are_ignored() -> None:
    assert not is_allowed(["{not json", "[]", '{"Statement": "x"}'], GET)


IOT = {"Service": "iot.amazonaws.com"}
TRUST_CASES = {
    "service": ([allow(Principal=IOT, Action="sts:AssumeRole")], True),
    "service list": ([allow(Principal={"Service": ["ec2.amazonaws.com", "iot.amazonaws.com"]}, Action="sts:*")], True),
    "anyone": ([allow(Principal="*", Action="sts:AssumeRole")], True),
    "any AWS principal": ([allow(Principal={"AWS": "*"}, Action="sts:AssumeRole")], True),
    "another service": ([allow(Principal={"Service": "lambda.amazonaws.com"}, Action="sts:AssumeRole")], False),
    "no principal": ([allow(Action="sts:AssumeRole")], False),
    "NotPrincipal is not supported": ([allow(NotPrincipal={"Service": "ec2.amazonaws.com"}, Action="sts:*")], False),
    "StringEquals account": (
        [
            allow(
                Principal=IOT,
                Action="sts:AssumeRole",
                Condition={"StringEquals": {"aws:SourceAccount": "123456789012"}},
            )
        ],
        True,
    ),
    "StringEquals numeric account": (
        [
            allow(
                Principal=IOT, Action="sts:AssumeRole", Condition={"StringEquals": {"aws:sourceaccount": 123456789012}}
            )
        ],
        True,
    ),
    "StringEquals other account": (
        [allow(Principal=IOT, Action="sts:AssumeRole", Condition={"StringEquals": {"aws:SourceAccount": "1"}})],
        False,
    ),
    "ArnLike stream": (
        [
            allow(
                Principal=IOT,
                Action="sts:AssumeRole",
                Condition={"ArnLike": {"aws:SourceArn": "arn:aws:iot:*:*:stream/*"}},
            )
        ],
        True,
    ),
    "ArnLike job only": (
        [
            allow(
                Principal=IOT,
                Action="sts:AssumeRole",
                Condition={"ArnLike": {"aws:SourceArn": "arn:aws:iot:*:*:job/*"}},
            )
        ],
        False,
    ),
    "ArnNotLike": (
        [
            allow(
                Principal=IOT,
                Action="sts:AssumeRole",
                Condition={"ArnNotLike": {"aws:SourceArn": "arn:aws:iot:*:*:job/*"}},
            )
        ],
        True,
    ),
    "absent key": (
        [allow(Principal=IOT, Action="sts:AssumeRole", Condition={"StringEquals": {"aws:PrincipalOrgID": "o-1"}})],
        False,
    ),
    "absent key IfExists": (
        [
            allow(
                Principal=IOT, Action="sts:AssumeRole", Condition={"StringEqualsIfExists": {"aws:PrincipalOrgID": "o"}}
            )
        ],
        True,
    ),
    "absent key negated": (
        [allow(Principal=IOT, Action="sts:AssumeRole", Condition={"StringNotEquals": {"aws:PrincipalOrgID": "o-1"}})],
        True,
    ),
    "StringEqualsIgnoreCase": (
        [
            allow(
                Principal=IOT,
                Action="sts:AssumeRole",
                Condition={"StringEqualsIgnoreCase": {"aws:SourceArn": "ARN:AWS:IOT:US-EAST-1:123456789012:STREAM/S1"}},
            )
        ],
        True,
    ),
}


@pytest.mark.parametrize(("statements", "expected"), TRUST_CASES.values(), ids=TRUST_CASES.keys())
def test_trust_policies(statements: list[dict[str, Any]], expected: bool) -> None:
    assert is_allowed([doc(*statements)], ASSUME) is expected
