"""Round-trip estimation for the download engine's idle timer (RFC 6298 smoothing, no clock inside).

A sample is the time from sending a GetStream request to the first block of its answer. Samples are only
taken from blocks asked for once (Karn's rule: an answer to a re-request may belong to the earlier request).
"""

from __future__ import annotations

#: RFC 6298 gains.
_ALPHA = 1 / 8
_BETA = 1 / 4
#: Doubling stops here; the result is capped by the maximum anyway.
_MAX_DOUBLINGS = 16
#: Rounds of timeouts that keep the plain timeout before it starts doubling. On a lossy link a request and
#: its re-request are both lost quite often (15 % loss each way: 28 % per round); doubling at once would
#: make such links slow, while a dead link still reaches the maximum within a few rounds.
GRACE_ROUNDS = 2


class RttEstimator:
    """SRTT/RTTVAR smoothing and the idle timeout derived from it.

    ``fixed`` replaces the whole estimate: the timeout is then always that value, with no doubling.
    """

    __slots__ = ("_fixed", "_initial", "_maximum", "_minimum", "_rttvar", "_srtt")

    def __init__(self, *, initial: float, minimum: float, maximum: float, fixed: float | None = None) -> None:
        self._initial = initial
        self._minimum = minimum
        self._maximum = maximum
        self._fixed = fixed
        self._srtt: float | None = None
        self._rttvar: float | None = None

    @property
    def srtt(self) -> float | None:
        return self._srtt

    @property
    def rttvar(self) -> float | None:
        return self._rttvar

    def sample(self, rtt: float) -> None:
        rtt = max(0.0, rtt)
        if self._srtt is None or self._rttvar is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = (1 - _BETA) * self._rttvar + _BETA * abs(self._srtt - rtt)
            self._srtt = (1 - _ALPHA) * self._srtt + _ALPHA * rtt

    def timeout(self, rounds: int = 0) -> float:
        """The idle timeout after ``rounds`` consecutive rounds of timeouts: the bounded estimate, doubled
        for every round past GRACE_ROUNDS, capped at the maximum."""
        if self._fixed is not None:
            return self._fixed
        estimate = self._initial if self._srtt is None or self._rttvar is None else self._srtt + 4 * self._rttvar
        base = min(self._maximum, max(self._minimum, estimate))
        return min(self._maximum, base * float(2 ** min(max(0, rounds - GRACE_ROUNDS), _MAX_DOUBLINGS)))
