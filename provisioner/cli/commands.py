"""``provisioner``: control-plane CLI (firmware, stream role, streams, fleet identities, cleanup).

Thin click commands over the library modules. Each command builds an ``Api`` from the AWS options
(``--profile/--region`` through the standard boto3 chain, ``--local DIR`` for local-iot's defaults, ``--tps``),
runs one library function, and prints the result. ``ProvisionerError``s become ``ProvisionerCliError`` (a
``click.ClickException``) carrying the error's own exit code. Options and output helpers: ``support``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import click

from ..aws import Api
from ..certs import IssuingCA, load_ca
from ..cleanup import cleanup_manifest, find_run
from ..errors import CleanupIncomplete, InputError, ManifestError
from ..firmware import DEFAULT_KEY_PREFIX, check_bucket_usable, ensure_bucket, inspect_bucket, plan_sources, upload
from ..interrupts import StopSignal, catch_signals
from ..manifest import Manifest, ManifestStore, load_manifest
from ..policy import check_policy_free
from ..role import check_given_role, create_role, update_role_policy, use_given_role
from ..streams import (
    DEFAULT_DESCRIPTION,
    check_stream_free,
    create_stream,
    delete_stream,
    describe_stream,
    file_specs,
    list_streams,
    update_stream,
)
from ..things import resolve_mqtt_endpoint, setup_fleet
from ..up import UpOptions, check_same_account, open_run, root_ca_source, up
from .support import (
    AwsOptions,
    ProvisionerCliError,
    RecordingGroup,
    bucket_options,
    dry_run_option,
    errors_to_click,
    existing_manifest,
    firmware_options,
    fleet_options,
    local_defaults,
    make_api,
    manifest_option,
    manifest_run,
    print_plan,
    print_report,
    setup_logging,
    summary,
    thing_progress,
    with_aws_options,
)


@click.group(cls=RecordingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iot-stream-sim")
@click.option("-v", "--verbose", count=True, help="-v: steps, -vv: every call, -vvv: botocore too.")
def main(verbose: int) -> None:
    """Create and remove AWS IoT streams and device fleets, recorded in a manifest."""
    setup_logging(verbose)


# --- up ------------------------------------------------------------------------------------------------------------


@main.command("up")
@click.option("--stream-id", required=True, help="Stream id (1-128 of a-z A-Z 0-9 _ -).")
@click.option("--description", default=DEFAULT_DESCRIPTION, show_default=True, help="Stream description.")
@firmware_options
@bucket_options
@click.option("--role-arn", help="Existing stream role (trusting iot.amazonaws.com).")
@click.option("--create-role", is_flag=True, help="Create a least-privilege stream role.")
@click.option("--things", type=click.IntRange(min=0), default=0, show_default=True, help="Number of things.")
@fleet_options
@manifest_option
@click.option("--run-id", help="Run id for a new run (default: generated).")
@dry_run_option
@with_aws_options
@errors_to_click
def up_command(aws: AwsOptions, manifest_path: Path, run_id: str | None, dry_run: bool, **kwargs: Any) -> None:
    """Firmware + role + stream + things in one go, recorded in --manifest (re-run to resume)."""
    mqtt_endpoint, plain_port = local_defaults(aws, kwargs)
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
    certs_dir = options.certs_dir if options.things else None
    with manifest_run(manifest_path, aws, command="up", dry_run=dry_run, certs_dir=certs_dir) as stop:
        api = make_api(aws, manifest=existing_manifest(manifest_path), dry_run=dry_run, stop=stop)
        store = open_run(api, manifest_path, run_id=run_id, dry_run=dry_run)
        if options.things and not dry_run:
            with thing_progress(options.things) as progress:
                manifest = up(api, store, options, on_progress=progress)
        else:
            manifest = up(api, store, options)
    if dry_run:
        print_plan(api.planned)
    else:
        summary(manifest, manifest_path)


# --- firmware ------------------------------------------------------------------------------------------------------


@main.group()
def firmware() -> None:
    """Upload firmware files or generated test images to S3."""


@firmware.command("upload")
@firmware_options
@bucket_options
@manifest_option
@dry_run_option
@with_aws_options
@errors_to_click
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
    with manifest_run(manifest_path, aws, command="firmware upload", dry_run=dry_run) as stop:
        api = make_api(aws, manifest=existing_manifest(manifest_path), dry_run=dry_run, stop=stop)
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
        print_plan(api.planned)
    else:
        summary(store.manifest, path)


# --- stream --------------------------------------------------------------------------------------------------------


@main.group()
def stream() -> None:
    """Create, update, describe, list and delete streams."""


@stream.command("create")
@click.option("--stream-id", required=True)
@click.option("--description", default=DEFAULT_DESCRIPTION, show_default=True)
@click.option("--role-arn", help="Existing stream role.")
@click.option("--create-role", "make_role", is_flag=True, help="Create a least-privilege stream role.")
@manifest_option
@dry_run_option
@with_aws_options
@errors_to_click
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
    with manifest_run(manifest_path, aws, command="stream create", dry_run=dry_run) as stop:
        manifest = _required_manifest(manifest_path)
        if not manifest.firmware:
            raise InputError("the manifest records no firmware", hint="run `provisioner firmware upload` first")
        if (role_arn is None) != make_role:
            raise InputError("the stream needs exactly one of --role-arn and --create-role")
        api = make_api(aws, manifest=manifest, dry_run=dry_run, stop=stop)
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
        print_plan(api.planned)
    else:
        click.echo(f"stream {record.stream_id} created: version {record.version}, arn {record.stream_arn}")


@stream.command("update")
@firmware_options
@click.option("--description", help="New description.")
@manifest_option
@dry_run_option
@with_aws_options
@errors_to_click
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
    with manifest_run(manifest_path, aws, command="stream update", dry_run=dry_run) as stop:
        manifest = _required_manifest(manifest_path)
        if manifest.stream is None or manifest.bucket is None:
            raise InputError("the manifest records no stream", hint="run `provisioner up` or `stream create` first")
        if not files and not generate and description is None:
            raise InputError("nothing to update", hint="pass --file/--generate and/or --description")
        sources = plan_sources(list(files), list(generate), seed) if files or generate else None
        api = make_api(aws, manifest=manifest, dry_run=dry_run, stop=stop)
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
        print_plan(api.planned)
    else:
        click.echo(f"stream {change.stream_id}: version {change.old_version} -> {change.new_version}")


@stream.command("describe")
@click.option("--stream-id", help="Stream id (default: the manifest's stream).")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path))
@with_aws_options
@errors_to_click
def stream_describe(aws: AwsOptions, stream_id: str | None, manifest_path: Path | None) -> None:
    """Print describe_stream's streamInfo as JSON."""
    manifest = existing_manifest(manifest_path)
    stream_id = _stream_id(stream_id, manifest)
    info = describe_stream(make_api(aws, manifest=manifest), stream_id)
    click.echo(json.dumps(info, default=str, indent=2))


@stream.command("list")
@with_aws_options
@errors_to_click
def stream_list(aws: AwsOptions) -> None:
    """List the account's streams (id, version, description)."""
    for s in list_streams(make_api(aws)):
        click.echo(f"{s['streamId']}\tversion {s.get('streamVersion')}\t{s.get('description', '')}")


@stream.command("delete")
@click.option("--stream-id", help="Stream id (default: the manifest's stream).")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path))
@dry_run_option
@with_aws_options
@errors_to_click
def stream_delete(aws: AwsOptions, stream_id: str | None, manifest_path: Path | None, dry_run: bool) -> None:
    """Delete a stream (and drop it from --manifest)."""
    frame = (
        manifest_run(manifest_path, aws, command="stream delete", dry_run=dry_run)
        if manifest_path is not None and manifest_path.exists()
        else contextlib.nullcontext(None)
    )
    with frame as stop:
        manifest = existing_manifest(manifest_path)
        stream_id = _stream_id(stream_id, manifest)
        api = make_api(aws, manifest=manifest, dry_run=dry_run, stop=stop)
        delete_stream(api, stream_id)
        if dry_run:
            print_plan(api.planned)
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
@fleet_options
@manifest_option
@dry_run_option
@with_aws_options
@errors_to_click
def things_create(aws: AwsOptions, manifest_path: Path, dry_run: bool, count: int, **kwargs: Any) -> None:
    """Create (or resume creating) things PREFIX-0..N-1 with certificates, recorded in --manifest."""
    mqtt_endpoint, plain_port = local_defaults(aws, kwargs)
    if (kwargs["ca_cert"] is None) != (kwargs["ca_key"] is None):
        raise InputError("--ca-cert and --ca-key go together", hint="pass both or neither")
    ca = load_ca(kwargs["ca_cert"], kwargs["ca_key"]) if kwargs["ca_cert"] else None
    with manifest_run(
        manifest_path, aws, command="things create", dry_run=dry_run, certs_dir=kwargs["certs_dir"]
    ) as stop:
        _things_create(aws, manifest_path, dry_run, count, ca, mqtt_endpoint, plain_port, stop, kwargs)


def _things_create(
    aws: AwsOptions,
    manifest_path: Path,
    dry_run: bool,
    count: int,
    ca: IssuingCA | None,
    mqtt_endpoint: tuple[str, int] | None,
    plain_port: int | None,
    stop: StopSignal,
    kwargs: dict[str, Any],
) -> None:
    api = make_api(aws, manifest=existing_manifest(manifest_path), dry_run=dry_run, stop=stop)
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
        with thing_progress(count) as progress:
            fleet(on_progress=progress)
    _finish(api, store, manifest_path)


# --- cleanup -------------------------------------------------------------------------------------------------------


@main.command("cleanup")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), help="Run to remove.")
@click.option("--run-id", help="Find the run's resources by tag/attribute/name instead of a manifest.")
@click.option("--bucket", "buckets", multiple=True, help="With --run-id: also remove the run's objects in BUCKET.")
@click.option("--key-prefix", default=DEFAULT_KEY_PREFIX, show_default=True, help="With --run-id and --bucket.")
@click.option("--keep-files", is_flag=True, help="Keep the local certificate and key files.")
@dry_run_option
@with_aws_options
@errors_to_click
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
        with manifest_run(manifest_path, aws, command="cleanup", dry_run=dry_run, writes_manifest=False) as stop:
            manifest = _required_manifest(manifest_path)
            api = make_api(aws, manifest=manifest, dry_run=dry_run, stop=stop)
            check_same_account(api, manifest)
            report = cleanup_manifest(api, manifest, delete_local_files=not keep_files)
    else:
        assert run_id is not None
        stop = StopSignal()
        with catch_signals(stop):
            api = make_api(aws, dry_run=dry_run, stop=stop)
            found = find_run(api, run_id, buckets=buckets, key_prefix=key_prefix)
            report = cleanup_manifest(api, found.manifest, delete_local_files=False)
            report = dataclasses.replace(report, warnings=found.warnings)
    print_report(report, api)
    if not report.ok:
        raise CleanupIncomplete(
            f"{len(report.failed)} resources could not be removed", hint="fix the cause and run cleanup again"
        )


__all__ = ["ProvisionerCliError", "main"]
