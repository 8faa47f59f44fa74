"""Mutable collectors a device task owns while it runs; their results go into ``metrics.DeviceMetrics``.

Not thread-safe by design: each device's task (on the event loop) is the only writer.
"""

from __future__ import annotations

from typing import Any

from device_sim.engine.types import EngineStats
from device_sim.protocol.limits import metered_messages
from device_sim.results.metrics import MAX_PROGRESS_SAMPLES, thin_samples

__all__ = ["MessageMeter", "ProgressSampler", "metrics_counts"]


def metrics_counts(stats: EngineStats) -> dict[str, Any]:
    """The ``DeviceMetrics`` fields that come from the download counters: the one place they are mapped."""
    return {
        "bytes": stats.bytes_received,
        "blocks": stats.blocks_received,
        "duplicates": stats.duplicates,
        "invalid_blocks": stats.invalid_blocks,
        "re_requests": stats.re_requests,
        "requests": stats.requests_sent,
        "timeouts": stats.timeouts,
        "rejections": tuple(sorted(stats.rejections.items())),
        "stalls": stats.stalls,
        "stall_s": stats.stall_s,
        "aborts": stats.aborts,
        "lost_blocks": stats.lost_blocks,
        "cut_answers": stats.cut_answers,
    }


class MessageMeter:
    """Counts metered messages of one device (mutable; owned by the task that runs the device)."""

    __slots__ = ("messages_in", "messages_out")

    def __init__(self) -> None:
        self.messages_out = 0
        self.messages_in = 0

    def sent(self, payload_bytes: int, topic_bytes: int) -> None:
        """Count one publish of the device."""
        self.messages_out += metered_messages(payload_bytes, topic_bytes)

    def received(self, payload_bytes: int, topic_bytes: int) -> None:
        """Count one message delivered to the device."""
        self.messages_in += metered_messages(payload_bytes, topic_bytes)


class ProgressSampler:
    """Keeps a bounded series of ``(t, bytes)`` samples of one device while it downloads (mutable).

    Samples closer than ``interval_s`` to the previous one are skipped; when the buffer fills, the interval at
    least doubles and the samples are thinned to it, so a download of any length ends with at most ``cap``
    samples spread evenly over time (the latest sample is always kept).
    """

    __slots__ = ("_cap", "_interval_s", "_last", "_samples")

    def __init__(self, *, interval_s: float = 0.05, cap: int = MAX_PROGRESS_SAMPLES) -> None:
        if cap < 4:
            raise ValueError(f"cap must be >= 4, got {cap}")
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self._cap = cap
        self._interval_s = interval_s
        self._samples: list[tuple[float, int]] = []
        self._last: tuple[float, int] | None = None

    def add(self, t: float, total_bytes: int) -> None:
        """Record that the device had ``total_bytes`` at time ``t`` (seconds since the run started)."""
        self._last = (t, total_bytes)
        if self._samples and t - self._samples[-1][0] < self._interval_s:
            return
        self._samples.append((t, total_bytes))
        if len(self._samples) > self._cap - 1:  # keep one slot for the final sample
            self._compact()

    def _compact(self) -> None:
        """Keep samples at least a doubled interval apart (at most about cap / 2 remain, evenly spaced)."""
        span = self._samples[-1][0] - self._samples[0][0]
        self._interval_s = max(self._interval_s * 2, 2 * span / self._cap)
        kept = [self._samples[0]]
        for sample in self._samples[1:]:
            if sample[0] - kept[-1][0] >= self._interval_s:
                kept.append(sample)
        self._samples = kept

    def samples(self) -> tuple[tuple[float, int], ...]:
        """The samples, including the most recent one even if it was skipped."""
        out = list(self._samples)
        if self._last is not None and (not out or out[-1] != self._last):
            out.append(self._last)
        return thin_samples(out, self._cap)
