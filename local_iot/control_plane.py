"""The control plane of local_iot: moto's server (S3, IAM, IoT, STS...) plus the stream API, in a thread.

How this works: moto's own WSGI application (the one ``moto_server`` runs) is wrapped by ``StreamsApi``, which
answers the IoT stream and tagging calls from ``streams_backends`` and passes every other request to moto. A
werkzeug threaded server on ``host:port`` (port 0: a free port, read back after binding) runs it on a daemon
thread. Point any boto3 client at ``endpoint_url`` (or export ``AWS_ENDPOINT_URL``) with dummy credentials.

moto keeps its state in process-global backends: two ``ControlPlane`` objects in one process serve the same
data, and ``reset()`` (moto's ``POST /moto-api/reset``) clears S3, IAM, IoT and the streams for all of them.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
from moto.core.config import default_user_config
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from local_iot.jobs.api import JobsApi
from local_iot.moto_catalog import MotoCatalog
from local_iot.streams_api import StreamsApi

__all__ = [
    "DUMMY_CREDENTIALS",
    "ChangeListener",
    "ControlChange",
    "ControlPlane",
    "ControlPlaneError",
    "MotoCatalog",
    "aws_environment",
]

log = logging.getLogger(__name__)

#: Credentials for talking to the emulator. moto accepts any; these are never valid on AWS.
DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def aws_environment(endpoint_url: str, region: str) -> dict[str, str]:
    """``AWS_ENDPOINT_URL``, dummy credentials and region: the standard boto3 chain pointed at a control plane."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


class ControlPlaneError(Exception):
    """The control plane cannot start (address in use...) or is used before start()."""


def _check_profile() -> None:
    """moto builds botocore sessions in this process, and they fail on every request if AWS_PROFILE is unknown."""
    try:
        botocore.session.Session().get_scoped_config()
    except botocore.exceptions.ProfileNotFound as exc:
        raise ControlPlaneError(
            f"{exc}: moto reads AWS_PROFILE in this process: unset it (local_iot needs none) or name one that exists"
        ) from exc


_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([^/,\s]+)/aws4_request")


@dataclass(frozen=True, slots=True)
class ControlChange:
    """A request that may have changed state (any method but GET/HEAD), as change listeners see it."""

    service: str  # the SigV4 scope's service ("iot", "s3"...); "" for an unsigned request (moto-api)
    method: str  # "POST", "PUT", "PATCH", "DELETE"
    path: str  # the URL path, percent-decoded, without the query ("/things/bench-1/principals")
    principal: str = ""  # the x-amzn-principal header (AttachThingPrincipal, DetachThingPrincipal), else ""


ChangeListener = Callable[[ControlChange], None]


class _Guard:
    """WSGI middleware: one request at a time (so a state snapshot never sees half a change), and after every
    request that may change state (not GET/HEAD) the listeners are told which one (``ControlChange``), before the
    response goes out: what a listener writes is in place when the client sees the answer."""

    def __init__(self, app: Any, lock: threading.RLock, listeners: list[ChangeListener]) -> None:
        self._app = app
        self._lock = lock
        self._listeners = listeners

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            body = list(self._app(environ, start_response))
            method = environ.get("REQUEST_METHOD", "GET")
            if method not in ("GET", "HEAD"):
                scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
                change = ControlChange(
                    service=scope.group(1) if scope else "",
                    method=method,
                    path=environ.get("PATH_INFO", ""),
                    principal=environ.get("HTTP_X_AMZN_PRINCIPAL", ""),
                )
                for listener in list(self._listeners):
                    try:
                        listener(change)
                    except Exception:
                        log.exception("control-plane change listener failed")
        return body


class _QuietRequestHandler(MotoRequestHandler):
    """moto's request handler, logging each request to our logger at DEBUG instead of werkzeug's stderr handler."""

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("%s " + message, self.address_string(), *args)


class ControlPlane:
    """moto + the stream API on ``http://host:port``. Use as a context manager or call start()/stop()."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, region: str = "us-east-1") -> None:
        self.host = host
        self.region = region
        self.account_id = os.environ.get("MOTO_ACCOUNT_ID", DEFAULT_ACCOUNT_ID)  # the account moto answers as
        self.catalog = MotoCatalog(account_id=self.account_id, region=region)
        self._requested_port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        #: Held while a request is served; hold it to read or snapshot moto's state consistently.
        self.lock = threading.RLock()
        self._listeners: list[ChangeListener] = []

    def add_change_listener(self, listener: ChangeListener) -> None:
        """``listener(change)`` runs (under ``lock``, before the response is sent) after every request that may
        have changed state."""
        self._listeners.append(listener)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def port(self) -> int:
        if self._server is None:
            raise ControlPlaneError("the control plane is not running: call start() first")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ControlPlane:
        if self._server is not None:
            raise ControlPlaneError("the control plane is already running")
        _check_profile()
        # AWS's certificateId is the SHA-256 of the certificate's DER; moto uses a hash of the PEM text unless told
        # otherwise (a process-wide moto setting; it also makes register_certificate reject PEM that is not X.509).
        default_user_config["iot"]["use_valid_cert"] = True
        app = _Guard(JobsApi(StreamsApi(DomainDispatcherApplication(create_backend_app))), self.lock, self._listeners)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:  # bind here: werkzeug's make_server calls sys.exit when the port is taken
            listener = socket.create_server((self.host, self._requested_port), family=family)
        except OSError as exc:
            raise ControlPlaneError(
                f"cannot listen on {self.host}:{self._requested_port} ({exc}): choose another port, or 0 for a free one"
            ) from exc
        with listener:  # werkzeug serves a duplicate of this socket
            server = make_server(
                self.host,
                listener.getsockname()[1],
                app,
                threaded=True,
                request_handler=_QuietRequestHandler,
                fd=listener.fileno(),
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="local-iot-control-plane", daemon=True
        )
        self._thread.start()
        log.info("control plane (moto + streams) listening on %s, region %s", self.endpoint_url, self.region)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join()
        server.server_close()
        self._server = self._thread = None
        log.info("control plane stopped")

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self, service_name: str, **kwargs: Any) -> Any:
        """A boto3 client for this control plane with dummy credentials (never the user's real ones)."""
        # A botocore session that ignores AWS_PROFILE: the user's profile (and its credentials) plays no part here.
        core = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
        session = boto3.session.Session(botocore_session=core, region_name=self.region, **DUMMY_CREDENTIALS)
        return session.client(service_name, endpoint_url=self.endpoint_url, **kwargs)

    def environment(self) -> dict[str, str]:
        """Environment for a process that should use this control plane through the standard boto3 chain."""
        return aws_environment(self.endpoint_url, self.region)

    def reset(self) -> None:
        """Forget everything (moto's reset: S3, IAM, IoT, streams, in every account and region)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
