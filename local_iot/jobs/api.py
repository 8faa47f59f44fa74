"""HTTP front of the Jobs backend: the Jobs and OTA-update calls of botocore's ``iot`` model, in front of moto.

How this works: like ``local_iot.streams_api`` (and in front of it), a WSGI middleware looks at each SigV4-signed
``iot`` request; those whose method and path are one of the calls below are answered from ``jobs_backends``, the
rest go on unchanged (moto's own, partial job calls are never reached). Answers are rest-json as AWS sends them:
timestamps as epoch seconds, errors with the botocore exception name in ``x-amzn-ErrorType``.

Calls: create_job, describe_job, get_job_document, list_jobs, cancel_job, delete_job, describe_job_execution,
list_job_executions_for_job, list_job_executions_for_thing, cancel_job_execution, delete_job_execution,
create_ota_update, get_ota_update, list_ota_updates, delete_ota_update.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from local_iot.streams_api import _account_id, _iot_region
from local_iot.streams_backend import streams_backends

from .backend import JobsBackend, OtaUpdate, jobs_backends
from .model import ApiError, Execution, Job, JobsApiError

__all__ = ["JobsApi"]

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Handler = Callable[[JobsBackend, Request, dict[str, str]], dict[str, Any]]

_SEGMENT = "[^/]+"
_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def _route(method: str, path: str) -> Callable[[Handler], Handler]:
    pattern = re.compile(re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>{_SEGMENT})", path))

    def register(handler: Handler) -> Handler:
        _ROUTES.append((method, pattern, handler))
        return handler

    return register


class JobsApi:
    """WSGI middleware: serves the Jobs and OTA-update calls, passes everything else on."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        region = _iot_region(environ)
        found = _match(environ) if region else None
        if found is None or region is None:
            return self._app(environ, start_response)
        handler, params = found
        request = Request(environ)
        try:
            try:
                backend = jobs_backends[_account_id(environ)][region]
            except KeyError as exc:
                raise JobsApiError(ApiError.INVALID_REQUEST, f"unknown region {region!r}") from exc
            response = _json(200, handler(backend, request, params))
        except JobsApiError as exc:
            response = _json(exc.error.status, {"message": exc.message}, {"x-amzn-ErrorType": exc.error.code})
        except Exception:
            log.exception("jobs API failure on %s %s", request.method, request.path)
            error = ApiError.INTERNAL_FAILURE
            response = _json(error.status, {"message": "internal failure in local_iot's jobs API"}, {
                "x-amzn-ErrorType": error.code
            })  # fmt: skip
        return response(environ, start_response)


def _match(environ: dict[str, Any]) -> tuple[Handler, dict[str, str]] | None:
    method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
    for route_method, pattern, handler in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return handler, {k: unquote(v) for k, v in match.groupdict().items()}
    return None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body),
        status=status,
        headers={"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4()), **(headers or {})},
    )


def _body(request: Request) -> dict[str, Any]:
    raw = request.get_data()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise JobsApiError(ApiError.INVALID_REQUEST, "the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise JobsApiError(ApiError.INVALID_REQUEST, "the request body must be a JSON object")
    return body


def _flag(request: Request, name: str) -> bool:
    return request.args.get(name, "false").lower() == "true"


def _page(request: Request, items: list[Any], render: Callable[[Any], dict[str, Any]]) -> tuple[list[Any], str | None]:
    raw_max = request.args.get("maxResults")
    try:
        limit = int(raw_max) if raw_max is not None else 50
        start = int(request.args.get("nextToken") or 0)
    except ValueError as exc:
        raise JobsApiError(ApiError.INVALID_REQUEST, "maxResults and nextToken must be what this API returned") from exc
    if not 1 <= limit <= 250:
        raise JobsApiError(ApiError.INVALID_REQUEST, "maxResults must be between 1 and 250")
    page = items[start : start + limit]
    token = str(start + limit) if start + limit < len(items) else None
    return [render(i) for i in page], token


def _paged(key: str, request: Request, items: list[Any], render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    page, token = _page(request, items, render)
    answer: dict[str, Any] = {key: page}
    if token:
        answer["nextToken"] = token
    return answer


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


# -- jobs ---------------------------------------------------------------------------------------------------------


@_route("PUT", "/jobs/{jobId}")
def create_job(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    body = _body(request)
    job_id = params["jobId"]
    document, source = body.get("document"), body.get("documentSource")
    if (document is None) == (source is None):
        raise JobsApiError(ApiError.INVALID_REQUEST, "give exactly one of document and documentSource")
    if source is not None:
        if not isinstance(source, str):
            raise JobsApiError(ApiError.INVALID_REQUEST, "documentSource must be a string")
        document = backend.read_document_source(source)
    if not isinstance(document, str):
        raise JobsApiError(ApiError.INVALID_REQUEST, "document must be a string of JSON")
    resolved = backend.resolve_targets(body.get("targets"))
    rollout = body.get("jobExecutionsRolloutConfig") or {}
    timeout = body.get("timeoutConfig") or {}
    tags = body.get("tags") or []
    now = time.time()
    job = backend.run(
        lambda core: core.create_job(
            job_id,
            targets=list(body["targets"]),
            resolved=resolved,
            document=document,
            now=now,
            document_source=source,
            description=body.get("description"),
            target_selection=body.get("targetSelection", "SNAPSHOT"),
            max_per_minute=rollout.get("maximumPerMinute"),
            in_progress_timeout_minutes=timeout.get("inProgressTimeoutInMinutes"),
            tags=tags,
        )
    )
    if tags:
        streams_backends[backend.account_id][backend.region_name].tag_resource(job.job_arn, tags)
    return _drop_none({"jobArn": job.job_arn, "jobId": job.job_id, "description": job.description})


def _job(backend: JobsBackend, job: Job) -> dict[str, Any]:
    body: dict[str, Any] = {
        "jobArn": job.job_arn,
        "jobId": job.job_id,
        "targetSelection": job.target_selection,
        "status": job.status.value,
        "forceCanceled": job.force_canceled,
        "reasonCode": job.reason_code,
        "comment": job.comment,
        "targets": list(job.targets),
        "description": job.description,
        "createdAt": job.created_at,
        "lastUpdatedAt": job.last_updated_at,
        "completedAt": job.completed_at,
        "jobProcessDetails": backend.core.process_details(job),
        "isConcurrent": False,
    }
    if job.max_per_minute is not None:
        body["jobExecutionsRolloutConfig"] = {"maximumPerMinute": job.max_per_minute}
    if job.in_progress_timeout_minutes is not None:
        body["timeoutConfig"] = {"inProgressTimeoutInMinutes": job.in_progress_timeout_minutes}
    return _drop_none(body)


@_route("GET", "/jobs/{jobId}")
def describe_job(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    def read(core: Any) -> dict[str, Any]:
        job = core.get_job(params["jobId"])
        return _drop_none({"documentSource": job.document_source, "job": _job(backend, job)})

    return backend.read(read)


@_route("GET", "/jobs/{jobId}/job-document")
def get_job_document(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    return backend.read(lambda core: {"document": core.get_job(params["jobId"]).document})


@_route("GET", "/jobs")
def list_jobs(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    def summary(job: Job) -> dict[str, Any]:
        return _drop_none({
            "jobArn": job.job_arn, "jobId": job.job_id, "targetSelection": job.target_selection,
            "status": job.status.value, "createdAt": job.created_at, "lastUpdatedAt": job.last_updated_at,
            "completedAt": job.completed_at, "isConcurrent": False,
        })  # fmt: skip

    jobs = backend.read(lambda core: core.list_jobs(status=request.args.get("status")))
    return _paged("jobs", request, jobs, summary)


@_route("PUT", "/jobs/{jobId}/cancel")
def cancel_job(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    body = _body(request)
    now = time.time()
    job = backend.run(
        lambda core: core.cancel_job(
            params["jobId"],
            force=_flag(request, "force"),
            now=now,
            reason_code=body.get("reasonCode"),
            comment=body.get("comment"),
        )
    )
    return _drop_none({"jobArn": job.job_arn, "jobId": job.job_id, "description": job.description})


@_route("DELETE", "/jobs/{jobId}")
def delete_job(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    now = time.time()
    backend.run(lambda core: (None, core.delete_job(params["jobId"], force=_flag(request, "force"), now=now)))
    return {}


# -- executions ---------------------------------------------------------------------------------------------------


def _execution_summary(execution: Execution) -> dict[str, Any]:
    return _drop_none({
        "status": execution.status.value, "queuedAt": execution.queued_at, "startedAt": execution.started_at,
        "lastUpdatedAt": execution.last_updated_at, "executionNumber": execution.execution_number,
    })  # fmt: skip


def _int_arg(request: Request, name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise JobsApiError(ApiError.INVALID_REQUEST, f"{name} must be an integer") from exc


@_route("GET", "/things/{thingName}/jobs/{jobId}")
def describe_job_execution(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    now = time.time()

    def read(core: Any) -> dict[str, Any]:
        e: Execution = core.get_execution(params["jobId"], params["thingName"], _int_arg(request, "executionNumber"))
        deadlines = [d for d in (e.step_deadline, e.in_progress_deadline) if d is not None]
        body = {
            "jobId": e.job_id, "status": e.status.value, "forceCanceled": e.force_canceled,
            "statusDetails": {"detailsMap": dict(e.status_details)}, "thingArn": e.thing_arn,
            "queuedAt": e.queued_at, "startedAt": e.started_at, "lastUpdatedAt": e.last_updated_at,
            "executionNumber": e.execution_number, "versionNumber": e.version,
            "approximateSecondsBeforeTimedOut": max(0, int(min(deadlines) - now)) if deadlines else None,
        }  # fmt: skip
        return {"execution": _drop_none(body)}

    return backend.read(read)


@_route("GET", "/jobs/{jobId}/things")
def list_job_executions_for_job(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    status = request.args.get("status")

    def read(core: Any) -> list[Execution]:
        core.get_job(params["jobId"])
        executions: list[Execution] = core.executions_of(params["jobId"])
        return sorted((e for e in executions if status is None or e.status.value == status), key=lambda e: e.thing_name)

    executions = backend.read(read)
    return _paged(
        "executionSummaries",
        request,
        executions,
        lambda e: {"thingArn": e.thing_arn, "jobExecutionSummary": _execution_summary(e)},
    )


@_route("GET", "/things/{thingName}/jobs")
def list_job_executions_for_thing(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    thing, status, job_id = params["thingName"], request.args.get("status"), request.args.get("jobId")
    if not backend.thing_exists(thing):
        raise JobsApiError(ApiError.RESOURCE_NOT_FOUND, f"Thing {thing} does not exist")

    def read(core: Any) -> list[Execution]:
        executions = list(core.by_thing.get(thing, {}).values())
        chosen = [e for e in executions if (status is None or e.status.value == status) and job_id in (None, e.job_id)]
        return sorted(chosen, key=lambda e: -e.queued_at)

    executions = backend.read(read)
    return _paged(
        "executionSummaries",
        request,
        executions,
        lambda e: {"jobId": e.job_id, "jobExecutionSummary": _execution_summary(e)},
    )


@_route("PUT", "/things/{thingName}/jobs/{jobId}/cancel")
def cancel_job_execution(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    body = _body(request)
    now = time.time()
    backend.run(
        lambda core: (
            None,
            core.cancel_execution(
                params["jobId"],
                params["thingName"],
                force=_flag(request, "force"),
                now=now,
                expected_version=body.get("expectedVersion"),
                status_details=body.get("statusDetails"),
            ),
        )
    )
    return {}


@_route("DELETE", "/things/{thingName}/jobs/{jobId}/executionNumber/{executionNumber}")
def delete_job_execution(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    try:
        number = int(params["executionNumber"])
    except ValueError as exc:
        raise JobsApiError(ApiError.INVALID_REQUEST, "executionNumber must be an integer") from exc
    now = time.time()
    backend.run(
        lambda core: (
            None,
            core.delete_execution(params["jobId"], params["thingName"], number, force=_flag(request, "force"), now=now),
        )
    )
    return {}


# -- OTA updates --------------------------------------------------------------------------------------------------


def _ota_info(update: OtaUpdate) -> dict[str, Any]:
    request = update.request
    files = [dict(f) for f in request.get("files", [])]
    info: dict[str, Any] = {
        "otaUpdateId": update.ota_update_id,
        "otaUpdateArn": update.arn,
        "creationDate": update.created_at,
        "lastModifiedDate": update.last_modified,
        "description": request.get("description"),
        "targets": request.get("targets"),
        "protocols": request.get("protocols", ["MQTT"]),
        "awsJobExecutionsRolloutConfig": request.get("awsJobExecutionsRolloutConfig"),
        "targetSelection": request.get("targetSelection", "SNAPSHOT"),
        "otaUpdateFiles": files,
        "otaUpdateStatus": update.status,
        "awsIotJobId": update.job_id,
        "awsIotJobArn": update.job_arn,
        "errorInfo": update.error,
        "additionalParameters": request.get("additionalParameters"),
    }
    return _drop_none(info)


@_route("POST", "/otaUpdates/{otaUpdateId}")
def create_ota_update(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    update = backend.create_ota_update(params["otaUpdateId"], _body(request), time.time())
    if update.tags:
        streams_backends[backend.account_id][backend.region_name].tag_resource(update.arn, update.tags)
    return {
        "otaUpdateId": update.ota_update_id,
        "awsIotJobId": update.job_id,
        "otaUpdateArn": update.arn,
        "awsIotJobArn": update.job_arn,
        "otaUpdateStatus": "CREATE_PENDING",
    }


@_route("GET", "/otaUpdates/{otaUpdateId}")
def get_ota_update(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    return {"otaUpdateInfo": _ota_info(backend.get_ota_update(params["otaUpdateId"]))}


@_route("GET", "/otaUpdates")
def list_ota_updates(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    updates = backend.list_ota_updates(request.args.get("otaUpdateStatus"))
    return _paged(
        "otaUpdates",
        request,
        updates,
        lambda u: {"otaUpdateId": u.ota_update_id, "otaUpdateArn": u.arn, "creationDate": u.created_at},
    )


@_route("DELETE", "/otaUpdates/{otaUpdateId}")
def delete_ota_update(backend: JobsBackend, request: Request, params: dict[str, str]) -> dict[str, Any]:
    backend.delete_ota_update(
        params["otaUpdateId"],
        delete_stream=_flag(request, "deleteStream"),
        force_delete_job=_flag(request, "forceDeleteAWSJob"),
    )
    return {}
