"""The provisioner against local_iot's control plane through real HTTP, with the very same code as for AWS:
only ``AWS_ENDPOINT_URL``/credentials (or ``--local DIR``) differ. The certificates it writes authenticate to the
local mutual-TLS mosquitto. (The device download itself is tested with device-sim.)"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner, Result
from paho.mqtt.enums import CallbackAPIVersion

from local_iot.control_plane import ControlPlane
from local_iot.runner import LocalIot, LocalIotSettings
from provisioner.cli import main
from provisioner.manifest import load_manifest

pytestmark = pytest.mark.e2e
TIMEOUT = 10.0
FAST = ["--tps", "1000"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def control_plane(monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with ControlPlane() as cp:
        cp.reset()  # moto's state is process-wide: start from an empty account
        yield cp


def account(cp: ControlPlane) -> dict[str, list[str]]:
    """What the emulated account holds, by list calls through boto3."""
    s3, iam, iot = cp.client("s3"), cp.client("iam"), cp.client("iot")
    objects = []
    for bucket in s3.list_buckets()["Buckets"]:
        page = s3.list_object_versions(Bucket=bucket["Name"])
        objects += [v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    return {
        "buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]],
        "objects": objects,
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"]],
        "things": [t["thingName"] for t in iot.list_things()["things"]],
        "certificates": [c["certificateId"] for c in iot.list_certificates()["certificates"]],
        "policies": [p["policyName"] for p in iot.list_policies()["policies"]],
        "streams": [s["streamId"] for s in iot.list_streams()["streams"]],
    }


EMPTY: dict[str, list[str]] = {k: [] for k in ("buckets", "objects", "roles", "things", "certificates", "policies")}
EMPTY["streams"] = []


def test_up_update_cleanup_through_aws_endpoint_url(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local_iot.ca import LocalCA

    for key, value in control_plane.environment().items():
        monkeypatch.setenv(key, value)
    ca = LocalCA.create(tmp_path / "ca")
    manifest_path = tmp_path / "run.json"
    result = run(
        "up", "--stream-id", "fw-test", "--generate", "1MiB", "--seed", "7", "--bucket", "fw-bucket",
        "--create-bucket", "--create-role", "--things", "3", "--thing-prefix", "sim", "--certs-dir", tmp_path / "certs",
        "--manifest", manifest_path, "--ca-cert", ca.cert_path, "--ca-key", ca.key_path,
        "--mqtt-endpoint", "127.0.0.1:8883", *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = load_manifest(manifest_path)
    assert manifest.aws_endpoint_url == control_plane.endpoint_url

    iot = control_plane.client("iot")
    info = iot.describe_stream(streamId="fw-test")["streamInfo"]
    assert info["streamVersion"] == 1
    assert info["files"] == [
        {
            "fileId": 0,
            "s3Location": {
                "bucket": "fw-bucket",
                "key": manifest.firmware[0].key,
                "version": manifest.firmware[0].version_id,
            },
        }
    ]
    assert manifest.role is not None and info["roleArn"] == manifest.role.arn
    tags = iot.list_tags_for_resource(resourceArn=info["streamArn"])["tags"]
    assert {"Key": "iot-stream-sim:run-id", "Value": manifest.run_id} in tags
    iam = control_plane.client("iam")
    trust = iam.get_role(RoleName=manifest.role.name)["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "iot.amazonaws.com"}
    for thing in manifest.things:
        described = iot.describe_certificate(certificateId=thing.certificate_id)["certificateDescription"]
        assert described["status"] == "ACTIVE"
        assert iot.list_thing_principals(thingName=thing.name)["principals"] == [thing.certificate_arn]

    result = run("stream", "update", "--manifest", manifest_path, "--generate", "64KiB", "--seed", "8", *FAST)
    assert result.exit_code == 0, result.output
    assert "version 1 -> 2" in result.output
    assert iot.describe_stream(streamId="fw-test")["streamInfo"]["streamVersion"] == 2

    result = run("cleanup", "--manifest", manifest_path, *FAST)
    assert result.exit_code == 0, result.output
    assert account(control_plane) == EMPTY


class Device:
    """A paho client over mutual TLS with the files the provisioner wrote; callbacks only fill queues."""

    def __init__(self, *, host: str, port: int, ca: Path, cert: Path, key: Path, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.connack: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(list(rcs))
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_local_dir_certificates_work_with_local_iot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`local-iot up`'s own local-iot.json drives --local; a thing describes its stream over mutual TLS."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    with LocalIot(LocalIotSettings(state_dir=state)) as local:
        assert local.control_plane is not None
        local.control_plane.reset()
        manifest_path = tmp_path / "run.json"
        result = run(
            "up", "--local", state, "--stream-id", "fw-local", "--generate", "4KiB", "--bucket", "fw-bucket",
            "--create-bucket", "--create-role", "--things", "2", "--certs-dir", tmp_path / "certs",
            "--manifest", manifest_path, *FAST,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        manifest = load_manifest(manifest_path)
        info = local.info
        assert manifest.mqtt is not None and manifest.mqtt.ca_path is not None
        assert (manifest.mqtt.host, manifest.mqtt.port, manifest.mqtt.plain_port) == (
            info["mqtt_host"],
            info["tls_port"],
            info["mqtt_port"],
        )
        assert manifest.mqtt.ca_path.read_bytes() == Path(info["ca_cert"]).read_bytes()
        assert manifest.aws_endpoint_url == info["aws_endpoint_url"]

        thing = manifest.things[0]
        assert thing.cert_path is not None and thing.key_path is not None
        device = Device(
            host=manifest.mqtt.host,
            port=manifest.mqtt.port,
            ca=manifest.mqtt.ca_path,
            cert=thing.cert_path,
            key=thing.key_path,
            client_id=thing.name,
        )
        try:
            assert not device.connack.get(timeout=TIMEOUT).is_failure
            prefix = f"$aws/things/{thing.name}/streams/fw-local"
            device.client.subscribe([(f"{prefix}/description/json", 0), (f"{prefix}/rejected/json", 0)])
            assert [rc.is_failure for rc in device.subacks.get(timeout=TIMEOUT)] == [False, False]
            device.client.publish(f"{prefix}/describe/json", b'{"c":"t1"}', qos=0)
            topic, payload = device.messages.get(timeout=TIMEOUT)
            assert topic == f"{prefix}/description/json", payload
            answer = json.loads(payload)
            assert (answer["c"], answer["s"], answer["r"]) == ("t1", 1, [{"f": 0, "z": 4096}])
        finally:
            device.close()

        # Cleanup needs the same --local (its credentials); the manifest supplies the endpoint.
        result = run("cleanup", "--manifest", manifest_path, "--local", state, *FAST)
        assert result.exit_code == 0, result.output
        assert local.control_plane is not None
        assert account(local.control_plane) == EMPTY
