"""Test helpers: create a stream on a running local_iot with real boto3 calls (S3 object, role, create_stream)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from local_iot.runner import LocalIot

ROLE_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def make_stream(
    iot: LocalIot, stream_id: str, data: bytes | Sequence[bytes], *, pin_version: bool = True
) -> dict[str, Any]:
    """Upload ``data`` (one file, or several: file ids 0..n-1) and create stream ``stream_id``; returns details."""
    files = [data] if isinstance(data, bytes | bytearray) else list(data)
    s3, iam, control = iot.client("s3"), iot.client("iam"), iot.client("iot")
    bucket = f"bkt-{stream_id}".lower().replace("_", "-")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    entries = []
    for file_id, content in enumerate(files):
        key = f"fw-{file_id}.bin"
        version = s3.put_object(Bucket=bucket, Key=key, Body=bytes(content))["VersionId"]
        location = {"bucket": bucket, "key": key}
        if pin_version:
            location["version"] = version
        entries.append({"fileId": file_id, "s3Location": location})
    role_name = f"role-{stream_id}"
    role = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(ROLE_TRUST))["Role"]
    iam.put_role_policy(
        RoleName=role_name,
        PolicyName="read",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    }
                ],
            }
        ),
    )
    answer = control.create_stream(streamId=stream_id, files=entries, roleArn=role["Arn"])
    return {"bucket": bucket, "files": entries, "role_arn": role["Arn"], "version": answer["streamVersion"]}
