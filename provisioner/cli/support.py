"""Shared pieces of the ``provisioner`` CLI: AWS options, error translation to click, option groups, output.

rich is used here and in ``cli`` only: a progress bar for fleets on stderr and colour in cleanup reports.
Data (summaries, plans, stream lists) is printed with ``click.echo`` so that it can be piped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shlex
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..aws import Api, AwsTarget, PlannedCall, open_clients
from ..cleanup import CleanupReport
from ..errors import (
    AccessDenied,
    AlreadyExists,
    AwsError,
    CleanupIncomplete,
    CredentialsError,
    InputError,
    Interrupted,
    ManifestError,
    ManifestLocked,
    NotFound,
    OutputError,
    ProvisionerError,
    Terminated,
    Throttled,
)
from ..firmware import DEFAULT_KEY_PREFIX
from ..interrupts import StopSignal, catch_signals
from ..local import LocalConfig, read_local_config
from ..lock import ManifestLock
from ..manifest import Manifest, journal_path, load_manifest
from ..outputs import check_outputs
from ..pacing import DEFAULT_TPS
from ..things import ThingProgress
from ..validation import parse_host_port

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
console = Console()
err_console = Console(stderr=True)


class ProvisionerCliError(click.ClickException):
    """A ProvisionerError shown as ``Error: <message>: <hint>``; one subclass per error class (its exit code)."""

    def __init__(self, error: ProvisionerError) -> None:
        super().__init__(str(error))
        self.error = error


def _cli_class(error_class: type[ProvisionerError]) -> type[ProvisionerCliError]:
    name = f"{error_class.__name__}CliError"
    return type(name, (ProvisionerCliError,), {"exit_code": error_class.exit_code, "__doc__": error_class.__doc__})


#: The click exception class for each error class (built once at import; never changed).
CLI_ERRORS: dict[type[ProvisionerError], type[ProvisionerCliError]] = {
    cls: _cli_class(cls)
    for cls in (
        ProvisionerError,
        InputError,
        ManifestError,
        AwsError,
        AlreadyExists,
        NotFound,
        AccessDenied,
        Throttled,
        CredentialsError,
        CleanupIncomplete,
        OutputError,
        ManifestLocked,
        Interrupted,
        Terminated,
    )
}


def to_click(error: ProvisionerError) -> ProvisionerCliError:
    """The ClickException for ``error``: the subclass of its nearest error class, with that class's exit code."""
    cls = next(CLI_ERRORS[k] for k in type(error).__mro__ if k in CLI_ERRORS)
    return cls(error)


def errors_to_click(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ProvisionerError as e:
            raise to_click(e) from e
        except MemoryError as e:
            raise click.ClickException("out of memory (MemoryError): run it with fewer or smaller files") from e

    return wrapper


@dataclass(frozen=True, kw_only=True, slots=True)
class AwsOptions:
    profile: str | None
    region: str | None
    local: LocalConfig | None
    tps: float
    local_dir: Path | None = None


def with_aws_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--profile/--region/--local/--tps on every command that calls AWS; passed on as ``aws: AwsOptions``."""

    @click.option("--profile", envvar="AWS_PROFILE", help="AWS profile (standard boto3 credential chain).")
    @click.option("--region", help="AWS region (default: from the profile/environment, or the manifest).")
    @click.option(
        "--local",
        "local_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="State dir of `local-iot up`: endpoint, region, CA and MQTT endpoint from its local-iot.json.",
    )
    @click.option("--tps", type=float, default=DEFAULT_TPS, show_default=True, help="Control-plane calls per second.")
    @functools.wraps(fn)
    def wrapper(profile: str | None, region: str | None, local_dir: Path | None, tps: float, **kwargs: Any) -> Any:
        if tps <= 0:
            raise click.BadParameter("must be positive", param_hint="--tps")
        try:
            local = read_local_config(local_dir) if local_dir is not None else None
        except ProvisionerError as e:
            raise to_click(e) from e
        return fn(aws=AwsOptions(profile=profile, region=region, local=local, tps=tps, local_dir=local_dir), **kwargs)

    return wrapper


def make_api(
    aws: AwsOptions, *, manifest: Manifest | None = None, dry_run: bool = False, stop: StopSignal | None = None
) -> Api:
    """An Api for the options; a manifest supplies region and endpoint when the options do not."""
    if aws.local is not None:
        target = AwsTarget(
            profile=None,
            region=aws.region or aws.local.region,
            endpoint_url=aws.local.aws_endpoint_url,
            static_credentials=aws.local.credentials,
        )
    else:
        target = AwsTarget(
            profile=aws.profile,
            region=aws.region or (manifest.region if manifest else None),
            endpoint_url=manifest.aws_endpoint_url if manifest else None,
        )
    return Api(open_clients(target), dry_run=dry_run, tps=aws.tps, stop=stop)


class RecordingGroup(click.Group):
    """A group that keeps the words of the command line (``ctx.meta["argv"]``) for resume hints."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)


def command_line() -> str:
    """The command line as typed (``provisioner up ...``), shell-quoted; ``provisioner`` when unknown."""
    ctx = click.get_current_context(silent=True)
    argv = ctx.meta.get("argv") if ctx is not None else None
    return shlex.join(["provisioner", *argv]) if isinstance(argv, list) else "provisioner"


def cleanup_command_line(manifest_path: Path, aws: AwsOptions) -> str:
    """``provisioner cleanup --manifest M`` (with ``--local DIR``/``--profile`` when the run used them)."""
    words = ["provisioner", "cleanup", "--manifest", str(manifest_path)]
    if aws.local_dir is not None:
        words += ["--local", str(aws.local_dir)]
    elif aws.profile:
        words += ["--profile", aws.profile]
    return shlex.join(words)


@contextmanager
def manifest_run(
    manifest_path: Path,
    aws: AwsOptions,
    *,
    command: str,
    dry_run: bool = False,
    certs_dir: Path | None = None,
    writes_manifest: bool = True,
) -> Iterator[StopSignal]:
    """The frame of every command that writes a manifest, in this order, before any AWS call:

    1. output locations (``--manifest``'s directory, ``--certs-dir`` when given: the command writes certificates)
       are checked (``OutputError``, exit 11);
    2. the manifest's lock is taken for the whole command (``ManifestLocked``, exit 12; not in a dry run);
    3. SIGINT/SIGTERM stop the command at the next call (``Interrupted`` 130 / ``Terminated`` 143), and the error
       then says what the manifest holds and the exact commands to resume or to clean up.
    """
    if writes_manifest:
        if certs_dir is not None:  # a resumed run keeps the certificates directory it recorded
            recorded = existing_manifest(manifest_path)
            certs_dir = (recorded.certs_dir if recorded is not None else None) or certs_dir
        check_outputs(manifest_path, certs_dir)
    stop = StopSignal()
    lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if not dry_run:
        lock = ManifestLock(manifest_path, command=f"provisioner {command}")
    with _held(lock, required=writes_manifest), catch_signals(stop):
        before = _snapshot(manifest_path)
        try:
            yield stop
        except Interrupted as e:
            raise _interrupted(e, manifest_path, aws, writes_manifest=writes_manifest) from e
        except ProvisionerError as e:
            if writes_manifest and _snapshot(manifest_path) != before:
                _add_run_hint(e, manifest_path, aws)
            raise


def _snapshot(path: Path) -> tuple[bytes, bytes] | None:
    """The manifest and its journal as they are now (None when there is no manifest yet)."""
    try:
        journal = journal_path(path)
        return path.read_bytes(), journal.read_bytes() if journal.exists() else b""
    except OSError:
        return None


def _add_run_hint(e: ProvisionerError, manifest_path: Path, aws: AwsOptions) -> None:
    """A command that failed after recording something says which run holds it and how to go on (same line)."""
    try:
        run_id = load_manifest(manifest_path).run_id
    except ProvisionerError:
        return
    where = (
        f"run {run_id} is recorded in {manifest_path} (resume: `{command_line()}`; "
        f"remove: `{cleanup_command_line(manifest_path, aws)}`)"
    )
    e.hint = f"{e.hint}; {where}" if e.hint else where


@contextmanager
def _held(lock: contextlib.AbstractContextManager[object], *, required: bool) -> Iterator[None]:
    """Hold ``lock``; when it is not ``required`` (cleanup only reads the manifest), an unwritable place is no bar."""
    try:
        lock.__enter__()
    except OutputError as e:
        if required:
            raise
        log.warning("running without the manifest lock: %s", e)
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _interrupted(e: Interrupted, manifest_path: Path, aws: AwsOptions, *, writes_manifest: bool) -> Interrupted:
    if not writes_manifest:  # cleanup: what it removed is gone, the rest is still in the manifest
        return type(e)(f"{e.message}; cleanup stopped part way", hint=f"run `{command_line()}` again to finish")
    try:
        manifest = load_manifest(manifest_path) if manifest_path.exists() else None
    except ProvisionerError:
        manifest = None
    if manifest is None:
        return type(e)(f"{e.message} before anything was recorded in {manifest_path}", hint="nothing to clean up")
    return type(e)(
        f"{e.message}; run {manifest.run_id} is recorded in {manifest_path} up to its last completed call",
        hint=f"resume with `{command_line()}`, or remove it with `{cleanup_command_line(manifest_path, aws)}`",
    )


def existing_manifest(path: Path | None) -> Manifest | None:
    return load_manifest(path) if path is not None and path.exists() else None


def print_plan(planned: list[PlannedCall], *, verb: str = "created") -> None:
    click.echo(f"Dry run: nothing was {verb}. {len(planned)} planned changes:")
    for call in planned:
        click.echo(f"  {call.render()}")
    counts = Counter(f"{c.service}.{c.operation}" for c in planned)
    click.echo("  totals: " + ", ".join(f"{n} x {op}" for op, n in counts.items()))


@contextmanager
def thing_progress(total: int) -> Iterator[Callable[[ThingProgress], None]]:
    """A progress callback that shows a rich bar from the first finished thing on (stderr)."""
    progress = Progress(
        TextColumn("[bold]things[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )
    task = progress.add_task("", total=total)

    def update(p: ThingProgress) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=p.index + 1, description=f"{p.name}{' (kept)' if p.skipped else ''}")

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


def summary(manifest: Manifest, path: Path | None) -> None:
    lines = [f"run {manifest.run_id} in {manifest.account_id}/{manifest.region}"]
    if manifest.aws_endpoint_url:
        lines.append(f"  AWS endpoint   {manifest.aws_endpoint_url}")
    for f in manifest.firmware:
        lines.append(
            f"  file {f.file_id:<3}       s3://{f.bucket}/{f.key} version {f.version_id} "
            f"({f.size} bytes, sha256 {f.sha256[:16]}...)"
        )
    if manifest.role:
        lines.append(f"  role           {manifest.role.arn}{' (created)' if manifest.role.created else ''}")
    if manifest.stream:
        lines.append(f"  stream         {manifest.stream.stream_id} version {manifest.stream.version}")
    if manifest.things:
        done = sum(t.complete for t in manifest.things)
        lines.append(f"  things         {done}/{len(manifest.things)} ready, certificates in {manifest.certs_dir}")
    if manifest.mqtt:
        lines.append(f"  MQTT endpoint  {manifest.mqtt.host}:{manifest.mqtt.port} (root CA {manifest.mqtt.ca_path})")
    if path is not None:
        lines.append(f"  manifest       {path}")
        if manifest.things and manifest.stream:
            lines.append(f"next: device-sim download --manifest {path} --thing {manifest.things[0].name}")
    for line in lines:
        click.echo(line)


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=err_console, show_time=False, show_path=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    if verbose < 3:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


# --- shared options ------------------------------------------------------------------------------------------------

manifest_option = click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Manifest JSON of the run (created or resumed).",
)
dry_run_option = click.option("--dry-run", is_flag=True, help="Print the planned calls; create nothing.")


def firmware_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option(
                "--file", "files", multiple=True, metavar="[ID=]PATH", help="Firmware file (repeatable; ID = fileId)."
            ),
            click.option(
                "--generate", multiple=True, metavar="SIZE", help="Generate a test image: 1MiB, 512KiB, 1000."
            ),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of generated images."),
        ]
    ):
        fn = decorator(fn)
    return fn


def bucket_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option("--bucket", required=True, help="S3 bucket for the firmware."),
            click.option("--create-bucket", is_flag=True, help="Create the bucket (versioning enabled) if missing."),
            click.option("--force-unversioned", is_flag=True, help="Accept an unversioned bucket (risky)."),
            click.option(
                "--key-prefix", default=DEFAULT_KEY_PREFIX, show_default=True, help="S3 keys: PREFIX/<run id>/..."
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def fleet_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option("--thing-prefix", default="sim", show_default=True, help="Things are named PREFIX-<i>."),
            click.option(
                "--certs-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=Path("certs"),
                show_default=True,
                help="Where certificates and keys are written.",
            ),
            click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path), help="Issue from this CA ..."),
            click.option("--ca-key", type=click.Path(dir_okay=False, path_type=Path), help="... with this CA key."),
            click.option(
                "--root-ca",
                type=click.Path(dir_okay=False, path_type=Path),
                help="The broker's root CA (default: AmazonRootCA1, or --ca-cert with --mqtt-endpoint).",
            ),
            click.option("--mqtt-endpoint", metavar="HOST:PORT", help="Device endpoint (default: describe_endpoint)."),
        ]
    ):
        fn = decorator(fn)
    return fn


def local_defaults(aws: AwsOptions, kwargs: dict[str, Any]) -> tuple[tuple[str, int] | None, int | None]:
    """Fill --ca-cert/--ca-key/--mqtt-endpoint from --local; return (mqtt endpoint, plain port)."""
    plain_port = None
    if aws.local is not None:
        kwargs["ca_cert"] = kwargs.get("ca_cert") or aws.local.ca_cert
        kwargs["ca_key"] = kwargs.get("ca_key") or aws.local.ca_key
        kwargs["mqtt_endpoint"] = kwargs.get("mqtt_endpoint") or f"{aws.local.mqtt_host}:{aws.local.tls_port}"
        plain_port = aws.local.mqtt_port
    endpoint = parse_host_port(kwargs["mqtt_endpoint"]) if kwargs.get("mqtt_endpoint") else None
    return endpoint, plain_port


def print_report(report: CleanupReport, api: Api) -> None:
    if report.dry_run:
        print_plan(api.planned, verb="removed")
        _print_warnings(report.warnings)
        return
    for label in report.removed:
        console.print(f"[green]removed[/green]       {escape(label)}", highlight=False, soft_wrap=True)
    for label in report.already_gone:
        console.print(f"[dim]already gone[/dim]  {escape(label)}", highlight=False, soft_wrap=True)
    for label, reason in report.failed:
        console.print(f"[red]NOT removed[/red]   {escape(label)}: {escape(reason)}", highlight=False, soft_wrap=True)
    for label, reason in report.refused:
        line = f"[yellow]refused[/yellow]       {escape(label)}: {escape(reason)}"
        console.print(line, highlight=False, soft_wrap=True)
    _print_warnings(report.warnings)
    refused = f", {len(report.refused)} refused (not the run's files)" if report.refused else ""
    n = len(report.warnings)
    warned = f", {n} warning{'' if n == 1 else 's'}" if n else ""
    click.echo(
        f"{len(report.removed)} removed, {len(report.already_gone)} already gone, {len(report.failed)} not removed"
        + refused
        + warned
    )


def _print_warnings(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        console.print(f"[yellow]warning[/yellow]       {escape(warning)}", highlight=False, soft_wrap=True)
