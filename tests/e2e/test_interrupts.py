"""Interrupted devices and fleets against a real local_iot: the right exit code, the report still printed or
written, partial progress kept, and the part file kept exactly when the download can resume.

``device-sim download`` and ``device-sim fleet`` run as real processes and get real signals; a fleet stopped by
``--deadline`` runs in this process. The downloads are slowed on the client side (256-byte blocks, one or two per
request, AWS's 100 publishes/s flow control), so each takes seconds and a stop lands while blocks arrive. Every
wait is on a condition (a block in the part file, the bitmap, the service's counters) with a deadline; every
process started here is stopped by its pid.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import main as device_sim
from local_iot.runner import LocalIot

from .device_support import run_cli
from .streams import make_stream
from .test_fleet import provision

pytestmark = pytest.mark.e2e
TIMEOUT = 30.0
DATA_SIZE = 300_000  # 1172 blocks of 256 B: about 6 s at two blocks per request and 100 requests/s
BLOCKS = -(-DATA_SIZE // 256)


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}: {out!r} {err!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling interval of the condition, not a synchronisation by itself


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()


def _start(args: list[str], env: dict[str, str], started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_sim", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    started.append(proc)
    return proc


def _first_block_stored(part: Path) -> bool:
    """Block 0 (random data) is in the part file: the device has stored at least one block."""
    try:
        with open(part, "rb") as fh:
            return any(fh.read(256))
    except FileNotFoundError:
        return False


def _bitmap_has_progress(state_dir: Path) -> bool:
    for bitmap in state_dir.glob("*.bitmap"):
        try:
            if any(bitmap.read_bytes()):
                return True
        except FileNotFoundError:  # replaced between glob and read
            continue
    return False


@pytest.fixture(scope="module")
def slow_stream(local_iot: LocalIot) -> bytes:
    data = os.urandom(DATA_SIZE)
    make_stream(local_iot, "intr_dl", data)
    return data


# --------------------------------------------------------------------------------------------- download


@pytest.mark.parametrize(
    ("sig", "resumable"),
    [
        pytest.param(signal.SIGINT, False, id="sigint"),
        pytest.param(signal.SIGTERM, False, id="sigterm"),
        pytest.param(signal.SIGTERM, True, id="sigterm-state-dir"),
    ],
)
def test_an_interrupted_download_reports_exits_130_or_143_and_keeps_the_part_file_only_to_resume(
    local_iot: LocalIot,
    slow_stream: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: list[subprocess.Popen[bytes]],
    sig: signal.Signals,
    resumable: bool,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out, part, state = work / "fw.bin", work / "fw.bin.part", work / "state"
    thing = f"t-intr-{sig.name.lower()}-{resumable}"
    args = ["download", "--endpoint", "127.0.0.1", "--port", str(local_iot.info["mqtt_port"]), "--no-tls"]
    args += ["--thing", thing, "--stream", "intr_dl", "--block-size", "256", "--out", str(out), "--json"]
    args += ["--state-dir", str(state)] if resumable else []
    env = {**os.environ, **local_iot.environment()}
    proc = _start([*args, "--blocks-per-request", "2", "--flow-control", "aws"], env, processes)
    if resumable:
        wait_for(lambda: _bitmap_has_progress(state), "a persisted bitmap", proc)
    else:
        wait_for(lambda: _first_block_stored(part), "the first block in the part file", proc)
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)

    assert proc.returncode == 128 + sig, (stdout, stderr)
    assert b"Traceback" not in stderr and b"Aborted" not in stderr, stderr
    lines = stdout.decode().strip().splitlines()
    assert len(lines) == 1, stdout
    summary = json.loads(lines[0])
    assert summary["failure"] == "interrupted" and summary["verified"] is False
    assert summary["thing"] == thing and summary["file_ids"] == [0]
    blocks = summary["blocks_received"]
    assert 0 < blocks < BLOCKS and summary["bytes"] == 256 * blocks
    message = summary["message"]
    assert message.startswith(f"interrupted by {sig.name} (stopped while downloading ({blocks} of {BLOCKS} blocks)); ")
    assert not out.exists()
    if not resumable:
        assert message.endswith("nothing was kept (no --state-dir): the same command starts over; add --state-dir DIR "
                                "to resume")  # fmt: skip
        assert list(work.iterdir()) == []  # the part file is gone, nothing else was made
        return
    assert message.endswith(f"the same command resumes from the blocks kept in {state}")
    assert part.exists() and sorted(p.name for p in state.iterdir()) == ["fw.bin.bitmap", "fw.bin.resume.json"]

    # The same command (without the slow client-side pacing) resumes from the kept blocks and verifies.
    for name, value in local_iot.environment().items():
        monkeypatch.setenv(name, value)
    again = run_cli([*args, "--flow-control", "none"])
    assert again.exit_code == 0, (again.stderr, again.summary)
    assert again.summary is not None and again.summary["verified"] is True
    resumed = again.summary["files"][0]["resumed_blocks"]
    assert 0 < resumed <= blocks and again.summary["blocks_received"] == BLOCKS - resumed
    assert out.read_bytes() == slow_stream
    assert sorted(p.name for p in work.iterdir()) == ["fw.bin", "state"] and list(state.iterdir()) == []


# ------------------------------------------------------------------------------------------------- fleet

STOPPED = re.compile(r"stopped while downloading \((\d+) of (\d+) blocks\)")
FLEET_SIZE = "128KiB"  # 512 blocks of 256 B, one per request at <= 100 requests/s: over 5 s per device
FLEET_BLOCKS = 512
SLOW = ["--block-size", "256", "--blocks-per-request", "1", "--flow-control", "aws", "--quiet"]


def _check_partial_reports(reports: Path, things: int) -> list[dict[str, str]]:
    """Every report file holds every device with what it had done when the run stopped; returns the CSV rows."""
    rows = list(csv.DictReader((reports / "devices.csv").read_text().splitlines()))
    records = [json.loads(line) for line in (reports / "devices.jsonl").read_text().splitlines()]
    assert len(rows) == len(records) == things
    for row, record in zip(rows, records, strict=True):
        assert row["thing_name"] == record["thing_name"]
        assert row["verified"] == "false" and row["failure_reason"] == record["failure_reason"] == "cancelled", row
        assert row["failure_message"] == record["failure_message"]
        match = STOPPED.fullmatch(record["failure_message"])
        if int(row["blocks"]) > 0:  # a device that had blocks: its message, connect time and counters say so
            assert match is not None, record["failure_message"]
            assert int(match[1]) == record["blocks"] == int(row["blocks"]) and int(match[2]) == FLEET_BLOCKS
            assert record["connect_s"] is not None and float(row["connect_s"]) > 0
            assert record["bytes"] == 256 * record["blocks"] and record["requests"] >= record["blocks"]
        else:
            assert record["failure_message"].startswith("stopped while ") or record["failure_message"] == (
                "the run stopped before this device started"
            ), record["failure_message"]
    assert any(int(row["blocks"]) > 0 for row in rows), rows
    summary = json.loads((reports / "summary.json").read_text())["summary"]
    assert summary["devices"] == things and summary["verified"] == 0
    assert summary["blocks"] == sum(r["blocks"] for r in records) > 0
    assert summary["bytes_total"] == sum(r["bytes"] for r in records)
    assert summary["failures_by_reason"] == {"cancelled": things}
    assert summary["connect_s"]["count"] == sum(r["connect_s"] is not None for r in records) > 0
    suite = ET.parse(reports / "junit.xml").getroot()
    failures = {case.get("name"): case.find("failure") for case in suite.findall("testcase")}
    for record in records:
        failure = failures[f"{record['thing_name']} [{record['settings']}]"]
        assert failure is not None and failure.get("message") == f"cancelled: {record['failure_message']}"
        assert f"blocks={record['blocks']} " in (failure.text or "")
    page = (reports / "report.html").read_text()
    for record in records:
        cells = (record["thing_name"], record["settings"], "cancelled", record["failure_message"])
        row = "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + f'<td class="num">{record["bytes"]:,}</td>'
        assert row in page, row
    return rows


def test_a_fleet_stopped_by_its_deadline_keeps_what_each_running_device_did(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = provision(local_iot, tmp_path, monkeypatch, things=3, stream="intrdeadline", size=FLEET_SIZE)
    reports = tmp_path / "reports"
    args = ["fleet", "--manifest", str(manifest), "--report-dir", str(reports), "--deadline", "2.5", *SLOW]
    result = CliRunner().invoke(device_sim, [*args, "--connect-rate", "100"])
    assert result.exit_code == 1, result.output
    assert "the run was stopped before every device finished" in result.output
    rows = _check_partial_reports(reports, 3)
    assert all(row["connect_s"] for row in rows)  # every device had connected within 2.5 s


def test_a_fleet_stopped_by_sigint_writes_its_reports_and_exits_130(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: list[subprocess.Popen[bytes]]
) -> None:
    manifest = provision(local_iot, tmp_path, monkeypatch, things=2, stream="intrsigint", size=FLEET_SIZE)
    assert local_iot.service is not None
    served = local_iot.service.stats().core.data_messages
    reports = tmp_path / "reports"
    env = {**os.environ, **local_iot.environment()}
    proc = _start(["fleet", "--manifest", str(manifest), "--report-dir", str(reports), *SLOW], env, processes)
    service = local_iot.service
    wait_for(lambda: service.stats().core.data_messages >= served + 40, "blocks served to the fleet", proc)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, (stdout, stderr)
    assert b"Traceback" not in stderr and b"Aborted" not in stderr, stderr
    assert b"the run was stopped before every device finished" in stderr
    _check_partial_reports(reports, 2)


def test_a_sweep_stopped_by_sigterm_writes_the_points_it_measured_and_exits_143(
    local_iot: LocalIot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: list[subprocess.Popen[bytes]]
) -> None:
    manifest = provision(local_iot, tmp_path, monkeypatch, things=1, stream="intrsweep", size=FLEET_SIZE)
    assert local_iot.service is not None
    service = local_iot.service
    served = service.stats().core.data_messages
    reports = tmp_path / "reports"
    env = {**os.environ, **local_iot.environment()}
    args = ["sweep", "--manifest", str(manifest), "--report-dir", str(reports), "--block-sizes", "256,512", *SLOW]
    args += ["--blocks-per-request-list", "1"]  # a sweep's own list: one block per answer, so blocks trickle in
    proc = _start(args, env, processes)
    wait_for(lambda: service.stats().core.data_messages >= served + 20, "blocks served to the first point", proc)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, (stdout, stderr)
    assert b"Traceback" not in stderr, stderr
    points = json.loads((reports / "summary.json").read_text())["sweep"]["points"]
    assert [p["block_size"] for p in points] == [256]  # the second point never ran
    _check_partial_reports(reports, 1)
