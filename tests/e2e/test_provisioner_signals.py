"""``provisioner up`` as a real process against a running local_iot: SIGINT and SIGTERM stop it with 130/143, one
line that names the run and the exact resume and cleanup commands, and a manifest that lists everything the
account holds (cleanup then leaves nothing); a second run on the same manifest is refused while the first holds it.

Every wait is on a condition (a record in the manifest or its journal, the lock file) with a deadline; every
process started here is stopped by its pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from local_iot.runner import LocalIot
from provisioner.cli import main
from provisioner.errors import ManifestError
from provisioner.lock import lock_path
from provisioner.manifest import Manifest, load_manifest
from tests.e2e.test_provisioner_local import EMPTY, account

pytestmark = pytest.mark.e2e
TIMEOUT = 20.0
ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling interval of the condition, not a synchronisation by itself


@pytest.fixture
def iot(local_iot: LocalIot, monkeypatch: pytest.MonkeyPatch) -> LocalIot:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert local_iot.control_plane is not None
    local_iot.control_plane.reset()
    return local_iot


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=TIMEOUT)


def up_command(iot: LocalIot, tmp_path: Path, *, things: int = 24, tps: str = "25") -> list[str]:
    return [
        "provisioner", "up", "--local", str(iot.state_dir), "--stream-id", "fw-sig", "--generate", "4KiB",
        "--bucket", "fw-sig-bucket", "--create-bucket", "--create-role", "--things", str(things),
        "--certs-dir", str(tmp_path / "certs"), "--manifest", str(tmp_path / "run.json"), "--tps", tps,
    ]  # fmt: skip


def start(argv: list[str], cwd: Path, processes: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "provisioner", *argv[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(process)
    return process


def manifest_with_things(path: Path) -> Manifest | None:
    try:
        manifest = load_manifest(path)  # no lock needed: a reader sees the manifest plus its journal
    except ManifestError:
        return None
    return manifest if any(t.certificate_arn for t in manifest.things) else None


def assert_manifest_covers_account(manifest: Manifest, iot: LocalIot) -> None:
    """Nothing the account holds is missing from the manifest."""
    assert iot.control_plane is not None
    held = account(iot.control_plane)
    assert set(held["things"]) <= {t.name for t in manifest.things}
    assert set(held["certificates"]) <= {t.certificate_id for t in manifest.things}
    assert held["streams"] == ["fw-sig"] and manifest.stream is not None
    assert manifest.role is not None and held["roles"] == [manifest.role.name]
    assert manifest.policy is not None and held["policies"] == [manifest.policy.name]
    assert held["buckets"] == ["fw-sig-bucket"] and manifest.bucket is not None and manifest.bucket.created
    assert held["objects"] == [f.key for f in manifest.firmware]


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_stops_up_with_its_code_a_resume_hint_and_a_complete_manifest(
    iot: LocalIot,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    signum: int,
    code: int,
    name: str,
) -> None:
    argv = up_command(iot, tmp_path)
    process = start(argv, tmp_path, processes)
    manifest_path = tmp_path / "run.json"
    wait_for(lambda: manifest_with_things(manifest_path) is not None, "the first thing in the manifest")
    assert process.poll() is None, process.communicate()
    os.kill(process.pid, signum)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == code, (out, err)
    manifest = load_manifest(manifest_path)
    lines = err.strip().splitlines()
    assert lines == [
        f"Error: stopped by {name}; run {manifest.run_id} is recorded in {manifest_path} up to its last completed "
        f"call: resume with `{' '.join(argv)}`, or remove it with `provisioner cleanup --manifest {manifest_path} "
        f"--local {iot.state_dir}`"
    ], err
    assert len(manifest.things) < 24, "stopped part way"
    assert not lock_path(manifest_path).exists()
    assert_manifest_covers_account(manifest, iot)

    result = CliRunner().invoke(
        main, ["cleanup", "--manifest", str(manifest_path), "--local", str(iot.state_dir), "--tps", "1000"]
    )
    assert result.exit_code == 0, result.output
    assert iot.control_plane is not None and account(iot.control_plane) == EMPTY


def test_a_second_up_on_the_same_manifest_is_refused_while_the_first_runs(
    iot: LocalIot, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    argv = up_command(iot, tmp_path)
    first = start(argv, tmp_path, processes)
    manifest_path = tmp_path / "run.json"
    wait_for(lambda: manifest_with_things(manifest_path) is not None, "the first run's first thing")
    holder = json.loads(lock_path(manifest_path).read_text())
    assert holder["pid"] == first.pid and holder["command"] == "provisioner up"

    second = start(argv, tmp_path, processes)
    out, err = second.communicate(timeout=TIMEOUT)
    assert second.returncode == 12, (out, err)
    assert err.strip().splitlines() == [
        f"Error: manifest {manifest_path} is in use by pid {first.pid} (provisioner up started at "
        f"{holder['started_at']}): wait for it to finish (or stop it), or use another --manifest"
    ]
    assert first.poll() is None  # the loser did not disturb the winner

    os.kill(first.pid, signal.SIGTERM)
    first.communicate(timeout=TIMEOUT)
    assert first.returncode == 143
    manifest = load_manifest(manifest_path)
    assert_manifest_covers_account(manifest, iot)  # one run, all of it recorded (before: the loser's role was not)

    # the same command (faster) resumes and finishes the run
    resumed = start([*argv[:-1], "1000"], tmp_path, processes)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, (out, err)
    final = load_manifest(manifest_path)
    assert final.run_id == manifest.run_id and sum(t.complete for t in final.things) == 24
    assert iot.control_plane is not None and len(account(iot.control_plane)["objects"]) == 1  # not uploaded twice
    result = CliRunner().invoke(
        main, ["cleanup", "--manifest", str(manifest_path), "--local", str(iot.state_dir), "--tps", "1000"]
    )
    assert result.exit_code == 0, result.output
    assert iot.control_plane is not None and account(iot.control_plane) == EMPTY
