"""Fleet, sweep and demo end to end: local_iot, the real `provisioner up`, devices over mutual TLS, reports."""

from __future__ import annotations

import csv
import importlib.util
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import main as device_sim
from local_iot.runner import LocalIot
from provisioner.cli import main as provisioner

pytestmark = pytest.mark.e2e


def provision(
    iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, things: int, stream: str, size: str = "64KiB"
) -> Path:
    for key, value in iot.environment().items():
        monkeypatch.setenv(key, value)
    manifest = tmp_path / "run.json"
    result = CliRunner().invoke(
        provisioner,
        [
            "up",
            "--local",
            str(iot.state_dir),
            "--stream-id",
            stream,
            "--generate",
            size,
            "--seed",
            "3",
            "--bucket",
            f"{stream}-bucket",
            "--create-bucket",
            "--create-role",
            "--things",
            str(things),
            "--thing-prefix",
            stream,
            "--certs-dir",
            str(tmp_path / "certs"),
            "--manifest",
            str(manifest),
            "--tps",
            "1000",
        ],
    )
    assert result.exit_code == 0, result.output
    return manifest


@pytest.mark.slow
def test_fleet_with_faults_all_verified_or_explained(
    local_iot_factory: Callable[..., LocalIot], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iot = local_iot_factory(faults="drop=0.1,dup=0.05,reorder=0.1,delay=0.05:50ms", seed=11)
    manifest = provision(iot, tmp_path, monkeypatch, things=20, stream="fleetfaults")
    reports = tmp_path / "reports"
    result = CliRunner().invoke(
        device_sim,
        [
            "fleet",
            "--manifest",
            str(manifest),
            "--report-dir",
            str(reports),
            "--quiet",
            "--block-size",
            "1KiB",
            "--connect-rate",
            "200",
            "--deadline",
            "120",
        ],
    )
    summary = json.loads((reports / "summary.json").read_text())
    rows = list(csv.DictReader((reports / "devices.csv").read_text().splitlines()))
    assert len(rows) == 20
    # Every device verified, or its failure is explained with a reason and a message.
    for row in rows:
        assert row["verified"] == "true" or (row["failure_reason"] and row["failure_message"]), row
    verified = sum(row["verified"] == "true" for row in rows)
    assert result.exit_code == (0 if verified == 20 else 1), result.output
    assert verified >= 18, [r["failure_message"] for r in rows if r["verified"] != "true"]
    # The faults really happened and were recovered from.
    assert sum(int(r["re_requests"]) for r in rows) > 0
    assert sum(int(r["duplicates"]) for r in rows) > 0
    assert summary["summary"]["devices"] == 20 and summary["summary"]["verified"] == verified
    # junit.xml parses and its counts match the CSV.
    suite = ET.parse(reports / "junit.xml").getroot()
    assert suite.tag == "testsuite"
    assert int(suite.get("tests")) == 20
    assert int(suite.get("failures")) == 20 - verified
    assert len(suite.findall("testcase")) == 20
    assert (reports / "report.html").read_text().count("<svg") >= 2


def test_sweep_of_two_settings(local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = provision(local_iot, tmp_path, monkeypatch, things=3, stream="sweep2", size="40KiB")
    reports = tmp_path / "sweep"
    result = CliRunner().invoke(
        device_sim,
        [
            "sweep",
            "--manifest",
            str(manifest),
            "--report-dir",
            str(reports),
            "--quiet",
            "--block-sizes",
            "1KiB,8KiB",
            "--flow-control",
            "none",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "best by time" in result.output.lower() and "best by cost" in result.output.lower()
    html = (reports / "report.html").read_text()
    assert html.count("<svg") >= 3
    assert "1KiB" in html and "8KiB" in html
    summary = json.loads((reports / "summary.json").read_text())
    points = summary["sweep"]["points"]
    assert [p["block_size"] for p in points] == [1024, 8192]
    rows = list(csv.DictReader((reports / "devices.csv").read_text().splitlines()))
    assert len(rows) == 6 and all(r["verified"] == "true" for r in rows)
    # Smaller blocks need more messages: the sweep's numbers reflect that.
    by_size = {p["block_size"]: p["summary"] for p in points}
    assert by_size[1024]["blocks"] > by_size[8192]["blocks"]


def test_download_from_a_local_manifest_needs_no_aws_environment(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = provision(local_iot, tmp_path, monkeypatch, things=1, stream="noenv", size="20KiB")
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    result = CliRunner().invoke(device_sim, ["download", "--manifest", str(manifest), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["verified"] is True and summary["bytes"] == 20 * 1024


@pytest.mark.slow
def test_fleet_engine_locust_routes_to_the_locust_fleet(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("locust") is None:  # never import locust here: it monkey-patches this process
        pytest.skip("locust is not installed")
    manifest = provision(local_iot, tmp_path, monkeypatch, things=6, stream="viaengine", size="16KiB")
    reports = tmp_path / "locust-reports"
    result = CliRunner().invoke(
        device_sim,
        [
            "fleet",
            "--manifest",
            str(manifest),
            "--engine",
            "locust",
            "--processes",
            "2",
            "--report-dir",
            str(reports),
            "--quiet",
            "--deadline",
            "120",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((reports / "summary.json").read_text())["summary"]
    assert summary["devices"] == 6 and summary["verified"] == 6
    settings = summary["settings"]
    assert (dict(settings) if isinstance(settings, list) else settings).get("engine") == "locust", settings
    # the Locust options belong to the Locust engine
    refused = CliRunner().invoke(device_sim, ["fleet", "--manifest", str(manifest), "--processes", "2"])
    assert refused.exit_code == 2 and "--engine locust" in refused.output


def test_fleet_bad_arguments(tmp_path: Path) -> None:
    result = CliRunner().invoke(device_sim, ["fleet", "--manifest", str(tmp_path / "none.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


@pytest.mark.slow
def test_demo_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        device_sim,
        [
            "demo",
            "--devices",
            "8",
            "--size",
            "256KiB",
            "--latency-ms",
            "20",
            "--work-dir",
            "work",
            "--report-dir",
            "out",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "demo ok: 8/8 devices" in result.output
    suite = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert int(suite.get("tests")) == 8 and int(suite.get("failures")) == 0
    assert "removed" in result.output  # cleanup ran
