"""Fleet identities: N things ``<prefix>-<i>``, each with a certificate, its key on disk, the device policy attached.

How this works: for each thing the steps are create_thing (with the run-id attribute), the certificate
(``create_keys_and_certificate`` on AWS, or issued locally from ``--ca-cert/--ca-key`` and registered with
``register_certificate_without_ca``), the key and certificate files, attach_policy, attach_thing_principal. The
manifest is saved after every step, so an interrupted run resumes: a thing recorded complete whose thing and
certificate attachment are still in the account is skipped; a partial one continues where it stopped. Calls are
paced by ``Api`` (below ~15 TPS); progress goes to an optional callback (the CLI draws a rich progress bar).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .aws import Api
from .certs import (
    AMAZON_ROOT_CA1_NAME,
    LOCAL_ROOT_CA_NAME,
    IssuingCA,
    amazon_root_ca1,
    device_paths,
    issue_device_certificate,
    write_private_file,
    write_public_file,
)
from .cleanup import Tally, remove_certificate
from .errors import AlreadyExists, InputError
from .manifest import RUN_ID_KEY, ManifestStore, MqttEndpoint, ThingRecord
from .policy import ensure_policy
from .validation import check_thing_prefix

log = logging.getLogger(__name__)

DATA_ENDPOINT_TYPE = "iot:Data-ATS"
AWS_MQTT_PORT = 8883


@dataclass(frozen=True, kw_only=True, slots=True)
class ThingProgress:
    index: int
    total: int
    name: str
    skipped: bool


ProgressCallback = Callable[[ThingProgress], None]


def thing_names(prefix: str, count: int) -> list[str]:
    check_thing_prefix(prefix, count)
    return [f"{prefix}-{i}" for i in range(count)]


def resolve_mqtt_endpoint(api: Api, given: tuple[str, int] | None, *, plain_port: int | None = None) -> MqttEndpoint:
    """``--mqtt-endpoint HOST:PORT`` when given, else the account's ATS data endpoint on port 8883."""
    if given is not None:
        return MqttEndpoint(host=given[0], port=given[1], plain_port=plain_port)
    answer = api.read(api.iot.describe_endpoint, endpointType=DATA_ENDPOINT_TYPE)
    return MqttEndpoint(host=str(answer["endpointAddress"]), port=AWS_MQTT_PORT)


def write_root_ca(api: Api, certs_dir: Path, source: Path | None) -> Path:
    """Put the broker's root CA into ``certs_dir``: a copy of ``source`` (``root-ca.pem``), or Amazon Root CA 1."""
    if source is not None:
        try:
            data = source.read_bytes()
        except OSError as e:
            raise InputError(f"cannot read root CA {source}: {e.strerror}") from e
        path = certs_dir / LOCAL_ROOT_CA_NAME
    else:
        data = amazon_root_ca1()
        path = certs_dir / AMAZON_ROOT_CA1_NAME
    if api.dry_run:
        api.plan_local("write_file", path=str(path), mode="0644")
    else:
        write_public_file(path, data)
    return path


def setup_fleet(
    api: Api,
    store: ManifestStore,
    *,
    mqtt: MqttEndpoint,
    certs_dir: Path,
    root_ca: Path | None,
    prefix: str,
    count: int,
    ca: IssuingCA | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[ThingRecord]:
    """Write the root CA, record the MQTT endpoint and certificate directory, then ``create_fleet``."""
    certs_dir = store.manifest.certs_dir or certs_dir.resolve()
    ca_path = write_root_ca(api, certs_dir, root_ca)
    store.change(certs_dir=certs_dir, mqtt=replace(mqtt, ca_path=ca_path))
    return create_fleet(api, store, prefix=prefix, count=count, certs_dir=certs_dir, ca=ca, on_progress=on_progress)


def create_fleet(
    api: Api,
    store: ManifestStore,
    *,
    prefix: str,
    count: int,
    certs_dir: Path,
    ca: IssuingCA | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[ThingRecord]:
    """Create (or resume) ``count`` things; see the module docstring. Returns the thing records."""
    names = thing_names(prefix, count)
    ensure_policy(api, store)
    run_id = store.manifest.run_id
    existing = {
        str(t["thingName"])
        for t in api.paginate(
            api.iot.list_things, items="things", attributeName=RUN_ID_KEY, attributeValue=run_id, maxResults=250
        )
    }
    out = []
    try:
        for index, name in enumerate(names):
            record = store.manifest.thing(name) or ThingRecord(name=name)
            skipped = name in existing and _usable(api, record)
            if not skipped:
                record = _provision(api, store, record, in_account=name in existing, certs_dir=certs_dir, ca=ca)
            out.append(record)
            if on_progress is not None:
                on_progress(ThingProgress(index=index, total=count, name=name, skipped=skipped))
    finally:
        store.flush()
    return out


def _usable(api: Api, record: ThingRecord) -> bool:
    """A complete record whose files exist and whose certificate is still attached to the thing."""
    if not record.complete or record.cert_path is None or record.key_path is None:
        return False
    if not (record.cert_path.is_file() and record.key_path.is_file()):
        return False
    principals = api.paginate(api.iot.list_thing_principals, items="principals", thingName=record.name)
    return record.certificate_arn in set(principals)


def _provision(
    api: Api, store: ManifestStore, record: ThingRecord, *, in_account: bool, certs_dir: Path, ca: IssuingCA | None
) -> ThingRecord:
    policy = store.manifest.policy
    assert policy is not None
    name = record.name
    if not in_account or record.arn is None:
        identity = api.identity()
        answer = api.write(
            api.iot.create_thing,
            dry_result={"thingArn": f"arn:{identity.partition}:iot:{api.region}:{identity.account_id}:thing/{name}"},
            thingName=name,
            attributePayload={"attributes": {RUN_ID_KEY: store.manifest.run_id}},
        )
        record = _save(store, replace(record, arn=answer.get("thingArn")))
    if record.certificate_arn and not _files_present(record):
        # The key is lost: this certificate is useless; retire it and make a new one.
        log.warning("key files of %s are missing; replacing its certificate", name)
        remove_certificate(api, Tally(), thing_name=name, certificate_arn=record.certificate_arn, policy=policy.name)
        record = _save(
            store,
            replace(record, certificate_id=None, certificate_arn=None, policy_attached=False, principal_attached=False),
        )
    if not record.certificate_arn:
        record = _save(store, _new_certificate(api, store, record, certs_dir=certs_dir, ca=ca))
    assert record.certificate_arn is not None
    if not record.policy_attached:
        api.write(api.iot.attach_policy, policyName=policy.name, target=record.certificate_arn)
        record = _save(store, replace(record, policy_attached=True))
    if not record.principal_attached:
        api.write(api.iot.attach_thing_principal, thingName=name, principal=record.certificate_arn)
        record = _save(store, replace(record, principal_attached=True))
    return record


def _save(store: ManifestStore, record: ThingRecord) -> ThingRecord:
    store.record_thing(record)
    return record


def _files_present(record: ThingRecord) -> bool:
    return bool(record.cert_path and record.key_path and record.cert_path.is_file() and record.key_path.is_file())


def _new_certificate(
    api: Api, store: ManifestStore, record: ThingRecord, *, certs_dir: Path, ca: IssuingCA | None
) -> ThingRecord:
    """A certificate and key for the thing: files written (key 0600) before the record is returned.

    When AWS made the key (``create_keys_and_certificate``) and writing it fails, the certificate is recorded
    without files before the error goes on: cleanup removes it, and a resumed run retires and replaces it.
    """
    cert_path, key_path = device_paths(certs_dir, record.name)
    if api.dry_run:
        operation = api.iot.create_keys_and_certificate if ca is None else api.iot.register_certificate_without_ca
        params = {"setAsActive": True} if ca is None else {"certificatePem": "<issued locally>", "status": "ACTIVE"}
        api.write(operation, **params)
        api.plan_local("write_file", path=str(key_path), mode="0600")
        api.plan_local("write_file", path=str(cert_path), mode="0644")
        return replace(record, certificate_id="<id>", certificate_arn="<arn>", cert_path=cert_path, key_path=key_path)
    if ca is None:
        answer = api.write(api.iot.create_keys_and_certificate, setAsActive=True)
        cert_id, cert_arn = str(answer["certificateId"]), str(answer["certificateArn"])
        try:
            write_private_file(key_path, str(answer["keyPair"]["PrivateKey"]).encode())
            write_public_file(cert_path, str(answer["certificatePem"]).encode())
        except BaseException:
            store.record_thing(replace(record, certificate_id=cert_id, certificate_arn=cert_arn))
            raise
    else:
        cert_pem, key_pem = issue_device_certificate(ca, record.name)
        write_private_file(key_path, key_pem)
        write_public_file(cert_path, cert_pem)
        try:
            answer = api.write(
                api.iot.register_certificate_without_ca, certificatePem=cert_pem.decode(), status="ACTIVE"
            )
        except AlreadyExists as e:  # cannot happen for a fresh certificate; kept for a retried request
            answer = {"certificateId": e.details.get("resourceId"), "certificateArn": e.details.get("resourceArn")}
        cert_id, cert_arn = str(answer["certificateId"]), str(answer["certificateArn"])
    log.info("certificate %s for %s written to %s", cert_id[:12], record.name, cert_path)
    return replace(record, certificate_id=cert_id, certificate_arn=cert_arn, cert_path=cert_path, key_path=key_path)
