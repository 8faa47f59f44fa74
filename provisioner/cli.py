"""``provisioner``: control-plane CLI (firmware, stream role, streams, fleet identities, cleanup).

Thin click commands over the library modules. Each command builds an ``Api`` from the AWS options
(``--profile/--region`` through the standard boto3 chain, ``--local DIR`` for local-iot's defaults, ``--tps``),
runs one library function, and prints the result. ``ProvisionerError``s become ``ProvisionerCliError`` (a
``click.ClickException``) carrying the error's own exit code. rich is used here only (progress, tables).
"""

from __future__ import annotations

import functools
import json
import logging
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

from .aws import Api, AwsTarget, PlannedCall, open_clients
from .certs import load_ca
from .cleanup import CleanupReport, cleanup_manifest, find_run
from .errors import CleanupIncomplete, InputError, ManifestError, ProvisionerError
from .firmware import DEFAULT_KEY_PREFIX, check_bucket_usable, ensure_bucket, inspect_bucket, plan_sources, upload
from .local import LocalConfig, read_local_config
from .manifest import Manifest, ManifestStore, load_manifest
from .pacing import DEFAULT_TPS
from .policy import check_policy_free
from .role import check_given_role, create_role, update_role_policy, use_given_role
from .streams import (
    DEFAULT_DESCRIPTION,
    check_stream_free,
    create_stream,
    delete_stream,
    describe_stream,
    file_specs,
    list_streams,
    update_stream,
)
from .things import ThingProgress, resolve_mqtt_endpoint, setup_fleet
from .up import UpOptions, check_same_account, open_run, root_ca_source, up
from .validation import parse_host_port

P = ParamSpec("P")
R = TypeVar("R")
console = Console()
err_console = Console(stderr=True)


class ProvisionerCliError(click.ClickException):
    """A ProvisionerError shown as ``Error: <message>: <hint>`` with the error's exit code."""

    def __init__(self, error: ProvisionerError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code


def _errors_to_click(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ProvisionerError as e:
            raise ProvisionerCliError(e) from e

    return wrapper


@dataclass(frozen=True, kw_only=True, slots=True)
class AwsOptions:
    profile: str | None
    region: str | None
    local: LocalConfig | None
    tps: float


def _aws_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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
            raise ProvisionerCliError(e) from e
        return fn(aws=AwsOptions(profile=profile, region=region, local=local, tps=tps), **kwargs)

    return wrapper


def _api(aws: AwsOptions, *, manifest: Manifest | None = None, dry_run: bool = False) -> Api:
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
    return Api(open_clients(target), dry_run=dry_run, tps=aws.tps)


def _existing_manifest(path: Path | None) -> Manifest | None:
    return load_manifest(path) if path is not None and path.exists() else None


def _print_plan(planned: list[PlannedCall]) -> None:
    click.echo(f"Dry run: nothing was created. {len(planned)} planned changes:")
    for call in planned:
        click.echo(f"  {call.render()}")
    counts = Counter(f"{c.service}.{c.operation}" for c in planned)
    click.echo("  totals: " + ", ".join(f"{n} x {op}" for op, n in counts.items()))


@contextmanager
def _thing_progress(total: int) -> Iterator[Callable[[ThingProgress], None]]:
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


def _summary(manifest: Manifest, path: Path | None) -> None:
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


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=err_console, show_time=False, show_path=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    if verbose < 3:
        for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iot-stream-sim")
@click.option("-v", "--verbose", count=True, help="-v: steps, -vv: every call, -vvv: botocore too.")
def main(verbose: int) -> None:
    """Create and remove AWS IoT streams and device fleets, recorded in a manifest."""
    _setup_logging(verbose)


# --- shared options ------------------------------------------------------------------------------------------------

_manifest_option = click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Manifest JSON of the run (created or resumed).",
)
_dry_run_option = click.option("--dry-run", is_flag=True, help="Print the planned calls; create nothing.")


def _firmware_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def _bucket_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def _fleet_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def _local_defaults(aws: AwsOptions, kwargs: dict[str, Any]) -> tuple[tuple[str, int] | None, int | None]:
    """Fill --ca-cert/--ca-key/--mqtt-endpoint from --local; return (mqtt endpoint, plain port)."""
    plain_port = None
    if aws.local is not None:
        kwargs["ca_cert"] = kwargs.get("ca_cert") or aws.local.ca_cert
        kwargs["ca_key"] = kwargs.get("ca_key") or aws.local.ca_key
        kwargs["mqtt_endpoint"] = kwargs.get("mqtt_endpoint") or f"{aws.local.mqtt_host}:{aws.local.tls_port}"
        plain_port = aws.local.mqtt_port
    endpoint = parse_host_port(kwargs["mqtt_endpoint"]) if kwargs.get("mqtt_endpoint") else None
    return endpoint, plain_port


# --- up ------------------------------------------------------------------------------------------------------------


@main.command("up")
@click.option("--stream-id", required=True, help="Stream id (1-128 of a-z A-Z 0-9 _ -).")
@click.option("--description", default=DEFAULT_DESCRIPTION, show_default=True, help="Stream description.")
@_firmware_options
@_bucket_options
@click.option("--role-arn", help="Existing stream role (trusting iot.amazonaws.com).")
@click.option("--create-role", is_flag=True, help="Create a least-privilege stream role.")
@click.option("--things", type=click.IntRange(min=0), default=0, show_default=True, help="Number of things.")
@_fleet_options
@_manifest_option
@click.option("--run-id", help="Run id for a new run (default: generated).")
@_dry_run_option
@_aws_options
@_errors_to_click
def up_command(aws: AwsOptions, manifest_path: Path, run_id: str | None, dry_run: bool, **kwargs: Any) -> None:
    """Firmware + role + stream + things in one go, recorded in --manifest (re-run to resume)."""
    mqtt_endpoint, plain_port = _local_defaults(aws, kwargs)
    options = UpOptions(
        stream_id=kwargs["stream_id"],
        description=kwargs["description"],
        files=tuple(kwargs["files"]),
        generate=tuple(kwargs["generate"]),
        seed=kwargs["seed"],
        bucket=kwargs["bucket"],
        create_bucket=kwargs["create_bucket"],
        force_unversioned=kwargs["force_unversioned"],
        key_prefix=kwargs["key_prefix"],
        role_arn=kwargs["role_arn"],
        create_role=kwargs["create_role"],
        things=kwargs["things"],
        thing_prefix=kwargs["thing_prefix"],
        certs_dir=kwargs["certs_dir"],
        ca_cert=kwargs["ca_cert"],
        ca_key=kwargs["ca_key"],
        root_ca=kwargs["root_ca"],
        mqtt_endpoint=mqtt_endpoint,
        mqtt_plain_port=plain_port,
    )
    api = _api(aws, manifest=_existing_manifest(manifest_path), dry_run=dry_run)
    store = open_run(api, manifest_path, run_id=run_id, dry_run=dry_run)
    if options.things and not dry_run:
        with _thing_progress(options.things) as progress:
            manifest = up(api, store, options, on_progress=progress)
    else:
        manifest = up(api, store, options)
    if dry_run:
        _print_plan(api.planned)
    else:
        _summary(manifest, manifest_path)


# --- firmware ------------------------------------------------------------------------------------------------------


@main.group()
def firmware() -> None:
    """Upload firmware files or generated test images to S3."""


@firmware.command("upload")
@_firmware_options
@_bucket_options
@_manifest_option
@_dry_run_option
@_aws_options
@_errors_to_click
def firmware_upload(
    aws: AwsOptions,
    manifest_path: Path,
    dry_run: bool,
    files: tuple[str, ...],
    generate: tuple[str, ...],
    seed: int,
    bucket: str,
    create_bucket: bool,
    force_unversioned: bool,
    key_prefix: str,
) -> None:
    """Upload files to a (versioned) bucket and record bucket, key, version, size and SHA-256."""
    sources = plan_sources(list(files), list(generate), seed)
    api = _api(aws, manifest=_existing_manifest(manifest_path), dry_run=dry_run)
    store = open_run(api, manifest_path, dry_run=dry_run)
    if store.manifest.bucket is not None and store.manifest.bucket.name != bucket:
        raise InputError(f"this run uses bucket {store.manifest.bucket.name}", hint="use another --manifest")
    state = inspect_bucket(api, bucket)
    created = store.manifest.bucket is not None and store.manifest.bucket.created
    check_bucket_usable(state, create=create_bucket, force_unversioned=force_unversioned, created_by_run=created)
    ensure_bucket(api, store, state, key_prefix=key_prefix)
    upload(api, store, sources)
    _finish(api, store, manifest_path)


def _finish(api: Api, store: ManifestStore, path: Path) -> None:
    if api.dry_run:
        _print_plan(api.planned)
    else:
        _summary(store.manifest, path)


# --- stream --------------------------------------------------------------------------------------------------------


@main.group()
def stream() -> None:
    """Create, update, describe, list and delete streams."""


@stream.command("create")
@click.option("--stream-id", required=True)
@click.option("--description", default=DEFAULT_DESCRIPTION, show_default=True)
@click.option("--role-arn", help="Existing stream role.")
@click.option("--create-role", "make_role", is_flag=True, help="Create a least-privilege stream role.")
@_manifest_option
@_dry_run_option
@_aws_options
@_errors_to_click
def stream_create(
    aws: AwsOptions,
    manifest_path: Path,
    dry_run: bool,
    stream_id: str,
    description: str,
    role_arn: str | None,
    make_role: bool,
) -> None:
    """Create a stream over the firmware recorded in --manifest (from `firmware upload`)."""
    manifest = _required_manifest(manifest_path)
    if not manifest.firmware:
        raise InputError("the manifest records no firmware", hint="run `provisioner firmware upload` first")
    if (role_arn is None) != make_role:
        raise InputError("the stream needs exactly one of --role-arn and --create-role")
    api = _api(aws, manifest=manifest, dry_run=dry_run)
    check_same_account(api, manifest)
    store = ManifestStore(manifest, manifest_path, dry_run=dry_run)
    if role_arn is not None:
        check_given_role(api, role_arn)
    check_stream_free(api, stream_id)
    objects = list(manifest.firmware)
    role = use_given_role(store, role_arn) if role_arn is not None else create_role(api, store, objects)
    record = create_stream(
        api,
        store,
        stream_id=stream_id,
        description=description,
        files=file_specs(objects),
        role_arn=role.arn,
        retry_role=role.created,
    )
    if dry_run:
        _print_plan(api.planned)
    else:
        click.echo(f"stream {record.stream_id} created: version {record.version}, arn {record.stream_arn}")


@stream.command("update")
@_firmware_options
@click.option("--description", help="New description.")
@_manifest_option
@_dry_run_option
@_aws_options
@_errors_to_click
def stream_update(
    aws: AwsOptions,
    manifest_path: Path,
    dry_run: bool,
    files: tuple[str, ...],
    generate: tuple[str, ...],
    seed: int,
    description: str | None,
) -> None:
    """Upload new files and/or change the description: the stream version goes up by one (printed)."""
    manifest = _required_manifest(manifest_path)
    if manifest.stream is None or manifest.bucket is None:
        raise InputError("the manifest records no stream", hint="run `provisioner up` or `stream create` first")
    if not files and not generate and description is None:
        raise InputError("nothing to update", hint="pass --file/--generate and/or --description")
    sources = plan_sources(list(files), list(generate), seed) if files or generate else None
    api = _api(aws, manifest=manifest, dry_run=dry_run)
    check_same_account(api, manifest)
    store = ManifestStore(manifest, manifest_path, dry_run=dry_run)
    specs = None
    if sources is not None:
        objects = upload(api, store, sources)
        store.change(firmware=tuple(objects))
        update_role_policy(api, store, objects)
        specs = file_specs(objects)
    change = update_stream(api, store, files=specs, description=description)
    if dry_run:
        _print_plan(api.planned)
    else:
        click.echo(f"stream {change.stream_id}: version {change.old_version} -> {change.new_version}")


@stream.command("describe")
@click.option("--stream-id", help="Stream id (default: the manifest's stream).")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path))
@_aws_options
@_errors_to_click
def stream_describe(aws: AwsOptions, stream_id: str | None, manifest_path: Path | None) -> None:
    """Print describe_stream's streamInfo as JSON."""
    manifest = _existing_manifest(manifest_path)
    stream_id = _stream_id(stream_id, manifest)
    info = describe_stream(_api(aws, manifest=manifest), stream_id)
    click.echo(json.dumps(info, default=str, indent=2))


@stream.command("list")
@_aws_options
@_errors_to_click
def stream_list(aws: AwsOptions) -> None:
    """List the account's streams (id, version, description)."""
    for s in list_streams(_api(aws)):
        click.echo(f"{s['streamId']}\tversion {s.get('streamVersion')}\t{s.get('description', '')}")


@stream.command("delete")
@click.option("--stream-id", help="Stream id (default: the manifest's stream).")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path))
@_dry_run_option
@_aws_options
@_errors_to_click
def stream_delete(aws: AwsOptions, stream_id: str | None, manifest_path: Path | None, dry_run: bool) -> None:
    """Delete a stream (and drop it from --manifest)."""
    manifest = _existing_manifest(manifest_path)
    stream_id = _stream_id(stream_id, manifest)
    api = _api(aws, manifest=manifest, dry_run=dry_run)
    delete_stream(api, stream_id)
    if dry_run:
        _print_plan(api.planned)
        return
    if (
        manifest is not None
        and manifest_path is not None
        and manifest.stream
        and manifest.stream.stream_id == stream_id
    ):
        ManifestStore(manifest, manifest_path).change(stream=None)
    click.echo(f"stream {stream_id} deleted")


def _stream_id(stream_id: str | None, manifest: Manifest | None) -> str:
    if stream_id:
        return stream_id
    if manifest is not None and manifest.stream is not None:
        return manifest.stream.stream_id
    raise InputError("which stream?", hint="pass --stream-id or a --manifest that records one")


def _required_manifest(path: Path) -> Manifest:
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist", hint="create the run with `provisioner up` first")
    return load_manifest(path)


# --- things --------------------------------------------------------------------------------------------------------


@main.group()
def things() -> None:
    """Fleet identities: things, certificates, keys and the device policy."""


@things.command("create")
@click.option("--things", "count", type=click.IntRange(min=1), required=True, help="Number of things.")
@_fleet_options
@_manifest_option
@_dry_run_option
@_aws_options
@_errors_to_click
def things_create(aws: AwsOptions, manifest_path: Path, dry_run: bool, count: int, **kwargs: Any) -> None:
    """Create (or resume creating) things PREFIX-0..N-1 with certificates, recorded in --manifest."""
    mqtt_endpoint, plain_port = _local_defaults(aws, kwargs)
    if (kwargs["ca_cert"] is None) != (kwargs["ca_key"] is None):
        raise InputError("--ca-cert and --ca-key go together", hint="pass both or neither")
    ca = load_ca(kwargs["ca_cert"], kwargs["ca_key"]) if kwargs["ca_cert"] else None
    api = _api(aws, manifest=_existing_manifest(manifest_path), dry_run=dry_run)
    store = open_run(api, manifest_path, dry_run=dry_run)
    check_policy_free(api, store)
    mqtt = resolve_mqtt_endpoint(api, mqtt_endpoint, plain_port=plain_port)
    options = UpOptions(
        stream_id="unused",
        bucket="unused",
        ca_cert=kwargs["ca_cert"],
        root_ca=kwargs["root_ca"],
        mqtt_endpoint=mqtt_endpoint,
    )
    fleet = functools.partial(
        setup_fleet,
        api,
        store,
        mqtt=mqtt,
        certs_dir=kwargs["certs_dir"],
        root_ca=root_ca_source(options),
        prefix=kwargs["thing_prefix"],
        count=count,
        ca=ca,
    )
    if dry_run:
        fleet()
    else:
        with _thing_progress(count) as progress:
            fleet(on_progress=progress)
    _finish(api, store, manifest_path)


# --- cleanup -------------------------------------------------------------------------------------------------------


@main.command("cleanup")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), help="Run to remove.")
@click.option("--run-id", help="Find the run's resources by tag/attribute/name instead of a manifest.")
@click.option("--bucket", "buckets", multiple=True, help="With --run-id: also remove the run's objects in BUCKET.")
@click.option("--key-prefix", default=DEFAULT_KEY_PREFIX, show_default=True, help="With --run-id and --bucket.")
@click.option("--keep-files", is_flag=True, help="Keep the local certificate and key files.")
@_dry_run_option
@_aws_options
@_errors_to_click
def cleanup_command(
    aws: AwsOptions,
    manifest_path: Path | None,
    run_id: str | None,
    buckets: tuple[str, ...],
    key_prefix: str,
    keep_files: bool,
    dry_run: bool,
) -> None:
    """Remove everything a run created (detach, deactivate, delete); safe to run again."""
    if (manifest_path is None) == (run_id is None):
        raise InputError("pass exactly one of --manifest and --run-id")
    if manifest_path is not None:
        manifest = _required_manifest(manifest_path)
        api = _api(aws, manifest=manifest, dry_run=dry_run)
        check_same_account(api, manifest)
    else:
        assert run_id is not None
        api = _api(aws, dry_run=dry_run)
        manifest = find_run(api, run_id, buckets=buckets, key_prefix=key_prefix)
    report = cleanup_manifest(api, manifest, delete_local_files=not keep_files and manifest_path is not None)
    _print_report(report, api)
    if not report.ok:
        raise CleanupIncomplete(
            f"{len(report.failed)} resources could not be removed", hint="fix the cause and run cleanup again"
        )


def _print_report(report: CleanupReport, api: Api) -> None:
    if report.dry_run:
        _print_plan(api.planned)
        return
    for label in report.removed:
        console.print(f"[green]removed[/green]       {escape(label)}", highlight=False, soft_wrap=True)
    for label in report.already_gone:
        console.print(f"[dim]already gone[/dim]  {escape(label)}", highlight=False, soft_wrap=True)
    for label, reason in report.failed:
        console.print(f"[red]NOT removed[/red]   {escape(label)}: {escape(reason)}", highlight=False, soft_wrap=True)
    click.echo(
        f"{len(report.removed)} removed, {len(report.already_gone)} already gone, {len(report.failed)} not removed"
    )


__all__ = ["ProvisionerCliError", "main"]
