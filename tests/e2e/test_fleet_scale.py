"""A fleet at scale in CI (200 devices) and one manifest run as two shards whose reports merge into one."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import main as device_sim
from device_sim.device.device import DownloadSettings, SinkKind
from device_sim.device.verify import S3Source
from device_sim.fleet.plan import FleetSettings, read_target
from device_sim.fleet.runner import FleetProgress, run_fleet
from device_sim.results.files import read_devices_jsonl
from device_sim.transport import FlowControl
from local_iot.runner import LocalIot
from tests.e2e.test_fleet import provision

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_two_hundred_devices_verify_and_report_their_memory(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = provision(local_iot, tmp_path, monkeypatch, things=200, stream="scale200", size="64KiB")
    target, identities = read_target(manifest)
    progress = FleetProgress()
    run = asyncio.run(
        run_fleet(
            target,
            identities,
            DownloadSettings(block_size=4096, sink=SinkKind.DIGEST),
            FleetSettings(connect_rate=500, transport={"flow_control": FlowControl.AWS}),
            source=S3Source(),
            progress=progress,
        )
    )
    s = run.summary
    assert (s.devices, s.verified) == (200, 200), dict(s.failures_by_reason)
    assert s.bytes_verified == 200 * 64 * 1024
    assert (progress.verified, progress.failed, progress.connecting, progress.downloading) == (200, 0, 0, 0)
    assert not run.interrupted
    assert run.memory is not None  # Linux: the fleet measures its resident memory
    assert run.memory.devices == 200 and run.memory.peak_kib >= run.memory.start_kib
    # A leak guard, not the benchmark's target (the emulator runs in this process too): a device holding its
    # 64 KiB file, its connection and its records stays far below 1 MiB.
    assert run.memory.per_device_kib < 1024


def test_two_shards_run_disjoint_things_and_merge_into_one_report(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = provision(local_iot, tmp_path, monkeypatch, things=5, stream="shards", size="24KiB")
    parts = []
    for shard in ("1/2", "2/2"):
        part = tmp_path / f"part{shard[0]}"
        result = CliRunner().invoke(
            device_sim,
            ["fleet", "--manifest", str(manifest), "--shard", shard, "--report-dir", str(part), "--quiet"],
        )
        assert result.exit_code == 0, result.output
        assert "KiB per device" in result.output  # the memory line
        parts.append(part)
    first, second = ([r.thing_name for r in read_devices_jsonl(p / "devices.jsonl")] for p in parts)
    assert first == ["shards-0", "shards-1"] and second == ["shards-2", "shards-3", "shards-4"]

    merged = tmp_path / "merged"
    result = CliRunner().invoke(device_sim, ["report", "merge", *map(str, parts), "--report-dir", str(merged)])
    assert result.exit_code == 0, result.output
    summary = json.loads((merged / "summary.json").read_text())["summary"]
    assert (summary["devices"], summary["verified"], summary["bytes_verified"]) == (5, 5, 5 * 24 * 1024)
    assert dict(summary["settings"])["parts"] == 2
    suite = ET.parse(merged / "junit.xml").getroot()
    assert int(suite.get("tests")) == 5 and int(suite.get("failures")) == 0

    overlapping = CliRunner().invoke(
        device_sim,
        ["fleet", "--manifest", str(manifest), "--offset", "4", "--devices", "2", "--report-dir", str(tmp_path / "x")],
    )
    assert overlapping.exit_code == 2 and "only 1 things are left" in overlapping.output
