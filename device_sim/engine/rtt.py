"""Round-trip estimation for the download engine's timers (RFC 6298 smoothing, no clock inside).

A sample is the time from sending a GetStream request to the first block of its answer. Samples are only
taken from blocks asked for once (Karn's rule: an answer to a re-request may belong to the earlier request).

Two timers derive from it:
- the idle timeout: ``SRTT + max(4 * RTTVAR, SRTT / 4)``, within ``minimum .. maximum``. RFC 6298's
  ``4 * RTTVAR`` alone collapses to about SRTT on a steady link (RTTVAR decays towards 0), and then every small
  delay (a Python event loop, AWS's byte pacing) looks like a loss; the SRTT/4 floor keeps a quarter of a round
  trip of slack, as TCP keeps its clock granularity and Linux a 200 ms RTTVAR floor;
- the fast re-request grace: how long after the highest block of a request arrived its missing blocks are
  taken for lost (``fast_retry_grace``), stretched by ``ReorderWindow`` when that proved too short: a block
  asked again by a fast re-request that then arrives twice was late, not lost (RACK's reordering window, RFC 8985
  6.2, adapted the same way to DSACKs).
"""

from __future__ import annotations

from collections.abc import Iterable

#: RFC 6298 gains.
_ALPHA = 1 / 8
_BETA = 1 / 4
#: The idle timeout keeps at least this share of SRTT above SRTT.
SRTT_SLACK = 1 / 4
#: Doubling stops here; the result is capped by the maximum anyway.
_MAX_DOUBLINGS = 16
#: Rounds of timeouts that keep the plain timeout before it starts doubling. On a lossy link a request and
#: its re-request are both lost quite often (15 % loss each way: 28 % per round); doubling at once would
#: make such links slow, while a dead link still reaches the maximum within a few rounds.
GRACE_ROUNDS = 2
#: Fast re-request grace: a share of SRTT, at least FAST_RETRY_GAPS gaps between the request's blocks (a block
#: the service moved behind the last one comes within a gap or two), and never below FAST_RETRY_MIN (event-loop
#: and scheduler hiccups on fast local links).
FAST_RETRY_SRTT_SHARE = 1 / 4
FAST_RETRY_GAPS = 2
FAST_RETRY_MIN = 0.02
#: The reordering window's multiplier doubles per spurious fast re-request up to this, and halves after
#: REORDER_DECAY fast re-requests without a spurious one.
REORDER_MAX_SCALE = 64
REORDER_DECAY = 16
#: Idle timeouts proved spurious (the blocks they gave up came twice) stretch later timeouts by up to this factor;
#: TIMEOUT_DECAY timeouts in a row that were not proved spurious halve the stretch again.
TIMEOUT_MAX_SCALE = 16
#: The fleet-wide stretch stops lower: a ramp's spurious timeouts on a few devices took every device's timer to
#: 16x (max_timeout, 10 s), and a lossy link's next lost tail then cost 10 s on every device that met one.
SHARED_TIMEOUT_MAX_SCALE = 4
TIMEOUT_DECAY = 8


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

    def expired(self) -> None:
        """An idle timer expired. Until a valid sample exists (Karn's rule: re-asked blocks give none), the
        starting estimate keeps the backed-off value (RFC 6298 5.5): otherwise a first answer slower than the
        initial timeout (a loaded broker, 1000 devices connecting) is asked for again and again at that timeout,
        and progress resetting the doubling never lets the timer learn."""
        if self._srtt is None and self._fixed is None:
            self._initial = min(self._maximum, self._initial * 2)

    def timeout(self, rounds: int = 0) -> float:
        """The idle timeout after ``rounds`` consecutive rounds of timeouts: the bounded estimate, doubled
        for every round past GRACE_ROUNDS, capped at the maximum. Before the first sample: the initial value,
        doubled by every expiry (``expired``) and kept through progress."""
        if self._fixed is not None:
            return self._fixed
        srtt, rttvar = self._srtt, self._rttvar
        if srtt is None or rttvar is None:  # no estimate yet: the initial value, backed off by expired()
            return min(self._maximum, max(self._minimum, self._initial))
        estimate = srtt + max(4 * rttvar, SRTT_SLACK * srtt)
        base = min(self._maximum, max(self._minimum, estimate))
        return min(self._maximum, base * float(2 ** min(max(0, rounds - GRACE_ROUNDS), _MAX_DOUBLINGS)))

    def fast_retry_grace(self, gap: float, timeout: float) -> float:
        """How long to wait, after the highest block of a request arrived, for its missing lower blocks.

        ``gap`` is the mean time between the request's blocks so far; ``timeout`` the current idle timeout
        (the grace never exceeds it: the idle timer would fire first anyway)."""
        srtt = self._srtt if self._srtt is not None else timeout
        return min(timeout, max(FAST_RETRY_SRTT_SHARE * srtt, FAST_RETRY_GAPS * gap, FAST_RETRY_MIN))


class ReorderWindow:
    """How much longer than ``fast_retry_grace`` to wait, learnt from fast re-requests that proved spurious: a
    block asked again by a fast re-request that then arrives twice was late, not lost."""

    __slots__ = ("_clean", "_released", "scale", "spurious")

    def __init__(self) -> None:
        self.scale = 1
        self.spurious = 0  # fast re-requests found spurious so far
        self._clean = 0  # fast re-requests since the last spurious one
        self._released: set[int] = set()  # blocks last asked again by a fast re-request

    def retried(self, blocks: Iterable[int]) -> None:
        """A fast re-request gave these blocks up for lost."""
        self._released.update(blocks)
        self._clean += 1
        if self._clean >= REORDER_DECAY and self.scale > 1:
            self.scale //= 2
            self._clean = 0

    def forget(self, blocks: Iterable[int] | None = None) -> None:
        """These blocks (None: all) are asked again for another reason (idle timeout, reconnect, new file)."""
        if blocks is None:
            self._released.clear()
        else:
            self._released.difference_update(blocks)

    def duplicate(self, index: int) -> None:
        """Block ``index`` arrived again."""
        if index in self._released:
            self._released.discard(index)
            self.spurious += 1
            self._clean = 0
            self.scale = min(REORDER_MAX_SCALE, self.scale * 2)


class SpuriousTimeouts:
    """How much longer than the round-trip estimate to wait, learnt from idle timeouts that proved spurious.

    A request's idle timer expired and its missing blocks were asked again; when one of those blocks then arrives
    twice, the first answer was only late (a loaded service or event loop, answers queued behind others), not lost.
    Karn's rule keeps such answers out of the round-trip estimate, so without this the timer would keep expiring
    at the same too-short value: each proved-spurious timeout doubles ``scale`` (up to TIMEOUT_MAX_SCALE), and
    TIMEOUT_DECAY timeouts that were not proved spurious halve it. Lost blocks come once, so real loss never
    stretches the timer.
    """

    __slots__ = ("_clean", "_max_scale", "_released", "scale", "spurious")

    def __init__(self, max_scale: int = TIMEOUT_MAX_SCALE) -> None:
        self.scale = 1
        self.spurious = 0
        self._clean = 0
        self._max_scale = max_scale
        self._released: set[int] = set()

    @property
    def watching(self) -> bool:
        """Whether any block given up by an idle timeout may still prove it spurious."""
        return bool(self._released)

    def expired(self, blocks: Iterable[int]) -> None:
        """An idle timeout gave these blocks up."""
        self._released.update(blocks)
        self.unproved()

    def unproved(self) -> None:
        """A timeout that nothing (yet) proved spurious: TIMEOUT_DECAY of them in a row halve the stretch."""
        self._clean += 1
        if self._clean >= TIMEOUT_DECAY and self.scale > 1:
            self.scale //= 2
            self._clean = 0

    def proved(self) -> None:
        """A timeout proved spurious: wait twice as long from now on."""
        self.spurious += 1
        self._clean = 0
        self.scale = min(self._max_scale, self.scale * 2)

    def forget(self, blocks: Iterable[int] | None = None) -> None:
        if blocks is None:
            self._released.clear()
        else:
            self._released.difference_update(blocks)

    def duplicate(self, index: int) -> None:
        """Block ``index`` arrived again: the timeouts that gave blocks up so far were spurious. One proof however
        many of their blocks come twice (the rest of them follow at once: doubling per block took the stretch to
        its maximum with the first late answer, and a fleet's timers with it)."""
        if index in self._released:
            self._released.clear()
            self.proved()


class SharedRtt:
    """What the engines of one process learn about the service they share (RFC 2140: TCP control block sharing).

    A fleet's devices all wait in the same service queue: a device that connected when the emulator was idle has a
    round-trip estimate far below what the others already see, and a device proves a timeout spurious only after
    paying for it. Every engine given the same ``SharedRtt`` feeds it its clean samples and its proved-spurious
    timeouts; its idle timeout is then never below the fleet's (``floor``), and a spurious timeout anywhere
    stretches every device's timer like its own (``SpuriousTimeouts`` rules, shared, up to 4x). A device that has no
    round-trip sample of its own yet cannot tell a busy service from a lost request; the fleet can: while other
    devices keep receiving blocks (``last_block``), its first request's idle timer waits, up to ``max_timeout``
    after it was sent. Event-loop only (no locking).
    """

    __slots__ = ("_estimate", "last_block", "timeouts")

    def __init__(self) -> None:
        self._estimate = RttEstimator(initial=0.0, minimum=0.0, maximum=float("inf"))
        self.timeouts = SpuriousTimeouts(SHARED_TIMEOUT_MAX_SCALE)
        #: When any engine of the fleet last received a valid data block (its ``now``); None before the first.
        self.last_block: float | None = None

    def sample(self, rtt: float) -> None:
        self._estimate.sample(rtt)

    def floor(self) -> float | None:
        """The fleet's idle timeout estimate (SRTT + max(4 RTTVAR, SRTT/4)); None before any sample."""
        srtt, rttvar = self._estimate.srtt, self._estimate.rttvar
        if srtt is None or rttvar is None:
            return None
        return srtt + max(4 * rttvar, SRTT_SLACK * srtt)
