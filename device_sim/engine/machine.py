"""The sans-IO download engine: one file of one stream, as a state machine with time passed in.

How this works
--------------
A ``BlockLedger`` (engine_blocks) knows for every block whether it is missing, claimed by a request in
flight, or stored. Up to ``inflight`` requests are in flight; each claims up to ``window`` of the lowest
missing, unclaimed blocks and asks for exactly those (offset = the lowest one, ``n`` = how many, bitmap =
which), so requests never overlap and never name a stored block. A request whose blocks have all arrived
is done, and its slot is refilled at once.

Each request in flight has an idle timer: ``last activity + timeout``, where the activity is the request
being sent or one of its blocks arriving, and the timeout follows the measured round trip (engine_rtt). It
fires only once the link is quiet too (no data block at all for the timeout): answers queue behind earlier
answers, so a request can look idle while its predecessors' blocks are still arriving. When it expires, the
request's missing blocks go back to missing and the slot is refilled, so the re-request names the lost blocks
first and fills the rest of its window with new ones. With ``probe`` (the default), and no sign of real loss in
the last LOSS_MEMORY requests (a fast re-request, a probed request whose rest never came), a request still
waiting for several blocks gives back only its lowest one at its first timeout, asked again alone; the request
turns *suspect* (no slot) and is released when a block of a later request arrives before its own; when the probed
block comes, it holds its slot again for one more idle timeout: a late answer then costs one duplicate, a lost one
a round trip and a timeout more. When the probe times out too with nothing of the suspect come, the block is probed
again (the link is only quiet so far), unless loss was seen lately; each such round counts for the abort rule.
Fast re-request: once a request's highest block has arrived, its missing lower blocks (lost, as one connection
delivers an answer in order) are released after a short grace instead (``fast_retry``). The caller may report when
a request actually left (``request_sent``: the timer and the round-trip sample start there) and when the link came back
after a reconnect (``link_resumed``: every request in flight is sent again at once).

Rejections: VersionMismatch -> NEEDS_DESCRIBE (the caller describes the stream again and calls
``restart``); InternalError and unknown throttling-like codes -> BACKOFF (a bounded exponential wait, then
ask again); anything else -> FAILED with the code. Timeouts, back-offs and re-describes count towards the
abort rule (``max_retries`` rounds with no new block -> FAILED); every new block resets it. Every
non-terminal state has a timer, so a caller that honours ``get_timer()`` never hangs.

Inputs go through one choke point, ``_apply``, which looks the (state, input) pair up in ``TRANSITIONS``:
a pair that is not there raises EngineStateError; a handler that lands in a state the table does not list
for the pair is a bug and raises AssertionError.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from fractions import Fraction

from device_sim.engine.blocks import BlockLedger, InFlight
from device_sim.engine.rtt import ReorderWindow, RttEstimator, SharedRtt, SpuriousTimeouts
from device_sim.engine.rules import REJECTION_HINTS, TRANSITIONS, classify_rejection
from device_sim.engine.types import (
    Action,
    Complete,
    DiscardBlocks,
    EngineInput,
    EngineSettings,
    EngineState,
    EngineStateError,
    EngineStats,
    EngineUsageError,
    Failed,
    FailureReason,
    Redescribe,
    SendRequest,
    WriteBlock,
)
from device_sim.protocol.bitmap import decode_bitmap, encode_bitmap
from device_sim.protocol.limits import MAX_FILE_ID, MIN_FILE_ID
from device_sim.protocol.messages import DataBlock, GetStreamRequest, Rejection

#: Rounds without progress after a new block (shared: a Fraction per block would cost more than the block).
_NO_STALL = Fraction(0)
#: Requests completed after a sign of real loss before idle timeouts probe again (``EngineSettings.probe``).
LOSS_MEMORY = 16

__all__ = [
    "TRANSITIONS",
    "Action",
    "Complete",
    "DiscardBlocks",
    "DownloadEngine",
    "EngineInput",
    "EngineSettings",
    "EngineState",
    "EngineStateError",
    "EngineStats",
    "EngineUsageError",
    "Failed",
    "FailureReason",
    "Redescribe",
    "SendRequest",
    "SharedRtt",
    "WriteBlock",
    "classify_rejection",
]


class DownloadEngine:
    """Downloads one file of a stream. Feed it inputs, carry out ``next_actions()``, honour ``get_timer()``.

    ``now`` is any monotonic clock in seconds (it must never go back). ``have`` lists blocks already stored
    (resume): block indices, or a bitmap (LSB-first from block 0) as ``received_bitmap()`` returns it.
    """

    def __init__(
        self,
        *,
        file_id: int,
        file_size: int,
        stream_version: int | None,
        now: float,
        settings: EngineSettings | None = None,
        have: Iterable[int] | bytes | None = None,
        shared: SharedRtt | None = None,
    ) -> None:
        """``shared``: round-trip knowledge shared with the other engines of this process that talk to the same
        service (a fleet's, see ``SharedRtt``); None: this engine learns alone."""
        self.settings = settings if settings is not None else EngineSettings()
        self._shared = shared
        if not isinstance(file_id, int) or not MIN_FILE_ID <= file_id <= MAX_FILE_ID:
            raise EngineUsageError(f"file_id {file_id!r} is not a file id", hint=f"use {MIN_FILE_ID}..{MAX_FILE_ID}")
        self.file_id = file_id
        self._state = EngineState.IDLE
        self._now = now
        self._created_at = now
        self._actions: list[Action] = []
        #: Changes whenever a deadline of ``get_timer()`` may have moved earlier; between changes deadlines only
        #: move later, so a caller whose timer is armed at an earlier ``get_timer()`` may leave it (a timer that
        #: fires early finds nothing due and is armed again). Not counted: a lower estimate that other engines
        #: taught a shared ``SharedRtt``; the timer notices it when it next fires (a timeout that much later).
        self.deadline_epoch = 0
        self._counters = EngineStats()
        #: The longest quiet gap the service's byte pacing alone can cause: one block's worth of the connection's
        #: throughput quota (8 ms for 4 KiB at 512 KiB/s, 250 ms for 128 KiB). Smaller blocks trickle and keep
        #: the link busy; a block this big arrives whole after the shaper held it, so idle deadlines wait for it.
        rate = self.settings.answer_rate
        self._pacing_gap = self.settings.block_size / rate if rate is not None else 0.0
        self._rtt = RttEstimator(
            initial=self.settings.initial_timeout,
            minimum=self.settings.min_timeout,
            maximum=self.settings.max_timeout,
            fixed=self.settings.request_timeout,
        )
        # Rounds without a new block. A timed-out request counts 1/k of a round when k requests were in
        # flight, so a round is a round whether 1 or `inflight` requests are out (e.g. at the end of a file).
        self._stall = _NO_STALL
        self._throttle_streak = 0
        self._backoff_until = 0.0
        self._describe_since = 0.0
        self._failure: Failed | None = None
        self._seq = 0  # SendRequest.seq of the last request
        # Since the last restart or back-off: the first request's seq, and whether any of them was reported sent.
        self._epoch_seq = 1
        self._epoch_sent = not self.settings.report_sends
        self._last_rx: float | None = None  # the last valid data block (new, duplicate or stale) arrived
        self._reorder = ReorderWindow()
        self._timeouts = SpuriousTimeouts()
        #: Requests to go before an idle timeout probes again: LOSS_MEMORY after a sign of real loss, 1 less per
        #: request completed (a lossy link keeps re-requesting whole windows: a probe would cost it a round trip).
        self._loss_seen = 0
        self._ledger = BlockLedger(file_size, self.settings.block_size)
        self._stream_version = stream_version
        if have is not None:
            self._ledger.load(decode_bitmap(bytes(have), 0) if isinstance(have, bytes | bytearray) else have)

    # ------------------------------------------------------------------------------------- public view

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def failure(self) -> Failed | None:
        """The Failed action once the state is FAILED."""
        return self._failure

    @property
    def file_size(self) -> int:
        return self._ledger.file_size

    @property
    def stream_version(self) -> int | None:
        return self._stream_version

    @property
    def total_blocks(self) -> int:
        return self._ledger.total

    @property
    def blocks_have(self) -> int:
        return self._ledger.have_count

    def has_block(self, index: int) -> bool:
        return self._ledger.has(index)

    def received_bitmap(self) -> bytes:
        """Blocks stored so far as a bitmap from block 0 (LSB-first), e.g. to persist for a resume."""
        return encode_bitmap(self._ledger.stored(), 0, self._ledger.total)

    @property
    def stats(self) -> EngineStats:
        stats = self._counters.copy()
        stats.srtt, stats.rttvar, stats.timeout = self._rtt.srtt, self._rtt.rttvar, self._timeout()
        stats.spurious_fast_retries = self._reorder.spurious
        stats.spurious_timeouts = self._timeouts.spurious
        return stats

    @property
    def has_actions(self) -> bool:
        """Whether ``next_actions()`` has anything (cheaper than asking for the list)."""
        return bool(self._actions)

    def next_actions(self) -> list[Action]:
        """The actions produced since the last call, in order. Carry them out in that order."""
        actions, self._actions = self._actions, []
        return actions

    def get_timer(self) -> float | None:
        """When to call ``handle_timer`` next (same clock as ``now``); None only in a terminal state."""
        state = self._state
        if state is EngineState.IDLE:
            return self._created_at
        if state is EngineState.RUNNING:
            in_flight = self._ledger.in_flight
            if not in_flight:  # cannot happen: RUNNING always has a request in flight
                return self._now
            timeout = self._timeout()
            if len(in_flight) == 1:  # the usual case: no generator for one request
                return self._deadline(in_flight[0], timeout)
            return min(self._deadline(r, timeout) for r in in_flight)
        if state is EngineState.BACKOFF:
            return self._backoff_until
        if state is EngineState.NEEDS_DESCRIBE:
            return self._describe_since + self.settings.describe_timeout
        return None

    # ------------------------------------------------------------------------------------------ inputs

    def start(self, now: float) -> None:
        """Begin: send the first requests (or complete at once when every block is already stored)."""
        self._apply(EngineInput.START, now, self._on_start)

    def receive_block(self, block: DataBlock, now: float) -> None:
        """A data message for this stream. Invalid and duplicate blocks are counted and ignored."""
        self._apply(EngineInput.RECEIVE_BLOCK, now, lambda: self._on_block(block))

    def receive_data(self, index: int, payload: bytes, now: float) -> bool:
        """``receive_block`` for the hot path, without a DataBlock or a WriteBlock: a block the caller knows to be of
        this file with a length field equal to ``len(payload)`` (``DataLayout.full_block`` checks both).

        True: the block is new and valid; store ``payload`` as block ``index`` now, before carrying out
        ``next_actions()`` (they hold no WriteBlock for it). False: nothing to store here -- a duplicate, an invalid
        or a stale block (counted as ``receive_block`` counts them), or any block outside RUNNING, which goes
        through ``receive_block`` itself (a WriteBlock for it is then among ``next_actions()``).
        """
        ledger, nbytes = self._ledger, len(payload)
        if (
            self._state is not EngineState.RUNNING
            or now < self._now
            or ledger.has(index)
            or not ledger.fits(index, nbytes, nbytes)
        ):
            block = DataBlock(file_id=self.file_id, block_index=index, block_length=nbytes, payload=payload)
            self.receive_block(block, now)
            return False
        self._now = self._last_rx = now
        if self._shared is not None:
            self._shared.last_block = now
        self._state = self._store_new(index, nbytes)  # RUNNING or COMPLETE, as TRANSITIONS allows
        return True

    def receive_rejection(self, rejection: Rejection, now: float) -> None:
        """A ``rejected`` message for this stream."""
        self._apply(EngineInput.RECEIVE_REJECTION, now, lambda: self._on_rejection(rejection))

    def handle_timer(self, now: float) -> None:
        """Time passed. Calling it before ``get_timer()`` is harmless."""
        self._apply(EngineInput.TIMER, now, self._on_timer)

    def restart(self, file_size: int, stream_version: int | None, now: float) -> None:
        """The stream was described again. A new version or size discards every block (DiscardBlocks)."""
        self._apply(EngineInput.RESTART, now, lambda: self._on_restart(file_size, stream_version))

    def cancel(self, message: str, now: float) -> None:
        """Give up on the caller's behalf (e.g. the file left the stream)."""
        self._apply(EngineInput.CANCEL, now, lambda: self._fail(FailureReason.CANCELLED, None, message))

    def request_sent(self, seq: int, now: float) -> None:
        """Request ``seq`` (SendRequest.seq) actually left, e.g. after client-side flow control held it back:
        its idle timer and round-trip sample start now. Ignored once a block of it arrived or it is no longer
        in flight. Optional: without it, both start when the engine emitted the request."""
        self._apply(EngineInput.REQUEST_SENT, now, lambda: self._on_request_sent(seq))

    def link_resumed(self, now: float) -> None:
        """The connection came back (e.g. an MQTT reconnect; requests and answers in flight were lost): every
        request in flight that had left (with ``report_sends``: was reported sent) is sent again now, instead of
        after its idle timeout. Counts as a round without progress for the abort rule, so a link that keeps
        flapping without delivering still gives up."""
        self._apply(EngineInput.LINK_RESUMED, now, self._on_link_resumed)

    # ------------------------------------------------------------------------------------- choke point

    def _apply(self, engine_input: EngineInput, now: float, handler: Callable[[], EngineState]) -> None:
        allowed = TRANSITIONS.get((self._state, engine_input))
        if allowed is None:
            raise EngineStateError(engine_input, self._state)
        if now < self._now:
            raise EngineUsageError(
                f"time went backwards ({now} after {self._now})", hint="pass a monotonic clock such as loop.time()"
            )
        self._now = now
        self.deadline_epoch += 1
        new_state = handler()
        if new_state not in allowed:
            raise AssertionError(f"bug: {engine_input.value} led {self._state.name} to {new_state.name}")
        self._state = new_state

    # ---------------------------------------------------------------------------------------- handlers

    def _on_start(self) -> EngineState:
        if self._ledger.complete:
            return self._complete()
        self._fill()
        return EngineState.RUNNING

    def _on_block(self, block: DataBlock) -> EngineState:
        state, ledger, counters = self._state, self._ledger, self._counters
        index = block.block_index
        if block.file_id != self.file_id or not ledger.fits(index, block.block_length, len(block.payload)):
            counters.invalid_blocks += 1
            return state
        self._last_rx = self._now
        if self._shared is not None:
            self._shared.last_block = self._now
        if ledger.has(index):
            counters.duplicates += 1
            self._reorder.duplicate(index)  # after a fast re-request of it: that was spurious, wait longer
            if self._timeouts.watching:  # after an idle timeout gave it up: that timeout was spurious
                proved = self._timeouts.spurious
                self._timeouts.duplicate(index)
                if self._shared is not None and self._timeouts.spurious > proved:
                    self._shared.timeouts.proved()
            return state
        if state in (EngineState.NEEDS_DESCRIBE, EngineState.FAILED):
            counters.stale_blocks += 1
            return state
        self._actions.append(
            WriteBlock(index=index, offset_bytes=index * self.settings.block_size, payload=block.payload)
        )
        return self._store_new(index, len(block.payload))

    def _store_new(self, index: int, nbytes: int) -> EngineState:
        """A new valid block (written by the caller): the ledger, the round trip, the counters, the next request.
        Bumps ``deadline_epoch`` whenever a deadline may have moved earlier: a request's first block (it is known to
        have left now, and usually gives the round-trip sample), any other sample, a highest block with lower ones
        missing, the end of a stall, a new request, the end."""
        now, state, ledger, counters = self._now, self._state, self._ledger, self._counters
        request, clean_sample = ledger.store(index, now)
        if request is not None:
            if ledger.suspects:
                self._release_suspects(request.seq, index)
            if not request.outstanding and self._loss_seen:
                self._loss_seen -= 1
        if request is not None and (clean_sample or request.top_seen or request.received == 1):
            self.deadline_epoch += 1
            if clean_sample:
                self._rtt.sample(now - request.sent_at)
                if self._shared is not None:
                    self._shared.sample(now - request.sent_at)
        counters.blocks_received += 1
        counters.bytes_received += nbytes
        if self._stall is not _NO_STALL:
            self._stall = _NO_STALL
            self.deadline_epoch += 1
        self._throttle_streak = 0
        if ledger.complete:
            self.deadline_epoch += 1
            return self._complete()
        if state is EngineState.RUNNING and ledger.active < self.settings.inflight:
            self.deadline_epoch += 1
            self._fill()
        return state

    def _may_probe(self, request: InFlight) -> bool:
        """Whether an idle timeout of ``request`` asks again for one block first: probing is on, the request waits
        for more than one block and none of them lies below a block of it that came (a hole is a loss: one
        connection answers in order), it was not probed before, there was no sign of loss lately, and a round-trip
        sample exists or the engine is one of a fleet (whose first requests wait behind each other at the service:
        the fleet rule of ``_deadline`` lets them wait while others receive blocks, and a probe keeps a first
        request that still waited too long from costing a whole window)."""
        outstanding = request.outstanding
        if not self.settings.probe or self._loss_seen or len(outstanding) < 2:
            return False
        if self._rtt.srtt is None and self._shared is None:  # alone, a first request's timeout is as likely a loss
            return False
        if request.probe_seq:  # probed once already: its probe was answered, the rest did not follow
            return False
        if not request.received:
            return True
        lowest = min(outstanding)
        return not any(i > lowest and i not in outstanding for i in request.blocks)

    def _release_suspects(self, seq: int, index: int) -> None:
        """Block ``index`` of request ``seq`` arrived: the suspect requests probed by it or before it lost what they
        still wait for (one connection answers requests in order), so those blocks go back to missing. Except for
        the probed block itself: it may be the suspect's own late answer as well as the probe's, so the suspect
        holds its slot again with a fresh idle timer, for its next blocks to follow (the fast re-request's grace
        is too short here: a busy event loop can hand those blocks over a few tens of milliseconds later, and
        then the whole rest of the request would come twice); it is not probed again."""
        for request in [r for r in self._ledger.in_flight if r.suspect and r.probe_seq <= seq]:
            if seq == request.probe_seq and request.blocks[0] <= index <= request.blocks[-1]:
                self._ledger.trust(request)
                request.touch(self._now)
            else:
                self._ledger.release(request)
                self._loss_seen = LOSS_MEMORY
        self.deadline_epoch += 1

    def _on_rejection(self, rejection: Rejection) -> EngineState:
        state = self._state
        rejections = self._counters.rejections
        rejections[rejection.code] = rejections.get(rejection.code, 0) + 1
        token = self.settings.client_token
        if (token is not None and rejection.client_token != token) or state.terminal:
            self._counters.ignored_rejections += 1
            return state
        kind = classify_rejection(rejection.code)
        if kind == "fatal":
            hint = REJECTION_HINTS.get(rejection.code, "check the stream and the request settings")
            return self._fail(
                FailureReason.REJECTED,
                rejection.code,
                f"the service rejected the download with {rejection.code}: {rejection.message!r} ({hint})",
            )
        if (
            state is EngineState.NEEDS_DESCRIBE
            or (state is EngineState.BACKOFF and kind == "throttle")
            or (state is EngineState.RUNNING and not self._epoch_sent)
        ):
            # Answers to requests sent before we stopped (or, when sends are reported, before any request since the
            # last restart or back-off has left): the re-describe or the back-off already covers them.
            self._counters.ignored_rejections += 1
            return state
        if self._add_round():
            if kind == "version":
                return self._fail(
                    FailureReason.VERSION_MISMATCH,
                    rejection.code,
                    f"the stream version kept changing ({self.settings.max_retries} re-describes without a new "
                    "block); retry once the stream stops being updated",
                )
            return self._fail(
                FailureReason.THROTTLED,
                rejection.code,
                f"the service kept throttling ({rejection.code}: {rejection.message!r}) with no block for "
                f"{self.settings.max_retries} rounds; lower --inflight or the fleet's request rate",
            )
        self._ledger.release_all()
        if kind == "version":
            self._counters.redescribes += 1
            self._describe_since = self._now
            self._actions.append(Redescribe())
            return EngineState.NEEDS_DESCRIBE
        s = self.settings
        self._counters.backoffs += 1
        self._backoff_until = self._now + min(s.backoff_max, s.backoff_initial * 2 ** min(self._throttle_streak, 30))
        self._throttle_streak += 1
        return EngineState.BACKOFF

    def _on_timer(self) -> EngineState:
        state, now = self._state, self._now
        if state is EngineState.IDLE:
            return self._on_start() if now >= self._created_at else state
        if state is EngineState.BACKOFF:
            if now < self._backoff_until:
                return state
            self._new_epoch()
            self._fill()
            return EngineState.RUNNING
        if state is EngineState.NEEDS_DESCRIBE:
            if now < self._describe_since + self.settings.describe_timeout:
                return state
            if self._add_round():
                return self._fail(
                    FailureReason.TIMEOUT,
                    None,
                    f"no stream description arrived after {self.settings.max_retries} tries; check the connection",
                )
            self._counters.redescribes += 1
            self._describe_since = now
            self._actions.append(Redescribe())
            return state
        # RUNNING
        timeout = self._timeout()
        in_flight = self._ledger.in_flight
        share = Fraction(1, max(1, self._ledger.active))
        probe = False
        reprobed: InFlight | None = None  # a suspect whose probe timed out and is sent again (one a round)
        for request in [r for r in in_flight if self._deadline(r, timeout) <= now]:
            if request.top_seen and self.settings.fast_retry:  # the grace never outlasts the idle timeout
                self._reorder.retried(request.outstanding)
                self._ledger.release(request)
                self._counters.fast_retries += 1
                self._loss_seen = LOSS_MEMORY
                continue
            if request.suspect:
                if self._probing(request):  # it waits for its probe, whose own timeout decides (below)
                    request.touch(now)
                else:  # nothing arrived since its probe, and the probe is gone: lost
                    self._ledger.release(request)
                continue
            suspect = self._suspect_of(request) if self._ledger.suspects else None  # is it a probe?
            given_up: Iterable[int]
            if suspect is not None and not probe and not self._loss_seen:
                # The probe timed out as well, and nothing of the suspect came either: a quiet link, not yet a
                # lost answer (a service whose queue grew past two timeouts). Ask for the block alone again, a
                # round (and a backed-off timeout) later; the suspect keeps waiting for its answer.
                given_up = request.outstanding
                self._ledger.release(request)
                reprobed, probe = suspect, True
            elif not probe and self._may_probe(request):  # one probe a round; the others are asked again whole
                given_up = (self._ledger.suspect(request, now, self._seq + 1),)
                probe = True
            else:
                given_up = request.outstanding
                self._ledger.release(request)
                if suspect is not None:  # no second probe this round: the suspect goes whole with it
                    self._ledger.release(suspect)
                if request.probe_seq:  # its probe was answered, and the rest never came: lost
                    self._loss_seen = LOSS_MEMORY
            self._reorder.forget(given_up)
            self._timeouts.expired(given_up)
            if self._shared is not None:
                self._shared.timeouts.unproved()
            self._counters.timeouts += 1
            self._stall += share
            self._rtt.expired()
        if self._stall > self.settings.max_retries:
            return self._fail(
                FailureReason.TIMEOUT,
                None,
                f"no new block after {self.settings.max_retries} rounds of re-requests (last timeout "
                f"{timeout:.2f} s); check the connection, or raise max_retries / request_timeout",
            )
        if reprobed is not None:
            reprobed.probe_seq = self._seq + 1  # the first request of this fill is the new probe
            reprobed.touch(now)
        self._fill(probe)
        return state

    def _suspect_of(self, probe: InFlight) -> InFlight | None:
        """The suspect request that ``probe`` (a one-block request) probes for, if it still waits."""
        return next((r for r in self._ledger.in_flight if r.suspect and r.probe_seq == probe.seq), None)

    def _probing(self, suspect: InFlight) -> bool:
        """Whether ``suspect``'s probe is still in flight (answered, it would have trusted or released it)."""
        return self._find(suspect.probe_seq) is not None

    def _on_request_sent(self, seq: int) -> EngineState:
        if seq >= self._epoch_seq:
            self._epoch_sent = True
        request = self._find(seq)
        if request is not None and not request.received and self._state is EngineState.RUNNING:
            request.sent_at = request.last_activity = self._now
            request.sent = True
        return self._state

    def _on_link_resumed(self) -> EngineState:
        state = self._state
        gone = [r for r in self._ledger.in_flight if r.sent]  # the others are still queued at the caller's
        if state is not EngineState.RUNNING or not gone:
            return state
        self._counters.resends += len(gone)
        for request in gone:
            self._reorder.forget(request.outstanding)
            self._timeouts.forget(request.outstanding)
            self._ledger.release(request)
        if self._add_round():
            return self._fail(
                FailureReason.TIMEOUT,
                None,
                f"no new block after {self.settings.max_retries} rounds of re-requests (the link kept coming back "
                "without delivering); check the connection",
            )
        self._fill()
        return state

    def _on_restart(self, file_size: int, stream_version: int | None) -> EngineState:
        old_size, old_version = self._ledger.file_size, self._stream_version
        changed = file_size != old_size or stream_version != old_version
        fresh = BlockLedger(file_size, self.settings.block_size) if changed else None  # validates first
        self._ledger.release_all()
        self._new_epoch()
        self._counters.restarts += 1
        self._throttle_streak = 0
        if fresh is not None:
            self._ledger = fresh
            self._reorder.forget()
            self._timeouts.forget()
            self._stream_version = stream_version
            reason = (
                f"stream version {old_version} -> {stream_version}"
                if stream_version != old_version
                else f"file size {old_size} -> {file_size}"
            )
            self._actions.append(DiscardBlocks(file_size=file_size, reason=reason))
        if self._ledger.complete:
            return self._complete()
        self._fill()
        return EngineState.RUNNING

    # ----------------------------------------------------------------------------------------- helpers

    def _timeout(self) -> float:
        timeout = self._rtt.timeout(math.floor(self._stall) if self._stall is not _NO_STALL else 0)
        if self.settings.request_timeout is not None:  # a fixed timeout is never stretched
            return timeout
        scale, shared = self._timeouts.scale, self._shared
        if shared is not None:
            floor = shared.floor()
            if floor is not None and floor > timeout:
                timeout = min(max(timeout, self.settings.max_timeout), floor)
            scale = max(scale, shared.timeouts.scale)
        if scale == 1:
            return timeout
        return min(max(timeout, self.settings.max_timeout), timeout * scale)

    def _deadline(self, request: InFlight, timeout: float) -> float:
        """When ``request`` is to be released: its idle timeout once the link is quiet too, or the fast
        re-request grace once its highest block came; a request not reported sent waits for the report."""
        if not request.sent:
            return request.last_activity + max(timeout, self.settings.max_timeout)
        last_rx = self._last_rx
        quiet = request.last_activity if last_rx is None or last_rx < request.last_activity else last_rx
        shared = self._shared
        if shared is not None and self._rtt.srtt is None and self.settings.request_timeout is None:
            # No sample of our own yet (the first request): while the fleet's other devices receive blocks, the
            # service is alive and only busy (all devices ask at once as they connect), so keep waiting, up to
            # max_timeout after the request left.
            fleet_rx = shared.last_block
            if fleet_rx is not None and fleet_rx > quiet:
                return min(
                    fleet_rx + timeout + self._pacing_gap,
                    request.last_activity + max(timeout, self.settings.max_timeout),
                )
        deadline = quiet + timeout + self._pacing_gap
        if request.top_seen and self.settings.fast_retry:
            grace = min(timeout, self._reorder.scale * self._rtt.fast_retry_grace(request.gap(), timeout))
            deadline = min(deadline, request.last_activity + grace)
        return deadline

    def _find(self, seq: int) -> InFlight | None:
        return next((r for r in self._ledger.in_flight if r.seq == seq), None)

    def _add_round(self) -> bool:
        """Count a whole round without progress; True when the abort rule is reached."""
        self._stall += 1
        return self._stall > self.settings.max_retries

    def _new_epoch(self) -> None:
        """Requests from now on follow a restart or back-off; rejections of earlier ones are stale."""
        self._epoch_seq = self._seq + 1
        self._epoch_sent = not self.settings.report_sends

    def _fill(self, probe: bool = False) -> None:
        """Send requests until ``inflight`` hold a slot or no missing block is left unclaimed; ``probe``: the
        first of them asks for one block only."""
        s, ledger = self.settings, self._ledger
        while ledger.active < s.inflight:
            claimed = ledger.claim(1 if probe else s.window, self._now, self._seq + 1, sent=not s.report_sends)
            probe = False
            if claimed is None:
                return
            self._seq += 1
            blocks = claimed.blocks
            self._counters.requests_sent += 1
            self._counters.blocks_requested += len(blocks)
            self._counters.re_requests += int(claimed.repeated)
            request = GetStreamRequest(
                client_token=s.client_token,
                stream_version=self._stream_version if s.send_version else None,
                file_id=self.file_id,
                block_size=s.block_size,
                offset=blocks[0],
                number_of_blocks=len(blocks),
                bitmap=encode_bitmap(blocks, blocks[0], ledger.total),
            )
            self._actions.append(SendRequest(request=request, seq=self._seq))

    def _complete(self) -> EngineState:
        self._ledger.release_all()
        self._actions.append(Complete())
        return EngineState.COMPLETE

    def _fail(self, reason: FailureReason, code: str | None, message: str) -> EngineState:
        self._ledger.release_all()
        self._failure = Failed(reason=reason, code=code, message=message)
        self._actions.append(self._failure)
        return EngineState.FAILED
