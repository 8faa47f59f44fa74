"""The assembled emulator: boto3 control plane + a raw MQTT client over mutual TLS (not our device code)."""

from __future__ import annotations

import json
import os
import queue
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from local_iot.runner import INFO_FILE, LocalIot

from .streams import make_stream

pytestmark = pytest.mark.e2e


def tls_client(iot: LocalIot, thing: str, directory: Path) -> tuple[mqtt.Client, queue.Queue[tuple[str, bytes]]]:
    paths = iot.issue_device(thing, directory)
    assert os.stat(paths.key_path).st_mode & 0o777 == 0o600
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    connected: queue.Queue[object] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing)
    client.tls_set(
        ca_certs=iot.info["ca_cert"],
        certfile=str(paths.cert_path),
        keyfile=str(paths.key_path),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.on_message = lambda c, u, msg: inbox.put((msg.topic, msg.payload))
    client.on_connect = lambda c, u, f, rc, p: connected.put(rc)
    client.on_subscribe = lambda c, u, mid, rcs, p: connected.put(("sub", rcs))
    client.connect("localhost", iot.info["tls_port"])
    client.loop_start()
    assert not connected.get(timeout=10).is_failure
    prefix = f"$aws/things/{thing}/streams/+/"
    client.subscribe([(prefix + "description/cbor", 0), (prefix + "data/cbor", 0), (prefix + "rejected/cbor", 0)])
    assert connected.get(timeout=10)[0] == "sub"
    return client, inbox


def test_stream_download_over_mutual_tls(local_iot: LocalIot, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    make_stream(local_iot, "lio_e2e", data)
    client, inbox = tls_client(local_iot, "lio-thing", tmp_path)
    try:
        base = "$aws/things/lio-thing/streams/lio_e2e/"
        client.publish(base + "describe/cbor", cbor2.dumps({"c": "t1"}))
        topic, payload = inbox.get(timeout=10)
        assert topic == base + "description/cbor"
        desc = cbor2.loads(payload)
        assert desc["c"] == "t1" and desc["s"] == 1 and desc["r"] == [{"f": 0, "z": len(data)}]
        client.publish(base + "get/cbor", cbor2.dumps({"f": 0, "l": 4096, "o": 0, "n": 3}))
        blocks = {}
        for _ in range(3):
            topic, payload = inbox.get(timeout=10)
            assert topic == base + "data/cbor"
            block = cbor2.loads(payload)
            blocks[block["i"]] = block["p"]
        assert b"".join(blocks[i] for i in range(3)) == data
        # A bitmap bit past the end of the file is rejected exactly like the emulator rule says.
        client.publish(base + "get/cbor", cbor2.dumps({"c": "x", "f": 0, "l": 4096, "o": 0, "b": b"\x08"}))
        topic, payload = inbox.get(timeout=10)
        rejection = cbor2.loads(payload)
        assert topic == base + "rejected/cbor"
        assert rejection["o"] == rejection["code"] == "InvalidRequest"
        assert rejection["c"] == "x"
    finally:
        client.loop_stop()
        client.disconnect()


def test_the_registry_follows_certificate_calls_before_they_return(local_iot: LocalIot, tmp_path: Path) -> None:
    """What the broker reads is in place when a call that changed a certificate or attachment returns (a device
    may connect right after), and a call that cannot change it (CreateThing) leaves the file alone."""
    registry = local_iot.state_dir / "broker" / "registry"
    iot = local_iot.client("iot")
    before = registry.stat()
    iot.create_thing(thingName="reg-thing")
    iot.create_thing(thingName="reg-other")
    after = registry.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    paths = local_iot.issue_device("reg-thing", tmp_path, register=False)
    cert = iot.register_certificate_without_ca(certificatePem=paths.cert_path.read_text(), status="ACTIVE")
    assert f"{cert['certificateId']} ACTIVE -\n" in registry.read_text()
    iot.attach_thing_principal(thingName="reg-thing", principal=cert["certificateArn"])
    assert f"{cert['certificateId']} ACTIVE reg-thing\n" in registry.read_text()

    connected: queue.Queue[Any] = queue.Queue()  # at once: the plugin re-reads the registry on CONNECT
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="reg-thing")
    client.tls_set(
        ca_certs=local_iot.info["ca_cert"],
        certfile=str(paths.cert_path),
        keyfile=str(paths.key_path),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.on_connect = lambda c, u, f, rc, p: connected.put(rc)
    client.connect("localhost", local_iot.info["tls_port"])
    client.loop_start()
    try:
        assert not connected.get(timeout=10).is_failure
    finally:
        client.loop_stop()
        client.disconnect()
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    assert f"{cert['certificateId']} INACTIVE reg-thing\n" in registry.read_text()


def test_local_iot_up_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_iot", "up", "--state-dir", str(state), "--latency-ms", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # blocks until the command prints; ends if it dies
            lines.append(line)
            if line.startswith("export AWS_REGION"):
                break
        text = "".join(lines)
        assert "export AWS_ENDPOINT_URL=http://127.0.0.1:" in text, text + proc.stderr.read()
        info = json.loads((state / INFO_FILE).read_text())
        assert info["latency_ms"] == 5 and info["tls_port"] and info["mqtt_port"] != 1883
        broker_pid = info["broker_pid"]
        os.kill(broker_pid, 0)  # the broker runs
        env = subprocess.run(
            [sys.executable, "-m", "local_iot", "env", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert f"export AWS_ENDPOINT_URL={info['aws_endpoint_url']}\n" in env
        assert "export AWS_ACCESS_KEY_ID=testing\n" in env
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stopped = json.loads((state / INFO_FILE).read_text())  # kept for the next start: same ports
    assert stopped["running"] is False and stopped["broker_pid"] is None
    assert stopped["tls_port"] == info["tls_port"] and stopped["aws_port"] == info["aws_port"]
    gone = subprocess.run(
        [sys.executable, "-m", "local_iot", "env", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 3 and "local-iot up" in gone.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(broker_pid, 0)


def test_local_iot_up_rejects_bad_faults(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "local_iot", "up", "--state-dir", str(tmp_path), "--faults", "explode=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--faults" in proc.stderr
    assert not (tmp_path / INFO_FILE).exists()
