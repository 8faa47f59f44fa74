"""boto3 clients, and ``Api``: the single choke point every AWS call of the provisioner goes through.

How this works: clients come from ``boto3.Session(profile_name=..., region_name=...)``, so the standard credential
chain applies and boto3 itself honours ``AWS_ENDPOINT_URL`` (botocore >= 1.31); an explicit ``endpoint_url`` is only
passed when the caller has one (``--local`` or a manifest that recorded one). ``Api.read`` and ``Api.write`` take a
bound client method (``api.read(api.iot.describe_stream, streamId=...)``) and

* pace the call through a token bucket (below AWS IoT's ~15 TPS),
* retry throttling answers with bounded backoff,
* translate botocore exceptions into ``provisioner.errors`` (the one boundary, ``raise ... from``), and moto's
  in-process NotImplementedError into ``Unsupported``,
* stop with ``Interrupted``/``Terminated`` before the call when SIGINT/SIGTERM arrived (``Api.stop``), so every
  answered call is recorded before the run ends,
* for ``write`` in dry-run mode: record a ``PlannedCall`` and return the caller's ``dry_result`` instead of calling.

botocore's own retries are switched off so that throttling is retried (and counted) in exactly one place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3  # type: ignore[import-untyped]  # no stubs: clients are typed Any on purpose (Clients)
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound  # type: ignore[import-untyped]

from .errors import (
    THROTTLING_CODES,
    AwsError,
    CredentialsError,
    NotFound,
    Throttled,
    translate_botocore_error,
    translate_client_error,
    unsupported,
)
from .interrupts import StopSignal
from .pacing import DEFAULT_TPS, THROTTLE_BACKOFF, Backoff, Sleep, TokenBucket

log = logging.getLogger(__name__)

SERVICES = ("s3", "iam", "iot", "sts")
_CLIENT_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 1}, user_agent_extra="iot-stream-sim")


@dataclass(frozen=True, kw_only=True, slots=True)
class AwsTarget:
    """Where to call: a profile and region for the standard chain, optionally an explicit endpoint/credentials."""

    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    #: Explicit (access key id, secret) instead of the chain; only used for local endpoints (`--local`).
    static_credentials: tuple[str, str] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Clients:
    s3: Any
    iam: Any
    iot: Any
    sts: Any
    region: str
    #: The endpoint URL set by configuration (AWS_ENDPOINT_URL, config file, --local), None for AWS's own.
    endpoint_url: str | None


def open_clients(target: AwsTarget) -> Clients:
    """Clients for s3, iam, iot and sts. Raises CredentialsError for an unknown profile or a missing region."""
    try:
        kwargs: dict[str, Any] = {"profile_name": target.profile, "region_name": target.region}
        if target.static_credentials:
            kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = target.static_credentials
        session = boto3.Session(**kwargs)
    except ProfileNotFound as e:
        raise CredentialsError(
            str(e), service="session", operation="open", hint="check the --profile name against ~/.aws/config"
        ) from e
    region = session.region_name
    if not region:
        raise CredentialsError(
            "no AWS region configured", service="session", operation="open", hint="pass --region or set AWS_REGION"
        )
    made = {name: session.client(name, endpoint_url=target.endpoint_url, config=_CLIENT_CONFIG) for name in SERVICES}
    endpoint = target.endpoint_url or _configured_endpoint(session, made["iot"])
    return Clients(**made, region=region, endpoint_url=endpoint)


def _configured_endpoint(session: boto3.Session, iot: Any) -> str | None:
    """The IoT endpoint when configuration (AWS_ENDPOINT_URL...) changed it from AWS's default, else None."""
    default = session.client("iot", config=Config(ignore_configured_endpoint_urls=True)).meta.endpoint_url
    actual = str(iot.meta.endpoint_url)
    return None if actual == default else actual


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedCall:
    """A mutating call that a dry run would make (or a local file it would write: service ``local``)."""

    service: str
    operation: str
    params: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        args = ", ".join(f"{k}={_render_value(v)}" for k, v in self.params.items())
        return f"{self.service}.{self.operation}({args})"


def _render_value(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.dumps(json.loads(value), separators=(",", ":"))
        except ValueError:
            return repr(value)
    return repr(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    account_id: str
    partition: str
    arn: str


class Api:
    """Paced, retried, translated AWS calls; see the module docstring."""

    def __init__(
        self,
        clients: Clients,
        *,
        dry_run: bool = False,
        tps: float = DEFAULT_TPS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = time.sleep,
        throttle_backoff: Backoff = THROTTLE_BACKOFF,
        stop: StopSignal | None = None,
    ) -> None:
        self.clients = clients
        self.dry_run = dry_run
        #: Set by SIGINT/SIGTERM (``interrupts.catch_signals``): checked before every call and between chunks.
        self.stop = stop
        self._plain_sleep = sleep
        self.planned: list[PlannedCall] = []
        self._bucket = TokenBucket(tps, clock=clock, sleep=self.sleep)
        self._throttle_backoff = throttle_backoff
        self._identity: Identity | None = None

    def sleep(self, seconds: float) -> None:
        """Sleep; with a real clock and a ``stop``, wake up and raise at once on SIGINT/SIGTERM."""
        if self.stop is not None and self._plain_sleep is time.sleep:
            self.stop.sleep(seconds)
        else:
            self._plain_sleep(seconds)

    @property
    def s3(self) -> Any:
        return self.clients.s3

    @property
    def iam(self) -> Any:
        return self.clients.iam

    @property
    def iot(self) -> Any:
        return self.clients.iot

    @property
    def region(self) -> str:
        return self.clients.region

    def read(self, method: Callable[..., Any], **params: Any) -> dict[str, Any]:
        """Call a read-only API (also in dry-run mode)."""
        return self._call(method, params)

    def maybe(self, method: Callable[..., Any], **params: Any) -> dict[str, Any] | None:
        """Like ``read`` but None when AWS answers "not found"."""
        try:
            return self._call(method, params)
        except NotFound:
            return None

    def write(self, method: Callable[..., Any], *, dry_result: dict[str, Any] | None = None, **params: Any) -> Any:
        """Call a mutating API; in dry-run mode record it and return ``dry_result`` (default ``{}``)."""
        if self.dry_run:
            self.checkpoint()
            service, operation, _ = _describe(method)
            self.planned.append(PlannedCall(service=service, operation=operation, params=params))
            return dict(dry_result or {})
        return self._call(method, params)

    def call_now(self, method: Callable[..., Any], **params: Any) -> dict[str, Any]:
        """A call that must be made even after SIGINT/SIGTERM (undoing a half step, e.g. aborting an upload)."""
        stop, self.stop = self.stop, None
        try:
            return self._call(method, params)
        finally:
            self.stop = stop

    def checkpoint(self) -> None:
        """Raise ``Interrupted``/``Terminated`` when a signal asked the run to stop (a safe point: all recorded)."""
        if self.stop is not None:
            self.stop.check()

    def plan_local(self, operation: str, **params: Any) -> None:
        """Record a local side effect (a file write or delete) of a dry run."""
        self.planned.append(PlannedCall(service="local", operation=operation, params=params))

    def identity(self) -> Identity:
        """The caller's account id and partition (sts.get_caller_identity, cached)."""
        if self._identity is None:
            answer = self.read(self.clients.sts.get_caller_identity)
            arn = str(answer["Arn"])
            self._identity = Identity(account_id=str(answer["Account"]), partition=arn.split(":")[1], arn=arn)
        return self._identity

    def paginate(
        self, method: Callable[..., Any], *, items: str, token: str = "nextToken", **params: Any
    ) -> Iterator[Any]:
        """Every item of a paged list call whose request and answer use the same token name."""
        while True:
            page = self.read(method, **params)
            yield from page.get(items, [])
            next_token = page.get(token)
            if not next_token:
                return
            params = {**params, token: next_token}

    def _call(self, method: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
        service, operation, api_name = _describe(method)
        delays = self._throttle_backoff.delays()
        while True:
            self.checkpoint()
            self._bucket.acquire()
            self.checkpoint()
            try:
                log.debug("calling %s.%s", service, operation)
                answer: dict[str, Any] = method(**params)
                return answer
            except ClientError as e:
                error = translate_client_error(
                    e, service=service, operation=operation, api_name=api_name, params=params
                )
                if isinstance(error, Throttled) and error.code in THROTTLING_CODES:
                    delay = next(delays, None)
                    if delay is not None:
                        log.info("%s.%s throttled (%s); retrying in %.1f s", service, operation, error.code, delay)
                        self.sleep(delay)
                        continue
                raise error from e
            except BotoCoreError as e:
                raise translate_botocore_error(e, service=service, operation=operation) from e
            except NotImplementedError as e:  # moto's in-process mock lacks the operation
                raise unsupported(service=service, operation=operation, code=None, aws_message=str(e)) from e


def _describe(method: Callable[..., Any]) -> tuple[str, str, str]:
    """(service, operation, API name) of a bound boto3 client method, e.g. ("iot", "create_stream", "CreateStream")."""
    client = getattr(method, "__self__", None)
    operation = getattr(method, "__name__", "call")
    if client is None or not hasattr(client, "meta"):
        return "unknown", operation, operation
    service = str(client.meta.service_model.service_name)
    api_name = client.meta.method_to_api_mapping.get(operation, operation)
    return service, operation, str(api_name)


__all__ = [
    "Api",
    "AwsError",
    "AwsTarget",
    "Clients",
    "Identity",
    "PlannedCall",
    "open_clients",
]
