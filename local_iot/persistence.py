"""The control plane's state on disk, and the certificate registry the broker plugin follows.

How this works:
- ``snapshot()`` pickles moto's S3, IAM and IoT backends (buckets with every object version and its bytes, roles
  and policies, things, certificates, IoT policies and attachments) and local_iot's stream backend (streams and
  IoT tags) into one blob; ``restore()`` puts them back into this process's moto before the control plane serves.
  ``StateSaver`` writes the blob to ``<state_dir>/control-plane.pickle`` (atomically, 0600) once more on stop and,
  while changes come in, spaced by ``save_delay(d) = max(SAVE_DELAY, SAVE_SPACING * d)`` seconds, d being how long
  the last snapshot took (it holds the control-plane lock, so requests wait meanwhile): the first change after a
  quiet spell is saved SAVE_DELAY (0.2 s) after it, and the next save starts no sooner than ``save_delay(d)``
  after the previous one ended, so snapshots take at most about 1/(SAVE_SPACING + 1) of the time however large
  the state grows. The bound: a SIGKILL loses at most the changes of the last ``save_delay(d)`` seconds plus up to
  two saves' time (one under way when the change came, and the one that writes it): 0.2 s and a few ms for a
  small state (d < 20 ms), a few seconds with tens of thousands of things.
  The file is only ever read by local_iot from its own 0700 state dir (pickle runs code: never load one you did
  not write).
- ``render_registry()`` lists every certificate of the account and region as
  ``<certificateId> <status> <thing>,<thing>...`` (certificateId = SHA-256 of the DER, as on AWS and as the
  plugin computes it). ``RegistryWriter`` keeps ``<state_dir>/broker/registry`` equal to it: ``rebuild()``
  renders it whole (at start); ``apply(change)`` runs after every request that may change state, under the
  control-plane lock and before the response goes out (so a device connecting once the call returned finds its
  certificate), and re-renders only the lines that request can have touched. The rule (``registry_effect``, from
  the request's method and path; IoT requests, signed for ``iot`` or unsigned):

  - POST ``/certificates``, ``/certificate/register``, ``/certificate/register-no-ca``, ``/keys-and-certificate``
    (CreateCertificateFromCsr, RegisterCertificate, RegisterCertificateWithoutCA, CreateKeysAndCertificate): the
    certificates new since the last change (the newest keys of moto's insertion-ordered dict).
  - any method on ``/certificates/{id}``, ``/transfer-certificate/{id}``, ``/accept-|reject-|cancel-certificate-
    transfer/{id}`` (UpdateCertificate, DeleteCertificate, transfers): that certificate's line (status, or gone).
  - PUT/DELETE ``/things/{thing}/principals`` (Attach/DetachThingPrincipal): the line of the certificate named by
    the ``x-amzn-principal`` header (without one: a full rebuild).
  - DELETE ``/things/{thing}`` (DeleteThing): the lines of the certificates attached to it.
  - POST ``/things`` (RegisterThing) and any POST ``/moto-api/...`` (reset): a full rebuild.
  - anything else (CreateThing, UpdateThing, policies and their attachments, S3, IAM, streams, jobs): nothing; the
    file is not touched.

  Every effect is read back from moto's state, not taken from the request (a failed call changes nothing), and a
  full rebuild follows when the number of certificates disagrees or moto's backend object was replaced (reset).
  The file is written only when a line changed, atomically (a rename) but without fsync: it is derived data,
  rebuilt at every start. The work per request is O(1) plus one join and write of the text (~100 bytes a
  certificate); the plugin re-reads the file when its inode, size or mtime changes (every ~50 ms and on CONNECT).
"""

from __future__ import annotations

import logging
import pickle
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal

import moto.backends
from moto.iot.models import iot_backends

from .control_plane import ControlChange
from .files import write_private
from .jobs.backend import jobs_backends
from .streams_backend import streams_backends

__all__ = [
    "SAVE_DELAY",
    "SAVE_SPACING",
    "STATE_FILE",
    "RegistryWriter",
    "StateSaver",
    "registry_effect",
    "render_registry",
    "restore",
    "save_delay",
    "snapshot",
]

log = logging.getLogger(__name__)

STATE_FILE = "control-plane.pickle"
#: The shortest wait between a change and its save (gathers a burst of changes into one write).
SAVE_DELAY = 0.2
#: While changes come in, the next save waits at least this many times the last snapshot's duration.
SAVE_SPACING = 10.0
_SERVICES = ("s3", "iam", "iot", "sts")
_FORMAT = 1


def _backend_dicts() -> dict[str, Any]:
    dicts: dict[str, Any] = {name: moto.backends.get_backend(name) for name in _SERVICES}  # type: ignore[call-overload]
    dicts["local-iot-streams"] = streams_backends
    dicts["local-iot-jobs"] = jobs_backends
    return dicts


def snapshot() -> bytes:
    """Every account's and region's backends of the persisted services, pickled. Retries while another thread
    changes a dict under it (moto has no global lock)."""
    for attempt in range(5):
        try:
            state = {
                name: {account: dict(bd[account].items()) for account in list(bd.keys())}
                for name, bd in _backend_dicts().items()
            }
            return pickle.dumps({"format": _FORMAT, "state": state}, protocol=pickle.HIGHEST_PROTOCOL)
        except RuntimeError:  # "dictionary changed size during iteration"
            if attempt == 4:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")  # pragma: no cover


def restore(blob: bytes) -> None:
    """Put a snapshot back into this process's moto backends (replacing what is there)."""
    data = pickle.loads(blob)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("not a local_iot control-plane snapshot of this format")
    dicts = _backend_dicts()
    for name, accounts in data["state"].items():
        bd = dicts.get(name)
        if bd is None:
            continue
        for account, regions in accounts.items():
            for region, backend in regions.items():
                bd[account][region] = backend


def save_delay(last_snapshot_s: float) -> float:
    """How long the saver waits after a save before the next one (see the module docstring)."""
    return max(SAVE_DELAY, SAVE_SPACING * last_snapshot_s)


class StateSaver:
    """Writes snapshots to ``path`` on a thread while changes come in, spaced by ``save_delay()``."""

    def __init__(self, path: Path, lock: threading.RLock) -> None:
        self._path = path
        self._lock = lock  # held by the control plane for every request: no snapshot of a half-made change
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-iot-state-saver", daemon=True)
        self.saves = 0
        #: How long the last snapshot held the lock (pickling); the next save waits ``save_delay()`` of it.
        self.last_snapshot_s = 0.0
        self._last_end = float("-inf")  # time.monotonic() when the last save ended

    def start(self) -> StateSaver:
        self._thread.start()
        return self

    def changed(self) -> None:
        self._dirty.set()

    def save_now(self) -> None:
        with self._lock:
            began = time.monotonic()
            blob = snapshot()
            self.last_snapshot_s = time.monotonic() - began
        write_private(self._path, blob)
        self.saves += 1
        self._last_end = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join()
        self.save_now()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._stop.is_set():
                return
            # gather a burst of changes into one write, and space the saves of a large state
            due = max(time.monotonic() + SAVE_DELAY, self._last_end + save_delay(self.last_snapshot_s))
            if self._stop.wait(due - time.monotonic()):
                return  # stop() saves
            self._dirty.clear()
            try:
                self.save_now()
            except Exception:
                log.exception("could not save the control plane's state to %s", self._path)


_HEADER = "# certificateId status things (generated by local_iot from the control plane)"


def _line(certificate_id: str, status: str, things: set[str] | list[str]) -> str:
    return f"{certificate_id} {status} {','.join(sorted(things)) or '-'}"


def render_registry(account_id: str, region: str) -> str:
    """The certificate registry for the broker plugin (see the module docstring), rendered whole."""
    backend = iot_backends[account_id][region]
    things: dict[str, list[str]] = {}
    for principal_arn, thing_name in list(backend.principal_things.keys()):
        things.setdefault(principal_arn, []).append(thing_name)
    lines = [_HEADER]
    for cert in list(backend.certificates.values()):
        lines.append(_line(cert.certificate_id, cert.status, things.get(cert.arn, [])))
    return "\n".join(lines) + "\n"


_CERTIFICATE_PATH = re.compile(
    r"/(?:certificates|transfer-certificate|accept-certificate-transfer|reject-certificate-transfer"
    r"|cancel-certificate-transfer)/([^/]+)/?"
)
_NEW_CERTIFICATE_PATHS = frozenset(
    ["/certificates", "/certificate/register", "/certificate/register-no-ca", "/keys-and-certificate"]
)
_THING_PRINCIPALS_PATH = re.compile(r"/things/([^/]+)/principals/?")
_THING_PATH = re.compile(r"/things/([^/]+)/?")

RegistryEffect = (
    tuple[Literal["none", "rebuild", "new-certificates"], None]
    | tuple[Literal["certificate", "thing-deleted"], str]
    | tuple[Literal["attachment"], tuple[str, str]]
)


def registry_effect(change: ControlChange) -> RegistryEffect:
    """What a request may have changed in the registry, from its method and path (the module docstring's table).

    ``("none", None)``, ``("rebuild", None)``, ``("new-certificates", None)``, ``("certificate", id)``,
    ``("thing-deleted", thing)`` or ``("attachment", (thing, principal arn))``.
    """
    path, method = change.path, change.method
    if path.startswith("/moto-api/") and method == "POST":
        return ("rebuild", None)
    if change.service not in ("iot", "") or method in ("GET", "HEAD"):
        return ("none", None)
    if method == "POST" and path.rstrip("/") in _NEW_CERTIFICATE_PATHS:
        return ("new-certificates", None)
    if (m := _CERTIFICATE_PATH.fullmatch(path)) is not None:
        return ("certificate", m.group(1))
    if (m := _THING_PRINCIPALS_PATH.fullmatch(path)) is not None and method in ("PUT", "DELETE"):
        if not change.principal:
            return ("rebuild", None)
        return ("attachment", (m.group(1), change.principal))
    if (m := _THING_PATH.fullmatch(path)) is not None and method == "DELETE":
        return ("thing-deleted", m.group(1))
    if method == "POST" and path.rstrip("/") == "/things":  # RegisterThing (a template may make certificates)
        return ("rebuild", None)
    return ("none", None)


class RegistryWriter:
    """Keeps the registry file equal to ``render_registry(account_id, region)``, line by line (see the module
    docstring). Call ``rebuild()`` once moto's state is in place and ``apply(change)`` after every request that
    may have changed state, both under the control-plane lock."""

    def __init__(self, path: Path, account_id: str, region: str) -> None:
        self.path = path
        self._account_id = account_id
        self._region = region
        self._backend: Any = None  # the moto IoT backend the index below describes
        self._lines: dict[str, str] = {}  # certificateId -> its line, in moto's order
        self._arns: dict[str, str] = {}  # certificate ARN -> certificateId
        self._arn_of: dict[str, str] = {}  # certificateId -> certificate ARN
        self._things: dict[str, set[str]] = {}  # certificateId -> things attached
        self._certs_of: dict[str, set[str]] = {}  # thing -> certificateIds attached to it
        self._lock = threading.Lock()
        self._dirty = False
        #: How many times the file was written, and fully re-rendered (for tests and diagnostics).
        self.writes = 0
        self.rebuilds = 0

    def text(self) -> str:
        return "\n".join([_HEADER, *self._lines.values()]) + "\n"

    def rebuild(self) -> bool:
        """Re-render everything from moto's state; write the file if it changed (or was never written)."""
        with self._lock:
            self._rebuild()
            return self._flush()

    def apply(self, change: ControlChange) -> bool:
        """Bring the file up to date after ``change``; True when it was rewritten. Nothing is done (the file is
        not touched) for a request that cannot change the registry."""
        kind, arg = registry_effect(change)
        if kind == "none":
            return False
        with self._lock:
            backend = iot_backends[self._account_id][self._region]
            if kind == "rebuild" or backend is not self._backend:
                self._rebuild()
            else:
                if kind == "new-certificates":
                    self._add_new(backend)
                elif kind == "certificate":
                    assert isinstance(arg, str)
                    self._refresh(backend, arg)
                elif kind == "attachment":
                    assert isinstance(arg, tuple)
                    self._attachment(backend, *arg)
                elif kind == "thing-deleted":
                    assert isinstance(arg, str)
                    for certificate_id in list(self._certs_of.get(arg, ())):
                        self._attachment(backend, arg, self._arn_of.get(certificate_id, ""))
                if len(backend.certificates) != len(self._lines):  # something this rule did not foresee
                    log.debug(
                        "registry index out of step with moto after %s %s: rebuilding", change.method, change.path
                    )
                    self._rebuild()
            return self._flush()

    # -- internals (under self._lock) ----------------------------------------------------------------------------

    def _flush(self) -> bool:
        if not self._dirty and self.writes:  # the first call writes: a file left by an earlier run is replaced
            return False
        write_private(self.path, self.text(), durable=False)  # derived data: rebuilt at every start
        self._dirty = False
        self.writes += 1
        return True

    def _rebuild(self) -> None:
        backend = iot_backends[self._account_id][self._region]
        things: dict[str, set[str]] = {}
        for principal_arn, thing_name in list(backend.principal_things.keys()):
            things.setdefault(principal_arn, set()).add(thing_name)
        old = self._lines
        self._backend = backend
        self._lines, self._arns, self._arn_of, self._things, self._certs_of = {}, {}, {}, {}, {}
        for certificate_id, cert in list(backend.certificates.items()):
            names = things.get(cert.arn, set())
            self._arns[cert.arn] = certificate_id
            self._arn_of[certificate_id] = cert.arn
            self._things[certificate_id] = names
            for name in names:
                self._certs_of.setdefault(name, set()).add(certificate_id)
            self._lines[certificate_id] = _line(certificate_id, cert.status, names)
        self.rebuilds += 1
        if self._lines != old:
            self._dirty = True

    def _add_new(self, backend: Any) -> None:
        """The certificates moto added since the last change: the newest keys of its (insertion-ordered) dict."""
        new: list[str] = []
        for certificate_id in reversed(backend.certificates):
            if certificate_id in self._lines:
                break
            new.append(certificate_id)
        for certificate_id in reversed(new):
            self._refresh(backend, certificate_id)

    def _refresh(self, backend: Any, certificate_id: str) -> None:
        cert = backend.certificates.get(certificate_id)
        if cert is None:
            if self._lines.pop(certificate_id, None) is not None:
                self._dirty = True
            for name in self._things.pop(certificate_id, set()):
                self._forget_attachment(name, certificate_id)
            arn = self._arn_of.pop(certificate_id, None)
            if arn is not None:
                self._arns.pop(arn, None)
            return
        self._arns[cert.arn] = certificate_id
        self._arn_of[certificate_id] = cert.arn
        line = _line(certificate_id, cert.status, self._things.setdefault(certificate_id, set()))
        if self._lines.get(certificate_id) != line:
            self._lines[certificate_id] = line
            self._dirty = True

    def _attachment(self, backend: Any, thing: str, principal_arn: str) -> None:
        certificate_id = self._arns.get(principal_arn)
        if certificate_id is None:
            return  # not a certificate we list (a failed call, or a thing group / Cognito principal)
        names = self._things.setdefault(certificate_id, set())
        if (principal_arn, thing) in backend.principal_things:
            names.add(thing)
            self._certs_of.setdefault(thing, set()).add(certificate_id)
        else:
            names.discard(thing)
            self._forget_attachment(thing, certificate_id)
        self._refresh(backend, certificate_id)

    def _forget_attachment(self, thing: str, certificate_id: str) -> None:
        certs = self._certs_of.get(thing)
        if certs is not None:
            certs.discard(certificate_id)
            if not certs:
                del self._certs_of[thing]
