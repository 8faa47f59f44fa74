"""``provisioner up``: firmware + role + stream + things in one go, checked before anything is created.

How this works, in three phases:

1. local checks (no AWS call): stream id, description, files (exist, 1..50, unique ids 0..255), role ARN, thing
   prefix, CA files; a resumed run must keep its stream id, bucket and firmware;
2. read-only AWS checks: the caller's account, the bucket (exists or --create-bucket; versioned unless forced),
   the given role exists, the stream id is free, the policy name is free, the MQTT data endpoint;
3. the changes, each recorded in the manifest as soon as AWS confirms it (so cleanup can always undo a run).

Bad input stops in phase 1 or 2, so it creates nothing. With ``dry_run`` the changes of phase 3 are recorded as
``PlannedCall``s on the ``Api`` instead of being made (the reads of phase 2 still happen).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .aws import Api
from .certs import IssuingCA, load_ca
from .errors import InputError, ManifestError
from .firmware import (
    DEFAULT_KEY_PREFIX,
    FirmwareSource,
    check_bucket_usable,
    ensure_bucket,
    inspect_bucket,
    plan_sources,
    upload,
)
from .manifest import Manifest, ManifestStore, load_manifest, new_run_id
from .pacing import ROLE_PROPAGATION_BACKOFF, Backoff
from .policy import check_policy_free
from .role import check_given_role, create_role, use_given_role
from .streams import DEFAULT_DESCRIPTION, check_stream_free, create_stream, file_specs, stream_description
from .things import ProgressCallback, resolve_mqtt_endpoint, setup_fleet
from .validation import check_bucket, check_role_arn, check_run_id, check_stream_id, check_thing_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class UpOptions:
    stream_id: str
    bucket: str
    description: str = DEFAULT_DESCRIPTION
    files: tuple[str, ...] = ()
    generate: tuple[str, ...] = ()
    seed: int = 0
    create_bucket: bool = False
    force_unversioned: bool = False
    key_prefix: str = DEFAULT_KEY_PREFIX
    role_arn: str | None = None
    create_role: bool = False
    things: int = 0
    thing_prefix: str = "sim"
    certs_dir: Path = Path("certs")
    ca_cert: Path | None = None
    ca_key: Path | None = None
    root_ca: Path | None = None
    mqtt_endpoint: tuple[str, int] | None = None
    mqtt_plain_port: int | None = None


def open_run(api: Api, path: Path | None, *, run_id: str | None = None, dry_run: bool = False) -> ManifestStore:
    """The run recorded in ``path`` (resumed), or a new run. Checks the account and region of a resumed run."""
    if path is not None and path.exists():
        manifest = load_manifest(path)
        if run_id is not None and run_id != manifest.run_id:
            raise ManifestError(
                f"{path} records run {manifest.run_id}, not {run_id}", hint="use another --manifest for a new run"
            )
        check_same_account(api, manifest)
        log.info("resuming run %s from %s", manifest.run_id, path)
        return ManifestStore(manifest, path, dry_run=dry_run)
    identity = api.identity()
    manifest = Manifest(
        run_id=check_run_id(run_id) if run_id else new_run_id(),
        created_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        region=api.region,
        account_id=identity.account_id,
        partition=identity.partition,
        aws_endpoint_url=api.clients.endpoint_url,
    )
    return ManifestStore(manifest, path, dry_run=dry_run)


def check_same_account(api: Api, manifest: Manifest) -> None:
    identity = api.identity()
    if identity.account_id != manifest.account_id or api.region != manifest.region:
        raise ManifestError(
            f"the manifest's run {manifest.run_id} lives in account {manifest.account_id} region {manifest.region}, "
            f"but the credentials are for account {identity.account_id} region {api.region}",
            hint="pick the matching --profile/--region",
        )


def root_ca_source(options: UpOptions) -> Path | None:
    """The broker's root CA: --root-ca; else the own CA when a custom MQTT endpoint is used; else None (Amazon)."""
    if options.root_ca is not None:
        return options.root_ca
    if options.ca_cert is not None and options.mqtt_endpoint is not None:
        return options.ca_cert
    return None


def _check_locally(
    store: ManifestStore, options: UpOptions, checkpoint: Callable[[], None]
) -> tuple[list[FirmwareSource], IssuingCA | None]:
    check_stream_id(options.stream_id)
    stream_description(options.description, store.manifest.run_id)
    check_bucket(options.bucket)
    sources = plan_sources(list(options.files), list(options.generate), options.seed)
    if options.role_arn is not None and options.create_role:
        raise InputError("--role-arn and --create-role exclude each other", hint="pass one of them")
    if options.role_arn is None and not options.create_role and store.manifest.role is None:
        raise InputError("the stream needs a role", hint="pass --role-arn ARN or --create-role")
    if options.role_arn is not None:
        check_role_arn(options.role_arn)
    check_thing_prefix(options.thing_prefix, options.things)
    if (options.ca_cert is None) != (options.ca_key is None):
        raise InputError("--ca-cert and --ca-key go together", hint="pass both or neither")
    ca = load_ca(options.ca_cert, options.ca_key) if options.ca_cert and options.ca_key else None
    manifest = store.manifest
    if manifest.stream is not None and manifest.stream.stream_id != options.stream_id:
        raise InputError(
            f"this manifest's run made stream {manifest.stream.stream_id}, not {options.stream_id}",
            hint="use another --manifest for another stream",
        )
    if manifest.role is not None and options.role_arn is not None and manifest.role.arn != options.role_arn:
        raise InputError(
            f"this manifest's run uses role {manifest.role.arn}, not {options.role_arn}",
            hint="use another --manifest for another role",
        )
    if manifest.bucket is not None and manifest.bucket.name != options.bucket:
        raise InputError(
            f"this manifest's run uses bucket {manifest.bucket.name}, not {options.bucket}",
            hint="use another --manifest for another bucket",
        )
    if manifest.stream is not None:
        recorded = {(f.file_id, f.sha256) for f in manifest.firmware}
        planned = {(s.file_id, s.sha256(checkpoint)) for s in sources}
        if recorded != planned:
            raise InputError(
                f"stream {manifest.stream.stream_id} of this run already serves other firmware",
                hint="change files with `provisioner stream update --manifest ...`",
            )
    return sources, ca


def up(
    api: Api,
    store: ManifestStore,
    options: UpOptions,
    *,
    on_progress: ProgressCallback | None = None,
    role_backoff: Backoff = ROLE_PROPAGATION_BACKOFF,
) -> Manifest:
    """Run the three phases (see the module docstring). Returns the final manifest."""
    sources, ca = _check_locally(store, options, api.checkpoint)

    # Phase 2: read-only checks.
    state = inspect_bucket(api, options.bucket)
    recorded_bucket = store.manifest.bucket
    check_bucket_usable(
        state,
        create=options.create_bucket,
        force_unversioned=options.force_unversioned,
        created_by_run=recorded_bucket is not None and recorded_bucket.created,
    )
    if options.role_arn is not None:
        check_given_role(api, options.role_arn)
    stream_recorded = (
        store.manifest.stream is not None
        and api.maybe(api.iot.describe_stream, streamId=store.manifest.stream.stream_id) is not None
    )
    if not stream_recorded:
        check_stream_free(api, options.stream_id)
    if options.things:
        check_policy_free(api, store)
        mqtt = resolve_mqtt_endpoint(api, options.mqtt_endpoint, plain_port=options.mqtt_plain_port)

    # Phase 3: changes, each recorded.
    ensure_bucket(api, store, state, key_prefix=options.key_prefix)
    objects = upload(api, store, sources)
    if options.role_arn is not None:
        role = use_given_role(store, options.role_arn)
    elif store.manifest.role is not None and not store.manifest.role.created:
        role = store.manifest.role
    else:
        role = create_role(api, store, objects)
    if not stream_recorded:
        create_stream(
            api,
            store,
            stream_id=options.stream_id,
            description=options.description,
            files=file_specs(objects),
            role_arn=role.arn,
            retry_role=role.created,
            backoff=role_backoff,
        )
    if options.things:
        setup_fleet(
            api,
            store,
            mqtt=mqtt,
            certs_dir=options.certs_dir,
            root_ca=root_ca_source(options),
            prefix=options.thing_prefix,
            count=options.things,
            ca=ca,
            on_progress=on_progress,
        )
    return store.manifest
