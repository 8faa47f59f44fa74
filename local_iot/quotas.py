"""AWS IoT Core message-broker quotas that shape a download (docs/protocol.md section 5). Pure logic, time as input.

How this works:
- Per connection (keyed by thing name, see docs/service.md), one token bucket of publishes (100/s, burst 100)
  counts requests in and answers out. A publish that finds no token is discarded, whichever way it goes: a
  request is not answered, a data block never reaches the device (AWS: "publish requests that exceed this quota
  are discarded", inbound and outbound alike). A device that asks for more than ~100 messages per second
  therefore loses blocks and must ask again, as on AWS.
- Per connection, a byte pacer (512 KiB/s with a burst of ``connection_bytes_burst``) delays answers so that the
  connection never exceeds the throughput quota. Excess is delayed, never dropped.
- Per account, a publish pacer (20000/s by default, adjustable like on AWS) delays outbound publishes; its slot
  is taken when an answer is decided, before the connection's byte pacing.

``Pacer.schedule`` must be called with non-decreasing ``ready`` times per pacer (the service calls it with the
time the request arrived) and returns when the item may go out; items of one pacer keep their order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from device_sim.protocol.limits import (
    ACCOUNT_OUTBOUND_PUBLISHES_PER_SECOND,
    CONNECTION_BYTES_PER_SECOND,
    CONNECTION_PUBLISHES_PER_SECOND,
    MAX_DATA_PER_REQUEST,
)

__all__ = ["ConnectionQuota", "Pacer", "QuotaCounters", "QuotaSettings", "QuotaSpecError", "Quotas", "parse_quotas"]


class QuotaSpecError(ValueError):
    """The ``--quotas`` value is not understood."""


@dataclass(frozen=True, kw_only=True, slots=True)
class QuotaSettings:
    connection_publishes_per_second: float = CONNECTION_PUBLISHES_PER_SECOND
    connection_bytes_per_second: float = CONNECTION_BYTES_PER_SECOND
    #: How many bytes a quiet connection may send at once before pacing starts (one full answer).
    connection_bytes_burst: float = MAX_DATA_PER_REQUEST
    account_outbound_publishes_per_second: float = ACCOUNT_OUTBOUND_PUBLISHES_PER_SECOND
    #: Outbound publishes the account may send at once (a tenth of a second's worth by default).
    account_outbound_burst: float = ACCOUNT_OUTBOUND_PUBLISHES_PER_SECOND / 10

    def __post_init__(self) -> None:
        for name in (
            "connection_publishes_per_second",
            "connection_bytes_per_second",
            "connection_bytes_burst",
            "account_outbound_publishes_per_second",
            "account_outbound_burst",
        ):
            if not getattr(self, name) > 0:
                raise QuotaSpecError(f"quota {name} must be > 0, got {getattr(self, name)!r}")


def parse_quotas(text: str | None) -> QuotaSettings | None:
    """``none`` (or empty) -> None; ``aws`` -> the AWS defaults; ``aws:account=50000`` -> a raised account quota."""
    if text is None or text.strip() in ("", "none"):
        return None
    name, _, options = text.strip().partition(":")
    if name != "aws":
        raise QuotaSpecError(f"unknown quotas {text!r}: use 'none', 'aws' or 'aws:account=<publishes per second>'")
    if not options:
        return QuotaSettings()
    key, _, value = options.partition("=")
    if key != "account":
        raise QuotaSpecError(f"unknown quota option {key!r} in {text!r}: the only option is account=<N>")
    try:
        rate = float(value)
    except ValueError:
        raise QuotaSpecError(f"account=<N> needs a number of publishes per second, got {value!r}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise QuotaSpecError(f"account=<N> needs a finite number of publishes per second > 0, got {value!r}")
    return QuotaSettings(account_outbound_publishes_per_second=rate, account_outbound_burst=max(1.0, rate / 10))


class Pacer:
    """A token bucket that delays instead of refusing: ``schedule`` returns when an item of ``cost`` may go out."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = float("-inf")

    def schedule(self, ready: float, cost: float) -> float:
        t = ready if ready > self._last else self._last
        if self._last != float("-inf"):
            self._tokens = min(self._burst, self._tokens + (t - self._last) * self._rate)
        need = min(cost, self._burst)  # an item larger than the burst waits for a full bucket, then goes into debt
        if self._tokens < need:
            t += (need - self._tokens) / self._rate
            self._tokens = need
        self._tokens -= cost
        self._last = t
        return t


@dataclass(kw_only=True, slots=True)
class ConnectionQuota:
    """The publish budget and the byte pacer of one connection."""

    publishes_per_second: float
    tokens: float
    last: float
    bytes_pacer: Pacer

    def refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.publishes_per_second, self.tokens + (now - self.last) * self.publishes_per_second)
            self.last = now


@dataclass(kw_only=True, slots=True)
class QuotaCounters:
    requests_admitted: int = 0
    requests_dropped: int = 0
    answers: int = 0
    answers_dropped: int = 0  # over the connection's publish budget: discarded
    answers_delayed: int = 0
    delay_seconds_total: float = 0.0


@dataclass(kw_only=True, slots=True)
class Quotas:
    """All quota state of one service. Not thread-safe: one thread calls it (the service's)."""

    settings: QuotaSettings = field(default_factory=QuotaSettings)
    counters: QuotaCounters = field(default_factory=QuotaCounters)
    _connections: dict[str, ConnectionQuota] = field(default_factory=dict)
    _account: Pacer | None = None

    def _connection(self, key: str, now: float) -> ConnectionQuota:
        conn = self._connections.get(key)
        if conn is None:
            s = self.settings
            conn = ConnectionQuota(
                publishes_per_second=s.connection_publishes_per_second,
                tokens=s.connection_publishes_per_second,
                last=now,
                bytes_pacer=Pacer(s.connection_bytes_per_second, s.connection_bytes_burst),
            )
            self._connections[key] = conn
        conn.refill(now)
        return conn

    def admit_request(self, key: str, now: float) -> bool:
        """An inbound publish on connection ``key``: True when it is within the budget (and takes a token)."""
        conn = self._connection(key, now)
        if conn.tokens < 1:
            self.counters.requests_dropped += 1
            return False
        conn.tokens -= 1
        self.counters.requests_admitted += 1
        return True

    def schedule_answer(self, key: str, now: float, size: int) -> float | None:
        """An outbound publish of ``size`` bytes (payload + topic) decided at ``now``: when it may be sent, or None
        when the connection's publish budget is spent and the answer is discarded."""
        conn = self._connection(key, now)
        if conn.tokens < 1:
            self.counters.answers_dropped += 1
            return None
        conn.tokens -= 1
        if self._account is None:
            s = self.settings
            self._account = Pacer(s.account_outbound_publishes_per_second, s.account_outbound_burst)
        # The account slot is taken when the answer is decided (monotone time, so one slow connection never holds
        # up the others), then the connection's byte pacer spreads its own answers.
        at = conn.bytes_pacer.schedule(self._account.schedule(now, 1), size)
        self.counters.answers += 1
        if at > now:
            self.counters.answers_delayed += 1
            self.counters.delay_seconds_total += at - now
        return at
