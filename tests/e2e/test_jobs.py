"""Jobs on both planes: boto3 against local_iot's control plane, raw paho devices on its mutual-TLS broker.

One emulator serves the module with a Jobs minute of 0.5 s (``jobs_minute_s``), so step timeouts and rollout
windows pass in well under a second; every test uses its own things and job ids. Every wait is on a message or a
control-plane state with a timeout.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from local_iot.ca import CertPaths
from local_iot.runner import LocalIot, LocalIotSettings
from tests.e2e.jobs_client import TIMEOUT, JobsDevice

pytestmark = pytest.mark.e2e

DOC = {"operation": "test", "n": 1}


@pytest.fixture(scope="module")
def iot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIot]:
    settings = LocalIotSettings(state_dir=tmp_path_factory.mktemp("jobs-iot"), jobs_minute_s=0.5)
    with LocalIot(settings) as emulator:
        yield emulator


@pytest.fixture
def devices(iot: LocalIot, tmp_path: Path) -> Iterator[Callable[[str], JobsDevice]]:
    opened: list[JobsDevice] = []

    def connect(thing: str) -> JobsDevice:
        paths = iot.issue_device(thing, tmp_path / "certs")
        device = JobsDevice(iot, thing, paths)
        opened.append(device)
        return device

    yield connect
    for device in opened:
        device.close()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def thing_arn(iot: LocalIot, thing: str) -> str:
    return f"arn:aws:iot:{iot.info['region']}:{iot.info['account_id']}:thing/{thing}"


def create_job(iot: LocalIot, things: list[str], **kwargs: Any) -> str:
    job_id = uid("job")
    targets = [thing_arn(iot, t) for t in things]
    iot.client("iot").create_job(jobId=job_id, targets=targets, document=json.dumps(DOC), **kwargs)
    return job_id


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)  # polling the control plane, not synchronising on time


def test_a_job_reaches_the_device_and_both_planes_agree(iot: LocalIot, devices: Any) -> None:
    thing = uid("dev")
    device = devices(thing)
    job_id = create_job(iot, [thing], description="both planes")
    nxt = device.notification("notify-next")
    assert nxt["execution"]["jobId"] == job_id and nxt["execution"]["status"] == "QUEUED"
    assert nxt["execution"]["jobDocument"] == DOC and isinstance(nxt["timestamp"], int)
    assert device.notification("notify")["jobs"]["QUEUED"][0]["jobId"] == job_id

    kind, answer = device.request("start-next", {"clientToken": "tok-1", "statusDetails": {"step": "download"}})
    assert kind == "accepted" and answer["clientToken"] == "tok-1"
    execution = answer["execution"]
    assert (execution["status"], execution["versionNumber"], execution["thingName"]) == ("IN_PROGRESS", 2, thing)

    client = iot.client("iot")
    described = client.describe_job_execution(jobId=job_id, thingName=thing)["execution"]
    assert described["status"] == "IN_PROGRESS" and described["versionNumber"] == 2
    assert described["statusDetails"]["detailsMap"] == {"step": "download"}
    assert described["thingArn"] == thing_arn(iot, thing)

    kind, answer = device.request(
        f"{job_id}/update",
        {"status": "SUCCEEDED", "statusDetails": {"reason": "ok"}, "expectedVersion": 2}
        | {"includeJobExecutionState": True},
    )
    assert kind == "accepted" and answer["executionState"] == {
        "status": "SUCCEEDED", "statusDetails": {"reason": "ok"}, "versionNumber": 3
    }  # fmt: skip
    assert "execution" not in device.notification("notify-next")
    job = client.describe_job(jobId=job_id)["job"]
    assert job["status"] == "COMPLETED" and job["jobProcessDetails"]["numberOfSucceededThings"] == 1
    for_job = client.list_job_executions_for_job(jobId=job_id)["executionSummaries"]
    assert [(s["thingArn"], s["jobExecutionSummary"]["status"]) for s in for_job] == [
        (thing_arn(iot, thing), "SUCCEEDED")
    ]
    for_thing = client.list_job_executions_for_thing(thingName=thing)["executionSummaries"]
    assert [s["jobId"] for s in for_thing] == [job_id]
    assert job_id in [j["jobId"] for j in client.list_jobs()["jobs"]]
    assert json.loads(client.get_job_document(jobId=job_id)["document"]) == DOC


def test_get_and_next_get(iot: LocalIot, devices: Any) -> None:
    thing = uid("dev")
    device = devices(thing)
    first = create_job(iot, [thing])
    second = create_job(iot, [thing])
    kind, answer = device.request(f"{second}/update", {"status": "IN_PROGRESS"})
    assert kind == "accepted"
    kind, answer = device.request("get", {"clientToken": "g"})
    assert kind == "accepted" and answer["clientToken"] == "g"
    assert [j["jobId"] for j in answer["inProgressJobs"]] == [second]
    assert [j["jobId"] for j in answer["queuedJobs"]] == [first]
    kind, answer = device.request("$next/get", {"includeJobDocument": False})
    assert answer["execution"]["jobId"] == second and "jobDocument" not in answer["execution"]
    kind, answer = device.request(f"{first}/get", {})
    assert answer["execution"]["status"] == "QUEUED" and answer["execution"]["jobDocument"] == DOC


def test_every_jobs_error_code_over_mqtt(iot: LocalIot, devices: Any) -> None:
    thing = uid("dev")
    device = devices(thing)
    job_id = create_job(iot, [thing])

    def rejected(suffix: str, body: Any) -> dict[str, Any]:
        kind, answer = device.request(suffix, body)
        assert kind == "rejected", answer
        return answer

    assert rejected(f"{job_id}/update", b"{not json")["code"] == "InvalidJson"
    bad = rejected(f"{job_id}/update", {"status": "DONE", "clientToken": "c-1"})
    assert bad["code"] == "InvalidRequest" and bad["clientToken"] == "c-1"
    assert rejected(f"{job_id}/frobnicate", {})["code"] == "InvalidTopic"
    assert rejected("nope/update", {"status": "IN_PROGRESS"})["code"] == "ResourceNotFound"
    mismatch = rejected(f"{job_id}/update", {"status": "IN_PROGRESS", "expectedVersion": 5})
    assert mismatch["code"] == "VersionMismatch"
    assert mismatch["executionState"] == {"status": "QUEUED", "statusDetails": {}, "versionNumber": 1}
    assert device.request(f"{job_id}/update", {"status": "SUCCEEDED"})[0] == "accepted"
    transition = rejected(f"{job_id}/update", {"status": "IN_PROGRESS"})
    assert transition["code"] == "InvalidStateTransition" and transition["executionState"]["status"] == "SUCCEEDED"
    assert rejected(f"{job_id}/get", {})["code"] == "TerminalStateReached"


def test_a_job_cancelled_while_the_device_works_on_it(iot: LocalIot, devices: Any) -> None:
    busy, idle = uid("dev"), uid("dev")
    device, other = devices(busy), devices(idle)
    job_id = create_job(iot, [busy, idle])
    assert device.request("start-next", {})[0] == "accepted"
    client = iot.client("iot")
    with pytest.raises(client.exceptions.InvalidStateTransitionException):
        client.cancel_job_execution(jobId=job_id, thingName=busy)
    device.drain()
    client.cancel_job(jobId=job_id, force=True, reasonCode="test", comment="stop")
    assert "execution" not in device.notification("notify-next")
    kind, answer = device.request(f"{job_id}/update", {"status": "IN_PROGRESS"})
    assert (kind, answer["code"], answer["executionState"]["status"]) == (
        "rejected", "InvalidStateTransition", "CANCELED"
    )  # fmt: skip
    assert client.describe_job_execution(jobId=job_id, thingName=busy)["execution"]["forceCanceled"] is True
    assert client.describe_job_execution(jobId=job_id, thingName=idle)["execution"]["status"] == "CANCELED"
    job = client.describe_job(jobId=job_id)["job"]
    assert (job["status"], job["forceCanceled"], job["reasonCode"]) == ("CANCELED", True, "test")
    assert other.request("$next/get", {})[1].get("execution") is None
    client.delete_job(jobId=job_id)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_job(jobId=job_id)


def test_a_removed_execution_is_resource_not_found(iot: LocalIot, devices: Any) -> None:
    thing = uid("dev")
    device = devices(thing)
    job_id = create_job(iot, [thing])
    assert device.request("start-next", {})[0] == "accepted"
    client = iot.client("iot")
    with pytest.raises(client.exceptions.InvalidStateTransitionException):
        client.delete_job_execution(jobId=job_id, thingName=thing, executionNumber=1)
    with pytest.raises(client.exceptions.InvalidStateTransitionException):
        client.delete_job(jobId=job_id)
    device.drain()
    client.delete_job_execution(jobId=job_id, thingName=thing, executionNumber=1, force=True)
    assert "execution" not in device.notification("notify-next")
    assert device.request(f"{job_id}/update", {"status": "SUCCEEDED"})[1]["code"] == "ResourceNotFound"
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_job_execution(jobId=job_id, thingName=thing)


def test_a_step_timeout_ends_timed_out(iot: LocalIot, devices: Any) -> None:
    thing = uid("dev")
    device = devices(thing)
    job_id = create_job(iot, [thing])
    assert device.notification("notify-next")["execution"]["status"] == "QUEUED"
    assert device.request("start-next", {"stepTimeoutInMinutes": 1})[0] == "accepted"
    began = time.monotonic()
    assert "execution" not in device.notification("notify-next")  # the execution left the pending list
    assert time.monotonic() - began < 5
    described = iot.client("iot").describe_job_execution(jobId=job_id, thingName=thing)["execution"]
    assert described["status"] == "TIMED_OUT"
    assert device.request(f"{job_id}/update", {"status": "SUCCEEDED"})[1]["code"] == "InvalidStateTransition"


def test_document_source_thing_group_and_rollout(iot: LocalIot, devices: Any) -> None:
    client, s3 = iot.client("iot"), iot.client("s3")
    bucket, group = uid("docs"), uid("group")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="job.json", Body=json.dumps(DOC).encode())
    group_arn = client.create_thing_group(thingGroupName=group)["thingGroupArn"]
    things = [uid("dev") for _ in range(3)]
    connected = [devices(t) for t in things]
    for thing in things:
        client.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
    job_id = uid("job")
    client.create_job(
        jobId=job_id,
        targets=[group_arn],
        documentSource=f"https://s3.amazonaws.com/{bucket}/job.json",
        jobExecutionsRolloutConfig={"maximumPerMinute": 1},
    )
    assert client.describe_job(jobId=job_id)["documentSource"].endswith("/job.json")
    queued = sorted(
        d.thing for d in connected if client.list_job_executions_for_thing(thingName=d.thing)["executionSummaries"]
    )
    assert len(queued) == 1  # one per (0.5 s) minute
    for device in connected:  # the rest arrive as the rollout windows pass
        assert device.notification("notify-next")["execution"]["jobDocument"] == DOC
    assert len(client.list_job_executions_for_job(jobId=job_id)["executionSummaries"]) == 3


def test_control_plane_validation(iot: LocalIot) -> None:
    client = iot.client("iot")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.create_job(jobId=uid("job"), targets=[thing_arn(iot, "no-such-thing")], document="{}")
    thing = uid("dev")
    client.create_thing(thingName=thing)
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.create_job(jobId=uid("job"), targets=[thing_arn(iot, thing)], document="[1]")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_job(jobId="nope")
    job_id = create_job(iot, [thing])
    with pytest.raises(client.exceptions.ResourceAlreadyExistsException):
        client.create_job(jobId=job_id, targets=[thing_arn(iot, thing)], document="{}")
    with pytest.raises(client.exceptions.VersionConflictException):
        client.cancel_job_execution(jobId=job_id, thingName=thing, expectedVersion=9)
    client.cancel_job_execution(jobId=job_id, thingName=thing, expectedVersion=1)
    assert client.describe_job(jobId=job_id)["job"]["status"] == "COMPLETED"


def test_a_device_may_not_use_another_things_jobs_topics(iot: LocalIot, devices: Any) -> None:
    device = devices(uid("dev"))
    device.client.subscribe("$aws/things/someone-else/jobs/notify-next", qos=1)
    codes = device._subacks.get(timeout=10)
    assert all(rc.is_failure for rc in codes)


def _stream(iot: LocalIot, data: bytes) -> tuple[str, str]:
    s3, iam = iot.client("s3"), iot.client("iam")
    bucket, stream_id, role = uid("fw"), uid("stream"), uid("role")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="fw.bin", Body=data)
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
    role_arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iot.client("iot").create_stream(
        streamId=stream_id, files=[{"fileId": 0, "s3Location": {"bucket": bucket, "key": "fw.bin"}}], roleArn=role_arn
    )
    return stream_id, role_arn


def test_create_ota_update_makes_the_afr_ota_job(iot: LocalIot, devices: Any) -> None:
    thing = uid("dev")
    device = devices(thing)
    stream_id, role_arn = _stream(iot, b"\x01" * 5000)
    client = iot.client("iot")
    ota_id = uid("ota")
    signature = b"\x30\x45fake-der-signature"
    created = client.create_ota_update(
        otaUpdateId=ota_id,
        targets=[thing_arn(iot, thing)],
        protocols=["MQTT"],
        files=[
            {
                "fileName": "/firmware/app.bin",
                "fileLocation": {"stream": {"streamId": stream_id, "fileId": 0}},
                "codeSigning": {
                    "customCodeSigning": {
                        "signature": {"inlineDocument": signature},
                        "certificateChain": {"certificateName": "/certs/code-signing.cert.pem"},
                        "hashAlgorithm": "SHA256",
                        "signatureAlgorithm": "ECDSA",
                    }
                },
            }
        ],
        roleArn=role_arn,
        awsJobExecutionsRolloutConfig={"maximumPerMinute": 10},
    )
    assert created["awsIotJobId"] == f"AFR_OTA-{ota_id}" and created["otaUpdateStatus"] == "CREATE_PENDING"
    info = client.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE" and info["awsIotJobId"] == created["awsIotJobId"]
    assert ota_id in [u["otaUpdateId"] for u in client.list_ota_updates()["otaUpdates"]]
    document = device.notification("notify-next")["execution"]["jobDocument"]
    assert document == {
        "afr_ota": {
            "protocols": ["MQTT"],
            "streamname": stream_id,
            "files": [
                {
                    "filepath": "/firmware/app.bin",
                    "filesize": 5000,
                    "fileid": 0,
                    "certfile": "/certs/code-signing.cert.pem",
                    "sig-sha256-ecdsa": base64.b64encode(signature).decode(),
                }
            ],
        }
    }
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.delete_ota_update(otaUpdateId=ota_id)  # its job is still IN_PROGRESS
    client.delete_ota_update(otaUpdateId=ota_id, forceDeleteAWSJob=True, deleteStream=True)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_ota_update(otaUpdateId=ota_id)
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_job(jobId=created["awsIotJobId"])
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.describe_stream(streamId=stream_id)


def test_jobs_survive_a_restart(tmp_path: Path) -> None:
    settings = LocalIotSettings(state_dir=tmp_path / "state")
    with LocalIot(settings) as first:
        client = first.client("iot")
        client.create_thing(thingName="keeper")
        job_id = create_job(first, ["keeper"])
        client.cancel_job_execution(jobId=job_id, thingName="keeper")
        other = create_job(first, ["keeper"])
    with LocalIot(settings) as second:
        client = second.client("iot")
        assert client.describe_job_execution(jobId=job_id, thingName="keeper")["execution"]["status"] == "CANCELED"
        assert client.describe_job(jobId=other)["job"]["status"] == "IN_PROGRESS"
        device = JobsDevice(second, "keeper", second.issue_device("keeper", tmp_path / "certs"))
        try:
            assert device.request("$next/get", {})[1]["execution"]["jobId"] == other
        finally:
            device.close()


# -- answers reach the device that asked, subscribed or not ------------------------------------------------------


class RawClient:
    """A paho client with only the subscriptions it is given: a device on the mutual-TLS listener (``paths``), MQTT
    3.1.1 as AWS's OTA agent over coreMQTT, or without ``paths`` a local tool on the plain listener (MQTT 5). Every
    delivered message goes to a queue; ``disconnected`` is set when the broker closes the connection."""

    def __init__(self, iot: LocalIot, client_id: str, subscriptions: list[str], paths: CertPaths | None = None) -> None:
        protocol = MQTTProtocolVersion.MQTTv311 if paths is not None else MQTTProtocolVersion.MQTTv5
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._kept: list[tuple[str, bytes]] = []
        self.disconnected = threading.Event()
        connected: queue.Queue[Any] = queue.Queue()
        subscribed: queue.Queue[list[Any]] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: connected.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(list(rcs))
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        if paths is not None:
            self.client.tls_set(
                ca_certs=iot.info["ca_cert"], certfile=str(paths.cert_path), keyfile=str(paths.key_path)
            )
            self.client.connect("localhost", iot.info["tls_port"])
        else:
            self.client.connect("127.0.0.1", iot.info["mqtt_port"])
        self.client.loop_start()
        assert not connected.get(timeout=TIMEOUT).is_failure
        for topic in subscriptions:
            self.client.subscribe(topic, qos=1)
            assert not any(rc.is_failure for rc in subscribed.get(timeout=TIMEOUT))

    def publish(self, topic: str, body: Any) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, json.dumps(body).encode(), qos=1)

    def next_on(self, *topics: str) -> tuple[str, dict[str, Any]]:
        """The next message on one of ``topics``; messages on other topics are kept for ``received()``."""
        deadline = time.monotonic() + TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                topic, payload = self.messages.get(timeout=remaining)
            except queue.Empty:
                break
            if topic in topics:
                return topic, json.loads(payload)
            self._kept.append((topic, payload))
        raise AssertionError(f"nothing on {topics} within {TIMEOUT} s; seen {self._kept}")

    def received(self) -> list[tuple[str, bytes]]:
        """Everything delivered and not returned by ``next_on``."""
        out, self._kept = self._kept, []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def test_an_answer_reaches_a_device_that_did_not_subscribe_to_it(iot: LocalIot, tmp_path: Path) -> None:
    """AWS's OTA agent subscribes to notify-next only, then asks ``$next/get``: the answer still reaches it, once."""
    thing = uid("agent")
    paths = iot.issue_device(thing, tmp_path / "certs")
    job_id = create_job(iot, [thing])
    jobs = f"$aws/things/{thing}/jobs/"
    with RawClient(iot, thing, [jobs + "notify-next"], paths) as agent:
        agent.publish(jobs + "$next/get", {"clientToken": "agent-1"})
        topic, answer = agent.next_on(jobs + "$next/get/accepted", jobs + "$next/get/rejected")
        assert topic == jobs + "$next/get/accepted" and answer["clientToken"] == "agent-1"
        assert answer["execution"]["jobId"] == job_id and answer["execution"]["status"] == "QUEUED"
        agent.publish(jobs + "no-such-job/update", {"status": "IN_PROGRESS", "clientToken": "agent-2"})
        topic, answer = agent.next_on(jobs + "no-such-job/update/accepted", jobs + "no-such-job/update/rejected")
        assert topic.endswith("/rejected") and answer["code"] == "ResourceNotFound"
        assert answer["clientToken"] == "agent-2"
        # The second round trip was answered after the first: a second copy of the first answer would be here.
        assert [t for t, _ in agent.received() if not t.endswith("/notify-next")] == []


def unread_topics(device: JobsDevice) -> list[str]:
    """The topics of the messages delivered to ``device`` and not read by a request or a notification wait."""
    unread = [topic for topic, _ in device._seen]
    device._seen.clear()
    while not device._messages.empty():
        unread.append(device._messages.get_nowait()[0])
    return unread


def unread_answers(device: JobsDevice) -> list[str]:
    """The unread answers (``accepted``/``rejected``) of ``device``; its own requests' echoes aside."""
    return [topic for topic in unread_topics(device) if topic.endswith(("/accepted", "/rejected"))]


def test_a_subscribed_device_gets_each_answer_once_and_no_one_else_sees_it(iot: LocalIot, devices: Any) -> None:
    thing = uid("dev")
    device = devices(thing)  # subscribed to $aws/things/<thing>/jobs/#
    bystander = devices(uid("dev"))
    with RawClient(iot, uid("monitor"), ["#", "$aws/things/+/jobs/#"]) as monitor:
        device.publish("get", {"clientToken": "first"})
        topic, payload = device.next_message(device.prefix + "get/accepted", device.prefix + "get/rejected")
        assert (topic, json.loads(payload)["clientToken"]) == (device.prefix + "get/accepted", "first")
        # Barrier: the next answer on the same topic; a second copy of the first would arrive before it.
        kind, answer = device.request("get", {"clientToken": "second"})
        assert (kind, answer["clientToken"]) == ("accepted", "second")
        assert unread_answers(device) == []
        # Barrier for the monitor: its own message comes back after everything routed to it before.
        monitor.publish("local-iot-test/marker", {})
        monitor.next_on("local-iot-test/marker")
        seen = [t for t, _ in monitor.received()]
        assert f"$aws/things/{thing}/jobs/get" in seen  # a local tool on the plain listener sees requests...
        assert [t for t in seen if t.endswith(("/accepted", "/rejected")) or t.startswith("local-iot/")] == []
    assert bystander.request("get", {})[0] == "accepted"
    assert unread_answers(bystander) == []


def test_a_device_cannot_send_a_jobs_reply_to_another_thing(iot: LocalIot, devices: Any, tmp_path: Path) -> None:
    victim = devices(uid("victim"))
    attacker_thing = uid("attacker")
    paths = iot.issue_device(attacker_thing, tmp_path / "attacker")
    forged = f"local-iot/jobs-reply/{victim.thing}/{victim.prefix}get/accepted"
    with RawClient(iot, attacker_thing, [], paths) as attacker:
        attacker.publish(forged, {"clientToken": "forged", "inProgressJobs": [], "queuedJobs": []})
        assert attacker.disconnected.wait(TIMEOUT), "a publish outside the device's topics closes its connection"
    # Barrier: the attacker's publish was handled before it was disconnected; the victim's next answer on the
    # same topic comes after anything that publish could have queued for it.
    kind, answer = victim.request("get", {"clientToken": "real"})
    assert (kind, answer["clientToken"]) == ("accepted", "real")
    assert unread_answers(victim) == []


def test_a_private_reply_reaches_only_its_things_own_jobs_topics(iot: LocalIot, devices: Any) -> None:
    """Even a local tool on the plain listener (trusted, as the Jobs service is) cannot use the private path to put
    a message on any other topic of a thing's client: mosquitto delivers a plugin's message to a client id without
    a read-permission check, so the plugin accepts only that thing's own Jobs topics."""
    victim = devices(uid("victim"))
    with RawClient(iot, uid("tool"), []) as tool:
        for answer_topic in ("$aws/things/someone-else/jobs/get/accepted", f"$aws/things/{victim.thing}/streams/x"):
            info = tool.publish(f"local-iot/jobs-reply/{victim.thing}/{answer_topic}", {"clientToken": "forged"})
            info.wait_for_publish(TIMEOUT)  # the broker has handled it (and dropped the private message)
    kind, answer = victim.request("get", {"clientToken": "real"})  # barrier: answered after those were handled
    assert (kind, answer["clientToken"]) == ("accepted", "real")
    unread = unread_topics(victim)
    assert [topic for topic in unread if not topic.startswith(victim.prefix)] == []
    assert [topic for topic in unread if topic.endswith(("/accepted", "/rejected"))] == []
