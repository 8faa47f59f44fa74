"""The stream role: the IAM role AWS IoT assumes to read the firmware objects.

Least privilege: the trust policy admits only ``iot.amazonaws.com`` acting for this account (``aws:SourceAccount``)
from IoT resources of this region (``aws:SourceArn``); the inline policy allows only ``s3:GetObject`` and
``s3:GetObjectVersion`` on exactly the uploaded objects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from .aws import Api
from .errors import AccessDenied, InputError
from .manifest import RUN_ID_KEY, FirmwareObject, ManifestStore, RoleRecord
from .validation import role_name_from_arn

log = logging.getLogger(__name__)

INLINE_POLICY_NAME = "iot-stream-sim-read-firmware"
ROLE_NAME_PREFIX = "iot-stream-sim-stream-"


def role_name(run_id: str) -> str:
    """``iot-stream-sim-stream-<run id>`` (IAM allows 64 characters; run ids have at most 40)."""
    return f"{ROLE_NAME_PREFIX}{run_id}"


def trust_policy(*, account_id: str, region: str, partition: str = "aws") -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "iot.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": account_id},
                    "ArnLike": {"aws:SourceArn": f"arn:{partition}:iot:{region}:{account_id}:*"},
                },
            }
        ],
    }


def read_policy(objects: Iterable[FirmwareObject], *, partition: str = "aws") -> dict[str, Any]:
    resources = sorted({f"arn:{partition}:s3:::{o.bucket}/{o.key}" for o in objects})
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": resources}],
    }


def check_given_role(api: Api, role_arn: str) -> None:
    """Read-only: the role given with --role-arn must exist. Skipped (with a warning) without iam:GetRole."""
    name = role_name_from_arn(role_arn)
    try:
        found = api.maybe(api.iam.get_role, RoleName=name)
    except AccessDenied:
        log.warning("cannot check role %s (no iam:GetRole permission); assuming it exists", role_arn)
        return
    if found is None:
        raise InputError(
            f"role {role_arn} does not exist", hint="pass an existing role with --role-arn, or --create-role"
        )


def use_given_role(store: ManifestStore, role_arn: str) -> RoleRecord:
    record = RoleRecord(name=role_name_from_arn(role_arn), arn=role_arn, created=False)
    store.change(role=record)
    return record


def create_role(api: Api, store: ManifestStore, objects: list[FirmwareObject]) -> RoleRecord:
    """Create (or, on resume, reuse) the run's role and put its inline read policy for ``objects``."""
    manifest = store.manifest
    identity = api.identity()
    recorded = manifest.role
    if recorded is not None and recorded.created and api.maybe(api.iam.get_role, RoleName=recorded.name) is not None:
        record = recorded
    else:
        name = role_name(manifest.run_id)
        answer = api.write(
            api.iam.create_role,
            dry_result={"Role": {"Arn": f"arn:{identity.partition}:iam::{identity.account_id}:role/{name}"}},
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(
                trust_policy(account_id=identity.account_id, region=api.region, partition=identity.partition)
            ),
            Description=f"AWS IoT stream role of iot-stream-sim run {manifest.run_id}",
            Tags=[{"Key": RUN_ID_KEY, "Value": manifest.run_id}],
        )
        record = RoleRecord(name=name, arn=str(answer["Role"]["Arn"]), created=True, inline_policy_name=None)
        store.change(role=record)
    update_role_policy(api, store, objects)
    return store.manifest.role or record


def update_role_policy(api: Api, store: ManifestStore, objects: list[FirmwareObject]) -> None:
    """(Re)write the created role's inline policy to cover exactly ``objects``. A given role is left alone."""
    record = store.manifest.role
    if record is None or not record.created:
        return
    api.write(
        api.iam.put_role_policy,
        RoleName=record.name,
        PolicyName=INLINE_POLICY_NAME,
        PolicyDocument=json.dumps(read_policy(objects, partition=api.identity().partition)),
    )
    if record.inline_policy_name != INLINE_POLICY_NAME:
        store.change(
            role=RoleRecord(name=record.name, arn=record.arn, created=True, inline_policy_name=INLINE_POLICY_NAME)
        )
