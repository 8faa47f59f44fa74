"""``device-sim download`` as a command: bad arguments, exit codes, resume after SIGKILL, a thing that tries
another thing's stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_sim.device.device import Device, DeviceCancelled, DownloadSettings, SinkKind
from device_sim.transport import TransportSettings
from local_iot.ports import free_port
from local_iot.runner import LocalIot

from .device_support import connection_args, download, run_cli
from .streams import make_stream

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"


# ------------------------------------------------------------------------------------------ bad arguments


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {"cert": tmp_path / "c.pem", "key": tmp_path / "k.pem", "ca": tmp_path / "ca.pem"}
    files["cert"].write_text(CERT)
    files["key"].write_text(KEY)
    files["ca"].write_text(CERT)
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    return files


BASE = ["download", "--endpoint", "localhost", "--port", "1", "--thing", "t", "--stream", "s"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--key", "{key}", "--ca", "{ca}"], "mutual TLS needs --cert and --key", id="missing-cert"),
        pytest.param(["--cert", "{tmp}/nope.pem", "--key", "{key}"], "--cert: ", id="cert-does-not-exist"),
        pytest.param(["--cert", "{tmp}", "--key", "{key}"], "is not a file", id="cert-is-a-directory"),
        pytest.param(["--cert", "{tmp}/garbage.pem", "--key", "{key}"], "holds no PEM certificate", id="cert-not-pem"),
        pytest.param(["--cert", "{cert}", "--key", "{cert}"], "holds no PEM private key", id="key-is-a-cert"),
        pytest.param(["--no-tls", "--expect-sha256", "abc"], "--expect-sha256: must be 64 hex digits", id="bad-sha"),
        pytest.param(["--no-tls", "--state-dir", "{tmp}/state"], "--state-dir resumes a file download", id="state"),
        pytest.param(["--no-tls", "--block-size", "100"], "--block-size", id="block-size-too-small"),
        pytest.param(["--no-tls", "--block-size", "4 bananas"], "is not a size", id="block-size-not-a-size"),
        pytest.param(["--no-tls", "--cert", "{cert}", "--key", "{key}"], "--no-tls with --cert", id="no-tls-and-cert"),
        pytest.param(
            ["--no-tls", "--blocks-per-request", "64", "--block-size", "4KiB"], "blocks_per_request", id="bpr"
        ),
        pytest.param(["--no-tls", "--frobnicate"], "No such option", id="unknown-option"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_2(
    tmp_path: Path, pem_files: dict[str, Path], args: list[str], expected: str
) -> None:
    values = {"tmp": str(tmp_path), **{name: str(path) for name, path in pem_files.items()}}
    out = tmp_path / "out.bin"
    given = [a.format(**values) for a in args]
    result = run_cli([*BASE, *given] + ([] if "--state-dir" in args else ["--out", str(out)]))
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0]
    assert result.stdout == ""
    assert not out.exists() and not (tmp_path / "out.bin.part").exists() and not (tmp_path / "state").exists()


@pytest.mark.e2e
def test_nothing_listening_is_a_connection_failure_with_exit_5(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    endpoint = ["--endpoint", "127.0.0.1", "--port", str(port), "--no-tls"]
    result = run_cli(
        ["download", *endpoint, "--thing", "t", "--stream", "s", "--json", "--out", str(tmp_path / "o.bin")]
    )
    assert result.exit_code == 5
    assert result.summary is not None and result.summary["failure"] == "connect"
    assert "check --endpoint and --port" in result.summary["message"]
    assert result.seconds < 10
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_unknown_file_id_is_a_bad_argument(local_iot: LocalIot, monkeypatch: pytest.MonkeyPatch) -> None:
    make_stream(local_iot, "cli_fileid", os.urandom(100))
    result = download(local_iot, monkeypatch, thing="t-fid", stream="cli_fileid", certs=None, extra=["--file-id", "7"])
    assert result.exit_code == 2
    assert result.summary is not None and "no file id 7 (it has: 0)" in result.summary["message"]


@pytest.mark.e2e
def test_text_output_without_json(local_iot: LocalIot, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3000)
    make_stream(local_iot, "cli_text", data)
    for name, value in local_iot.environment().items():
        monkeypatch.setenv(name, value)
    result = run_cli(
        ["download", *connection_args(local_iot, "t-text", None), "--thing", "t-text", "--stream", "cli_text"]
    )
    assert result.exit_code == 0, result.stderr
    assert "file 0: 3000 bytes" in result.stdout and "verified" in result.stdout


# ------------------------------------------------------------------------------------ another thing's stream


@pytest.mark.e2e
@pytest.mark.parametrize(("protocol", "qos"), [("mqtt5", "0"), ("mqtt311", "0"), ("mqtt5", "1")])
@pytest.mark.parametrize("client_id", ["t-owner", "t-intruder"])
def test_a_thing_cannot_use_another_things_stream(
    local_iot: LocalIot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, protocol: str, qos: str, client_id: str
) -> None:
    """The certificate of t-intruder, the topics of t-owner. As on AWS (iot:Connect on client/<thing>): claiming
    t-owner's client id is refused at connect; with its own client id the intruder's SUBSCRIBE to t-owner's topics
    is refused in the SUBACK. Either way nothing is downloaded and nothing is written."""
    stream = f"cli_owned_{protocol}_{qos}_{client_id.replace('-', '_')}"
    make_stream(local_iot, stream, os.urandom(1000))
    for name, value in local_iot.environment().items():
        monkeypatch.setenv(name, value)
    args = connection_args(local_iot, "t-intruder", tmp_path)
    out = tmp_path / "stolen.bin"
    tuning = ["--protocol", protocol, "--qos", qos, "--describe-timeout", "0.3", "--describe-retries", "2"]
    result = run_cli(
        [
            "download",
            *args,
            "--thing",
            "t-owner",
            "--client-id",
            client_id,
            "--stream",
            stream,
            "--json",
            *tuning,
            "--out",
            str(out),
        ]
    )
    summary = result.summary
    assert summary is not None and summary["verified"] is False and summary["blocks_received"] == 0
    if client_id == "t-owner":
        assert result.exit_code == 5, summary["message"]  # connection refused
        assert summary["failure"].startswith("connect"), summary
    else:
        assert result.exit_code == 3, summary["message"]  # rejected
        assert summary["failure"] == "rejected:SubscribeRejected", summary
    assert result.seconds < 10
    assert not out.exists()


# --------------------------------------------------------------------------------------------------- resume


def _bitmap_has_progress(state_dir: Path) -> bool:
    for bitmap in state_dir.glob("*.bitmap"):
        try:
            if any(bitmap.read_bytes()):
                return True
        except FileNotFoundError:  # replaced between glob and read
            continue
    return False


@pytest.mark.e2e
def test_resume_after_sigkill(local_iot: LocalIot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A real ``device-sim download --state-dir`` process is killed once it has persisted progress; started again,
    it trusts the persisted blocks, downloads only the rest and verifies."""
    data = os.urandom(300_000)  # 1172 blocks of 256 B
    make_stream(local_iot, "cli_resume", data)
    out, state = tmp_path / "fw.bin", tmp_path / "state"
    common = [*connection_args(local_iot, "t-resume", tmp_path), "--thing", "t-resume", "--stream", "cli_resume"]
    common += ["--block-size", "256", "--out", str(out), "--state-dir", str(state), "--json"]
    env = {**os.environ, **local_iot.environment()}
    # Two blocks per request at <= 100 requests/s (client-side AWS flow control): about 6 s for the whole file;
    # the sink persists its bitmap every 256 blocks (or 2 s), so progress shows after about 1.3 s.
    slow = ["--blocks-per-request", "2", "--flow-control", "aws"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_sim", "download", *common, *slow],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not _bitmap_has_progress(state):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no progress persisted within 30 s"
            time.sleep(0.02)  # polling the state dir, not synchronisation
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and (tmp_path / "fw.bin.part").exists()

    for name, value in local_iot.environment().items():
        monkeypatch.setenv(name, value)
    result = run_cli(["download", *common, "--flow-control", "none"])
    assert result.exit_code == 0, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None and summary["verified"] is True
    resumed = summary["files"][0]["resumed_blocks"]
    assert 0 < resumed < 1172
    assert summary["blocks_received"] == 1172 - resumed
    assert out.read_bytes() == data
    assert not (tmp_path / "fw.bin.part").exists() and list(state.iterdir()) == []


@pytest.mark.e2e
def test_resume_restarts_clean_when_the_stream_version_changed(
    local_iot: LocalIot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A partial of stream version 1 is never mixed with version 2: the new run discards it and starts over."""
    first, second = os.urandom(40_000), os.urandom(40_000)
    created = make_stream(local_iot, "cli_resume_version", first)
    out, state = tmp_path / "fw.bin", tmp_path / "state"
    settings = DownloadSettings(
        block_size=256, blocks_per_request=4, sink=SinkKind.FILE, out=out, state_dir=state, verify_s3=False
    )
    transport = TransportSettings(
        endpoint="127.0.0.1", port=local_iot.info["mqtt_port"], no_tls=True, client_id="t-version"
    )

    async def run_until_some_blocks() -> None:
        loop = asyncio.get_running_loop()
        enough = asyncio.Event()
        received = 0

        def on_progress(nbytes: int) -> None:
            nonlocal received
            received += 1
            if received == 20:
                enough.set()

        device = Device(
            thing_name="t-version",
            stream_id="cli_resume_version",
            transport=transport,
            settings=settings,
            on_progress=on_progress,
        )
        task = loop.create_task(device.run())
        await asyncio.wait_for(enough.wait(), 20)
        task.cancel()
        with pytest.raises(DeviceCancelled) as stopped:
            await task
        assert stopped.value.result.metrics.blocks >= 20

    asyncio.run(run_until_some_blocks())
    assert _bitmap_has_progress(state) and not out.exists()

    # The firmware changes: a new object version, and the stream is updated to point at it (version 2).
    s3, control = local_iot.client("s3"), local_iot.client("iot")
    bucket = created["bucket"]
    version = s3.put_object(Bucket=bucket, Key="fw-0.bin", Body=second)["VersionId"]
    files = [{"fileId": 0, "s3Location": {"bucket": bucket, "key": "fw-0.bin", "version": version}}]
    control.update_stream(streamId="cli_resume_version", files=files)

    result = download(
        local_iot,
        monkeypatch,
        thing="t-version",
        stream="cli_resume_version",
        certs=None,
        extra=["--block-size", "256", "--out", str(out), "--state-dir", str(state)],
    )
    assert result.exit_code == 0, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None
    assert summary["stream_version"] == created["version"] + 1
    assert summary["files"][0]["resumed_blocks"] == 0
    assert out.read_bytes() == second
