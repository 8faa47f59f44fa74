"""The jobs part of fleet reports: per-device job fields in DeviceMetrics and devices.csv, executions counted by
status in the summary, jobs.csv/jobs.json."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from device_sim.results.files import render_devices_csv
from device_sim.results.jobs import render_jobs_csv, render_jobs_json, write_jobs_reports
from device_sim.results.metrics import DeviceMetrics, FleetSummary, aggregate


def _records() -> list[DeviceMetrics]:
    ok = DeviceMetrics(thing_name="a", verified=True, job_id="j", job_status="SUCCEEDED", job_reason="accepted")
    bad = DeviceMetrics(
        thing_name="b", failure_reason="job:FAILED", failure_message="signature check failed", job_id="j",
        job_status="FAILED", job_reason="signature check failed",
    )  # fmt: skip
    plain = DeviceMetrics(thing_name="c", verified=True)  # a stream download, no job
    return [ok, bad, plain]


def test_summary_counts_executions_by_status_and_round_trips() -> None:
    summary = aggregate(_records(), wall_s=1.0)
    assert dict(summary.executions_by_status) == {"FAILED": 1, "SUCCEEDED": 1}
    data = summary.to_dict()
    assert data["executions_by_status"] == {"FAILED": 1, "SUCCEEDED": 1}
    assert FleetSummary.from_dict(json.loads(json.dumps(data))) == summary
    assert DeviceMetrics.from_dict(_records()[1].to_dict()) == _records()[1]


def test_devices_csv_carries_the_job_columns() -> None:
    rows = list(csv.DictReader(io.StringIO(render_devices_csv(_records()))))
    assert [(r["job_id"], r["job_status"], r["job_reason"]) for r in rows] == [
        ("j", "SUCCEEDED", "accepted"), ("j", "FAILED", "signature check failed"), ("", "", "")
    ]  # fmt: skip


def test_jobs_files(tmp_path: Path) -> None:
    rows = [
        {"thing_name": "a", "job_id": "j", "status": "SUCCEEDED", "reason": "accepted"},
        {"thing_name": "b", "job_id": None, "status": "NO_JOB", "reason": "no pending job within 1 s"},
    ]
    assert render_jobs_csv(rows).splitlines() == [
        "thing_name,job_id,status,reason", "a,j,SUCCEEDED,accepted", "b,,NO_JOB,no pending job within 1 s"
    ]  # fmt: skip
    document = json.loads(render_jobs_json(rows))
    assert document["by_status"] == {"NO_JOB": 1, "SUCCEEDED": 1} and document["job_ids"] == ["j"]
    paths = write_jobs_reports(tmp_path, rows)
    assert [p.name for p in paths] == ["jobs.csv", "jobs.json"] and all(p.exists() for p in paths)
