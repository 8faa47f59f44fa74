"""The shared device policy of a run (docs/protocol.md section 1): each device may only connect as its own thing and
use the stream and Jobs topics under its own thing name (``${iot:Connection.Thing.ThingName}``)."""

from __future__ import annotations

import json
from typing import Any

from .aws import Api
from .errors import AlreadyExists
from .manifest import RUN_ID_KEY, ManifestStore, PolicyRecord

POLICY_NAME_PREFIX = "iot-stream-sim-device-"
THING_NAME_VARIABLE = "${iot:Connection.Thing.ThingName}"


def policy_name(run_id: str) -> str:
    return f"{POLICY_NAME_PREFIX}{run_id}"


def device_policy(*, region: str, account_id: str, partition: str = "aws") -> dict[str, Any]:
    """Connect as client id = thing name; publish/receive/subscribe only under ``$aws/things/<thing>/streams/``
    and ``$aws/things/<thing>/jobs/`` (the thing's own Jobs topics, for OTA updates)."""
    arn = f"arn:{partition}:iot:{region}:{account_id}"
    streams = f"$aws/things/{THING_NAME_VARIABLE}/streams/*"
    jobs = f"$aws/things/{THING_NAME_VARIABLE}/jobs/*"  # the thing's own Jobs API (OTA updates)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{THING_NAME_VARIABLE}"},
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [f"{arn}:topic/{streams}", f"{arn}:topic/{jobs}"],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [f"{arn}:topicfilter/{streams}", f"{arn}:topicfilter/{jobs}"],
            },
        ],
    }


def check_policy_free(api: Api, store: ManifestStore) -> None:
    """Read-only: the run's policy name must be free unless this run recorded it."""
    name = policy_name(store.manifest.run_id)
    if store.manifest.policy is not None:
        return
    if api.maybe(api.iot.get_policy, policyName=name) is not None:
        raise AlreadyExists(
            f"device policy {name} exists but this manifest does not record it",
            service="iot",
            operation="create_policy",
            code="ResourceAlreadyExistsException",
            hint="run `provisioner cleanup --run-id` for that run, or start a new run",
        )


def ensure_policy(api: Api, store: ManifestStore) -> PolicyRecord:
    """Create the run's device policy (or reuse the recorded one when it still exists)."""
    manifest = store.manifest
    name = policy_name(manifest.run_id)
    recorded = manifest.policy
    if recorded is not None and api.maybe(api.iot.get_policy, policyName=recorded.name) is not None:
        return recorded
    identity = api.identity()
    document = device_policy(region=api.region, account_id=identity.account_id, partition=identity.partition)
    answer = api.write(
        api.iot.create_policy,
        dry_result={"policyArn": f"arn:{identity.partition}:iot:{api.region}:{identity.account_id}:policy/{name}"},
        policyName=name,
        policyDocument=json.dumps(document),
        tags=[{"Key": RUN_ID_KEY, "Value": manifest.run_id}],
    )
    record = PolicyRecord(name=name, arn=str(answer["policyArn"]), created=True)
    store.change(policy=record)
    return record
