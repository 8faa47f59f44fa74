"""``provisioner ota``: OTA updates over AWS IoT Jobs for a manifest's stream and things (docs/ota.md).

``ota create`` signs the stream's files (your ``--signing-key``/``--signing-cert``; or, with ``--local`` or
``--ca-cert/--ca-key``, a code-signing certificate issued from that CA into the certificates directory) and creates
one OTA update for the things, recorded in the manifest. ``ota status`` prints each target's job execution and a
summary line; it exits 0 only when every target SUCCEEDED, 1 otherwise (the others listed). Errors exit with the
provisioner's usual codes (2 bad input, 3 manifest, 4-9 AWS, 11-12 outputs and lock, 130/143 signals).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..aws import Api
from ..certs import load_ca
from ..errors import InputError
from ..manifest import ManifestStore
from ..ota import OtaOptions, SigningMaterial, create_ota, issue_code_signing, load_signing, ota_status, pick_update
from .support import (
    AwsOptions,
    dry_run_option,
    errors_to_click,
    existing_manifest,
    make_api,
    manifest_run,
    print_plan,
    with_aws_options,
)

__all__ = ["ota_group"]


@click.group("ota")
def ota_group() -> None:
    """OTA updates over AWS IoT Jobs: signed files, one job for the fleet, its status."""


@ota_group.command("create")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--ota-update-id", help="OTA update id (default: iss-<run id>[-N]); the job is AFR_OTA-<id>.")
@click.option("--targets", help="THING[,THING...] of the manifest (default: all of its things).")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path), help="Your EC P-256 signing key.")
@click.option("--signing-cert", type=click.Path(dir_okay=False, path_type=Path), help="... and its certificate.")
@click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path), help="Issue a code-signing cert ...")
@click.option("--ca-key", type=click.Path(dir_okay=False, path_type=Path), help="... from this CA (like --local).")
@click.option("--cert-path-on-device", help="Where devices find the code-signing certificate (default: local path).")
@click.option("--rollout-per-minute", type=click.IntRange(1, 1000), help="jobExecutionsRolloutConfig.maximumPerMinute.")
@click.option("--role-arn", help="Role for the OTA update (default: the manifest's stream role).")
@dry_run_option
@with_aws_options
@errors_to_click
def ota_create(
    aws: AwsOptions,
    manifest_path: Path,
    ota_update_id: str | None,
    targets: str | None,
    signing_key: Path | None,
    signing_cert: Path | None,
    ca_cert: Path | None,
    ca_key: Path | None,
    cert_path_on_device: str | None,
    rollout_per_minute: int | None,
    role_arn: str | None,
    dry_run: bool,
) -> None:
    """Sign the manifest stream's files and create an OTA update for its things, recorded in --manifest."""
    if (signing_key is None) != (signing_cert is None):
        raise InputError("--signing-key and --signing-cert go together", hint="pass both or neither")
    if (ca_cert is None) != (ca_key is None):
        raise InputError("--ca-cert and --ca-key go together", hint="pass both or neither")
    options = OtaOptions(
        ota_update_id=ota_update_id,
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()) if targets else (),
        cert_path_on_device=cert_path_on_device,
        rollout_per_minute=rollout_per_minute,
        role_arn=role_arn,
    )
    with manifest_run(manifest_path, aws, command="ota create", dry_run=dry_run) as stop:
        manifest = existing_manifest(manifest_path)
        if manifest is None:
            raise InputError(f"manifest {manifest_path} does not exist", hint="create the run with `provisioner up`")
        api = make_api(aws, manifest=manifest, dry_run=dry_run, stop=stop)
        signing = _signing(aws, signing_key, signing_cert, ca_cert, ca_key, manifest.certs_dir, manifest_path, api)
        store = ManifestStore(manifest, manifest_path, dry_run=dry_run)
        record = create_ota(api, store, options, signing)
    if dry_run:
        print_plan(api.planned)
        return
    click.echo(f"OTA update {record.ota_update_id}: job {record.job_id} for {len(record.targets)} things")
    click.echo(f"  stream         {record.stream_id}")
    click.echo(f"  signed with    {record.signing_cert} (on the device: {record.cert_path_on_device})")
    click.echo(f"next: device-sim fleet --jobs --manifest {manifest_path}")
    click.echo(f"      provisioner ota status --manifest {manifest_path} --wait 300")


def _signing(
    aws: AwsOptions,
    signing_key: Path | None,
    signing_cert: Path | None,
    ca_cert: Path | None,
    ca_key: Path | None,
    certs_dir: Path | None,
    manifest_path: Path,
    api: Api,
) -> SigningMaterial:
    if signing_key is not None and signing_cert is not None:
        return load_signing(signing_key, signing_cert)
    if ca_cert is None and aws.local is not None:
        ca_cert, ca_key = aws.local.ca_cert, aws.local.ca_key
    if ca_cert is None or ca_key is None:
        raise InputError(
            "no code-signing key",
            hint="against AWS pass --signing-key and --signing-cert (EC P-256, see docs/ota.md); "
            "with --local or --ca-cert/--ca-key a code-signing certificate is issued from that CA",
        )
    directory = certs_dir or manifest_path.resolve().parent
    return issue_code_signing(load_ca(ca_cert, ca_key), directory, api=api)


@ota_group.command("status")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--ota-update-id", help="Which OTA update of the manifest (default: the last created).")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Wait up to S seconds.")
@with_aws_options
@errors_to_click
def ota_status_command(aws: AwsOptions, manifest_path: Path, ota_update_id: str | None, wait: float) -> None:
    """Each target's job execution status; exit 0 only when every target SUCCEEDED."""
    manifest = existing_manifest(manifest_path)
    if manifest is None:
        raise InputError(f"manifest {manifest_path} does not exist", hint="create the run with `provisioner up`")
    record = pick_update(manifest, ota_update_id)
    api = make_api(aws, manifest=manifest)
    status = ota_status(api, record, wait=wait)
    width = max((len(t.thing) for t in status.things), default=5)
    for thing in status.things:
        reason = thing.details.get("reason", "")
        click.echo(f"{thing.thing:<{width}}  {thing.status:<12} {reason}".rstrip())
    click.echo(status.summary())
    if not status.ok:
        names = ", ".join(f"{t.thing} ({t.status})" for t in status.failed)
        click.echo(f"not SUCCEEDED: {names}", err=True)
        raise click.exceptions.Exit(1)
