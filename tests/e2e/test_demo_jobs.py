"""``device-sim demo --jobs``: the whole OTA rollout offline (provision, ota create, fleet --jobs, ota status,
cleanup) in one command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import main as device_sim

pytestmark = pytest.mark.e2e


def test_demo_jobs_rolls_out_through_one_ota_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--jobs", "--devices", "6", "--size", "128KiB", "--latency-ms", "10", "--work-dir", "work"]
    result = CliRunner().invoke(device_sim, [*args, "--report-dir", "out"])
    assert result.exit_code == 0, result.output
    assert "demo ok: 6 devices followed the OTA job to SUCCEEDED" in result.output
    assert "6 things: 6 SUCCEEDED" in result.output  # provisioner ota status
    jobs = json.loads((tmp_path / "out" / "jobs.json").read_text())
    assert jobs["by_status"] == {"SUCCEEDED": 6} and len(jobs["job_ids"]) == 1
    assert "removed, 0 already gone, 0 not removed" in result.output  # cleanup removed the OTA update too
    assert not (tmp_path / "work" / "certs" / "code-signing.private.key").exists()
