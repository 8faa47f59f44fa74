"""The broker's certificate registry and the state saver (local_iot.persistence) behind a real control plane.

The registry is checked the way the broker sees it: the file is read the moment a boto3 call returns (no waiting),
and compared with a full render of moto's state; calls that cannot change it must leave the file itself alone
(same inode, size and mtime: the writer replaces the file by a rename, so any write changes the inode).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local_iot import persistence
from local_iot.ca import LocalCA
from local_iot.control_plane import ControlChange, ControlPlane
from local_iot.persistence import (
    SAVE_DELAY,
    SAVE_SPACING,
    RegistryWriter,
    StateSaver,
    registry_effect,
    render_registry,
    save_delay,
)


@dataclass
class Emulator:
    cp: ControlPlane
    registry: RegistryWriter
    ca: LocalCA
    certs: Path

    @property
    def iot(self) -> Any:
        return self.cp.client("iot")

    def text(self) -> str:
        return self.registry.path.read_text()

    def full_render(self) -> str:
        with self.cp.lock:
            return render_registry(self.cp.account_id, self.cp.region)

    def file_id(self) -> tuple[int, int, int]:
        st = os.stat(self.registry.path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def register(self, name: str, status: str = "ACTIVE") -> str:
        paths = self.ca.issue_device_files(self.certs, name)
        answer = self.iot.register_certificate_without_ca(certificatePem=paths.cert_path.read_text(), status=status)
        return str(answer["certificateArn"])


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with ControlPlane() as cp:
        cp.reset()  # moto's state is process-wide: start from an empty account
        writer = RegistryWriter(tmp_path / "registry", cp.account_id, cp.region)
        with cp.lock:
            writer.rebuild()

        def on_change(change: ControlChange) -> None:  # as LocalIot wires it
            writer.apply(change)

        cp.add_change_listener(on_change)
        ca = LocalCA.create(tmp_path / "ca")
        yield Emulator(cp, writer, ca, tmp_path / "certs")
        cp.reset()


def line_of(text: str, certificate_id: str) -> str | None:
    return next((line for line in text.splitlines() if line.startswith(certificate_id + " ")), None)


def test_every_registry_change_is_in_the_file_when_the_call_returns(emulator: Emulator) -> None:
    e, iot = emulator, emulator.iot
    for name in ("dev-a", "dev-b"):
        iot.create_thing(thingName=name)
    arn = e.register("dev-a")
    cid = arn.rsplit("/", 1)[1]
    assert line_of(e.text(), cid) == f"{cid} ACTIVE -"
    assert e.text() == e.full_render()

    iot.attach_thing_principal(thingName="dev-b", principal=arn)
    assert line_of(e.text(), cid) == f"{cid} ACTIVE dev-b"
    iot.attach_thing_principal(thingName="dev-a", principal=arn)
    assert line_of(e.text(), cid) == f"{cid} ACTIVE dev-a,dev-b"
    assert e.text() == e.full_render()

    iot.update_certificate(certificateId=cid, newStatus="INACTIVE")
    assert line_of(e.text(), cid) == f"{cid} INACTIVE dev-a,dev-b"
    iot.detach_thing_principal(thingName="dev-b", principal=arn)
    assert line_of(e.text(), cid) == f"{cid} INACTIVE dev-a"

    made = iot.create_keys_and_certificate(setAsActive=True)
    assert line_of(e.text(), made["certificateId"]) == f"{made['certificateId']} ACTIVE -"
    other = e.register("dev-c", status="INACTIVE")
    assert e.text() == e.full_render()

    iot.detach_thing_principal(thingName="dev-a", principal=arn)
    iot.delete_certificate(certificateId=cid)
    assert line_of(e.text(), cid) is None
    iot.delete_thing(thingName="dev-a")
    assert e.text() == e.full_render()
    assert line_of(e.text(), other.rsplit("/", 1)[1]) is not None
    assert e.registry.rebuilds == 1, "every change above was applied line by line, not by a full re-render"

    e.cp.reset()  # moto-api: everything goes
    assert e.text() == e.full_render() == render_registry(e.cp.account_id, e.cp.region)
    assert e.text().count("\n") == 1  # the header only


def test_calls_that_cannot_change_the_registry_leave_the_file_alone(emulator: Emulator) -> None:
    e, iot = emulator, emulator.iot
    iot.create_thing(thingName="dev-a")
    arn = e.register("dev-a")
    iot.attach_thing_principal(thingName="dev-a", principal=arn)
    before, writes = e.file_id(), e.registry.writes

    iot.create_thing(thingName="dev-b")
    iot.update_thing(thingName="dev-b", attributePayload={"attributes": {"k": "v"}})
    iot.create_policy(policyName="p", policyDocument='{"Version": "2012-10-17", "Statement": []}')
    iot.attach_policy(policyName="p", target=arn)
    iot.delete_thing(thingName="dev-b")  # no certificate on it: no line changes
    iot.attach_thing_principal(thingName="dev-a", principal=arn)  # already attached: nothing changes
    e.cp.client("s3").create_bucket(Bucket="not-iot")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_certificate(certificateId="0" * 64, newStatus="INACTIVE")

    assert e.file_id() == before
    assert e.registry.writes == writes
    assert e.text() == e.full_render()


@pytest.mark.parametrize(
    ("method", "path", "principal", "effect"),
    [
        ("POST", "/certificate/register-no-ca", "", ("new-certificates", None)),
        ("POST", "/certificate/register", "", ("new-certificates", None)),
        ("POST", "/keys-and-certificate", "", ("new-certificates", None)),
        ("POST", "/certificates", "", ("new-certificates", None)),
        ("PUT", "/certificates/abc", "", ("certificate", "abc")),
        ("DELETE", "/certificates/abc", "", ("certificate", "abc")),
        ("PATCH", "/transfer-certificate/abc", "", ("certificate", "abc")),
        ("PATCH", "/accept-certificate-transfer/abc", "", ("certificate", "abc")),
        ("PUT", "/things/t-1/principals", "arn:c", ("attachment", ("t-1", "arn:c"))),
        ("DELETE", "/things/t-1/principals", "arn:c", ("attachment", ("t-1", "arn:c"))),
        ("PUT", "/things/t-1/principals", "", ("rebuild", None)),  # no principal header: cannot tell which
        ("DELETE", "/things/t-1", "", ("thing-deleted", "t-1")),
        ("POST", "/things", "", ("rebuild", None)),
        ("POST", "/things/t-1", "", ("none", None)),  # CreateThing
        ("PATCH", "/things/t-1", "", ("none", None)),  # UpdateThing
        ("PUT", "/things/t-1/jobs/j/cancel", "", ("none", None)),
        ("POST", "/policies/p", "", ("none", None)),
        ("PUT", "/target-policies/p", "", ("none", None)),  # AttachPolicy
        ("POST", "/certificate-providers/x", "", ("none", None)),
        ("POST", "/cacertificate", "", ("none", None)),
    ],
)
def test_registry_effect_of_iot_requests(method: str, path: str, principal: str, effect: tuple[str, object]) -> None:
    assert registry_effect(ControlChange(service="iot", method=method, path=path, principal=principal)) == effect


def test_registry_effect_of_other_services_and_moto_api() -> None:
    assert registry_effect(ControlChange(service="s3", method="DELETE", path="/certificates/abc")) == ("none", None)
    assert registry_effect(ControlChange(service="", method="POST", path="/moto-api/reset")) == ("rebuild", None)
    assert registry_effect(ControlChange(service="", method="DELETE", path="/certificates/abc")) == (
        "certificate",
        "abc",
    )


def test_the_first_rebuild_replaces_a_file_left_by_an_earlier_run(emulator: Emulator, tmp_path: Path) -> None:
    stale = tmp_path / "stale-registry"
    stale.write_text("f" * 64 + " ACTIVE old-thing\n")
    writer = RegistryWriter(stale, emulator.cp.account_id, emulator.cp.region)
    with emulator.cp.lock:
        assert writer.rebuild()
        assert not writer.rebuild()  # unchanged: not written again
    assert stale.read_text() == emulator.full_render()
    assert oct(stale.stat().st_mode & 0o777) == oct(0o600)


# -- the state saver ------------------------------------------------------------------------------------------------


def test_save_delay_grows_with_the_snapshot_time() -> None:
    assert save_delay(0.0) == SAVE_DELAY
    assert save_delay(SAVE_DELAY / SAVE_SPACING / 2) == SAVE_DELAY
    assert save_delay(0.3) == pytest.approx(0.3 * SAVE_SPACING)


def test_a_slow_snapshot_spaces_the_next_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot_s = 0.08  # the next save waits at least SAVE_SPACING times that (0.8 s)
    started: list[float] = []
    ended: list[float] = []

    def slow_snapshot() -> bytes:
        started.append(time.monotonic())
        time.sleep(snapshot_s)
        return b"state"

    monkeypatch.setattr(persistence, "snapshot", slow_snapshot)
    saver = StateSaver(tmp_path / "state.pickle", threading.RLock()).start()
    try:
        saver.changed()
        deadline = time.monotonic() + 30
        while saver.saves < 1:
            assert time.monotonic() < deadline, "no first save"
            time.sleep(0.01)
        ended.append(time.monotonic())
        saver.changed()
        while saver.saves < 2:
            assert time.monotonic() < deadline, "no second save"
            time.sleep(0.01)
    finally:
        saver.stop()
    assert saver.last_snapshot_s >= snapshot_s
    assert started[1] - ended[0] >= SAVE_SPACING * snapshot_s * 0.95
    assert (tmp_path / "state.pickle").read_bytes() == b"state"


def test_stop_does_not_wait_for_a_long_spacing_and_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persistence, "snapshot", lambda: b"last")
    saver = StateSaver(tmp_path / "state.pickle", threading.RLock()).start()
    saver.last_snapshot_s = 60.0  # as after a huge snapshot: the next save is 10 minutes away
    saver.save_now()
    saver.last_snapshot_s = 60.0
    saver.changed()
    began = time.monotonic()
    saver.stop()
    assert time.monotonic() - began < 5
    assert saver.saves == 2
    assert (tmp_path / "state.pickle").read_bytes() == b"last"
