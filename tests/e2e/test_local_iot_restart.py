"""Restarts and crashes: a killed broker comes back on the same ports and a fleet finishes; `local-iot up` killed
with SIGKILL leaves no mosquitto; run again on the same state dir it keeps ports, CA and the control plane, so a
manifest written before works after; a second emulator on a state dir in use is refused.

Real processes throughout: `local-iot up`, `provisioner up`, `device-sim download|fleet` as subprocesses, the real
mosquitto, SIGKILL by pid. Waits are on conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local_iot.runner import INFO_FILE, LocalIot, LocalIotSettings

pytestmark = pytest.mark.e2e

PY = sys.executable


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own child, not yet reaped) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def provision(state_dir: Path, work: Path, env: dict[str, str], *, things: int, size: str, stream: str) -> Path:
    manifest = work / f"{stream}.json"
    result = subprocess.run(
        [PY, "-m", "provisioner", "up", "--local", str(state_dir), "--stream-id", stream, "--generate", size,
         "--seed", "5", "--bucket", f"{stream}-bucket", "--create-bucket", "--create-role", "--things", str(things),
         "--thing-prefix", stream, "--certs-dir", str(work / f"certs-{stream}"), "--manifest", str(manifest),
         "--tps", "1000"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return manifest


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | (extra or {})


class Up:
    """`local-iot up` as a child process; stopped by its pid."""

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.proc = subprocess.Popen(
            [PY, "-m", "local_iot", "up", "--state-dir", str(state_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(env),
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks until it printed its banner; ends if it dies
            if line.startswith("export AWS_REGION"):
                break
        else:
            raise AssertionError(
                f"local-iot up died: {self.proc.wait()} {self.proc.stderr and self.proc.stderr.read()}"
            )
        self.info: dict[str, Any] = json.loads((state_dir / INFO_FILE).read_text())

    def env(self) -> dict[str, str]:
        return clean_env(
            {
                "AWS_ENDPOINT_URL": self.info["aws_endpoint_url"],
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": self.info["region"],
            }
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.kill()


def test_a_killed_broker_is_restarted_on_the_same_ports_and_the_service_resubscribes(
    local_iot_factory: Callable[..., LocalIot], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from .conformance_client import RawClient
    from .streams import make_stream

    iot = local_iot_factory()
    assert iot.broker is not None and iot.service is not None
    make_stream(iot, "restart", b"r" * 5000)
    before = dict(iot.info)
    old_pid = before["broker_pid"]
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    broker = iot.broker
    wait_for(lambda: broker.running and broker.pid != old_pid, "a new mosquitto", timeout=5)
    restarted_in = time.monotonic() - killed_at
    wait_for(lambda: iot.service is not None and iot.service.subscriptions >= 2 and iot.service.ready, "re-subscribe")
    resubscribed_in = time.monotonic() - killed_at
    assert restarted_in < 2.0, f"the broker took {restarted_in:.2f} s to come back"
    after = iot.info
    assert (after["mqtt_port"], after["tls_port"]) == (before["mqtt_port"], before["tls_port"])
    assert "re-subscribed" in caplog.text
    with RawClient.plain(after, "after-restart") as client:
        probe = client.watch("thing-r", "restart")
        (answer,) = probe.ask("get", "json", b'{"f":0,"l":1024,"o":4,"n":1}', 1)
        assert answer.operation == "data" and answer.doc["i"] == 4
    print(f"broker restarted in {restarted_in:.2f} s, service re-subscribed after {resubscribed_in:.2f} s")


def test_a_fleet_whose_broker_is_killed_mid_download_ends_verified(
    local_iot_factory: Callable[..., LocalIot], tmp_path: Path
) -> None:
    iot = local_iot_factory(latency_ms=60)
    env = clean_env(iot.environment())
    manifest = provision(iot.state_dir, tmp_path, env, things=20, size="256KiB", stream="crash")
    fleet = subprocess.Popen(
        [PY, "-m", "device_sim", "fleet", "--manifest", str(manifest), "--report-dir", str(tmp_path / "report"),
         "--block-size", "4KiB", "--blocks-per-request", "4", "--connect-rate", "200"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert iot.service is not None and iot.broker is not None
        service, broker = iot.service, iot.broker
        wait_for(lambda: service.stats().core.data_messages >= 300, "the fleet downloading", timeout=60)
        served_before = service.stats().core.data_messages
        old_pid = broker.pid
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: broker.running and broker.pid != old_pid, "the broker back", timeout=5)
        output, _ = fleet.communicate(timeout=120)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.communicate()
    assert fleet.returncode == 0, output[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["summary"]
    assert (summary["devices"], summary["verified"], summary["failed"]) == (20, 20, 0)
    assert summary["disconnects"] >= 20, "every device lost the broker mid-download and carried on"
    assert served_before < 20 * 64, "the broker was killed after the downloads ended"


def test_local_iot_killed_and_started_again_keeps_its_state(ups: list[Up], tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Up(state)
    ups.append(first)
    manifest = provision(state, tmp_path, first.env(), things=1, size="40KiB", stream="keep")
    broker_pid = first.info["broker_pid"]
    ca_before = Path(first.info["ca_cert"]).read_bytes()
    server_before = (state / "ca" / "server.cert.pem").read_bytes()

    # a second emulator on the same state dir is refused and changes nothing
    second = subprocess.run(
        [PY, "-m", "local_iot", "up", "--state-dir", str(state)], capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 3
    assert f"state dir {state.resolve()} in use by pid {first.proc.pid}" in second.stderr
    assert json.loads((state / INFO_FILE).read_text())["pid"] == first.proc.pid

    first.kill()  # SIGKILL: no cleanup code runs
    wait_for(lambda: not alive(broker_pid), "mosquitto to die with local-iot", timeout=5)

    again = Up(state)
    ups.append(again)
    for key in ("mqtt_port", "tls_port", "aws_port", "aws_endpoint_url"):
        assert again.info[key] == first.info[key], key
    assert Path(again.info["ca_cert"]).read_bytes() == ca_before
    assert (state / "ca" / "server.cert.pem").read_bytes() == server_before
    download = subprocess.run(
        [PY, "-m", "device_sim", "download", "--manifest", str(manifest), "--thing", "keep-0", "--json"],
        env=again.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert download.returncode == 0, download.stdout + download.stderr
    code, err = again.stop()
    assert code == 0, err


def test_a_recorded_port_taken_is_a_clear_error(ups: list[Up], tmp_path: Path) -> None:
    import socket

    state = tmp_path / "state"
    first = Up(state)
    ups.append(first)
    assert first.stop()[0] == 0
    with socket.create_server(("127.0.0.1", first.info["tls_port"])):
        result = subprocess.run(
            [PY, "-m", "local_iot", "up", "--state-dir", str(state)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 3
    assert f"port {first.info['tls_port']} recorded in" in result.stderr and "local-iot reset" in result.stderr
    reset = subprocess.run(
        [PY, "-m", "local_iot", "reset", "--state-dir", str(state)], capture_output=True, text=True, timeout=60
    )
    assert reset.returncode == 0 and not (state / INFO_FILE).exists()


def test_a_broker_that_cannot_come_back_ends_local_iot_with_one_line(ups: list[Up], tmp_path: Path) -> None:
    """mosquitto is reached through a wrapper on PATH that execs the real one until a flag file exists."""
    from local_iot.broker import find_mosquitto

    bin_dir, flag = tmp_path / "bin", tmp_path / "broken"
    bin_dir.mkdir()
    wrapper = bin_dir / "mosquitto"
    wrapper.write_text(f'#!/bin/sh\n[ -e {flag} ] && {{ echo broken >&2; exit 1; }}\nexec {find_mosquitto()} "$@"\n')
    wrapper.chmod(0o755)
    up = Up(tmp_path / "state", env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"})
    ups.append(up)
    flag.touch()
    os.kill(up.info["broker_pid"], signal.SIGKILL)
    up.proc.wait(timeout=60)
    err = up.proc.stderr.read() if up.proc.stderr else ""
    assert up.proc.returncode == 4, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("local-iot: the broker died and could not be restarted: mosquitto exited with code 1"), err


def test_a_stale_broker_of_a_killed_run_is_cleaned_up(tmp_path: Path) -> None:
    """A mosquitto left running on the state dir (by an older local_iot, or a kill between fork and prctl)."""
    from local_iot.broker import find_mosquitto

    state = tmp_path / "state"
    broker_dir = state / "broker"
    broker_dir.mkdir(parents=True)
    config = broker_dir / "mosquitto.conf"
    config.write_text(
        f"listener 0 {broker_dir / 'stale.sock'}\nallow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    stale = subprocess.Popen(
        [find_mosquitto(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Popen may return while the child is still exec'ing (its /proc cmdline empty): a stale broker of a killed
        # run is long past that, so wait until this one is mosquitto with our config.
        deadline = time.monotonic() + 10
        while str(config).encode() not in Path(f"/proc/{stale.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stale mosquitto did not start"
            time.sleep(0.01)
        (state / INFO_FILE).write_text(json.dumps({"broker_pid": stale.pid, "running": True}))
        with LocalIot(LocalIotSettings(state_dir=state)) as iot:
            assert stale.wait(timeout=10) == -signal.SIGKILL
            assert iot.info["broker_pid"] != stale.pid
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()
