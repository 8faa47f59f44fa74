"""device-sim following OTA jobs on local_iot: the provisioner creates the update, devices do the job over mutual TLS.

One emulator and one provisioned run (56 things, a 1 MiB stream) serve the module; each test targets its own things
with its own OTA update, so tests never share an execution. A Jobs minute lasts 0.5 s here (``jobs_minute_s``) so a
step timeout of 1 minute passes in half a second.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import queue
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from device_sim.cli import main as device_sim
from device_sim.device.jobs import NO_JOB, JobDevice, JobResult, JobSettings, parse_ota_document
from device_sim.device.types import DownloadSettings
from device_sim.fleet.jobs import ota_plan, run_jobs_fleet
from device_sim.fleet.plan import FleetSettings, read_target, s3_source
from device_sim.fleet.runner import FleetProgress, transport_for
from device_sim.transport.settings import FlowControl
from local_iot.runner import LocalIot, LocalIotSettings
from provisioner.cli import main as provisioner
from provisioner.manifest import load_manifest

pytestmark = pytest.mark.e2e
FAST = ["--tps", "1000"]
QUICK = DownloadSettings(block_size=16384)
SLOW = DownloadSettings(block_size=512, blocks_per_request=1)  # 2048 round trips: long enough to act mid-download


@dataclass
class Run:
    iot: LocalIot
    state: Path
    manifest: Path
    things: list[str]


def cli(*args: str | Path) -> Any:
    return CliRunner().invoke(provisioner, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("jobs-device")
    with LocalIot(LocalIotSettings(state_dir=base / "state", jobs_minute_s=0.5)) as iot:
        manifest = base / "run.json"
        result = cli(
            "up", "--local", base / "state", "--stream-id", "fw-jobs", "--generate", "1MiB", "--seed", "5",
            "--bucket", "fw-jobs", "--create-bucket", "--create-role", "--things", "56", "--thing-prefix", "dev",
            "--certs-dir", base / "certs", "--manifest", manifest, *FAST,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        yield Run(iot=iot, state=base / "state", manifest=manifest, things=[f"dev-{i}" for i in range(56)])


def ota_create(run: Run, *targets: str, **options: str) -> str:
    extra = [w for k, v in options.items() for w in (f"--{k.replace('_', '-')}", v)]
    result = cli("ota", "create", "--local", run.state, "--manifest", run.manifest, "--targets", ",".join(targets),
                 *extra, *FAST)  # fmt: skip
    assert result.exit_code == 0, result.output
    return load_manifest(run.manifest).ota_updates[-1].job_id


def job_device(run: Run, thing: str, settings: DownloadSettings = QUICK, **jobs: Any) -> JobDevice:
    target, identities = read_target(run.manifest)
    identity = next(i for i in identities if i.thing_name == thing)
    plan = ota_plan(run.manifest)
    return JobDevice(
        thing_name=thing,
        transport=transport_for(identity, target, {"flow_control": FlowControl.NONE}),
        settings=settings,
        jobs=JobSettings(signing_cert=plan.signing_cert, **jobs),
        source=s3_source(target),
    )


def execution(run: Run, job_id: str, thing: str) -> dict[str, Any]:
    answer: dict[str, Any] = run.iot.client("iot").describe_job_execution(jobId=job_id, thingName=thing)["execution"]
    return answer


def test_a_device_follows_its_ota_job_to_succeeded(run: Run) -> None:
    job_id = ota_create(run, "dev-50")
    result = asyncio.run(job_device(run, "dev-50").run())
    assert (result.status, result.job_id, result.reason) == ("SUCCEEDED", job_id, "accepted"), result
    assert result.metrics.verified and result.download is not None and result.download.ok
    described = execution(run, job_id, "dev-50")
    assert described["status"] == "SUCCEEDED"
    assert described["statusDetails"]["detailsMap"] == {"reason": "accepted", "receive": "64/64"}


def test_a_bad_signature_ends_failed(run: Run) -> None:
    thing = "dev-51"
    job_id = ota_create(run, thing)
    document = json.loads(run.iot.client("iot").get_job_document(jobId=job_id)["document"])
    # the same job with a signature over other bytes: created by hand with create_job, as a tampered update would be
    forged = json.loads(json.dumps(document))
    signature = base64.b64decode(forged["afr_ota"]["files"][0]["sig-sha256-ecdsa"])
    tampered = signature[:-1] + bytes([signature[-1] ^ 1])  # one bit off: a DER signature that does not verify
    forged["afr_ota"]["files"][0]["sig-sha256-ecdsa"] = base64.b64encode(tampered).decode()
    client = run.iot.client("iot")
    client.cancel_job(jobId=job_id, force=True)
    arn = f"arn:aws:iot:{run.iot.info['region']}:{run.iot.info['account_id']}:thing/{thing}"
    client.create_job(jobId="forged-1", targets=[arn], document=json.dumps(forged))
    result = asyncio.run(job_device(run, thing).run())
    assert result.status == "FAILED" and result.job_id == "forged-1"
    assert result.reason.startswith("signature check failed"), result.reason
    assert result.metrics.failure_reason == "job:FAILED" and not result.metrics.verified
    assert execution(run, "forged-1", thing)["statusDetails"]["detailsMap"]["reason"] == result.reason


def test_a_job_cancelled_while_the_device_downloads(run: Run) -> None:
    thing = "dev-52"
    job_id = ota_create(run, thing)
    client = run.iot.client("iot")

    async def scenario() -> JobResult:
        device = job_device(run, thing, SLOW)
        first = asyncio.Event()
        device._on_progress = lambda n: first.set()
        task = asyncio.ensure_future(device.run())
        await asyncio.wait_for(first.wait(), 30)  # the first block arrived: the device is downloading
        await asyncio.to_thread(client.cancel_job, jobId=job_id, force=True)
        return await asyncio.wait_for(task, 30)

    result = asyncio.run(scenario())
    assert result.status == "CANCELED", result
    assert "CANCELED while the device worked on it" in result.reason
    assert result.download is None and not result.metrics.verified
    assert execution(run, job_id, thing)["status"] == "CANCELED"


def test_a_step_timeout_ends_timed_out(run: Run) -> None:
    thing = "dev-53"
    job_id = ota_create(run, thing)
    device = job_device(run, thing, SLOW, step_timeout_minutes=1, progress_interval_s=5.0)
    result = asyncio.run(device.run())
    assert result.status == "TIMED_OUT", result
    assert execution(run, job_id, thing)["status"] == "TIMED_OUT"


def test_a_device_without_a_job_waits_for_notify_next(run: Run) -> None:
    thing = "dev-54"
    asked: queue.Queue[str] = queue.Queue()
    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy-54")
    spy.on_message = lambda c, u, m: asked.put(m.topic)
    subscribed: queue.Queue[Any] = queue.Queue()
    spy.on_subscribe = lambda *a: subscribed.put(a)
    spy.connect("127.0.0.1", run.iot.info["mqtt_port"])
    spy.loop_start()
    try:
        spy.subscribe(f"$aws/things/{thing}/jobs/start-next")
        subscribed.get(timeout=10)

        async def scenario() -> JobResult:
            task = asyncio.ensure_future(job_device(run, thing, wait_s=30).run())
            await asyncio.to_thread(asked.get, True, 30)  # the device asked and found nothing pending
            job = await asyncio.to_thread(ota_create, run, thing)
            result = await asyncio.wait_for(task, 30)
            assert result.job_id == job
            return result

        assert asyncio.run(scenario()).status == "SUCCEEDED"
    finally:
        spy.disconnect()
        spy.loop_stop()
    nothing = asyncio.run(job_device(run, "dev-55", wait_s=0.5).run())
    assert nothing.status == NO_JOB and nothing.job_id is None and nothing.metrics.failure_reason == "job:NO_JOB"


def test_a_fleet_of_50_through_one_ota_update(run: Run) -> None:
    fleet = run.things[:50]
    job_id = ota_create(run, *fleet, rollout_per_minute="1000")
    target, identities = read_target(run.manifest)
    plan = ota_plan(run.manifest)
    progress = FleetProgress()
    outcome = asyncio.run(
        run_jobs_fleet(
            target,
            [i for i in identities if i.thing_name in fleet],
            QUICK,
            FleetSettings(connect_rate=200, transport={"flow_control": FlowControl.NONE}),
            JobSettings(signing_cert=plan.signing_cert, wait_s=30),
            stream_id=plan.stream_id,
            source=s3_source(target),
            progress=progress,
        )
    )
    assert outcome.by_status == {"SUCCEEDED": 50}, [j for j in outcome.jobs if j.status != "SUCCEEDED"]
    # the live counters the display draws, kept by the same FleetProgress methods as a plain fleet's
    assert (progress.devices, progress.verified, progress.failed, progress.bytes) == (50, 50, 0, 50 << 20)
    assert (progress.waiting, progress.connecting, progress.downloading) == (0, 0, 0)
    assert progress.executions == {"SUCCEEDED": 50}
    assert outcome.ok and {j.job_id for j in outcome.jobs} == {job_id}
    assert all(r.verified for r in outcome.records) and outcome.summary.verified == 50
    status = cli("ota", "status", "--local", run.state, "--manifest", run.manifest)
    assert status.exit_code == 0, status.output
    assert "50 things: 50 SUCCEEDED" in status.output


def test_parse_ota_document_refuses_what_a_device_cannot_follow() -> None:
    with pytest.raises(ValueError, match="afr_ota"):
        parse_ota_document({"operation": "reboot"})
    with pytest.raises(ValueError, match="MQTT"):
        parse_ota_document({"afr_ota": {"protocols": ["HTTP"], "streamname": "s", "files": []}})


def test_the_command_line_chain_ota_create_fleet_jobs_ota_status(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in run.iot.environment().items():
        monkeypatch.setenv(key, value)
    job_id = ota_create(run, "dev-0", "dev-1")
    reports = tmp_path / "reports"
    fleet = CliRunner().invoke(
        device_sim,
        ["fleet", "--jobs", "--manifest", str(run.manifest), "--devices", "2", "--report-dir", str(reports),
         "--flow-control", "none", "--block-size", "16KiB", "--job-wait", "30", "--quiet"],
    )  # fmt: skip
    assert fleet.exit_code == 0, fleet.output
    assert f"jobs {job_id}: 2 devices: 2 SUCCEEDED" in fleet.output
    rows = (reports / "jobs.csv").read_text().splitlines()
    assert rows == ["thing_name,job_id,status,reason", f"dev-0,{job_id},SUCCEEDED,accepted",
                    f"dev-1,{job_id},SUCCEEDED,accepted"]  # fmt: skip
    assert json.loads((reports / "jobs.json").read_text())["by_status"] == {"SUCCEEDED": 2}
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["summary"]["executions_by_status"] == {"SUCCEEDED": 2}
    devices_csv = (reports / "devices.csv").read_text().splitlines()
    assert devices_csv[0].endswith("job_id,job_status,job_reason")
    assert all(line.endswith(f"{job_id},SUCCEEDED,accepted") for line in devices_csv[1:])
    assert "<failure" not in (reports / "junit.xml").read_text()
    status = cli("ota", "status", "--local", run.state, "--manifest", run.manifest)
    assert status.exit_code == 0, status.output

    # a second device run finds nothing pending: NO_JOB in the report, a failing JUnit case, exit 1
    again = CliRunner().invoke(
        device_sim,
        ["fleet", "--jobs", "--manifest", str(run.manifest), "--devices", "1", "--report-dir", str(reports),
         "--job-wait", "0.2", "--quiet"],
    )  # fmt: skip
    assert again.exit_code == 1, again.output
    assert "dev-0: job - NO_JOB" in again.output and "<failure" in (reports / "junit.xml").read_text()


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _fleet_jobs_process(run: Run, tmp_path: Path, *, stderr: int) -> subprocess.Popen[bytes]:
    """``device-sim fleet --jobs`` for dev-2 and dev-3 in a process of its own (its stderr: a terminal or a pipe)."""
    args = ["fleet", "--jobs", "--manifest", run.manifest, "--offset", "2", "--devices", "2", "--report-dir",
            tmp_path / "reports", "--flow-control", "none", "--block-size", "16KiB", "--job-wait", "30"]  # fmt: skip
    env = {**os.environ, **run.iot.environment(), "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "device_sim", *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=stderr
    )


def test_fleet_jobs_draws_live_progress_on_a_terminal_and_plain_lines_when_piped(run: Run, tmp_path: Path) -> None:
    job_id = ota_create(run, "dev-2", "dev-3")
    controller, terminal = pty.openpty()
    process = _fleet_jobs_process(run, tmp_path, stderr=terminal)
    os.close(terminal)
    drawn = bytearray()
    while True:  # the terminal's output until the process closes it (EIO on Linux, b"" elsewhere)
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0, stdout.decode()
    screen = ANSI.sub("", drawn.decode(errors="replace"))
    assert "jobs fleet of 2 waiting" in screen and "downloading" in screen, screen
    assert "executions: 2 SUCCEEDED" in screen, screen  # the final redraw, before the line is taken away
    assert f"jobs {job_id}: 2 devices: 2 SUCCEEDED" in stdout.decode()

    job_id = ota_create(run, "dev-2", "dev-3")
    process = _fleet_jobs_process(run, tmp_path, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stdout.decode() + stderr.decode()
    assert f"jobs {job_id}: 2 devices: 2 SUCCEEDED" in stdout.decode()
    for output in (stdout, stderr):
        assert b"\x1b" not in output and b"\r" not in output and b"waiting" not in output, output


def test_download_job_follows_one_things_job(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in run.iot.environment().items():
        monkeypatch.setenv(key, value)
    job_id = ota_create(run, "dev-55")
    result = CliRunner().invoke(
        device_sim,
        ["download", "--job", "--manifest", str(run.manifest), "--thing", "dev-55", "--json", "--flow-control", "none"],
    )
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert (line["job_id"], line["status"], line["stream"], line["bytes"]) == (job_id, "SUCCEEDED", "fw-jobs", 1 << 20)
