"""The fleet plan: the one reader of a provisioner manifest, and the plan as data across processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_sim.device.jobs import JobSettings
from device_sim.device.types import DownloadSettings, SinkKind
from device_sim.fleet.plan import (
    FleetPlan,
    FleetSettings,
    PlanError,
    Shard,
    device_from_manifest,
    read_target,
)
from device_sim.protocol import Format
from device_sim.transport import FlowControl, MqttProtocol, QoS
from provisioner.manifest import Manifest, MqttEndpoint, StreamRecord, ThingRecord, save_manifest


def _manifest(tmp_path: Path, *, things: int = 4, certs: bool = True, name: str = "run.json") -> Path:
    certs_dir = tmp_path / "certs"
    records = tuple(
        ThingRecord(
            name=f"sim-{i}",
            arn=f"arn:aws:iot:us-east-1:123456789012:thing/sim-{i}",
            cert_path=certs_dir / f"sim-{i}.cert.pem" if certs else None,
            key_path=certs_dir / f"sim-{i}.private.key" if certs else None,
        )
        for i in range(things)
    )
    manifest = Manifest(
        run_id="r1",
        region="eu-west-1",
        account_id="123456789012",
        created_at="now",
        aws_endpoint_url="http://127.0.0.1:5000",
        mqtt=MqttEndpoint(host="127.0.0.1", port=8883, ca_path=tmp_path / "ca.pem", plain_port=1884),
        stream=StreamRecord(
            stream_id="fw", stream_arn="arn:stream/fw", version=1, description="", role_arn="arn:role", files=()
        ),
        things=records,
    )
    path = tmp_path / name
    save_manifest(manifest, path)
    return path


def test_target_and_identities_come_from_the_manifest(tmp_path: Path) -> None:
    target, identities = read_target(_manifest(tmp_path))
    assert (target.endpoint, target.port, target.stream_id, target.region) == ("127.0.0.1", 8883, "fw", "eu-west-1")
    assert target.ca == tmp_path / "ca.pem" and target.aws_endpoint_url == "http://127.0.0.1:5000"
    assert [i.thing_name for i in identities] == ["sim-0", "sim-1", "sim-2", "sim-3"]
    assert identities[2].cert == tmp_path / "certs" / "sim-2.cert.pem"
    plain, plain_ids = read_target(_manifest(tmp_path), no_tls=True)
    assert plain.port == 1884 and plain.ca is None and plain_ids[0].cert is None


def test_things_without_certificates_are_not_devices(tmp_path: Path) -> None:
    _, identities = read_target(_manifest(tmp_path, certs=False))
    assert identities == []
    with pytest.raises(PlanError, match="no things with certificates"):
        FleetPlan.load(_manifest(tmp_path, certs=False))


def test_a_missing_or_broken_manifest_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError):
        read_target(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanError):
        FleetPlan.load(tmp_path / "bad.json")


def test_one_device_by_name_or_the_first(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    assert device_from_manifest(path, None).identity.thing_name == "sim-0"
    chosen = device_from_manifest(path, "sim-3")
    assert chosen.identity.key == tmp_path / "certs" / "sim-3.private.key" and chosen.plain_port == 1884
    with pytest.raises(PlanError, match="'sim-9' is not in"):
        device_from_manifest(path, "sim-9")


def test_the_plan_selects_its_shard(tmp_path: Path) -> None:
    plan = FleetPlan.load(_manifest(tmp_path), shard=Shard(index=2, count=2), offset=1)
    assert [i.thing_name for i in plan.identities] == ["sim-3"]
    with pytest.raises(PlanError, match="--shard/--offset/--devices"):
        FleetPlan.load(_manifest(tmp_path), devices=5)


def test_the_plan_survives_json_and_is_resolved_against_another_machines_manifest(tmp_path: Path) -> None:
    plan = FleetPlan.load(
        _manifest(tmp_path),
        no_tls=False,
        shard=Shard(index=1, count=2),
        devices=2,
        download=DownloadSettings(
            format=Format.JSON, block_size=8192, blocks_per_request=4, inflight=2, file_ids=(0, 2), verify_s3=False
        ),
        fleet=FleetSettings(
            connect_rate=20.0,
            deadline_s=30.0,
            seed=7,
            transport={"protocol": MqttProtocol.MQTT311, "flow_control": FlowControl.NONE, "qos": QoS.AT_LEAST_ONCE},
        ),
        report_dir=tmp_path / "reports",
    )
    text = plan.to_json()
    assert "sim-0" not in text  # identities are not carried: every machine reads its own manifest
    json.loads(text)
    again = FleetPlan.from_json(text)
    assert again == plan
    assert again.download.file_ids == (0, 2) and again.download.sink is SinkKind.DIGEST
    other = tmp_path / "elsewhere"
    other.mkdir()
    remote = FleetPlan.from_json(text, manifest=_manifest(other))
    assert remote.identities[0].cert == other / "certs" / "sim-0.cert.pem"
    assert [i.thing_name for i in remote.identities] == ["sim-0", "sim-1"]
    assert again.jobs is None


def test_a_jobs_plan_carries_its_job_settings(tmp_path: Path) -> None:
    jobs = JobSettings(wait_s=5.0, progress_interval_s=0.5, step_timeout_minutes=3, signing_cert=tmp_path / "cs.pem")
    plan = FleetPlan.load(_manifest(tmp_path), jobs=jobs)
    again = FleetPlan.from_json(plan.to_json())
    assert again.jobs == jobs and isinstance(again.jobs.signing_cert, Path)
    unsigned = FleetPlan.from_json(FleetPlan.load(_manifest(tmp_path), jobs=JobSettings()).to_json())
    assert unsigned.jobs == JobSettings()


def test_a_damaged_plan_says_so(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not a fleet plan"):
        FleetPlan.from_json('{"manifest": "x"}')
    with pytest.raises(PlanError, match="not a fleet plan"):
        FleetPlan.from_json("[1, 2")
