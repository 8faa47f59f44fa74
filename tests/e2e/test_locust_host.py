"""The device host on its own (no Locust): JSON lines in, devices against local_iot, one record per device out."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sim.device.types import DownloadSettings
from device_sim.fleet.locust.messages import (
    Config,
    Finished,
    HostFailed,
    HostMessage,
    Progress,
    Ready,
    Run,
    Stop,
    decode_host_line,
    encode_host_line,
)
from device_sim.fleet.plan import FleetPlan
from device_sim.results.metrics import DeviceMetrics
from local_iot.runner import LocalIot

from .test_fleet import provision

pytestmark = pytest.mark.e2e

WAIT_S = 60.0


class Host:
    """A device host child process; its lines are read by a thread into a queue."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "device_sim.fleet.locust.host"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.lines: queue.Queue[HostMessage | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(decode_host_line(line))
        self.lines.put(None)

    def join(self) -> None:
        """After the process ended: the reader has seen the end of output; close our pipe ends."""
        self._reader.join(timeout=WAIT_S)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()

    def send(self, message: HostMessage) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_host_line(message))
        self.proc.stdin.flush()

    def send_many(self, *messages: HostMessage) -> None:
        """Several messages in one write (the host reads them without yielding in between)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(encode_host_line(m) for m in messages))
        self.proc.stdin.flush()

    def next(self, *kinds: type) -> HostMessage:
        """The next message of one of ``kinds`` (progress lines in between are skipped)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            message = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert message is not None, "the host closed its output"
            if isinstance(message, kinds):
                return message
            assert isinstance(message, Progress), message

    def close(self) -> int:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=WAIT_S)


@pytest.fixture(scope="module")
def manifest(local_iot: LocalIot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        yield provision(local_iot, tmp_path_factory.mktemp("host"), mp, things=3, stream="hoststream", size="20KiB")


@pytest.fixture
def host(local_iot: LocalIot) -> Iterator[Host]:
    started = Host({**os.environ, **local_iot.environment()})
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
    started.proc.wait(timeout=WAIT_S)
    started.join()


def test_host_runs_each_device_once_and_exits_at_end_of_input(host: Host, manifest: Path) -> None:
    epoch = time.time()
    plan = FleetPlan(manifest=manifest, download=DownloadSettings(block_size=2048))
    host.send(Config(plan=plan.to_json()))
    ready = host.next(Ready, HostFailed)
    assert isinstance(ready, Ready) and ready.identities == 3 and ready.pid == host.proc.pid
    for index in range(3):
        host.send(Run(index=index, thing_name=f"hoststream-{index}", delay_s=0.0, epoch=epoch))
    finished = [host.next(Finished) for _ in range(3)]
    assert sorted(f.index for f in finished) == [0, 1, 2]
    for f in finished:
        assert isinstance(f, Finished)
        record = DeviceMetrics.from_dict(f.record)
        assert record.verified, record.failure_message
        assert record.thing_name == f"hoststream-{f.index}" and record.bytes == 20 * 1024
        assert record.settings == "2048B cbor"
        assert 0 <= record.started_at <= time.time() - epoch  # counted from the master's epoch
    assert host.close() == 0


def test_stop_reports_waiting_devices_as_cancelled(host: Host, manifest: Path) -> None:
    plan = FleetPlan(manifest=manifest, download=DownloadSettings(expect_sha256="0" * 64))
    host.send(Config(plan=plan.to_json()))
    assert isinstance(host.next(Ready, HostFailed), Ready)
    host.send(Run(index=5, thing_name="hoststream-1", delay_s=3600.0, epoch=time.time()))
    host.send(Run(index=6, thing_name="not-in-the-manifest", delay_s=0.0, epoch=time.time()))
    unknown = host.next(Finished)
    assert isinstance(unknown, Finished) and unknown.index == 6
    assert unknown.record["failure_reason"] == "error:unknown-thing"
    assert "on this machine" in unknown.record["failure_message"]
    host.send(Stop(reason="deadline"))
    waiting = host.next(Finished)
    assert isinstance(waiting, Finished) and waiting.index == 5
    assert waiting.record["failure_reason"] == "cancelled"
    assert waiting.record["failure_message"] == "the run stopped before this device started"
    # A device stopped in the same breath as it was started (its task cancelled before its first step) reports too.
    host.send_many(Run(index=7, thing_name="hoststream-2", delay_s=0.0, epoch=time.time()), Stop(reason="now"))
    at_once = host.next(Finished)
    assert isinstance(at_once, Finished) and at_once.index == 7 and at_once.record["failure_reason"] == "cancelled"
    assert host.close() == 0


def test_a_plan_the_host_cannot_resolve_fails_it_with_the_reason(host: Host, tmp_path: Path) -> None:
    host.send(Config(plan=FleetPlan(manifest=tmp_path / "missing.json").to_json()))
    failed = host.next(Ready, HostFailed)
    assert isinstance(failed, HostFailed) and "missing.json" in failed.message
    host.send(Run(index=0, thing_name="t", delay_s=0.0, epoch=time.time()))  # ignored: not configured
    assert host.close() == 1
