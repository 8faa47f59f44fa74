"""The device's vocabulary: download settings, sink kinds, results and the failure a device reports."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from device_sim.engine.profiles import ProfileKind, ProfileSettings
from device_sim.engine.types import EngineSettings
from device_sim.protocol import Format
from device_sim.results.metrics import DeviceMetrics, FailureKind, failure_reason

__all__ = ["DeviceFailure", "DeviceResult", "DownloadSettings", "FileResult", "SinkKind"]


class SinkKind(StrEnum):
    """Where the blocks of a download go."""

    MEMORY = "memory"
    FILE = "file"  # a part file beside --out, resumable with --state-dir
    DIGEST = "digest"  # a streaming SHA-256; only out-of-order blocks are held


@dataclass(frozen=True, kw_only=True, slots=True)
class DownloadSettings:
    """How a device downloads (the CLI's download options)."""

    format: Format = Format.CBOR
    block_size: int = 4096
    blocks_per_request: int | None = None
    inflight: int = 1
    request_timeout: float | None = None  # None: adaptive idle timeout
    #: Lower bound of the adaptive idle timeout; None: the engine's (0.2 s, and never below SRTT * 1.25).
    min_timeout: float | None = None
    max_retries: int = 32
    send_version: bool = True
    client_token: bool = True
    file_ids: tuple[int, ...] | None = None  # None: every file of the stream
    describe_timeout: float = 5.0
    describe_retries: int = 5
    sink: SinkKind = SinkKind.DIGEST
    out: Path | None = None  # with sink FILE: the final path (several files: <out>.<fileId>)
    state_dir: Path | None = None  # with sink FILE: resumable
    verify_s3: bool = True
    expect_sha256: str | None = None
    #: Which client the device runs (docs/profiles.md): this project's engine or a real library's strategy.
    profile: ProfileKind = ProfileKind.DEVICE_SIM
    #: Library profiles only (None: the library's default): the fixed wait before re-requesting (ms), the momentum
    #: limit, the device's work per block (ms), the blocks between job progress updates.
    request_wait_ms: float | None = None
    momentum: int | None = None
    block_process_ms: float = 0.0
    status_frequency: int | None = None
    #: The OTA agent's bitmap buffer (otaconfigMAX_BLOCK_BITMAP_SIZE, bytes); None: its default, 128.
    max_bitmap_bytes: int | None = None
    #: Blocks a profile's device can hold while it works (otaconfigMAX_NUM_OTA_DATA_BUFFERS); None: no limit.
    data_buffers: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sink", SinkKind(self.sink))
        object.__setattr__(self, "format", Format(self.format))
        object.__setattr__(self, "profile", ProfileKind(self.profile))

    def profile_settings(self) -> ProfileSettings | None:
        """The library profile's parameters (ProfileRefused when it cannot take them); None for device-sim."""
        if self.profile is ProfileKind.DEVICE_SIM:
            return None
        return ProfileSettings.for_profile(
            self.profile,
            block_size=self.block_size,
            blocks_per_request=self.blocks_per_request,
            request_wait=None if self.request_wait_ms is None else self.request_wait_ms / 1000,
            momentum=self.momentum,
            block_process=self.block_process_ms / 1000,
            status_frequency=self.status_frequency,
            json=self.format is Format.JSON,
            bitmap_max_bytes=self.max_bitmap_bytes,
            data_buffers=self.data_buffers,
        )

    def engine_settings(self, token: str | None, *, report_sends: bool = False) -> EngineSettings:
        """The engine's settings; ``report_sends`` when the caller tells the engine when each request left."""
        settings = EngineSettings(
            block_size=self.block_size,
            blocks_per_request=self.blocks_per_request,
            inflight=self.inflight,
            request_timeout=self.request_timeout,
            max_retries=self.max_retries,
            send_version=self.send_version,
            client_token=token,
            report_sends=report_sends,
        )
        return settings if self.min_timeout is None else replace(settings, min_timeout=self.min_timeout)

    @property
    def label(self) -> str:
        profile = self.profile_settings()
        if profile is not None:
            return f"{self.block_size}B {self.format.value} {profile.label}"
        parts = [f"{self.block_size}B", self.format.value]
        if self.blocks_per_request:
            parts.append(f"x{self.blocks_per_request}")
        if self.inflight != 1:
            parts.append(f"inflight {self.inflight}")
        return " ".join(parts)


class DeviceFailure(Exception):
    """A device could not finish; ``kind``/``detail`` make the ``failure_reason``."""

    def __init__(self, kind: FailureKind, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail
        self.message = message

    @property
    def reason(self) -> str:
        return failure_reason(self.kind, self.detail)


@dataclass(frozen=True, kw_only=True, slots=True)
class FileResult:
    """One downloaded file: ``seconds`` is the transfer (first request to last block), verification apart."""

    file_id: int
    file_size: int
    sha256: str | None
    verified: bool
    seconds: float
    verify_seconds: float = 0.0
    path: str | None = None  # where a verified file sink was committed
    verdict_message: str = ""
    first_bad_block: int | None = None
    resumed_blocks: int = 0  # blocks trusted from a previous run (--state-dir)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceResult:
    thing_name: str
    stream_id: str
    stream_version: int | None
    files: tuple[FileResult, ...]
    metrics: DeviceMetrics
    failure: DeviceFailure | None = None
    file_ids: tuple[int, ...] = ()  # the files chosen from the description (also when one failed)

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.files) and all(f.verified for f in self.files)
