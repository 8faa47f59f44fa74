"""The jobs part of a fleet report (``device-sim fleet --jobs``): per device the job id, the execution's final status
and the reason it gave, and the executions counted by status.

``jobs.csv`` has one row per device (``thing_name,job_id,status,reason``); ``jobs.json`` holds
``{"by_status": {...}, "job_ids": [...], "devices": [...]}``. The other report files come from ``write_reports``:
a device whose execution did not end SUCCEEDED is not verified there (``failure_reason`` ``job:<status>``), so its
JUnit case fails.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from device_sim.fileio import atomic_write

__all__ = ["JOBS_FILES", "by_status", "render_jobs_csv", "render_jobs_json", "write_jobs_reports"]

JOBS_FILES = ("jobs.csv", "jobs.json")
_COLUMNS = ("thing_name", "job_id", "status", "reason")


def by_status(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(str(r["status"]) for r in rows).items()))


def render_jobs_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in _COLUMNS])
    return out.getvalue()


def render_jobs_json(rows: Sequence[Mapping[str, Any]]) -> str:
    job_ids = sorted({str(r["job_id"]) for r in rows if r.get("job_id")})
    document = {"by_status": by_status(rows), "job_ids": job_ids, "devices": [dict(r) for r in rows]}
    return json.dumps(document, indent=2) + "\n"


def write_jobs_reports(report_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write jobs.csv and jobs.json into ``report_dir`` (which exists); returns their paths."""
    paths = []
    for name, text in (("jobs.csv", render_jobs_csv(rows)), ("jobs.json", render_jobs_json(rows))):
        path = report_dir / name
        atomic_write(path, text)
        paths.append(path)
    return paths
