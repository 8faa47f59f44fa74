"""Errors of the provisioner, and the one boundary where botocore's exceptions become them.

``ProvisionerError`` is the base; every error has a one-line message that says what to do and an ``exit_code``
the CLI uses. Two families, like h11's Local/Remote split:

* the caller did it: ``InputError`` (bad arguments, caught before any AWS call), ``ManifestError``,
  ``OutputError`` (an output location is not writable), ``ManifestLocked`` (another run holds the manifest);
* stopped by a signal: ``Interrupted`` (SIGINT, exit 130) and ``Terminated`` (SIGTERM, exit 143);
* AWS said no: ``AwsError`` and its subclasses ``AlreadyExists``, ``NotFound``, ``AccessDenied``, ``Throttled``,
  ``CredentialsError``, ``Unsupported`` (an emulator that lacks the operation); they carry the AWS ``code``, the
  ``operation`` and a ``hint``.

``translate_client_error`` and ``translate_botocore_error`` are the only places that look at botocore exceptions
(``provisioner.aws.Api`` calls them once per failed call).
"""

from __future__ import annotations

from typing import Any, ClassVar

from botocore.exceptions import (  # type: ignore[import-untyped]  # no stubs: the untyped boundary
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)


class ProvisionerError(Exception):
    """Base of every provisioner error. ``str()`` is the message plus the hint, on one line."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class InputError(ProvisionerError):
    """The caller asked for something invalid; nothing was created."""

    exit_code = 2


class ManifestError(ProvisionerError):
    """The manifest file is missing, unreadable, of another schema version, or belongs to another run."""

    exit_code = 3


class AwsError(ProvisionerError):
    """AWS (or whatever the endpoint is) refused a call."""

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        service: str,
        operation: str,
        code: str | None = None,
        hint: str | None = None,
        aws_message: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.service = service
        self.operation = operation
        self.code = code
        #: AWS's own error message, verbatim.
        self.aws_message = aws_message
        #: Modeled fields of the error answer, e.g. resourceId/resourceArn of ResourceAlreadyExistsException.
        self.details = dict(details or {})


class AlreadyExists(AwsError):
    exit_code = 5


class NotFound(AwsError):
    exit_code = 6


class AccessDenied(AwsError):
    exit_code = 7


class Throttled(AwsError):
    exit_code = 8


class CredentialsError(AwsError):
    """No usable credentials, region or endpoint."""

    exit_code = 9


class Unsupported(AwsError):
    """The endpoint does not implement the operation (an emulator: moto in-process raises NotImplementedError,
    others answer 501 or "not yet implemented"); AWS itself implements every operation the provisioner calls."""


class CleanupIncomplete(ProvisionerError):
    """Cleanup ran to the end but some resources could not be removed (listed in the report)."""

    exit_code = 10


class OutputError(ProvisionerError):
    """An output location (--manifest, --certs-dir) is missing, not a directory or not writable."""

    exit_code = 11


class ManifestLocked(ProvisionerError):
    """Another process runs a command on the same manifest (its lock file names the pid)."""

    exit_code = 12


class Interrupted(ProvisionerError):
    """SIGINT (Ctrl-C) stopped the command between two calls; the manifest records everything made so far."""

    exit_code = 130  # 128 + SIGINT, the shell's convention


class Terminated(Interrupted):
    """SIGTERM stopped the command between two calls; the manifest records everything made so far."""

    exit_code = 143  # 128 + SIGTERM


# --- the boundary --------------------------------------------------------------------------------------------------

ALREADY_EXISTS_CODES = frozenset(
    {"ResourceAlreadyExistsException", "EntityAlreadyExists", "BucketAlreadyExists", "BucketAlreadyOwnedByYou"}
)
NOT_FOUND_CODES = frozenset(
    {"ResourceNotFoundException", "NoSuchEntity", "NoSuchBucket", "NoSuchKey", "NoSuchVersion", "NotFound", "404"}
)
ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedException",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "403",
    }
)
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "RequestThrottled",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "503",
    }
)

UNSUPPORTED_CODES = frozenset({"NotImplemented", "NotImplementedException", "NotImplementedError", "501"})
_UNSUPPORTED_MESSAGES = ("not implemented", "not yet implemented", "not been implemented")

# IAM action names that are not simply "<service>:<OperationName>".
_IAM_ACTION_OVERRIDES = {
    ("s3", "head_object"): "s3:GetObject",
    ("s3", "head_bucket"): "s3:ListBucket",
    ("s3", "list_object_versions"): "s3:ListBucketVersions",
    ("s3", "delete_objects"): "s3:DeleteObjectVersion",
    ("s3", "delete_object"): "s3:DeleteObjectVersion",
}

_ALREADY_EXISTS_HINTS = {
    "create_stream": "use `provisioner stream update` or another --stream-id",
    "create_role": "pass the existing role with --role-arn, or run `provisioner cleanup` for the run that made it",
    "create_policy": "a device policy of that name exists; run `provisioner cleanup` for the run that made it",
    "create_thing": "a thing of that name exists with other attributes; choose another --thing-prefix",
    "register_certificate_without_ca": "this certificate is registered already",
}


def iam_action(service: str, operation: str, api_name: str) -> str:
    """The IAM action a call needs, e.g. ``iot:CreateStream`` for ``iot.create_stream``."""
    return _IAM_ACTION_OVERRIDES.get((service, operation), f"{service}:{api_name}")


def _access_hint(service: str, operation: str, api_name: str, params: dict[str, Any]) -> str:
    action = iam_action(service, operation, api_name)
    extra = ""
    if operation in ("create_stream", "update_stream"):
        extra = f" and iam:PassRole on {params.get('roleArn', 'the stream role')}"
        if params.get("tags"):
            extra += " and iot:TagResource"
    elif operation == "head_bucket":
        return f"the bucket belongs to another account, or your credentials need {action} on it"
    elif operation == "create_role" and params.get("Tags"):
        extra = " and iam:TagRole"
    elif operation == "create_policy" and params.get("tags"):
        extra = " and iot:TagResource"
    return f"your credentials need {action}{extra}"


def translate_client_error(
    err: ClientError, *, service: str, operation: str, api_name: str, params: dict[str, Any]
) -> AwsError:
    """Turn a botocore ClientError into the matching AwsError with a one-line explanation."""
    error = err.response.get("Error", {})
    code = str(error.get("Code") or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "Unknown")
    aws_message = str(error.get("Message") or "").strip()
    where = f"{service}.{operation}"
    detail = f"{code}: {aws_message}" if aws_message else code
    if code in ALREADY_EXISTS_CODES:
        hint = _ALREADY_EXISTS_HINTS.get(operation)
        if operation == "create_bucket" and code == "BucketAlreadyExists":
            hint = "the bucket name is taken by another account; choose another --bucket"
        elif operation == "create_bucket":
            hint = "the bucket is yours already; drop --create-bucket to use it (it must be versioned)"
        details = {k: v for k, v in err.response.items() if k not in ("Error", "ResponseMetadata")}
        return AlreadyExists(
            f"{where} failed, {detail}",
            service=service,
            operation=operation,
            code=code,
            hint=hint,
            aws_message=aws_message,
            details=details,
        )
    if code in NOT_FOUND_CODES:
        return NotFound(
            f"{where} failed, {detail}", service=service, operation=operation, code=code, aws_message=aws_message
        )
    if code in ACCESS_DENIED_CODES:
        if code in ("InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId"):
            hint = "the credentials are invalid or expired; refresh them (e.g. `aws sso login`) or pick --profile"
        elif code == "SignatureDoesNotMatch":
            hint = "the secret key does not match the access key; check the credentials of --profile"
        else:
            hint = _access_hint(service, operation, api_name, params)
        return AccessDenied(
            f"{where} was denied, {detail}",
            service=service,
            operation=operation,
            code=code,
            hint=hint,
            aws_message=aws_message,
        )
    if code in THROTTLING_CODES:
        return Throttled(
            f"{where} was throttled, {detail}",
            service=service,
            operation=operation,
            code=code,
            hint="lower --tps and run the same command again (it resumes)",
            aws_message=aws_message,
        )
    if code in UNSUPPORTED_CODES or any(m in aws_message.lower() for m in _UNSUPPORTED_MESSAGES):
        return unsupported(service=service, operation=operation, code=code, aws_message=aws_message)
    return AwsError(
        f"{where} failed, {detail}", service=service, operation=operation, code=code, aws_message=aws_message
    )


def unsupported(*, service: str, operation: str, code: str | None, aws_message: str) -> Unsupported:
    """The endpoint lacks ``service.operation`` (an emulator's answer, or moto's in-process NotImplementedError)."""
    return Unsupported(
        f"{service}.{operation} is not implemented by this endpoint ({aws_message or code})",
        service=service,
        operation=operation,
        code=code,
        aws_message=aws_message,
    )


def translate_botocore_error(err: BotoCoreError, *, service: str, operation: str) -> AwsError:
    """Turn a botocore error that is not a service answer (credentials, region, connection) into an AwsError."""
    where = f"{service}.{operation}"
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        hint = "configure credentials (environment, ~/.aws/credentials, SSO) or pass --profile"
    elif isinstance(err, NoRegionError):
        hint = "pass --region or set AWS_REGION"
    elif isinstance(err, ProfileNotFound):
        hint = "check the --profile name against ~/.aws/config"
    elif isinstance(err, EndpointConnectionError):
        hint = "check the network, the region and AWS_ENDPOINT_URL"
    else:
        hint = None
    return CredentialsError(f"{where} could not be sent: {err}", service=service, operation=operation, hint=hint)
