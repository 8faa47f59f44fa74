"""Device profiles: real device libraries' request strategies as sans-IO machines (docs/profiles.md).

``make_machine`` builds the machine a download runs: this project's ``DownloadEngine`` for ``device-sim``, or the
profile machine of a library (``FreeRtosOtaMachine``, ``MfsMachine``, ``RustotMachine``), all with the same inputs
and actions (``DownloadMachine``).
"""

from __future__ import annotations

from collections.abc import Iterable

from device_sim.engine.profiles.base import (
    FREERTOS_MAX_BITMAP_BYTES,
    RUSTOT_WINDOW,
    DownloadMachine,
    LibraryMachine,
    PlannedRequest,
    ProfileKind,
    ProfileRefused,
    ProfileSettings,
)
from device_sim.engine.profiles.freertos import FreeRtosOtaMachine
from device_sim.engine.profiles.mfs import MfsMachine
from device_sim.engine.profiles.rustot import RustotMachine

__all__ = [
    "FREERTOS_MAX_BITMAP_BYTES",
    "RUSTOT_WINDOW",
    "DownloadMachine",
    "FreeRtosOtaMachine",
    "LibraryMachine",
    "MfsMachine",
    "PlannedRequest",
    "ProfileKind",
    "ProfileRefused",
    "ProfileSettings",
    "RustotMachine",
    "make_profile_machine",
]

_MACHINES: dict[ProfileKind, type[LibraryMachine]] = {
    ProfileKind.FREERTOS_OTA: FreeRtosOtaMachine,
    ProfileKind.FREERTOS_OTA_DEMO: FreeRtosOtaMachine,
    ProfileKind.MFS: MfsMachine,
    ProfileKind.RUSTOT: RustotMachine,
}


def make_profile_machine(
    settings: ProfileSettings,
    *,
    file_id: int,
    file_size: int,
    now: float,
    have: Iterable[int] | bytes | None = None,
) -> LibraryMachine:
    """The machine of ``settings.kind`` for one file (ProfileRefused when the library cannot take the file)."""
    return _MACHINES[settings.kind](file_id=file_id, file_size=file_size, now=now, settings=settings, have=have)
