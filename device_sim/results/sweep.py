"""The result of a block-size sweep: one ``SweepPoint`` per setting, and which setting is best.

Ranking rules (deterministic):

- A point *qualifies* when it had devices and none failed. Only qualifying points can win; when no point
  qualifies (every setting had failures), all points compete and the one with the smallest share of failed
  devices wins, the other keys breaking ties as usual.
- ``best_by_time``: the shortest fleet wall time (``summary.wall_s``), then the lower p90 download time, then the
  lower metered cost per device.
- ``best_by_cost``: the fewest metered messages per device (cost is proportional to them at one price), then the
  shorter wall time.
- ``best_by_median`` / ``best_by_p90``: the lowest median (p50) / p90 of the devices' download times (the spread a
  rollout sees), then the other of the two, then the cost.
- Remaining ties go to the smaller block size, then fewer blocks per request, then fewer requests in flight.

Compare points with the same number of devices: wall time is not normalised per device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from device_sim.results.metrics import FleetSummary, MetricsFormatError

__all__ = [
    "SweepPoint",
    "best_by_cost",
    "best_by_median",
    "best_by_p90",
    "best_by_time",
    "format_size",
    "recommended_config",
]


def format_size(n: int) -> str:
    """``4096`` -> ``"4KiB"``, ``1536`` -> ``"1536B"``, ``1048576`` -> ``"1MiB"``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepPoint:
    """One setting of a sweep and the summary of the fleet run with it (None: the run's default)."""

    block_size: int
    blocks_per_request: int | None = None
    inflight: int | None = None
    summary: FleetSummary
    #: The device profile of the run (docs/profiles.md); None: this project's engine.
    profile: str | None = None

    def __post_init__(self) -> None:
        for name in ("block_size", "blocks_per_request", "inflight"):
            value = getattr(self, name)
            if value is None and name != "block_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MetricsFormatError(f"{name} must be a positive integer, got {value!r}")

    @property
    def label(self) -> str:
        """E.g. ``"4KiB x16 inflight 2"`` (parts left out when not set)."""
        parts = [format_size(self.block_size)]
        if self.blocks_per_request is not None:
            parts.append(f"x{self.blocks_per_request}")
        if self.inflight is not None:
            parts.append(f"inflight {self.inflight}")
        return " ".join(parts)

    @property
    def retries(self) -> int:
        """Requests sent again for blocks that did not arrive."""
        return self.summary.re_requests

    @property
    def metered_per_device(self) -> float:
        return self.summary.metered_messages / self.summary.devices if self.summary.devices else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "block_size": self.block_size,
            "blocks_per_request": self.blocks_per_request,
            "inflight": self.inflight,
            "profile": self.profile,
            "summary": self.summary.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepPoint:
        if not isinstance(data, Mapping) or "block_size" not in data or "summary" not in data:
            raise MetricsFormatError(f"a sweep point needs block_size and summary, got {data!r}")
        return cls(
            block_size=data["block_size"],
            blocks_per_request=data.get("blocks_per_request"),
            inflight=data.get("inflight"),
            summary=FleetSummary.from_dict(data["summary"]),
            profile=data.get("profile"),
        )


def _setting_key(p: SweepPoint) -> tuple[int, int, int]:
    return (p.block_size, p.blocks_per_request or 0, p.inflight or 0)


def _failed_share(p: SweepPoint) -> float:
    return p.summary.failed / p.summary.devices if p.summary.devices else 1.0


def _p90(p: SweepPoint) -> float:
    return p.summary.download_s.p90 if p.summary.download_s else math.inf


def _p50(p: SweepPoint) -> float:
    return p.summary.download_s.p50 if p.summary.download_s else math.inf


def _best(points: Sequence[SweepPoint], key: Callable[[SweepPoint], tuple[Any, ...]]) -> SweepPoint | None:
    if not points:
        return None
    qualifying = [p for p in points if p.summary.all_verified]
    if qualifying:
        return min(qualifying, key=lambda p: (*key(p), _setting_key(p)))
    return min(points, key=lambda p: (_failed_share(p), *key(p), _setting_key(p)))


def best_by_time(points: Sequence[SweepPoint]) -> SweepPoint | None:
    """The fastest setting (see the module docstring for the rules); None for no points."""
    return _best(points, lambda p: (p.summary.wall_s, _p90(p), p.metered_per_device))


def best_by_cost(points: Sequence[SweepPoint]) -> SweepPoint | None:
    """The cheapest setting by metered messages per device (see the module docstring); None for no points."""
    return _best(points, lambda p: (p.metered_per_device, p.summary.wall_s))


def best_by_median(points: Sequence[SweepPoint]) -> SweepPoint | None:
    """The setting with the lowest median download time (see the module docstring); None for no points."""
    return _best(points, lambda p: (_p50(p), _p90(p), p.metered_per_device))


def best_by_p90(points: Sequence[SweepPoint]) -> SweepPoint | None:
    """The setting with the lowest p90 download time (see the module docstring); None for no points."""
    return _best(points, lambda p: (_p90(p), _p50(p), p.metered_per_device))


def recommended_config(
    point: SweepPoint,
    *,
    request_wait_ms: float | None = None,
    momentum: int | None = None,
    max_bitmap_bytes: int | None = None,
) -> list[str]:
    """The chosen setting written the way the device's library is configured (one line each).

    ``request_wait_ms`` / ``momentum``: the values the sweep ran with (None: the library's default is printed).
    """
    bs, n = point.block_size, point.blocks_per_request
    profile = point.profile or "device-sim"
    if profile in ("freertos-ota", "freertos-ota-demo"):
        log2 = bs.bit_length() - 1
        lines = [f"#define otaconfigLOG2_FILE_BLOCK_SIZE       {log2}UL  /* {format_size(bs)} */"]
        lines.append(f"#define otaconfigMAX_NUM_BLOCKS_REQUEST     {n or (8 if profile.endswith('demo') else 1)}U")
        lines.append(f"#define otaconfigFILE_REQUEST_WAIT_MS       {round(request_wait_ms or 10000)}U")
        lines.append(f"#define otaconfigMAX_NUM_REQUEST_MOMENTUM   {momentum or 32}U")
        if max_bitmap_bytes is not None:
            lines.append(f"#define otaconfigMAX_BLOCK_BITMAP_SIZE      {max_bitmap_bytes}U")
        return lines
    if profile == "mfs":
        return [f"#define mqttFileDownloader_CONFIG_BLOCK_SIZE    {bs}U"]
    if profile == "rustot":
        wait = round(request_wait_ms or 5000)
        return [
            f"ota::config::Config {{ block_size: {bs}, request_wait: Duration::from_millis({wait}), "
            f"max_request_momentum: {momentum or 3}, ..Default::default() }}  // {n or 16} blocks per request"
        ]
    parts = [f"--block-size {format_size(bs)}"]
    if n is not None:
        parts.append(f"--blocks-per-request {n}")
    if point.inflight is not None:
        parts.append(f"--inflight {point.inflight}")
    return ["device-sim " + " ".join(parts)]
