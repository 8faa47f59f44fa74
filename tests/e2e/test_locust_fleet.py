"""The fleet on Locust end to end: local_iot (200 ms service latency), `provisioner up`,
`device-sim fleet --engine locust`.

Locust runs in its own processes (it monkey-patches whatever imports it), started by the command under test.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import main as device_sim
from device_sim.cli.locust import ENGINE_PATH
from device_sim.results.files import REPORT_FILES
from local_iot.runner import LocalIot, LocalIotSettings
from provisioner.cli import main as provisioner
from provisioner.manifest import load_manifest

from .test_fleet import provision

pytestmark = [
    pytest.mark.e2e,
    # Locust is an optional extra (in `dev`); find_spec, not importorskip: importing Locust monkey-patches pytest.
    pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs the locust extra"),
]

psutil = pytest.importorskip("psutil")  # a Locust dependency

THINGS = 100
RUN_TIMEOUT_S = 120.0
JOINED = re.compile(r"worker pid (\d+) on \S+ \(device host pid (\d+), Locust id \S+\) joined: (\d+) devices granted")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalIot, Path]]:
    """One emulator (every answer 200 ms late, so devices take a while) and a manifest of 100 things."""
    state = tmp_path_factory.mktemp("locust-iot")
    with LocalIot(LocalIotSettings(state_dir=state, latency_ms=200)) as iot, pytest.MonkeyPatch.context() as mp:
        manifest = provision(iot, tmp_path_factory.mktemp("locust"), mp, things=THINGS, stream="lfleet")
        yield iot, manifest


def rows(reports: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((reports / "devices.csv").read_text().splitlines()))


class Run:
    """``device-sim fleet --engine locust`` (or another command) as a child process; a thread reads its output
    lines."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        command: tuple[str, ...] = ("device_sim", "fleet", "--engine", "locust"),
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.output: list[str] = []
        self.code: int | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "".join(self.output)
            self.output.append(line)
            if found := pattern.search(line):
                return found

    def finish(self) -> tuple[int, str]:
        if self.code is None:
            self.code = self.proc.wait(timeout=RUN_TIMEOUT_S)
            self._reader.join(timeout=RUN_TIMEOUT_S)
            while (line := self._lines.get_nowait()) is not None:
                self.output.append(line)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return self.code, "".join(self.output)

    def kill(self) -> None:
        """Teardown: a run a failed test left behind is killed with its Locust and device host processes."""
        if self.proc.poll() is None:
            family = psutil.Process(self.proc.pid).children(recursive=True)
            self.proc.kill()
            for child in family:
                child.kill()
            psutil.wait_procs(family, timeout=RUN_TIMEOUT_S)
        self.finish()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_two_processes_verify_every_device_with_the_reports_of_one_process(
    fleet: tuple[LocalIot, Path], tmp_path: Path
) -> None:
    _, manifest = fleet
    locust_reports, asyncio_reports = tmp_path / "locust", tmp_path / "asyncio"
    common = ["--manifest", str(manifest), "--quiet", "--block-size", "8KiB"]
    result = CliRunner().invoke(
        device_sim, ["fleet", "--engine", "locust", *common, "--processes", "2", "--report-dir", str(locust_reports)]
    )
    assert result.exit_code == 0, result.output
    assert "all 100 devices verified" in result.output
    assert sorted(p.name for p in locust_reports.iterdir()) == sorted(REPORT_FILES)
    by_locust = rows(locust_reports)
    assert len(by_locust) == THINGS and all(r["verified"] == "true" for r in by_locust)
    assert [r["thing_name"] for r in by_locust] == [f"lfleet-{i}" for i in range(THINGS)]  # manifest order
    suite = ET.parse(locust_reports / "junit.xml").getroot()
    assert int(suite.get("tests", -1)) == THINGS and int(suite.get("failures", -1)) == 0
    summary = json.loads((locust_reports / "summary.json").read_text())["summary"]
    assert summary["settings"]["engine"] == "locust" and summary["settings"]["workers"] == 2
    assert summary["verified"] == THINGS and summary["bytes_verified"] == THINGS * 64 * 1024
    assert all(0 <= float(r["started_at"]) <= float(r["ended_at"]) <= summary["wall_s"] for r in by_locust)
    assert (locust_reports / "report.html").read_text().count("<svg") >= 2

    # The same manifest through the single-process fleet: the same files, columns, devices and digests.
    result = CliRunner().invoke(device_sim, ["fleet", *common, "--report-dir", str(asyncio_reports)])
    assert result.exit_code == 0, result.output
    by_asyncio = rows(asyncio_reports)
    assert sorted(p.name for p in asyncio_reports.iterdir()) == sorted(p.name for p in locust_reports.iterdir())
    assert list(by_asyncio[0]) == list(by_locust[0])
    assert {(r["thing_name"], r["sha256"], r["blocks"]) for r in by_asyncio} == {
        (r["thing_name"], r["sha256"], r["blocks"]) for r in by_locust
    }
    other = json.loads((asyncio_reports / "summary.json").read_text())["summary"]
    assert set(other) == set(summary)
    assert {k: v for k, v in summary["settings"].items() if k not in ("engine", "workers")} == other["settings"]


@pytest.mark.slow
def test_a_killed_worker_ends_the_run_non_zero_naming_its_devices(
    fleet: tuple[LocalIot, Path], tmp_path: Path, runs: list[Run]
) -> None:
    iot, manifest = fleet
    reports = tmp_path / "reports"
    args = ["--manifest", str(manifest), "--devices", "30", "--connect-rate", "10", "--processes", "2"]
    run = Run([*args, "--quiet", "--report-dir", str(reports)], {**os.environ, **iot.environment()})
    runs.append(run)
    joined = run.wait_for(JOINED)  # logged as the master grants this worker its first devices
    worker_pid, host_pid, granted = (int(g) for g in joined.groups())
    assert granted >= 1
    os.kill(worker_pid, signal.SIGKILL)  # its devices need > 0.4 s (two 200 ms answers): none has reported yet
    code, output = run.finish()
    assert code == 1, output
    lost_line = re.search(
        rf"worker pid {worker_pid} on \S+ was lost at \+[\d.]+ s: (\d+) devices never reported: (.*)", output
    )
    assert lost_line is not None, output
    lost = lost_line.group(2).split(", ")
    assert int(lost_line.group(1)) == len(lost) >= granted
    table = {r["thing_name"]: r for r in rows(reports)}
    assert len(table) == 30
    for name, row in table.items():
        if name in lost:
            assert row["failure_reason"] == "error:worker-lost", row
            assert f"worker pid {worker_pid}" in row["failure_message"]
        else:
            assert row["verified"] == "true", row  # the other worker ran every device the lost one did not take
    suite = ET.parse(reports / "junit.xml").getroot()
    assert int(suite.get("failures", -1)) == len(lost)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not gone(host_pid):  # the orphaned device host sees the end of its input and exits
        assert time.monotonic() < deadline, f"device host {host_pid} still running"
        time.sleep(0.05)


@pytest.mark.slow
def test_the_deadline_stops_every_device_and_still_reports(
    fleet: tuple[LocalIot, Path], tmp_path: Path, runs: list[Run]
) -> None:
    iot, manifest = fleet
    reports = tmp_path / "reports"
    args = ["--manifest", str(manifest), "--devices", "20", "--start-jitter", "600", "--deadline", "2"]
    run = Run([*args, "--quiet", "--report-dir", str(reports)], {**os.environ, **iot.environment()})
    runs.append(run)
    code, output = run.finish()
    assert code == 1, output
    table = rows(reports)
    assert len(table) == 20
    cancelled = [r for r in table if r["failure_reason"] == "cancelled"]
    assert cancelled and all(r["verified"] == "true" or r in cancelled for r in table)
    assert all(r["failure_message"] == "the run stopped before this device started" for r in cancelled)
    summary = json.loads((reports / "summary.json").read_text())["summary"]
    assert 2 <= summary["wall_s"] < 30  # stopped at the deadline, not after the 600 s of start jitter


@pytest.mark.slow
def test_fleet_jobs_on_two_processes_reports_every_devices_execution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalIot(LocalIotSettings(state_dir=tmp_path / "state")) as iot:
        manifest = provision(iot, tmp_path, monkeypatch, things=10, stream="ljobs")
        targets = ",".join(f"ljobs-{i}" for i in range(8))  # ljobs-8 and ljobs-9 get no job
        created = CliRunner().invoke(
            provisioner,
            ["ota", "create", "--local", str(iot.state_dir), "--manifest", str(manifest), "--targets", targets,
             "--tps", "1000"],
        )  # fmt: skip
        assert created.exit_code == 0, created.output
        job_id = load_manifest(manifest).ota_updates[-1].job_id
        reports = tmp_path / "reports"
        result = CliRunner().invoke(
            device_sim,
            ["fleet", "--jobs", "--engine", "locust", "--processes", "2", "--manifest", str(manifest), "--quiet",
             "--report-dir", str(reports), "--block-size", "16KiB", "--job-wait", "2"],
        )  # fmt: skip
        assert result.exit_code == 1, result.output  # two devices found no job
        assert f"jobs {job_id}: 10 devices: 2 NO_JOB, 8 SUCCEEDED" in result.output
        jobs = {r["thing_name"]: r for r in csv.DictReader((reports / "jobs.csv").read_text().splitlines())}
        assert {name: (r["job_id"], r["status"]) for name, r in jobs.items()} == {
            **{f"ljobs-{i}": (job_id, "SUCCEEDED") for i in range(8)},
            **{f"ljobs-{i}": ("", "NO_JOB") for i in (8, 9)},
        }
        summary = json.loads((reports / "summary.json").read_text())["summary"]
        assert summary["executions_by_status"] == {"NO_JOB": 2, "SUCCEEDED": 8}
        assert summary["settings"]["engine"] == "locust" and summary["settings"]["jobs"] is True
        assert summary["settings"]["workers"] == 2 and summary["verified"] == 8
        by_device = {r["thing_name"]: r for r in rows(reports)}
        assert by_device["ljobs-9"]["failure_reason"] == "job:NO_JOB" and by_device["ljobs-0"]["verified"] == "true"
        assert int(ET.parse(reports / "junit.xml").getroot().get("failures", -1)) == 2
        status = CliRunner().invoke(provisioner, ["ota", "status", "--local", str(iot.state_dir), "--manifest",
                                                  str(manifest)])  # fmt: skip
        assert status.exit_code == 0 and "8 things: 8 SUCCEEDED" in status.output, status.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_sigterm_stops_every_device_and_still_reports(
    fleet: tuple[LocalIot, Path], tmp_path: Path, runs: list[Run]
) -> None:
    iot, manifest = fleet
    reports = tmp_path / "reports"
    args = ["--manifest", str(manifest), "--devices", "20", "--start-jitter", "600", "--processes", "2"]
    run = Run([*args, "--quiet", "--report-dir", str(reports)], {**os.environ, **iot.environment()})
    runs.append(run)
    run.wait_for(JOINED)
    run.wait_for(JOINED)  # both workers hold devices, all waiting out their start jitter
    run.proc.send_signal(signal.SIGTERM)  # passed on to Locust's master
    code, output = run.finish()
    assert code == 1, output
    table = rows(reports)
    assert len(table) == 20
    # Every device reported from its worker (none "unreported"): stopped before it started.
    assert {r["failure_reason"] for r in table} == {"cancelled"}, output
    assert {r["failure_message"] for r in table} == {"the run stopped before this device started"}


@pytest.mark.slow
def test_master_and_workers_a_worker_without_the_manifest_quits_and_fails_the_run(
    fleet: tuple[LocalIot, Path], tmp_path: Path, runs: list[Run]
) -> None:
    iot, manifest = fleet
    env = {**os.environ, **iot.environment()}
    port = str(free_port())
    reports = tmp_path / "reports"
    fleet_args = ["--manifest", str(manifest), "--devices", "20", "--connect-rate", "20", "--quiet"]
    topology = ["--master", "--expect-workers", "2", "--master-bind-host", "127.0.0.1", "--master-port", port]
    master = Run([*fleet_args, "--report-dir", str(reports), *topology], env)
    runs.append(master)
    good = ["--manifest", str(manifest), "--worker", "--master-host", "127.0.0.1", "--master-port", port]
    runs.append(Run(good, env))
    bad = ["-f", str(ENGINE_PATH), "--worker", "--master-port", port]
    bad += ["--device-sim-manifest", str(tmp_path / "missing.json")]
    runs.append(Run(bad, env, command=("locust",)))  # plain Locust: the wrapper would refuse a missing manifest
    code, output = master.finish()
    assert code == 1, output  # a worker failed ...
    assert re.search(r"failed and quits: the device host cannot run devices: .*missing\.json", output), output
    table = rows(reports)
    assert len(table) == 20 and all(r["verified"] == "true" for r in table)  # ... and the other one ran them all
    assert "all 20 devices verified" in output
    for worker in runs[1:]:
        worker.finish()  # the workers end with the master


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--manifest", "{missing}"], "does not exist"),
        (["--manifest", "{manifest}", "--worker"], "--worker needs --master-host"),
        (["--manifest", "{manifest}", "--master", "--processes", "2"], "--master runs no devices"),
        (["--manifest", "{manifest}", "--block-size", "1 furlong"], "is not a size"),
        (["--manifest", "{manifest}", "--devices", "1000"], "only 100 things"),
    ],
)
def test_bad_arguments_exit_2_before_locust_starts(
    fleet: tuple[LocalIot, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    _, manifest = fleet
    filled = [a.format(missing=tmp_path / "none.json", manifest=manifest) for a in args]
    result = CliRunner().invoke(
        device_sim, ["fleet", "--engine", "locust", *filled, "--report-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "r").exists()
