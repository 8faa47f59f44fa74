"""``device-sim download``: one device downloads a stream, verifies it and reports.

Exit codes: 0 every file downloaded and verified; 1 verification mismatch; 2 bad arguments (printed as one line,
before anything is written: also TLS files that do not load or a key that does not belong to its certificate, and
an output location that cannot be written); 3 rejected by the service or the broker; 4 timeout/abort; 5
connection or TLS failure; 6 anything else (storage, source unreadable, a bug); 130 interrupted by SIGINT
(Ctrl-C); 143 interrupted by SIGTERM. Interrupted, the command still prints its report (``--json``: ``"failure":
"interrupted"``) and says whether the same command resumes (with ``--state-dir`` the part file and its bitmap are
kept) or nothing was kept (without ``--state-dir`` the part file is removed).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import click

from device_sim.cli.errors import EXIT_BAD_ARGUMENTS, BadArguments, exit_code_of_signal
from device_sim.cli.jobs import job_options, run_job_download
from device_sim.cli.options import build_download_settings, download_options, pem_file, transport_choices
from device_sim.cli.outputs import check_output_dir, check_output_file
from device_sim.device.device import (
    BAD_SETTINGS,
    NO_SUCH_FILE,
    Device,
    DeviceCancelled,
    DeviceFailure,
    DeviceResult,
    SinkKind,
)
from device_sim.device.verify import S3Source
from device_sim.fleet.plan import PlanError, device_from_manifest, s3_source
from device_sim.results.metrics import DeviceMetrics, FailureKind
from device_sim.transport import InvalidSettings, TransportSettings
from device_sim.transport.tls_files import check_tls_files

EXIT_CODES = {
    FailureKind.VERIFY_MISMATCH: 1,
    FailureKind.REJECTED: 3,
    FailureKind.TIMEOUT: 4,
    FailureKind.CONNECT: 5,
    FailureKind.DISCONNECTED: 5,
    FailureKind.CANCELLED: 6,
    FailureKind.ERROR: 6,
}


class ManifestProblem(BadArguments):
    pass


class OneLineErrors(click.Command):
    """A click command whose usage errors are one line (no usage banner), so scripts can log them."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise BadArguments(f"{exc.format_message()} (see --help)") from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise BadArguments(exc.format_message()) from None


def resolve_from_manifest(manifest_path: Path, thing: str | None) -> dict[str, Any]:
    """Endpoint, port, certificates and stream for ``thing`` from a provisioner manifest (option name -> value)."""
    try:
        chosen = device_from_manifest(manifest_path, thing)
    except PlanError as exc:
        raise ManifestProblem(str(exc)) from exc
    return {
        "endpoint": chosen.target.endpoint,
        "port": chosen.target.port,
        "ca": chosen.target.ca,
        "cert": chosen.identity.cert,
        "key": chosen.identity.key,
        "thing": chosen.identity.thing_name,
        "stream": chosen.target.stream_id,
        "target": chosen.target,
    }


@click.command("download", cls=OneLineErrors)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Take endpoint, certificates and stream from a `provisioner up` manifest.",
)
@click.option("--endpoint", default=None, help="MQTT endpoint host (AWS: describe-endpoint iot:Data-ATS).")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="MQTT port [default: 8883 with TLS, 1883 with --no-tls; 443 uses ALPN].",
)
@click.option("--cert", type=click.Path(path_type=Path), default=None, help="Device certificate (PEM).")
@click.option("--key", type=click.Path(path_type=Path), default=None, help="Device private key (PEM).")
@click.option("--ca", type=click.Path(path_type=Path), default=None, help="Root CA (AmazonRootCA1.pem on AWS).")
@click.option("--no-tls", is_flag=True, help="Plain TCP (local benches only).")
@click.option("--thing", default=None, help="Thing name (also the MQTT client id).")
@click.option("--client-id", default=None, help="MQTT client id [default: the thing name].")
@click.option("--stream", "stream_id", default=None, help="Stream id.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the file here (only after it verified). Several files: OUT.<fileId>.",
)
@click.option(
    "--sink",
    type=click.Choice(["digest", "memory", "file"]),
    default=None,
    help="Where blocks go [default: file with --out, else a streaming digest].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Resume state: a killed download continues from the blocks persisted here (needs --out).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary instead of text.")
@click.option("--job", is_flag=True, help="Follow the thing's next OTA job (AWS IoT Jobs) instead of --stream.")
@job_options
@download_options
def download_command(**params: Any) -> None:
    """Download a stream as one device, verify it, and exit 0 only if every file verified."""
    resolved: dict[str, Any] = {}
    if params["manifest"] is not None:
        resolved = resolve_from_manifest(params["manifest"], params["thing"])
    endpoint = _required(params["endpoint"] or resolved.get("endpoint"), "--endpoint")
    thing = _required(params["thing"] or resolved.get("thing"), "--thing")
    stream_id = params["stream_id"] or resolved.get("stream") or ""  # --job: the job document names it
    if not params["job"]:
        stream_id = _required(stream_id, "--stream")
    no_tls = params["no_tls"]
    cert = pem_file(params["cert"] or (None if no_tls else resolved.get("cert")), "--cert", "CERTIFICATE")
    key = pem_file(params["key"] or (None if no_tls else resolved.get("key")), "--key", "PRIVATE KEY")
    ca = pem_file(params["ca"] or (None if no_tls else resolved.get("ca")), "--ca", "CERTIFICATE")
    if not no_tls and (cert is None or key is None):
        raise click.UsageError("mutual TLS needs --cert and --key (or --no-tls for a plain local broker)")
    out, state_dir = params["out"], params["state_dir"]
    sink = params["sink"] or (SinkKind.FILE if out else SinkKind.DIGEST)
    if state_dir is not None and out is None:
        raise click.UsageError("--state-dir resumes a file download: give --out too")
    if sink == SinkKind.FILE and out is None:
        raise click.UsageError("--sink file needs --out")
    settings = build_download_settings(params, sink=sink, out=out, state_dir=state_dir)
    port = params["port"] or (None if no_tls else resolved.get("port"))
    try:
        transport = TransportSettings(
            endpoint=endpoint,
            port=port,
            cert=cert,
            key=key,
            ca=ca,
            no_tls=no_tls,
            client_id=params["client_id"] or thing,
            **transport_choices(params),
        )
    except InvalidSettings as exc:
        raise click.UsageError(str(exc)) from None
    try:  # awscrt would say only AWS_IO_TLS_CTX_ERROR, at connect time
        check_tls_files(transport)
    except InvalidSettings as exc:
        raise BadArguments(str(exc)) from None
    if out is not None:
        check_output_file(out, "--out")
    if state_dir is not None:
        check_output_dir(state_dir, "--state-dir", "state directory")
    if params["job"]:
        if settings.verify_s3 and settings.expect_sha256 is None:
            target = resolved.get("target")
            job_source = s3_source(target) if target is not None else S3Source.connect()
        else:
            job_source, settings = None, replace(settings, verify_s3=False)
        run_job_download(params, thing=thing, transport=transport, settings=settings, source=job_source)
        return
    with _Interrupts() as interrupts:
        try:
            source = None
            if settings.verify_s3 and settings.expect_sha256 is None:
                target = resolved.get("target")
                source = s3_source(target) if target is not None else S3Source.connect()
            else:
                settings = replace(settings, verify_s3=False)

            def make_device(on_progress: Callable[[int], None] | None) -> Device:
                return Device(
                    thing_name=thing,
                    stream_id=stream_id,
                    transport=transport,
                    settings=settings,
                    source=source,
                    on_progress=on_progress,
                )

            result = _run_with_progress(make_device, f"{thing} <- {stream_id}", interrupts, quiet=params["as_json"])
        except _Interrupted:  # before the device started: nothing was written
            result = _not_started(thing, stream_id, settings.label)
    if interrupts.signum is not None and result.failure is not None and result.failure.kind is FailureKind.CANCELLED:
        result = _interrupted(result, interrupts.signum, state_dir)
        _report(result, as_json=params["as_json"], reason=INTERRUPTED)
        sys.exit(exit_code_of_signal(interrupts.signum))
    _report(result, as_json=params["as_json"])
    if not result.ok:
        sys.exit(exit_code(result))


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Interrupts:
    """SIGINT and SIGTERM during one download. Before the device runs they raise ``_Interrupted`` (nothing has
    been written yet); while it runs they cancel it, so its sinks close as on any other failure (a part file without
    --state-dir is removed, with --state-dir it stays with its bitmap as the resume state); after it they are only
    noted, so the report is still printed. ``signum``: the first signal caught. Signals reach only the main
    thread: called from another thread (an embedding program), the command leaves them alone."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._raise = True
        self._previous: dict[int, Any] = {}
        self._active = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> _Interrupts:
        if self._active:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if self._raise:
            raise _Interrupted(signum)

    async def run(self, device: Device) -> DeviceResult:
        """``device.run()``; a signal cancels it and the partial result (``DeviceCancelled``) is returned."""
        if not self._active:
            return await device.run()
        loop = asyncio.get_running_loop()
        task: asyncio.Future[DeviceResult] | None = None

        def on_signal(signum: int) -> None:
            if self.signum is None:
                self.signum = signum
            if task is not None:
                task.cancel()

        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            if self.signum is not None:  # caught just before the loop took the signals over
                raise _Interrupted(self.signum)
            task = asyncio.ensure_future(device.run())
            try:
                return await task
            except DeviceCancelled as exc:
                return exc.result
        finally:
            for sig in self.SIGNALS:
                loop.remove_signal_handler(sig)
            self._raise = False  # the run is over: a late signal must not lose its report
            for sig in self.SIGNALS:
                signal.signal(sig, self._handler)


def _not_started(thing: str, stream_id: str, label: str) -> DeviceResult:
    failure = DeviceFailure(FailureKind.CANCELLED, "stopped before the device started")
    metrics = DeviceMetrics(
        thing_name=thing, settings=label, verified=False, failure_reason=failure.reason, failure_message=failure.message
    )
    return DeviceResult(
        thing_name=thing, stream_id=stream_id, stream_version=None, files=(), metrics=metrics, failure=failure
    )


#: ``failure`` in the report of an interrupted download (``DeviceMetrics`` keep ``cancelled``, like a fleet's).
INTERRUPTED = "interrupted"


def _interrupted(result: DeviceResult, signum: int, state_dir: Path | None) -> DeviceResult:
    """The result of a download a signal stopped, its message saying what was kept and how to go on."""
    assert result.failure is not None
    name = signal.Signals(signum).name
    if state_dir is not None:
        advice = f"the same command resumes from the blocks kept in {state_dir}"
    else:
        advice = "nothing was kept (no --state-dir): the same command starts over; add --state-dir DIR to resume"
    failure = DeviceFailure(FailureKind.CANCELLED, f"interrupted by {name} ({result.failure.message}); {advice}")
    return replace(result, failure=failure)


def _required(value: Any, option: str) -> str:
    if not value:
        raise click.UsageError(f"{option} is required (or --manifest)")
    return str(value)


def exit_code(result: DeviceResult) -> int:
    """The exit code of a finished run (0 only when every file downloaded and verified)."""
    if result.ok:
        return 0
    failure = result.failure
    if failure is None:
        return EXIT_CODES[FailureKind.VERIFY_MISMATCH]
    if failure.kind is FailureKind.ERROR and failure.detail in (NO_SUCH_FILE, BAD_SETTINGS):
        return EXIT_BAD_ARGUMENTS  # --file-id names a file the stream does not have; TLS files that do not load
    return EXIT_CODES[failure.kind]


def _run_with_progress(
    make_device: Callable[[Callable[[int], None] | None], Device], title: str, interrupts: _Interrupts, *, quiet: bool
) -> DeviceResult:
    """Run the device; a progress bar on a terminal (stderr), nothing otherwise."""
    if quiet or not sys.stderr.isatty():
        return asyncio.run(interrupts.run(make_device(None)))
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(title, total=None)
        return asyncio.run(interrupts.run(make_device(lambda n: progress.advance(task, n))))


def _report(result: DeviceResult, *, as_json: bool, reason: str | None = None) -> None:
    """The outcome on stdout (``--json``: one line) or, for a failure, one line on stderr; ``reason`` replaces
    the failure's reason (``interrupted``)."""
    m = result.metrics
    if result.failure is not None and reason is None:
        reason = result.failure.reason
    if as_json:
        summary = {
            "thing": result.thing_name,
            "stream": result.stream_id,
            "stream_version": result.stream_version,
            "file_ids": list(result.file_ids),
            "files": [
                {
                    "file_id": f.file_id,
                    "bytes": f.file_size,
                    "sha256": f.sha256,
                    "verified": f.verified,
                    "seconds": round(f.seconds, 4),
                    "verify_seconds": round(f.verify_seconds, 4),
                    "path": f.path,
                    "resumed_blocks": f.resumed_blocks,
                    "first_bad_block": f.first_bad_block,
                }
                for f in result.files
            ],
            "bytes": m.bytes,
            "seconds": m.download_s,
            "requests": m.requests,
            "blocks_received": m.blocks,
            "duplicates": m.duplicates,
            "re_requests": m.re_requests,
            "timeouts": m.timeouts,
            "rejections": m.rejections_by_code,
            "disconnects": m.disconnects,
            "stalls": m.stalls,
            "stall_s": round(m.stall_s, 4),
            "aborts": m.aborts,
            "lost_blocks": m.lost_blocks,
            "verified": result.ok,
            "sha256": m.sha256,
            "failure": reason,
            "message": result.failure.message if result.failure else None,
        }
        click.echo(json.dumps(summary, separators=(",", ":")))
        return
    if result.ok:
        seconds = m.download_s or 0.0
        rate = m.bytes / seconds / 1e6 if seconds else 0.0
        for f in result.files:
            where = f" -> {f.path}" if f.path else ""
            click.echo(f"file {f.file_id}: {f.file_size} bytes, sha256 {f.sha256}, verified{where}")
        click.echo(
            f"{result.thing_name}: {m.bytes} bytes in {seconds:.2f} s ({rate:.2f} MB/s), {m.blocks} blocks, "
            f"{m.duplicates} duplicates, {m.re_requests} re-requests, {m.timeouts} timeouts"
        )
    else:
        assert result.failure is not None
        click.echo(f"error: {result.thing_name}: {reason}: {result.failure.message}", err=True)
