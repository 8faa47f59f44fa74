"""HTTP front of the stream backend: a WSGI middleware in front of moto's server application.

How this works: every request is looked at once. A SigV4-signed ``iot`` request (the credential scope names the
service and region, exactly how moto itself routes requests to ``127.0.0.1``) whose method and path are one of
the stream or tagging operations of botocore's ``iot`` model is answered here from ``streams_backends``; anything
else goes to moto unchanged. Answers are rest-json as AWS sends them: errors carry the botocore exception name in
``x-amzn-ErrorType`` and the modeled members (``message``, ``resourceId``, ``resourceArn``) in the body, so boto3
raises ``client.exceptions.ResourceAlreadyExistsException`` and friends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.iam.models import get_account_id_from
from werkzeug.wrappers import Request, Response

from local_iot.catalog import StreamRecord
from local_iot.streams_backend import ApiError, StoredStream, StreamApiError, StreamsBackend, streams_backends

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_IOT_HOST = re.compile(r"iot\.([a-z0-9-]+)\.amazonaws\.com(:\d+)?$")
_STREAM_PATH = re.compile(r"/streams/(?P<id>.*)")


class StreamsApi:
    """WSGI middleware: serves create/describe/update/delete/list_stream and IoT tagging, passes the rest on."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = _iot_region(environ)
        handler = _route(environ) if target else None
        if handler is None or target is None:
            return self._app(environ, start_response)
        request = Request(environ)
        try:
            try:
                backend = streams_backends[_account_id(environ)][target]
            except KeyError as exc:
                raise StreamApiError(ApiError.INVALID_REQUEST, f"unknown region {target!r}: use an AWS region") from exc
            body = handler(backend, request)
            response = _json_response(200, body)
        except StreamApiError as exc:
            response = _error_response(exc.error, exc.message, exc.fields)
        except Exception:
            log.exception("stream API failure on %s %s", request.method, request.path)
            response = _error_response(ApiError.INTERNAL_FAILURE, "internal failure in local_iot's stream API", {})
        return response(environ, start_response)


Handler = Callable[[StreamsBackend, Request], dict[str, Any]]


def _route(environ: dict[str, Any]) -> Handler | None:
    method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
    if path == "/streams":
        return _list_streams if method == "GET" else None
    if path == "/tags":
        return {"GET": _list_tags, "POST": _tag_resource}.get(method)
    if path == "/untag":
        return _untag_resource if method == "POST" else None
    if _STREAM_PATH.fullmatch(path):
        return {"POST": _create_stream, "GET": _describe_stream, "PUT": _update_stream, "DELETE": _delete_stream}.get(
            method
        )
    return None


def _iot_region(environ: dict[str, Any]) -> str | None:
    """The region of an ``iot`` control-plane request, None for every other service."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match.group(2) if match.group(3) == "iot" else None
    host = _IOT_HOST.match(environ.get("HTTP_HOST", ""))
    return host.group(1) if host else None


def _account_id(environ: dict[str, Any]) -> str:
    """The account moto would pick for this request: MOTO_ACCOUNT_ID, x-moto-account-id, the access key's."""
    if "MOTO_ACCOUNT_ID" in os.environ:
        return os.environ["MOTO_ACCOUNT_ID"]
    if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
        return str(environ["HTTP_X_MOTO_ACCOUNT_ID"])
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    return get_account_id_from(match.group(1)) if match else DEFAULT_ACCOUNT_ID


def _stream_id(request: Request) -> str:
    match = _STREAM_PATH.fullmatch(request.path)
    return match.group("id") if match else ""


def _body(request: Request) -> dict[str, Any]:
    raw = request.get_data()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise StreamApiError(ApiError.INVALID_REQUEST, "the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise StreamApiError(ApiError.INVALID_REQUEST, "the request body must be a JSON object")
    return body


def _summary(record: StreamRecord) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "streamId": record.stream_id,
        "streamArn": record.stream_arn,
        "streamVersion": record.version,
    }
    if record.description:
        summary["description"] = record.description
    return summary


def _stream_info(stored: StoredStream) -> dict[str, Any]:
    record = stored.record
    files = []
    for f in record.files:
        location = {"bucket": f.bucket, "key": f.key}
        if f.version_id is not None:
            location["version"] = f.version_id
        files.append({"fileId": f.file_id, "s3Location": location})
    return {
        **_summary(record),
        "files": files,
        "createdAt": stored.created_at,
        "lastUpdatedAt": stored.last_updated_at,
        "roleArn": record.role_arn,
    }


def _create_stream(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    body = _body(request)
    record = backend.create_stream(
        _stream_id(request),
        files=body.get("files"),
        role_arn=body.get("roleArn"),
        description=body.get("description"),
        tags=body.get("tags"),
    )
    return _summary(record)


def _describe_stream(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    return {"streamInfo": _stream_info(backend.describe_stream(_stream_id(request)))}


def _update_stream(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    body = _body(request)
    record = backend.update_stream(
        _stream_id(request), files=body.get("files"), role_arn=body.get("roleArn"), description=body.get("description")
    )
    return _summary(record)


def _delete_stream(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    backend.delete_stream(_stream_id(request))
    return {}


def _list_streams(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    raw_max = request.args.get("maxResults")
    try:
        max_results = int(raw_max) if raw_max is not None else None
    except ValueError as exc:
        raise StreamApiError(ApiError.INVALID_REQUEST, f"maxResults {raw_max!r} is not an integer") from exc
    ascending = request.args.get("isAscendingOrder", "false").lower() == "true"
    records, token = backend.list_streams(
        max_results=max_results, next_token=request.args.get("nextToken"), ascending=ascending
    )
    answer: dict[str, Any] = {"streams": [_summary(r) for r in records]}
    if token:
        answer["nextToken"] = token
    return answer


def _tags(tags: Iterable[tuple[str, str | None]]) -> list[dict[str, str]]:
    return [{"Key": k} if v is None else {"Key": k, "Value": v} for k, v in tags]


def _list_tags(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    return {"tags": _tags(backend.list_tags(request.args.get("resourceArn")))}


def _tag_resource(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    body = _body(request)
    backend.tag_resource(body.get("resourceArn"), body.get("tags"))
    return {}


def _untag_resource(backend: StreamsBackend, request: Request) -> dict[str, Any]:
    body = _body(request)
    backend.untag_resource(body.get("resourceArn"), body.get("tagKeys"))
    return {}


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body),
        status=status,
        headers={"Content-Type": "application/json", "x-amzn-RequestId": str(uuid.uuid4()), **(headers or {})},
    )


def _error_response(error: ApiError, message: str, fields: dict[str, str]) -> Response:
    return _json_response(error.status, {"message": message, **fields}, {"x-amzn-ErrorType": error.code})
