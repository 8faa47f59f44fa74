"""The control plane's state on disk, and the certificate registry the broker plugin follows.

How this works:
- ``snapshot()`` pickles moto's S3, IAM and IoT backends (buckets with every object version and its bytes, roles
  and policies, things, certificates, IoT policies and attachments) and local_iot's stream backend (streams and
  IoT tags) into one blob; ``restore()`` puts them back into this process's moto before the control plane serves.
  ``StateSaver`` writes the blob to ``<state_dir>/control-plane.pickle`` (atomically, 0600) within
  ``SAVE_DELAY`` of every change and once more on stop, so a SIGKILL loses at most the last ``SAVE_DELAY`` seconds.
  The file is only ever read by local_iot from its own 0700 state dir (pickle runs code: never load one you did
  not write).
- ``render_registry()`` lists every certificate of the account and region as
  ``<certificateId> <status> <thing>,<thing>...`` (certificateId = SHA-256 of the DER, as on AWS and as the
  plugin computes it); ``RegistryWriter`` rewrites ``<state_dir>/broker/registry`` (atomically) whenever that text
  changes, and the plugin re-reads it within ~50 ms.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import moto.backends
from moto.iot.models import iot_backends

from .files import write_private
from .jobs.backend import jobs_backends
from .streams_backend import streams_backends

__all__ = ["SAVE_DELAY", "STATE_FILE", "RegistryWriter", "StateSaver", "render_registry", "restore", "snapshot"]

log = logging.getLogger(__name__)

STATE_FILE = "control-plane.pickle"
SAVE_DELAY = 0.2
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


class StateSaver:
    """Writes snapshots to ``path`` on a thread, at most every SAVE_DELAY seconds while changes come in."""

    def __init__(self, path: Path, lock: threading.RLock) -> None:
        self._path = path
        self._lock = lock  # held by the control plane for every request: no snapshot of a half-made change
        self._dirty = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="local-iot-state-saver", daemon=True)
        self.saves = 0

    def start(self) -> StateSaver:
        self._thread.start()
        return self

    def changed(self) -> None:
        self._dirty.set()

    def save_now(self) -> None:
        with self._lock:
            blob = snapshot()
        write_private(self._path, blob)
        self.saves += 1

    def stop(self) -> None:
        self._stopping = True
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join()
        self.save_now()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopping:
                return
            time.sleep(SAVE_DELAY)  # gather a burst of changes into one write
            self._dirty.clear()
            if self._stopping:  # stop() sets the flag before the event: its set() is never lost by this clear()
                return
            try:
                self.save_now()
            except Exception:
                log.exception("could not save the control plane's state to %s", self._path)


def render_registry(account_id: str, region: str) -> str:
    """The certificate registry for the broker plugin (see the module docstring)."""
    backend = iot_backends[account_id][region]
    things: dict[str, list[str]] = {}
    for principal_arn, thing_name in list(backend.principal_things.keys()):
        things.setdefault(principal_arn, []).append(thing_name)
    lines = ["# certificateId status things (generated by local_iot from the control plane)"]
    for cert in list(backend.certificates.values()):
        names = ",".join(sorted(things.get(cert.arn, []))) or "-"
        lines.append(f"{cert.certificate_id} {cert.status} {names}")
    return "\n".join(lines) + "\n"


class RegistryWriter:
    """Rewrites the registry file when its text changes (call ``update()`` after control-plane changes)."""

    def __init__(self, path: Path, render: Callable[[], str]) -> None:
        self.path = path
        self._render = render
        self._last: str | None = None
        self._lock = threading.Lock()

    def update(self) -> bool:
        with self._lock:
            text = self._render()
            if text == self._last:
                return False
            write_private(self.path, text)
            self._last = text
            return True
