"""Pacing and retry timing for control-plane calls, with the clock and sleep injected (tests never sleep).

AWS IoT's control plane allows about 15 transactions per second per API (CreateThing, AttachPolicy,
AttachThingPrincipal; docs/protocol.md section 5). ``TokenBucket`` keeps the provisioner below that; ``Backoff`` gives
the bounded, growing delays used when AWS throttles anyway or when IAM has not yet propagated a new role.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], None]

#: Default calls per second: below AWS IoT's ~15 TPS control-plane limits with a margin.
DEFAULT_TPS = 10.0


class TokenBucket:
    """Allow ``rate`` calls per second with bursts of at most ``burst`` calls. ``acquire()`` waits for a token."""

    def __init__(
        self, rate: float, *, burst: float = 1.0, clock: Clock = time.monotonic, sleep: Sleep = time.sleep
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self) -> float:
        """Take one token, sleeping until one is available. Returns the time slept."""
        self._refill()
        delay = 0.0
        if self._tokens < 1:
            delay = (1 - self._tokens) / self.rate
            self._sleep(delay)
            self._refill()
        # Take the token even when rounding left 0.999...: a tiny debt delays the next call instead of spinning.
        self._tokens -= 1
        return delay


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """Delays ``first, first*factor, ...`` capped at ``cap``; ``attempts - 1`` of them (the first try is free)."""

    attempts: int
    first: float
    factor: float = 2.0
    cap: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        for _ in range(self.attempts - 1):
            yield min(delay, self.cap)
            delay *= self.factor

    @property
    def total(self) -> float:
        return sum(self.delays())


#: Throttling answers: about 1 + 2 + 4 + 8 + 8 = 23 s before giving up.
THROTTLE_BACKOFF = Backoff(attempts=6, first=1.0)
#: A freshly created role is usually assumable within 10 s, rarely after a minute: retry create_stream ~60 s.
ROLE_PROPAGATION_BACKOFF = Backoff(attempts=10, first=2.0, cap=10.0)
