"""The records and codes of local_iot's Jobs: job and execution states, the MQTT error codes, the errors.

Jobs and executions are plain mutable records owned by ``JobsCore`` (the only writer); everything that leaves the
core (MQTT payloads, control-plane answers) is built from them as fresh dicts, so callers never hold live state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any


class JobStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"
    DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"


class ExecutionStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionStatus.QUEUED, ExecutionStatus.IN_PROGRESS)


#: What a device may set with UpdateJobExecution.
DEVICE_STATUSES = frozenset(
    {ExecutionStatus.IN_PROGRESS, ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.REJECTED}
)


class JobsErrorCode(StrEnum):
    """The ``code`` of a Jobs MQTT ``rejected`` answer."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    INTERNAL_ERROR = "InternalError"
    REQUEST_THROTTLED = "RequestThrottled"
    TERMINAL_STATE_REACHED = "TerminalStateReached"


class ApiError(Enum):
    """botocore's exception names of the Jobs and OTA control-plane calls, with their HTTP status."""

    INVALID_REQUEST = ("InvalidRequestException", 400)
    RESOURCE_NOT_FOUND = ("ResourceNotFoundException", 404)
    RESOURCE_ALREADY_EXISTS = ("ResourceAlreadyExistsException", 409)
    INVALID_STATE_TRANSITION = ("InvalidStateTransitionException", 409)
    VERSION_CONFLICT = ("VersionConflictException", 409)
    LIMIT_EXCEEDED = ("LimitExceededException", 410)
    INTERNAL_FAILURE = ("InternalFailureException", 500)

    def __init__(self, code: str, status: int) -> None:
        self.code = code
        self.status = status


class JobsApiError(Exception):
    """A control-plane request the Jobs backend refuses."""

    def __init__(self, error: ApiError, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


@dataclass(slots=True, kw_only=True)
class Execution:
    job_id: str
    thing_name: str
    thing_arn: str
    status: ExecutionStatus
    queued_at: float
    last_updated_at: float
    started_at: float | None = None
    status_details: dict[str, str] = field(default_factory=dict)
    version: int = 1
    execution_number: int = 1
    step_deadline: float | None = None  # epoch seconds; stepTimeoutInMinutes
    in_progress_deadline: float | None = None  # epoch seconds; the job's timeoutConfig
    force_canceled: bool = False

    def state(self) -> dict[str, Any]:
        """AWS's JobExecutionState: what VersionMismatch and InvalidStateTransition carry."""
        return {"status": self.status.value, "statusDetails": dict(self.status_details), "versionNumber": self.version}


@dataclass(slots=True, kw_only=True)
class Job:
    job_id: str
    job_arn: str
    document: str  # JSON text
    document_source: str | None
    targets: list[str]  # ARNs as given
    target_selection: str
    description: str | None
    created_at: float
    last_updated_at: float
    status: JobStatus = JobStatus.IN_PROGRESS
    completed_at: float | None = None
    max_per_minute: int | None = None
    in_progress_timeout_minutes: int | None = None
    waiting: list[tuple[str, str]] = field(default_factory=list)  # (thing, thing ARN) not yet released (rollout)
    released: int = 0
    force_canceled: bool = False
    reason_code: str | None = None
    comment: str | None = None
    sequence: int = 0
    tags: list[dict[str, str]] = field(default_factory=list)
