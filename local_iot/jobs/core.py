"""``JobsCore``: AWS IoT Jobs for one account and region, sans-IO (no clock, no network, no lock inside).

How this works: the core owns every job and job execution. Two kinds of callers drive it, both passing ``now``
(epoch seconds):

- the control plane (``create_job``, ``cancel_job``, ``delete_job_execution``...), which raise ``JobsApiError``
  with botocore's exception names;
- devices, through ``handle(topic, payload, now)`` for a publish on ``$aws/things/<thing>/jobs/...``, which
  returns the answer (``/accepted`` or ``/rejected``) plus any notifications.

Every change to a thing's pending executions (QUEUED or IN_PROGRESS) is compared before and after: a change of
the pending set publishes ``notify`` (``{"timestamp", "jobs": {"QUEUED": [...], "IN_PROGRESS": [...]}}``), a
change of the next pending execution publishes ``notify-next`` (``{"timestamp", "execution"}``, without
``execution`` when none is left). Control-plane calls return their notifications too; the caller publishes them.

Time: ``tick(now)`` times out executions whose step timer (``stepTimeoutInMinutes``) or the job's
``timeoutConfig`` ran out (TIMED_OUT) and releases executions held back by ``jobExecutionsRolloutConfig``
(``maximumPerMinute`` per minute since the job was created); ``next_deadline()`` says when to call it next.
``minute`` (60 s by default) is the length of a Jobs minute: tests shorten it to exercise timeouts quickly.

Where AWS documents the behaviour, the core follows it (docs/ota.md lists the rules and the choices where AWS is
silent, e.g. a describe of a terminal execution is ``TerminalStateReached``, an update is
``InvalidStateTransition``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .model import (
    DEVICE_STATUSES,
    ApiError,
    Execution,
    ExecutionStatus,
    Job,
    JobsApiError,
    JobsErrorCode,
    JobStatus,
)

__all__ = ["JobsCore", "JobsOutgoing", "Target"]

JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_CLIENT_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")
_DETAIL_KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
MAX_STATUS_DETAILS = 10
MAX_DETAIL_VALUE = 1024
MAX_STEP_TIMEOUT_MINUTES = 10080
MAX_DOCUMENT_BYTES = 32 * 1024
DEFAULT_PAGE = 50
PREFIX = "$aws/things/"


@dataclass(frozen=True, kw_only=True, slots=True)
class JobsOutgoing:
    """One message to publish (QoS 1) on the broker."""

    topic: str
    payload: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """A thing a job is for, resolved from a thing or thing-group ARN by the caller."""

    thing_name: str
    thing_arn: str


class _Rejected(Exception):
    def __init__(self, code: JobsErrorCode, message: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.state = state


def _ts(value: float) -> int:
    """Jobs MQTT timestamps are whole epoch seconds."""
    return int(value)


def _invalid(message: str) -> JobsApiError:
    return JobsApiError(ApiError.INVALID_REQUEST, message)


class JobsCore:
    """Jobs and executions of one account/region. Not thread-safe: the owner serialises calls."""

    def __init__(self, *, account_id: str, region: str, partition: str = "aws", minute: float = 60.0) -> None:
        self.account_id = account_id
        self.region = region
        self.partition = partition
        self.minute = minute
        self.jobs: dict[str, Job] = {}
        self.by_thing: dict[str, dict[str, Execution]] = {}
        self._sequence = 0

    # -- control plane ------------------------------------------------------------------------------------------

    def job_arn(self, job_id: str) -> str:
        return f"arn:{self.partition}:iot:{self.region}:{self.account_id}:job/{job_id}"

    def create_job(
        self,
        job_id: str,
        *,
        targets: list[str],
        resolved: list[Target],
        document: str,
        now: float,
        document_source: str | None = None,
        description: str | None = None,
        target_selection: str = "SNAPSHOT",
        max_per_minute: int | None = None,
        in_progress_timeout_minutes: int | None = None,
        tags: list[dict[str, str]] | None = None,
    ) -> tuple[Job, list[JobsOutgoing]]:
        if not JOB_ID.fullmatch(job_id or ""):
            raise _invalid(f"jobId {job_id!r} must be 1-64 characters of [a-zA-Z0-9_-]")
        if job_id in self.jobs:
            raise JobsApiError(ApiError.RESOURCE_ALREADY_EXISTS, f"Job {job_id} already exists")
        if len(document.encode()) > MAX_DOCUMENT_BYTES:
            raise _invalid("the job document is larger than 32 KiB")
        try:
            parsed = json.loads(document)
        except ValueError as exc:
            raise _invalid("the job document is not valid JSON") from exc
        if not isinstance(parsed, dict):
            raise _invalid("the job document must be a JSON object")
        if max_per_minute is not None and not 1 <= max_per_minute <= 1000:
            raise _invalid("jobExecutionsRolloutConfig.maximumPerMinute must be between 1 and 1000")
        if in_progress_timeout_minutes is not None and not 1 <= in_progress_timeout_minutes <= 10080:
            raise _invalid("timeoutConfig.inProgressTimeoutInMinutes must be between 1 and 10080")
        if target_selection not in ("SNAPSHOT", "CONTINUOUS"):
            raise _invalid("targetSelection must be SNAPSHOT or CONTINUOUS")
        self._sequence += 1
        unique = list({t.thing_name: t for t in resolved}.values())
        job = Job(
            job_id=job_id,
            job_arn=self.job_arn(job_id),
            document=document,
            document_source=document_source,
            targets=list(targets),
            target_selection=target_selection,
            description=description,
            created_at=now,
            last_updated_at=now,
            max_per_minute=max_per_minute,
            in_progress_timeout_minutes=in_progress_timeout_minutes,
            waiting=[(t.thing_name, t.thing_arn) for t in unique],
            sequence=self._sequence,
            tags=list(tags or []),
        )
        self.jobs[job_id] = job
        return job, self._release(job, now)

    def get_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobsApiError(ApiError.RESOURCE_NOT_FOUND, f"Job {job_id} does not exist")
        return job

    def executions_of(self, job_id: str) -> list[Execution]:
        return [e for things in self.by_thing.values() if (e := things.get(job_id)) is not None]

    def process_details(self, job: Job) -> dict[str, Any]:
        counts = {s: 0 for s in ExecutionStatus}
        for execution in self.executions_of(job.job_id):
            counts[execution.status] += 1
        names = {
            ExecutionStatus.CANCELED: "numberOfCanceledThings",
            ExecutionStatus.SUCCEEDED: "numberOfSucceededThings",
            ExecutionStatus.FAILED: "numberOfFailedThings",
            ExecutionStatus.REJECTED: "numberOfRejectedThings",
            ExecutionStatus.QUEUED: "numberOfQueuedThings",
            ExecutionStatus.IN_PROGRESS: "numberOfInProgressThings",
            ExecutionStatus.REMOVED: "numberOfRemovedThings",
            ExecutionStatus.TIMED_OUT: "numberOfTimedOutThings",
        }
        details: dict[str, Any] = {name: counts[status] for status, name in names.items()}
        if job.waiting:
            details["processingTargets"] = [arn for _, arn in job.waiting]
        return details

    def get_execution(self, job_id: str, thing_name: str, execution_number: int | None = None) -> Execution:
        execution = self.by_thing.get(thing_name, {}).get(job_id)
        if execution is None or (execution_number is not None and execution.execution_number != execution_number):
            raise JobsApiError(
                ApiError.RESOURCE_NOT_FOUND, f"Job execution of job {job_id} on thing {thing_name} does not exist"
            )
        return execution

    def list_jobs(self, *, status: str | None = None) -> list[Job]:
        jobs = sorted(self.jobs.values(), key=lambda j: -j.sequence)
        return [j for j in jobs if status is None or j.status.value == status]

    def cancel_job(
        self, job_id: str, *, force: bool, now: float, reason_code: str | None = None, comment: str | None = None
    ) -> tuple[Job, list[JobsOutgoing]]:
        job = self.get_job(job_id)
        if job.status is JobStatus.COMPLETED:
            raise _invalid(f"Job {job_id} is already COMPLETED and cannot be canceled")
        job.status = JobStatus.CANCELED
        job.force_canceled = job.force_canceled or force
        job.reason_code = reason_code if reason_code is not None else job.reason_code
        job.comment = comment if comment is not None else job.comment
        job.waiting.clear()
        job.last_updated_at = job.completed_at = now
        out: list[JobsOutgoing] = []
        for execution in self.executions_of(job_id):
            running = execution.status is ExecutionStatus.IN_PROGRESS
            if execution.status is ExecutionStatus.QUEUED or (force and running):
                cancel = self._set_terminal(execution, ExecutionStatus.CANCELED, now, force)
                out += self._change(execution.thing_name, now, cancel)
        return job, out

    def cancel_execution(
        self,
        job_id: str,
        thing_name: str,
        *,
        force: bool,
        now: float,
        expected_version: int | None = None,
        status_details: dict[str, str] | None = None,
    ) -> list[JobsOutgoing]:
        execution = self.get_execution(job_id, thing_name)
        if expected_version is not None and expected_version != execution.version:
            raise JobsApiError(
                ApiError.VERSION_CONFLICT,
                f"expectedVersion {expected_version} is not the execution's version {execution.version}",
            )
        if execution.status.terminal:
            raise JobsApiError(
                ApiError.INVALID_STATE_TRANSITION,
                f"the execution of {job_id} on {thing_name} is already {execution.status.value}",
            )
        if execution.status is ExecutionStatus.IN_PROGRESS and not force:
            raise JobsApiError(
                ApiError.INVALID_STATE_TRANSITION,
                f"the execution of {job_id} on {thing_name} is IN_PROGRESS: cancel it with force=true",
            )
        if status_details is not None:
            execution.status_details = _details_or_api_error(status_details)
        out = self._change(thing_name, now, self._set_terminal(execution, ExecutionStatus.CANCELED, now, force))
        self._maybe_complete(self.jobs[job_id], now)
        return out

    def delete_job(self, job_id: str, *, force: bool, now: float) -> list[JobsOutgoing]:
        job = self.get_job(job_id)
        pending = [e for e in self.executions_of(job_id) if not e.status.terminal]
        if job.status is JobStatus.IN_PROGRESS and not force:
            raise JobsApiError(
                ApiError.INVALID_STATE_TRANSITION,
                f"Job {job_id} is IN_PROGRESS: cancel it first, or delete with force=true",
            )
        if pending and not force:
            raise JobsApiError(
                ApiError.INVALID_STATE_TRANSITION,
                f"Job {job_id} has {len(pending)} executions still IN_PROGRESS: delete with force=true",
            )
        out: list[JobsOutgoing] = []
        for execution in self.executions_of(job_id):
            out += self._change(execution.thing_name, now, lambda e=execution: self._remove(e))
        del self.jobs[job_id]
        return out

    def delete_execution(
        self, job_id: str, thing_name: str, execution_number: int, *, force: bool, now: float
    ) -> list[JobsOutgoing]:
        execution = self.get_execution(job_id, thing_name, execution_number)
        if not execution.status.terminal and not force:
            raise JobsApiError(
                ApiError.INVALID_STATE_TRANSITION,
                f"the execution of {job_id} on {thing_name} is {execution.status.value}: delete it with force=true",
            )
        out = self._change(thing_name, now, lambda: self._remove(execution))
        job = self.jobs.get(job_id)
        if job is not None:
            self._maybe_complete(job, now)
        return out

    # -- time -----------------------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        for things in self.by_thing.values():
            for e in things.values():
                if e.status is ExecutionStatus.IN_PROGRESS:
                    deadlines += [d for d in (e.step_deadline, e.in_progress_deadline) if d is not None]
        for job in self.jobs.values():
            if job.waiting and job.max_per_minute is not None:
                window = job.released // job.max_per_minute
                deadlines.append(job.created_at + window * self.minute)
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[JobsOutgoing]:
        out: list[JobsOutgoing] = []
        for job in list(self.jobs.values()):
            if job.waiting:
                out += self._release(job, now)
        for thing, things in list(self.by_thing.items()):
            for execution in list(things.values()):
                if execution.status is not ExecutionStatus.IN_PROGRESS:
                    continue
                due = [d for d in (execution.step_deadline, execution.in_progress_deadline) if d is not None]
                if due and min(due) <= now:
                    out += self._change(
                        thing, now, self._set_terminal(execution, ExecutionStatus.TIMED_OUT, now, False)
                    )
                    self._maybe_complete(self.jobs[execution.job_id], now)
        return out

    # -- devices ------------------------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, now: float) -> list[JobsOutgoing]:
        """A device's publish on ``$aws/things/<thing>/jobs/...``: the answer and any notifications."""
        if not topic.startswith(PREFIX):
            return []
        thing, sep, rest = topic[len(PREFIX) :].partition("/jobs/")
        if not sep or not thing or "/" in thing:
            return []
        if rest in ("notify", "notify-next") or rest.endswith(("/accepted", "/rejected")):
            return []  # our own publications
        token: str | None = None
        try:
            request = _decode(payload)
            token = request.get("clientToken")
            if token is not None and (not isinstance(token, str) or not _CLIENT_TOKEN.fullmatch(token)):
                token = None
                raise _Rejected(JobsErrorCode.INVALID_REQUEST, "clientToken must be 1-64 printable ASCII characters")
            if not _THING_NAME.fullmatch(thing):
                raise _Rejected(JobsErrorCode.INVALID_TOPIC, f"{thing!r} is not a thing name")
            parts = rest.split("/")
            if parts == ["get"]:
                body = self._get_pending(thing)
            elif parts == ["start-next"]:
                body, out = self._start_next(thing, request, now)
                return [self._accepted(topic, body, token, now), *out]
            elif len(parts) == 2 and parts[1] == "get" and (parts[0] == "$next" or JOB_ID.fullmatch(parts[0])):
                body = self._describe(thing, parts[0], request)
            elif len(parts) == 2 and parts[1] == "update" and JOB_ID.fullmatch(parts[0]):
                body, out = self._update(thing, parts[0], request, now)
                return [self._accepted(topic, body, token, now), *out]
            else:
                raise _Rejected(JobsErrorCode.INVALID_TOPIC, f"{topic} is not a topic of the Jobs API")
        except _Rejected as rejection:
            return [self._rejected(topic, rejection, token, now)]
        return [self._accepted(topic, body, token, now)]

    # -- device operations --------------------------------------------------------------------------------------

    def _get_pending(self, thing: str) -> dict[str, Any]:
        pending = self._pending(thing)
        return {
            "inProgressJobs": [_summary(e) for e in pending if e.status is ExecutionStatus.IN_PROGRESS],
            "queuedJobs": [_summary(e) for e in pending if e.status is ExecutionStatus.QUEUED],
        }

    def _start_next(self, thing: str, request: dict[str, Any], now: float) -> tuple[dict[str, Any], list[JobsOutgoing]]:
        details = _details(request.get("statusDetails"))
        step = _step_timeout(request.get("stepTimeoutInMinutes"))
        pending = self._pending(thing)
        if not pending:
            return {}, []
        execution = pending[0]
        out: list[JobsOutgoing] = []
        if execution.status is ExecutionStatus.QUEUED:

            def start() -> None:
                self._to_in_progress(execution, now, details, step)

            out = self._change(thing, now, start)
        return {"execution": self._execution(execution, include_document=True)}, out

    def _describe(self, thing: str, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        include = request.get("includeJobDocument", True)
        if not isinstance(include, bool):
            raise _Rejected(JobsErrorCode.INVALID_REQUEST, "includeJobDocument must be a boolean")
        number = request.get("executionNumber")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number < 1):
            raise _Rejected(JobsErrorCode.INVALID_REQUEST, "executionNumber must be a positive integer")
        if job_id == "$next":
            pending = self._pending(thing)
            return {"execution": self._execution(pending[0], include_document=include)} if pending else {}
        execution = self._device_execution(thing, job_id, number)
        if execution.status.terminal:
            raise _Rejected(
                JobsErrorCode.TERMINAL_STATE_REACHED,
                f"the execution of {job_id} is {execution.status.value}: a terminal state",
                execution.state(),
            )
        return {"execution": self._execution(execution, include_document=include)}

    def _update(
        self, thing: str, job_id: str, request: dict[str, Any], now: float
    ) -> tuple[dict[str, Any], list[JobsOutgoing]]:
        raw_status = request.get("status")
        try:
            status = ExecutionStatus(str(raw_status))
        except ValueError:
            status = None
        if status not in DEVICE_STATUSES:
            raise _Rejected(
                JobsErrorCode.INVALID_REQUEST,
                f"status {raw_status!r} is not one of IN_PROGRESS, SUCCEEDED, FAILED, REJECTED",
            )
        assert status is not None
        details = _details(request.get("statusDetails"))
        step = _step_timeout(request.get("stepTimeoutInMinutes"))
        expected = _optional_int(request, "expectedVersion")
        number = _optional_int(request, "executionNumber")
        flags = {}
        for name in ("includeJobExecutionState", "includeJobDocument"):
            value = request.get(name, False)
            if not isinstance(value, bool):
                raise _Rejected(JobsErrorCode.INVALID_REQUEST, f"{name} must be a boolean")
            flags[name] = value
        execution = self._device_execution(thing, job_id, number)
        if expected is not None and expected != execution.version:
            raise _Rejected(
                JobsErrorCode.VERSION_MISMATCH,
                f"expectedVersion {expected} is not the current version {execution.version}",
                execution.state(),
            )
        if execution.status.terminal:
            raise _Rejected(
                JobsErrorCode.INVALID_STATE_TRANSITION,
                f"cannot update the execution of {job_id} from {execution.status.value} to {status.value}",
                execution.state(),
            )

        def apply() -> None:
            if status is ExecutionStatus.IN_PROGRESS:
                self._to_in_progress(execution, now, details, step)
            else:
                if details is not None:
                    execution.status_details = details
                self._set_terminal(execution, status, now, False)()

        out = self._change(thing, now, apply)
        self._maybe_complete(self.jobs[job_id], now)
        body: dict[str, Any] = {}
        if flags["includeJobExecutionState"]:
            body["executionState"] = execution.state()
        if flags["includeJobDocument"]:
            body["jobDocument"] = json.loads(self.jobs[job_id].document)
        return body, out

    def _device_execution(self, thing: str, job_id: str, number: int | None) -> Execution:
        execution = self.by_thing.get(thing, {}).get(job_id)
        if execution is None or (number is not None and number != execution.execution_number):
            raise _Rejected(JobsErrorCode.RESOURCE_NOT_FOUND, f"job execution of {job_id} on {thing} not found")
        return execution

    # -- state changes ------------------------------------------------------------------------------------------

    def _to_in_progress(
        self, execution: Execution, now: float, details: dict[str, str] | None, step: int | None
    ) -> None:
        if execution.status is ExecutionStatus.QUEUED:
            execution.started_at = now
            job = self.jobs[execution.job_id]
            if job.in_progress_timeout_minutes is not None:
                execution.in_progress_deadline = now + job.in_progress_timeout_minutes * self.minute
        execution.status = ExecutionStatus.IN_PROGRESS
        if details is not None:
            execution.status_details = details
        if step is not None:
            execution.step_deadline = now + step * self.minute
        execution.version += 1
        execution.last_updated_at = now

    def _set_terminal(self, execution: Execution, status: ExecutionStatus, now: float, forced: bool) -> Any:
        def apply() -> None:
            execution.status = status
            execution.force_canceled = forced
            execution.step_deadline = execution.in_progress_deadline = None
            execution.version += 1
            execution.last_updated_at = now

        return apply

    def _remove(self, execution: Execution) -> None:
        things = self.by_thing.get(execution.thing_name, {})
        things.pop(execution.job_id, None)
        if not things:
            self.by_thing.pop(execution.thing_name, None)

    def _release(self, job: Job, now: float) -> list[JobsOutgoing]:
        """Queue executions for waiting targets, as many as the rollout rate allows by ``now``."""
        if job.status is not JobStatus.IN_PROGRESS:
            job.waiting.clear()
            return []
        if job.max_per_minute is None:
            allowed = len(job.waiting)
        else:
            windows = math.floor(max(0.0, now - job.created_at) / self.minute) + 1
            allowed = max(0, windows * job.max_per_minute - job.released)
        batch, job.waiting = job.waiting[:allowed], job.waiting[allowed:]
        out: list[JobsOutgoing] = []
        for thing, arn in batch:
            execution = Execution(
                job_id=job.job_id,
                thing_name=thing,
                thing_arn=arn,
                status=ExecutionStatus.QUEUED,
                queued_at=now,
                last_updated_at=now,
            )

            def add(e: Execution = execution) -> None:
                self.by_thing.setdefault(e.thing_name, {})[e.job_id] = e

            out += self._change(thing, now, add)
            job.released += 1
        self._maybe_complete(job, now)
        return out

    def _maybe_complete(self, job: Job, now: float) -> None:
        if job.status is not JobStatus.IN_PROGRESS or job.waiting or job.target_selection == "CONTINUOUS":
            return
        if all(e.status.terminal for e in self.executions_of(job.job_id)):
            job.status = JobStatus.COMPLETED
            job.completed_at = job.last_updated_at = now

    def _pending(self, thing: str) -> list[Execution]:
        """QUEUED and IN_PROGRESS executions, the next one first: IN_PROGRESS before QUEUED, oldest first."""
        pending = [e for e in self.by_thing.get(thing, {}).values() if not e.status.terminal]
        pending.sort(key=lambda e: (e.status is not ExecutionStatus.IN_PROGRESS, e.queued_at, self._seq(e)))
        return pending

    def _seq(self, execution: Execution) -> int:
        job = self.jobs.get(execution.job_id)
        return job.sequence if job else 0

    def _change(self, thing: str, now: float, mutate: Any) -> list[JobsOutgoing]:
        """Run ``mutate`` and return the notifications its effect on the thing's pending list calls for."""
        before = self._pending(thing)
        before_ids = {e.job_id for e in before}
        before_next = before[0].job_id if before else None
        mutate()
        after = self._pending(thing)
        out: list[JobsOutgoing] = []
        if {e.job_id for e in after} != before_ids:
            jobs: dict[str, list[dict[str, Any]]] = {}
            for e in after:
                jobs.setdefault(e.status.value, []).append(_summary(e))
            out.append(_message(f"{PREFIX}{thing}/jobs/notify", {"timestamp": _ts(now), "jobs": jobs}))
        after_next = after[0].job_id if after else None
        if after_next != before_next:
            body: dict[str, Any] = {"timestamp": _ts(now)}
            if after:
                body["execution"] = self._execution(after[0], include_document=True)
            out.append(_message(f"{PREFIX}{thing}/jobs/notify-next", body))
        return out

    # -- messages -----------------------------------------------------------------------------------------------

    def _execution(self, execution: Execution, *, include_document: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"jobId": execution.job_id, "thingName": execution.thing_name}
        if include_document:
            body["jobDocument"] = json.loads(self.jobs[execution.job_id].document)
        body["status"] = execution.status.value
        if execution.status_details:
            body["statusDetails"] = dict(execution.status_details)
        body["queuedAt"] = _ts(execution.queued_at)
        if execution.started_at is not None:
            body["startedAt"] = _ts(execution.started_at)
        body["lastUpdatedAt"] = _ts(execution.last_updated_at)
        body["versionNumber"] = execution.version
        body["executionNumber"] = execution.execution_number
        return body

    def _accepted(self, topic: str, body: dict[str, Any], token: str | None, now: float) -> JobsOutgoing:
        answer = {**body, "timestamp": _ts(now)}
        if token is not None:
            answer["clientToken"] = token
        return _message(topic + "/accepted", answer)

    def _rejected(self, topic: str, rejection: _Rejected, token: str | None, now: float) -> JobsOutgoing:
        answer: dict[str, Any] = {"code": rejection.code.value, "message": rejection.message, "timestamp": _ts(now)}
        if token is not None:
            answer["clientToken"] = token
        if rejection.state is not None:
            answer["executionState"] = rejection.state
        return _message(topic + "/rejected", answer)


def _message(topic: str, body: dict[str, Any]) -> JobsOutgoing:
    return JobsOutgoing(topic=topic, payload=json.dumps(body, separators=(",", ":")).encode())


def _summary(execution: Execution) -> dict[str, Any]:
    """AWS's JobExecutionSummary of the MQTT API."""
    body: dict[str, Any] = {"jobId": execution.job_id, "queuedAt": _ts(execution.queued_at)}
    if execution.started_at is not None:
        body["startedAt"] = _ts(execution.started_at)
    body["lastUpdatedAt"] = _ts(execution.last_updated_at)
    body["versionNumber"] = execution.version
    body["executionNumber"] = execution.execution_number
    return body


def _decode(payload: bytes) -> dict[str, Any]:
    if not payload.strip():
        return {}
    try:
        request = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Rejected(JobsErrorCode.INVALID_JSON, "the request is not valid UTF-8 JSON") from exc
    if not isinstance(request, dict):
        raise _Rejected(JobsErrorCode.INVALID_JSON, "the request must be a JSON object")
    return request


def _details(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    try:
        return _check_details(value)
    except ValueError as exc:
        raise _Rejected(JobsErrorCode.INVALID_REQUEST, str(exc)) from exc


def _details_or_api_error(value: Any) -> dict[str, str]:
    try:
        return _check_details(value)
    except ValueError as exc:
        raise _invalid(str(exc)) from exc


def _check_details(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("statusDetails must be an object of string values")
    if len(value) > MAX_STATUS_DETAILS:
        raise ValueError(f"statusDetails holds at most {MAX_STATUS_DETAILS} entries")
    for key, item in value.items():
        if not _DETAIL_KEY.fullmatch(key):
            raise ValueError(f"statusDetails key {key!r} must be 1-128 characters of [a-zA-Z0-9:_-]")
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_DETAIL_VALUE:
            raise ValueError(f"statusDetails value of {key!r} must be a string of 1-{MAX_DETAIL_VALUE} characters")
    return dict(value)


def _step_timeout(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_STEP_TIMEOUT_MINUTES:
        raise _Rejected(
            JobsErrorCode.INVALID_REQUEST, f"stepTimeoutInMinutes must be an integer 1-{MAX_STEP_TIMEOUT_MINUTES}"
        )
    return value


def _optional_int(request: dict[str, Any], name: str) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Rejected(JobsErrorCode.INVALID_REQUEST, f"{name} must be a non-negative integer")
    return value
