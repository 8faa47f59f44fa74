"""Per-device measurements of a fleet run and their aggregate.

How this works: the fleet runner produces one immutable ``DeviceMetrics`` per device (counting messages with
``collect.MessageMeter`` and sampling progress with ``collect.ProgressSampler``). ``aggregate`` turns the
records of one run into a ``FleetSummary``: counts, failures by reason, percentile distributions, throughput,
totals and a cost estimate from metered messages (``sweep_result`` ranks the summaries of a sweep). Everything
here is pure: no I/O, no clock, no logging.

Percentiles use the **nearest-rank** method: for ``n`` sorted values ``x[1..n]`` the p-th percentile is
``x[ceil(p / 100 * n)]`` (always an observed value; p100 is the maximum).

Cost: AWS bills messaging in 5 KB steps of payload + topic, every message sent or received
(``device_sim.protocol.limits.metered_messages``); ``cost_usd`` multiplies by the price per million.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from device_sim.protocol.limits import DEFAULT_PRICE_PER_MILLION_MESSAGES_USD

__all__ = [
    "DEFAULT_PRICE_PER_MILLION_MESSAGES_USD",
    "MAX_PROGRESS_SAMPLES",
    "DeviceMetrics",
    "Distribution",
    "FailureKind",
    "FleetSummary",
    "MetricsFormatError",
    "SettingValue",
    "aggregate",
    "aggregate_progress",
    "cost_usd",
    "distribution",
    "failure_reason",
    "percentile",
    "thin_samples",
]

#: A ``DeviceMetrics`` keeps at most this many progress samples (older ones are thinned out evenly).
MAX_PROGRESS_SAMPLES = 100
#: Wall times below this (a clock's resolution) give a throughput of 0 instead of a meaningless huge number.
MIN_WALL_S = 1e-6
#: Bytes in a megabyte for throughput figures (MB/s, decimal like network rates).
MEGABYTE = 1_000_000

SettingValue = str | int | float | bool | None
Pairs = tuple[tuple[str, int], ...]


class MetricsFormatError(ValueError):
    """A metrics record or summary that is not valid (bad value, or a malformed dict from another worker)."""


class FailureKind(StrEnum):
    """The first part of ``DeviceMetrics.failure_reason`` (``"rejected:ETagMismatch"`` has kind ``rejected``)."""

    TIMEOUT = "timeout"  # the engine gave up after requests with no block between them
    REJECTED = "rejected"  # the service rejected a request; the AWS code follows the colon
    VERIFY_MISMATCH = "verify-mismatch"  # the file arrived but its digest differs from the source
    CONNECT = "connect"  # the MQTT connection could not be established
    DISCONNECTED = "disconnected"  # the connection dropped and could not be resumed
    CANCELLED = "cancelled"  # the run was stopped (Ctrl-C, deadline) before the device finished
    ERROR = "error"  # anything else (a bug or an unexpected exception)


def failure_reason(kind: FailureKind, detail: str | None = None) -> str:
    """The ``failure_reason`` text: ``"timeout"``, ``"rejected:ETagMismatch"`` ..."""
    return f"{kind.value}:{detail}" if detail else kind.value


def cost_usd(messages: int, price_per_million: float = DEFAULT_PRICE_PER_MILLION_MESSAGES_USD) -> float:
    """US dollars for ``messages`` metered messages at ``price_per_million`` (default: the public list price)."""
    if messages < 0:
        raise ValueError(f"messages must be >= 0, got {messages}")
    if not math.isfinite(price_per_million) or price_per_million < 0:
        raise ValueError(f"price_per_million must be a finite number >= 0, got {price_per_million}")
    return messages * price_per_million / 1_000_000


def thin_samples(samples: Sequence[tuple[float, int]], cap: int) -> tuple[tuple[float, int], ...]:
    """At most ``cap`` samples, evenly spread, always keeping the first and the last."""
    if len(samples) <= cap:
        return tuple(samples)
    if cap == 1:
        return (samples[-1],)
    last = len(samples) - 1
    picked = sorted({round(k * last / (cap - 1)) for k in range(cap)})
    return tuple(samples[k] for k in picked)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MetricsFormatError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _check_seconds(name: str, value: object, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise MetricsFormatError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _check_text(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise MetricsFormatError(f"{name} must be text or null, got {value!r}")
    return value


def _pairs(name: str, value: object) -> Pairs:
    """Normalise a mapping or an iterable of ``(code, count)`` pairs to a tuple sorted by code, zeros dropped."""
    items: Iterable[Any]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise MetricsFormatError(f"{name} must be a mapping of code -> count, got {value!r}")
    merged: Counter[str] = Counter()
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[0], str) or not item[0]:
            raise MetricsFormatError(f"{name} entries must be (non-empty code, count) pairs, got {item!r}")
        merged[item[0]] += _check_count(f"{name}[{item[0]!r}]", item[1])
    return tuple(sorted((code, n) for code, n in merged.items() if n))


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceMetrics:
    """What one device did in one run. Times are seconds; ``started_at``/``ended_at`` count from the run start.

    ``bytes`` and ``blocks`` count accepted file data (duplicates and invalid blocks are counted apart).
    ``metered_messages_out``/``_in`` are metered units (5 KB steps) of the device's publishes and of the messages
    it received. A device is either ``verified`` or has a ``failure_reason`` (see ``FailureKind``), never both.
    ``rejections`` accepts a mapping or pairs and is stored as ``(code, count)`` pairs sorted by code;
    ``progress`` holds at most ``MAX_PROGRESS_SAMPLES`` ``(t, bytes)`` samples (more are thinned out evenly).
    """

    thing_name: str
    settings: str = ""
    connect_s: float | None = None
    first_block_s: float | None = None
    download_s: float | None = None
    bytes: int = 0
    blocks: int = 0
    duplicates: int = 0
    invalid_blocks: int = 0
    re_requests: int = 0
    requests: int = 0
    timeouts: int = 0
    rejections: Pairs = ()
    disconnects: int = 0
    #: Device profiles (docs/profiles.md): request waits that expired, the time they cost after the last block,
    #: momentum aborts, blocks missing when a wait expired, and waits whose missing blocks were an answer's tail.
    stalls: int = 0
    stall_s: float = 0.0
    aborts: int = 0
    lost_blocks: int = 0
    cut_answers: int = 0
    verified: bool = False
    failure_reason: str | None = None
    failure_message: str | None = None
    sha256: str | None = None
    metered_messages_out: int = 0
    metered_messages_in: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    progress: tuple[tuple[float, int], ...] = field(default=())
    #: Devices that followed an OTA job (``fleet --jobs``, docs/ota.md): the job, its execution's final status
    #: (SUCCEEDED, FAILED, CANCELED, NO_JOB...) and the reason the device gave or found. None otherwise.
    job_id: str | None = None
    job_status: str | None = None
    job_reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.thing_name, str) or not self.thing_name:
            raise MetricsFormatError(f"thing_name must be non-empty text, got {self.thing_name!r}")
        if not isinstance(self.settings, str):
            raise MetricsFormatError(f"settings must be a text label, got {self.settings!r}")
        for name in ("connect_s", "first_block_s", "download_s"):
            object.__setattr__(self, name, _check_seconds(name, getattr(self, name)))
        object.__setattr__(self, "stall_s", _check_seconds("stall_s", self.stall_s, optional=False))
        for name in _COUNT_FIELDS:
            _check_count(name, getattr(self, name))
        object.__setattr__(self, "rejections", _pairs("rejections", self.rejections))
        if not isinstance(self.verified, bool):
            raise MetricsFormatError(f"verified must be true or false, got {self.verified!r}")
        for name in ("failure_reason", "failure_message", "sha256", "job_id", "job_status", "job_reason"):
            _check_text(name, getattr(self, name))
        if self.verified == (self.failure_reason is not None):
            raise MetricsFormatError(
                f"device {self.thing_name}: give a failure_reason exactly when the device is not verified "
                f"(verified={self.verified}, failure_reason={self.failure_reason!r})"
            )
        started = _check_seconds("started_at", self.started_at, optional=False)
        ended = _check_seconds("ended_at", self.ended_at, optional=False)
        assert started is not None and ended is not None
        if ended < started:
            raise MetricsFormatError(f"ended_at ({ended}) is before started_at ({started})")
        object.__setattr__(self, "started_at", started)
        object.__setattr__(self, "ended_at", ended)
        object.__setattr__(self, "progress", _progress(self.progress))

    @property
    def rejections_by_code(self) -> dict[str, int]:
        return dict(self.rejections)

    @property
    def rejected(self) -> int:
        """Total rejections of all codes."""
        return sum(n for _, n in self.rejections)

    @property
    def metered_messages(self) -> int:
        return self.metered_messages_out + self.metered_messages_in

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (rejections as an object, progress as a list of ``[t, bytes]``)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _FIELD_NAMES}
        out["rejections"] = dict(self.rejections)
        out["progress"] = [[t, b] for t, b in self.progress]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceMetrics:
        """Inverse of ``to_dict``. Unknown keys are ignored (newer workers); missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise MetricsFormatError(f"a device record must be an object, got {type(data).__name__}")
        if "thing_name" not in data:
            raise MetricsFormatError("a device record needs thing_name")
        return cls(**{name: data[name] for name in _FIELD_NAMES if name in data})


def _progress(value: object) -> tuple[tuple[float, int], ...]:
    if not isinstance(value, list | tuple):
        raise MetricsFormatError(f"progress must be a list of (t, bytes) samples, got {value!r}")
    samples: list[tuple[float, int]] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise MetricsFormatError(f"a progress sample must be a (t, bytes) pair, got {item!r}")
        t = _check_seconds("progress time", item[0], optional=False)
        assert t is not None
        samples.append((t, _check_count("progress bytes", item[1])))
    samples.sort()
    return thin_samples(samples, MAX_PROGRESS_SAMPLES)


_FIELD_NAMES: tuple[str, ...] = tuple(DeviceMetrics.__dataclass_fields__)
_COUNT_FIELDS = (
    "bytes",
    "blocks",
    "duplicates",
    "invalid_blocks",
    "re_requests",
    "requests",
    "timeouts",
    "disconnects",
    "stalls",
    "aborts",
    "lost_blocks",
    "cut_answers",
    "metered_messages_out",
    "metered_messages_in",
)


def percentile(sorted_values: Sequence[float], p: int) -> float:
    """Nearest-rank p-th percentile (0 < p <= 100) of values sorted ascending: ``x[ceil(p/100 * n)]``."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError(f"p must be in 1..100, got {p}")
    rank = -(-p * len(sorted_values) // 100)  # integer ceil, no float rounding
    return sorted_values[rank - 1]


@dataclass(frozen=True, kw_only=True, slots=True)
class Distribution:
    """Count, min, nearest-rank p50/p90/p99, max and mean of a set of durations (seconds)."""

    count: int
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Distribution:
        try:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise MetricsFormatError(f"bad distribution {data!r}: {exc}") from exc


def distribution(values: Iterable[float | None]) -> Distribution | None:
    """The distribution of the values that are not None, or None when there are none."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    return Distribution(
        count=len(xs),
        min=xs[0],
        p50=percentile(xs, 50),
        p90=percentile(xs, 90),
        p99=percentile(xs, 99),
        max=xs[-1],
        mean=math.fsum(xs) / len(xs),
    )


def aggregate_progress(records: Iterable[DeviceMetrics], *, max_points: int = 400) -> list[tuple[float, int]]:
    """Fleet bytes over time: at each sample time, the sum of every device's latest sampled bytes.

    Returns at most ``max_points`` ``(t, bytes)`` points, evenly thinned, first and last kept.
    """
    deltas: Counter[float] = Counter()
    for rec in records:
        previous = 0
        for t, b in rec.progress:
            deltas[t] += b - previous
            previous = b
    points: list[tuple[float, int]] = []
    total = 0
    for t in sorted(deltas):
        total += deltas[t]
        points.append((t, total))
    return list(thin_samples(points, max_points))


def _settings(value: object) -> tuple[tuple[str, SettingValue], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    if not isinstance(items, Iterable):
        raise MetricsFormatError(f"settings must be a mapping of name -> value, got {value!r}")
    out: list[tuple[str, SettingValue]] = []
    for item in items:
        if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[0], str):
            raise MetricsFormatError(f"settings entries must be (name, value) pairs, got {item!r}")
        name, setting = item
        if setting is not None and not isinstance(setting, str | int | float | bool):
            raise MetricsFormatError(f"setting {name!r} must be text, a number, true/false or null, got {setting!r}")
        if isinstance(setting, float) and not math.isfinite(setting):
            raise MetricsFormatError(f"setting {name!r} must be finite, got {setting!r}")
        out.append((name, setting))
    return tuple(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetSummary:
    """The aggregate of one fleet run (see ``aggregate``). ``settings`` keeps the caller's order."""

    settings: tuple[tuple[str, SettingValue], ...] = ()
    devices: int
    verified: int
    failed: int
    #: ``(failure_reason, count)``, most frequent first, then by name.
    failures_by_reason: Pairs = ()
    wall_s: float
    connect_s: Distribution | None = None
    first_block_s: Distribution | None = None
    download_s: Distribution | None = None
    #: File bytes of verified devices only (goodput) and of all devices.
    bytes_verified: int = 0
    bytes_total: int = 0
    #: ``bytes_verified / wall_s`` in MB/s (1 MB = 1e6 bytes); 0 when ``wall_s`` is (about) 0.
    throughput_mb_s: float = 0.0
    blocks: int = 0
    duplicates: int = 0
    invalid_blocks: int = 0
    re_requests: int = 0
    requests: int = 0
    timeouts: int = 0
    disconnects: int = 0
    #: Device profiles (see DeviceMetrics): sums over the devices.
    stalls: int = 0
    stall_s: float = 0.0
    aborts: int = 0
    lost_blocks: int = 0
    cut_answers: int = 0
    rejections: Pairs = ()
    metered_messages_out: int = 0
    metered_messages_in: int = 0
    price_per_million_usd: float = DEFAULT_PRICE_PER_MILLION_MESSAGES_USD
    cost_usd: float = 0.0
    #: ``(final job execution status, devices)`` of devices that followed an OTA job, by status (docs/ota.md).
    executions_by_status: Pairs = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _settings(self.settings))
        object.__setattr__(self, "rejections", _pairs("rejections", self.rejections))
        object.__setattr__(self, "executions_by_status", _pairs("executions_by_status", self.executions_by_status))
        failures = _pairs("failures_by_reason", self.failures_by_reason)
        object.__setattr__(self, "failures_by_reason", tuple(sorted(failures, key=lambda kv: (-kv[1], kv[0]))))
        if self.verified + self.failed != self.devices:
            raise MetricsFormatError(f"verified ({self.verified}) + failed ({self.failed}) != devices ({self.devices})")

    @property
    def all_verified(self) -> bool:
        """True when every device verified (and there was at least one): the CLI's exit status."""
        return self.devices > 0 and self.failed == 0

    @property
    def metered_messages(self) -> int:
        return self.metered_messages_out + self.metered_messages_in

    @property
    def settings_dict(self) -> dict[str, SettingValue]:
        return dict(self.settings)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Distribution):
                value = value.to_dict()
            elif name in ("settings", "rejections", "failures_by_reason", "executions_by_status"):
                value = dict(value)
            out[name] = value
        out["metered_messages"] = self.metered_messages
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FleetSummary:
        """Inverse of ``to_dict`` (derived keys such as ``metered_messages`` are ignored)."""
        if not isinstance(data, Mapping):
            raise MetricsFormatError(f"a fleet summary must be an object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        for name in ("connect_s", "first_block_s", "download_s"):
            if kwargs.get(name) is not None:
                kwargs[name] = Distribution.from_dict(kwargs[name])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise MetricsFormatError(f"bad fleet summary: {exc}") from exc


def aggregate(
    records: Iterable[DeviceMetrics],
    *,
    wall_s: float,
    settings: Mapping[str, SettingValue] | None = None,
    price_per_million: float = DEFAULT_PRICE_PER_MILLION_MESSAGES_USD,
) -> FleetSummary:
    """Summarise one run. ``wall_s`` is the run's wall-clock time; throughput counts verified bytes only."""
    if not math.isfinite(wall_s) or wall_s < 0:
        raise ValueError(f"wall_s must be a finite number of seconds >= 0, got {wall_s}")
    recs = list(records)
    failures: Counter[str] = Counter(r.failure_reason for r in recs if r.failure_reason is not None)
    rejections: Counter[str] = Counter()
    for r in recs:
        rejections.update(dict(r.rejections))
    verified = [r for r in recs if r.verified]
    bytes_verified = sum(r.bytes for r in verified)
    out_msgs = sum(r.metered_messages_out for r in recs)
    in_msgs = sum(r.metered_messages_in for r in recs)
    return FleetSummary(
        settings=tuple((settings or {}).items()),
        devices=len(recs),
        verified=len(verified),
        failed=len(recs) - len(verified),
        failures_by_reason=tuple(failures.items()),
        wall_s=wall_s,
        connect_s=distribution(r.connect_s for r in recs),
        first_block_s=distribution(r.first_block_s for r in recs),
        download_s=distribution(r.download_s for r in recs),
        bytes_verified=bytes_verified,
        bytes_total=sum(r.bytes for r in recs),
        throughput_mb_s=bytes_verified / MEGABYTE / wall_s if wall_s >= MIN_WALL_S else 0.0,
        blocks=sum(r.blocks for r in recs),
        duplicates=sum(r.duplicates for r in recs),
        invalid_blocks=sum(r.invalid_blocks for r in recs),
        re_requests=sum(r.re_requests for r in recs),
        requests=sum(r.requests for r in recs),
        timeouts=sum(r.timeouts for r in recs),
        disconnects=sum(r.disconnects for r in recs),
        stalls=sum(r.stalls for r in recs),
        stall_s=math.fsum(r.stall_s for r in recs),
        aborts=sum(r.aborts for r in recs),
        lost_blocks=sum(r.lost_blocks for r in recs),
        cut_answers=sum(r.cut_answers for r in recs),
        rejections=tuple(rejections.items()),
        metered_messages_out=out_msgs,
        metered_messages_in=in_msgs,
        price_per_million_usd=price_per_million,
        cost_usd=cost_usd(out_msgs + in_msgs, price_per_million),
        executions_by_status=tuple(Counter(r.job_status for r in recs if r.job_status is not None).items()),
    )
