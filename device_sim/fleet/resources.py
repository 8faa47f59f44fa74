"""What a fleet process needs from the operating system: open files for its connections, and its resident memory.

How this works: every MQTT connection is one socket, so a fleet of N devices needs about N + a few hundred file
descriptors; ``ensure_open_files`` raises the soft ``RLIMIT_NOFILE`` up to the hard limit (allowed without
privileges) and says what to do when even the hard limit is too low. ``MemoryMeter`` reads the process's resident
set size from ``/proc/self/status`` (Linux): ``start()`` resets the kernel's high-water mark (``VmHWM``, by writing
5 to ``/proc/self/clear_refs``) and notes the current RSS; ``stop()`` reads the peak since then. Without ``/proc``
(macOS) the figures are None.

``drop_system_trust_env``: when ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are set, awscrt's TLS (s2n) parses the bundle
they name for every TLS context it creates (about 5 ms each, holding the GIL: 5 s of a 1000-device fleet's event
loop) even when the connection then replaces that trust store with its own CA. A fleet whose connections all bring
a CA runs without the two variables (``system_trust_env_dropped`` puts them back afterwards, for in-process callers
such as tests and ``device-sim demo``).

``fleet_gc``: while a fleet runs, Python's cyclic garbage collector freezes what existed before (imports, the
plan: never garbage) and runs its youngest generation every ``FLEET_GC_THRESHOLD0`` new container objects instead of
700. A fleet's per-block work makes short-lived objects that reference counting frees, so collections find next to
nothing; with the default settings a 1000-device run spent 1.25 s of its 15 s of CPU in them (0.72 s in full
collections walking every device's objects), with these 0.34 s. While devices are still connecting, what they built
(clients, engines, tasks: long-lived) is frozen too, once a second (``FLEET_GC_FREEZE_EVERY_S``) until
``freeze_until``: 10,000 devices otherwise made every collection walk millions of connection objects (24 us of GC
per block, and stalls of the event loop long enough for download timers to fire). Put back as they were when the
fleet ends; cyclic garbage made meanwhile is collected then.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FDS_PER_DEVICE",
    "FDS_RESERVED",
    "FLEET_GC_FREEZE_EVERY_S",
    "FLEET_GC_THRESHOLD0",
    "SYSTEM_TRUST_ENV",
    "MemoryMeter",
    "MemoryUse",
    "OpenFilesLimit",
    "drop_system_trust_env",
    "ensure_open_files",
    "fleet_gc",
    "system_trust_env_dropped",
]

log = logging.getLogger(__name__)

#: One socket per MQTT connection.
FDS_PER_DEVICE = 1
#: Interpreter, awscrt event loops (epoll + eventfd each), boto3's HTTP pool, thread pools, report files.
FDS_RESERVED = 256

#: Variables that make awscrt (s2n) load a CA bundle into every TLS context before our CA replaces it.
SYSTEM_TRUST_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")

#: New container objects between two collections of the youngest generation while a fleet runs (default 700).
FLEET_GC_THRESHOLD0 = 10_000
#: How often ``fleet_gc`` freezes the objects alive while devices connect.
FLEET_GC_FREEZE_EVERY_S = 1.0

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class OpenFilesLimit(Exception):
    """The process may not open enough files for the fleet; the message says how to raise the limit."""


def ensure_open_files(devices: int) -> int:
    """Make sure ``devices`` connections fit under RLIMIT_NOFILE, raising the soft limit if needed.

    Returns the soft limit in force. Raises ``OpenFilesLimit`` when even the hard limit is too low.
    """
    try:
        import resource
    except ImportError:  # not POSIX: nothing we can check
        return 0
    needed = devices * FDS_PER_DEVICE + FDS_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return int(soft)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise OpenFilesLimit(
            f"{devices} devices need about {needed} open files, but this shell allows at most {hard} "
            f"(ulimit -Hn): raise the hard limit (e.g. `ulimit -n {needed}` as root, or `nofile` in "
            "/etc/security/limits.conf, or LimitNOFILE= for a systemd service), or run fewer devices per "
            "process with --devices/--shard"
        )
    target = hard if hard != resource.RLIM_INFINITY else max(needed, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        raise OpenFilesLimit(
            f"{devices} devices need about {needed} open files and the soft limit is {soft}; raising it to "
            f"{target} failed ({exc}): run `ulimit -n {needed}` before device-sim"
        ) from exc
    log.info("raised the open files limit from %d to %d for %d devices", soft, target, devices)
    return int(target)


def drop_system_trust_env(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove ``SSL_CERT_FILE``/``SSL_CERT_DIR`` from this process's environment; the names removed.

    Only for a process whose TLS connections all bring their own CA (every fleet connection overrides the trust
    store with the manifest's root CA), and before any thread starts (the environment is process-wide). boto3 is
    not affected: it uses its own bundle (or ``AWS_CA_BUNDLE``).
    """
    env = os.environ if environ is None else environ
    removed = [name for name in SYSTEM_TRUST_ENV if name in env]
    for name in removed:
        del env[name]
    if removed:
        log.info("unset %s: every connection verifies with its own CA", " and ".join(removed))
    return removed


@contextlib.contextmanager
def system_trust_env_dropped(active: bool = True) -> Iterator[list[str]]:
    """``drop_system_trust_env`` for the duration of the block (nothing when not ``active``); the variables are
    restored afterwards. Enter it before the fleet starts threads that create TLS contexts."""
    saved = {name: os.environ[name] for name in SYSTEM_TRUST_ENV if active and name in os.environ}
    removed = drop_system_trust_env() if active else []
    try:
        yield removed
    finally:
        os.environ.update(saved)


def _status_kib(field: str) -> int | None:
    try:
        with _STATUS.open() as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_kib() -> int | None:
    """The process's resident set size now, KiB (None where /proc is missing)."""
    return _status_kib("VmRSS:")


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryUse:
    """Resident memory of the process: when the devices started, and the peak until they ended (KiB)."""

    start_kib: int
    peak_kib: int
    devices: int
    #: False when the kernel's peak could not be reset: the peak is then since the process started.
    peak_since_start: bool = True

    @property
    def growth_kib(self) -> int:
        return max(0, self.peak_kib - self.start_kib)

    @property
    def per_device_kib(self) -> float:
        return self.growth_kib / self.devices if self.devices else 0.0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "rss_start_kib": self.start_kib,
            "rss_peak_kib": self.peak_kib,
            "rss_growth_kib": self.growth_kib,
            "rss_per_device_kib": round(self.per_device_kib, 1),
            "peak_since_start": self.peak_since_start,
        }


class MemoryMeter:
    """``start()`` before the devices start, ``stop(devices)`` after they ended: a ``MemoryUse`` or None."""

    def __init__(self) -> None:
        self._start: int | None = None
        self._reset = False

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
            self._reset = True
        except OSError:
            self._reset = False
        self._start = current_rss_kib()

    def stop(self, devices: int) -> MemoryUse | None:
        peak = _status_kib("VmHWM:")
        if self._start is None or peak is None:
            return None
        return MemoryUse(
            start_kib=self._start, peak_kib=max(peak, self._start), devices=devices, peak_since_start=self._reset
        )


_gc_users = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def fleet_gc(freeze_until: float | None = None, *, every_s: float = FLEET_GC_FREEZE_EVERY_S) -> Iterator[None]:
    """The garbage collector's fleet settings (see the module docstring) for the duration of the block. Nested or
    concurrent uses in one process (two fleets in one loop) share them; the last one out restores the settings.
    ``freeze_until`` (the running loop's clock): freeze again every ``every_s`` until then (the end of the
    connect phase)."""
    global _gc_users, _gc_saved
    if _gc_users == 0:
        _gc_saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(FLEET_GC_THRESHOLD0, _gc_saved[0]), _gc_saved[1], _gc_saved[2])
    _gc_users += 1
    timer: asyncio.TimerHandle | None = None
    if freeze_until is not None:
        loop = asyncio.get_running_loop()

        def freeze_again() -> None:
            nonlocal timer
            gc.freeze()
            timer = loop.call_later(every_s, freeze_again) if loop.time() < freeze_until else None

        timer = loop.call_later(every_s, freeze_again)
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        _gc_users -= 1
        if _gc_users == 0 and _gc_saved is not None:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()
            _gc_saved = None
