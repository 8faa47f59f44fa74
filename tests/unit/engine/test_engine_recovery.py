"""Loss recovery by hand: the idle timeout's floors, timing out only on a quiet link, fast re-requests, the
caller's reports of a request leaving (``request_sent``) and of the link coming back (``link_resumed``)."""

from __future__ import annotations

import random

import pytest

from device_sim.engine.machine import EngineSettings, EngineState, FailureReason
from device_sim.engine.rtt import FAST_RETRY_MIN, RttEstimator
from tests.support.fakes_service import (
    BS,
    FakeStreamService,
    Faults,
    LinkSimulation,
    asked,
    blk,
    content_of,
    make,
    requests,
)

# ------------------------------------------------------------------------------------------- idle timeout


@pytest.mark.parametrize(("rtt", "expected"), [(0.001, 0.2), (0.1, 0.2), (0.3, 0.375), (1.0, 1.25), (9.0, 10.0)])
def test_a_steady_round_trip_keeps_a_quarter_of_slack_and_the_floor(rtt: float, expected: float) -> None:
    estimator = RttEstimator(initial=1.0, minimum=EngineSettings().min_timeout, maximum=10.0)
    for _ in range(60):
        estimator.sample(rtt)
    assert estimator.rttvar is not None and 4 * estimator.rttvar < 0.01 * rtt  # RFC 6298 alone: ~SRTT
    assert estimator.timeout() == pytest.approx(expected)


def test_a_jittery_round_trip_still_follows_rttvar() -> None:
    estimator = RttEstimator(initial=1.0, minimum=0.2, maximum=10.0)
    for i in range(60):
        estimator.sample(0.5 if i % 2 else 1.5)
    srtt, rttvar = estimator.srtt, estimator.rttvar
    assert srtt is not None and rttvar is not None and 4 * rttvar > srtt / 4
    assert estimator.timeout() == pytest.approx(srtt + 4 * rttvar)


def test_before_any_sample_an_expired_timer_keeps_its_backed_off_value() -> None:
    """Karn + RFC 6298 5.5: re-asked blocks give no sample, so without this the timer would fall back to the
    initial 1 s after every bit of progress and keep asking a slow (loaded) service for the same blocks."""
    estimator = RttEstimator(initial=1.0, minimum=0.2, maximum=10.0)
    estimator.expired()
    estimator.expired()
    assert estimator.timeout() == pytest.approx(4.0)  # kept at rounds=0: progress does not undo it
    for _ in range(5):
        estimator.expired()
    assert estimator.timeout() == pytest.approx(10.0)  # bounded by the maximum
    assert estimator.timeout(rounds=5) == pytest.approx(10.0)  # no estimate: the grace rounds play no part
    estimator.sample(0.3)  # the first valid sample replaces the backed-off guess
    assert estimator.timeout() == pytest.approx(0.3 + 4 * 0.15)
    estimator.expired()  # with an estimate, only the rounds without progress double it
    assert estimator.timeout() == pytest.approx(0.3 + 4 * 0.15)
    assert estimator.timeout(rounds=3) == pytest.approx(2 * (0.3 + 4 * 0.15))


def test_a_slow_first_answer_is_asked_for_again_only_a_few_times() -> None:
    """A service answering after 3 s (no loss): the engine backs off 1 -> 2 s instead of re-asking every 1 s."""
    content = content_of(64 * BS)
    engine = make(64 * BS, blocks_per_request=8)
    engine.start(0.0)
    sent = requests(engine)
    assert len(sent) == 1
    now = 0.0
    pending = [(3.0, sent[0])]
    while engine.state is EngineState.RUNNING and now < 120:
        due, request = min(pending, key=lambda p: p[0])
        timer = engine.get_timer()
        if timer is not None and timer < due:
            now = timer
            engine.handle_timer(now)
        else:
            now = due
            pending.remove((due, request))
            for i in asked(request):
                engine.receive_block(blk(content, i), now)
        pending += [(now + 3.0, r) for r in requests(engine)]
    assert engine.state is EngineState.COMPLETE
    # Asked again once at 1 s; the re-request then waits 2 s (backed off), so the answer at 3 s comes first and
    # the re-request's answer is the only duplicate window. Falling back to 1 s would ask a second time at 2 s.
    assert engine.stats.timeouts == 1, engine.stats
    assert engine.stats.duplicates == 8


def test_the_default_floor_is_0_2_seconds() -> None:
    assert EngineSettings().min_timeout == 0.2


# ------------------------------------------------------------------------------------------ quiet link


def test_a_request_queued_behind_another_answer_is_not_timed_out_while_blocks_arrive() -> None:
    content = content_of(16 * BS)
    # probe=False: the whole request is asked again (with probing its first block alone: test_engine_probe.py)
    engine = make(16 * BS, blocks_per_request=8, inflight=2, request_timeout=0.5, probe=False)
    engine.start(0.0)
    assert [asked(r) for r in requests(engine)] == [list(range(8)), list(range(8, 16))]
    for i in range(8):  # the first answer trickles in, one block every 0.1 s; the second waits behind it
        engine.receive_block(blk(content, i), 0.1 * (i + 1))
        assert engine.get_timer() == pytest.approx(0.1 * (i + 1) + 0.5)
    engine.handle_timer(1.0)  # the second request has been idle for 1 s, the link for 0.2 s
    assert engine.stats.timeouts == 0 and requests(engine) == []
    engine.handle_timer(1.3)  # the link has been quiet for 0.5 s: now it is lost
    assert [asked(r) for r in requests(engine)] == [list(range(8, 16))]
    assert engine.stats.timeouts == 1


def test_duplicates_and_stale_blocks_keep_the_link_busy_but_foreign_ones_do_not() -> None:
    content = content_of(16 * BS)
    engine = make(16 * BS, blocks_per_request=8, inflight=2, request_timeout=0.5)
    engine.start(0.0)
    requests(engine)
    engine.receive_block(blk(content, 0), 0.1)
    engine.receive_block(blk(content, 0), 0.4)  # a duplicate: still the link delivering
    assert engine.get_timer() == pytest.approx(0.9)
    engine.receive_block(blk(content, 1, file_id=7), 0.8)  # another file's block says nothing about ours
    assert engine.get_timer() == pytest.approx(0.9)
    engine.handle_timer(0.9)
    assert engine.stats.timeouts == 2


# ----------------------------------------------------------------------------------------- fast re-request


def test_missing_blocks_are_asked_again_soon_after_the_highest_block() -> None:
    content = content_of(40 * BS)
    engine = make(40 * BS, blocks_per_request=8)
    engine.start(0.0)
    requests(engine)
    for i in (0, 1, 2, 4, 5, 7):  # 3 and 6 are lost; 7 is the highest of the request
        engine.receive_block(blk(content, i), 0.05)
    deadline = engine.get_timer()
    assert deadline is not None and deadline == pytest.approx(0.05 + FAST_RETRY_MIN)
    assert deadline < 0.05 + engine.stats.timeout
    engine.handle_timer(deadline)
    (again,) = requests(engine)
    assert asked(again) == [3, 6, 8, 9, 10, 11, 12, 13]
    stats = engine.stats
    assert (stats.fast_retries, stats.timeouts, stats.re_requests) == (1, 0, 1)


def test_a_block_moved_behind_the_highest_one_is_waited_for() -> None:
    content = content_of(8 * BS)
    engine = make(8 * BS, blocks_per_request=8)
    engine.start(0.0)
    requests(engine)
    for i in (0, 1, 2, 4, 5, 6, 7):
        engine.receive_block(blk(content, i), 0.05)
    engine.receive_block(blk(content, 3), 0.05 + FAST_RETRY_MIN / 2)  # reordered: inside the grace
    assert engine.state is EngineState.COMPLETE
    assert engine.stats.fast_retries == 0 and engine.stats.duplicates == 0


def test_the_grace_stretches_with_the_gap_between_blocks_and_with_srtt() -> None:
    content = content_of(80 * BS)
    engine = make(80 * BS, blocks_per_request=8)
    engine.start(0.0)
    requests(engine)
    for k, i in enumerate((0, 1, 2, 4, 5, 6, 7)):  # a block every 0.1 s: a paced link
        engine.receive_block(blk(content, i), 1.0 + 0.1 * k)
    srtt = engine.stats.srtt
    assert srtt == pytest.approx(1.0)
    gap = 0.6 / 6
    assert engine.get_timer() == pytest.approx(1.6 + max(2 * gap, srtt / 4))


def test_when_the_highest_block_is_lost_the_idle_timer_asks_again() -> None:
    content = content_of(8 * BS)
    engine = make(8 * BS, blocks_per_request=8)
    engine.start(0.0)
    requests(engine)
    for i in range(7):  # block 7, the highest, is lost
        engine.receive_block(blk(content, i), 0.05)
    assert engine.get_timer() == pytest.approx(0.05 + engine.stats.timeout)
    engine.handle_timer(0.05 + engine.stats.timeout)
    assert [asked(r) for r in requests(engine)] == [[7]]
    assert (engine.stats.timeouts, engine.stats.fast_retries) == (1, 0)


def test_without_fast_retry_the_idle_timer_decides() -> None:
    content = content_of(8 * BS)
    engine = make(8 * BS, blocks_per_request=8, fast_retry=False)
    engine.start(0.0)
    requests(engine)
    for i in (0, 1, 2, 4, 5, 6, 7):
        engine.receive_block(blk(content, i), 0.05)
    assert engine.get_timer() == pytest.approx(0.05 + engine.stats.timeout)


def test_fast_re_requests_do_not_count_towards_the_abort_rule() -> None:
    content = content_of(200 * BS)
    engine = make(200 * BS, blocks_per_request=2, max_retries=0)
    engine.start(0.0)
    now = 0.0
    for _ in range(90):  # every request loses its lower block (block 0, asked again and again): 90 rounds
        (request,) = requests(engine)
        now += 0.05
        engine.receive_block(blk(content, asked(request)[-1]), now)
        now = engine.get_timer()  # type: ignore[assignment]
        engine.handle_timer(now)
    assert engine.state is EngineState.RUNNING
    assert (engine.stats.fast_retries, engine.stats.timeouts, engine.stats.blocks_received) == (90, 0, 90)


def test_a_fast_re_request_proved_spurious_doubles_the_grace() -> None:
    content = content_of(40 * BS)

    def after_a_late_block(duplicate: bool) -> tuple[float, int]:
        engine = make(40 * BS, blocks_per_request=4)
        engine.start(0.0)
        requests(engine)
        for i in (0, 1, 3):  # 2 is late, not lost
            engine.receive_block(blk(content, i), 0.05)
        engine.handle_timer(engine.get_timer())  # type: ignore[arg-type]
        (again,) = requests(engine)
        assert asked(again) == [2, 4, 5, 6]
        engine.receive_block(blk(content, 2), 0.08)  # the late original ...
        if duplicate:
            engine.receive_block(blk(content, 2), 0.081)  # ... and the re-request's answer to it
        for i in (4, 6):  # 5 is lost this time
            engine.receive_block(blk(content, i), 0.13)
        timer = engine.get_timer()
        assert timer is not None
        return timer - 0.13, engine.stats.spurious_fast_retries

    assert after_a_late_block(duplicate=False)[1] == 0
    grace, spurious = after_a_late_block(duplicate=True)
    assert spurious == 1
    assert grace == pytest.approx(2 * after_a_late_block(duplicate=False)[0])


# -------------------------------------------------------------------------------------------- request_sent


def test_a_request_held_back_by_flow_control_times_out_only_after_it_left() -> None:
    content = content_of(8 * BS)
    engine = make(8 * BS, blocks_per_request=8, request_timeout=0.5, report_sends=True)
    engine.start(0.0)
    (request,) = engine.next_actions()
    assert engine.get_timer() == pytest.approx(10.0)  # not reported yet: only the safety net (max_timeout)
    engine.handle_timer(2.0)
    assert engine.stats.timeouts == 0
    engine.request_sent(request.seq, 3.0)  # type: ignore[union-attr]
    assert engine.get_timer() == pytest.approx(3.5)
    engine.receive_block(blk(content, 0), 3.2)
    assert engine.stats.srtt == pytest.approx(0.2)  # measured from the departure, not from 0.0


def test_a_request_never_reported_still_times_out() -> None:
    engine = make(8 * BS, report_sends=True)
    engine.start(0.0)
    requests(engine)
    engine.handle_timer(10.0)
    assert [asked(r) for r in requests(engine)] == [list(range(8))]
    assert engine.stats.timeouts == 1


def test_request_sent_restarts_the_timer_and_is_ignored_when_late_or_unknown() -> None:
    content = content_of(16 * BS)
    engine = make(16 * BS, blocks_per_request=8, inflight=2, request_timeout=0.5)
    engine.start(0.0)
    first, second = engine.next_actions()
    engine.request_sent(first.seq, 0.1)  # type: ignore[union-attr]
    engine.request_sent(99, 0.1)  # no such request: ignored
    assert engine.get_timer() == pytest.approx(0.5)  # the second still counts from its emission
    engine.request_sent(second.seq, 0.2)  # type: ignore[union-attr]
    assert engine.get_timer() == pytest.approx(0.6)
    engine.receive_block(blk(content, 0), 0.3)
    engine.request_sent(first.seq, 0.4)  # a block of it already came: the report changes nothing
    assert engine.stats.srtt == pytest.approx(0.2)
    assert engine.get_timer() == pytest.approx(0.8)


def test_rejections_of_requests_from_before_a_restart_are_stale_until_a_new_one_left() -> None:
    from device_sim.protocol import Rejection

    engine = make(40 * BS, blocks_per_request=8, report_sends=True)
    engine.start(0.0)
    (old,) = engine.next_actions()
    engine.request_sent(old.seq, 0.01)  # type: ignore[union-attr]
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.1)
    engine.next_actions()
    engine.restart(40 * BS, 1, 0.2)
    (new,) = engine.next_actions()  # held back by flow control ...
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.3)  # ... so this answers an older request
    assert engine.state is EngineState.RUNNING and engine.stats.ignored_rejections == 1
    engine.request_sent(new.seq, 0.4)  # type: ignore[union-attr]
    engine.receive_rejection(Rejection(code="VersionMismatch"), 0.5)  # this one may answer the new request
    assert engine.state is EngineState.NEEDS_DESCRIBE


# ------------------------------------------------------------------------------------------- link_resumed


def test_link_resumed_sends_every_request_in_flight_again_at_once() -> None:
    content = content_of(40 * BS)
    engine = make(40 * BS, blocks_per_request=8, inflight=2)
    engine.start(0.0)
    requests(engine)
    for i in (0, 1, 2, 9):
        engine.receive_block(blk(content, i), 0.05)
    engine.link_resumed(0.3)
    assert [asked(r) for r in requests(engine)] == [[3, 4, 5, 6, 7, 8, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19]]
    stats = engine.stats
    assert (stats.resends, stats.timeouts, stats.re_requests) == (2, 0, 2)  # 12-15 were asked before too


def test_link_resumed_leaves_the_requests_still_queued_at_the_caller() -> None:
    engine = make(40 * BS, blocks_per_request=8, inflight=2, report_sends=True)
    engine.start(0.0)
    first, _ = engine.next_actions()
    engine.request_sent(first.seq, 0.01)  # type: ignore[union-attr]
    engine.link_resumed(0.3)  # the second never left (flow control held it): it goes out once it can
    assert [asked(r) for r in requests(engine)] == [list(range(8))]  # the first, again
    assert engine.stats.resends == 1


def test_a_link_that_keeps_coming_back_without_data_gives_up() -> None:
    engine = make(8 * BS, max_retries=3)
    engine.start(0.0)
    now = 0.0
    while engine.state is EngineState.RUNNING:
        now += 0.1
        engine.link_resumed(now)
        requests(engine)
    assert engine.failure is not None and engine.failure.reason is FailureReason.TIMEOUT
    assert engine.stats.resends == 3 + 1


@pytest.mark.parametrize("code", ["InternalError", "VersionMismatch"])
def test_link_resumed_while_waiting_changes_nothing(code: str) -> None:
    from device_sim.protocol import Rejection

    engine = make(8 * BS)
    engine.link_resumed(0.0)  # IDLE
    engine.start(0.0)
    engine.receive_rejection(Rejection(code=code), 0.1)
    state, timer = engine.state, engine.get_timer()
    engine.next_actions()
    engine.link_resumed(0.2)
    assert engine.state is state and engine.get_timer() == timer and engine.next_actions() == []
    assert engine.stats.resends == 0


# ------------------------------------------------------------------------------------------------ links


def _run(settings: EngineSettings, faults: Faults, seed: int, size: int = 1 << 20) -> tuple[float, int, int]:
    content = random.Random(seed).randbytes(size)
    sim = LinkSimulation(
        FakeStreamService({1: content}), file_id=1, settings=settings, faults=faults, rng=random.Random(seed)
    )
    out = sim.run(max_steps=10**6)
    assert out.state is EngineState.COMPLETE and out.data == content and out.violations == []
    return out.elapsed, out.stats.duplicates, out.stats.timeouts


def test_answers_paced_like_aws_are_never_timed_out() -> None:
    """Three requests of 128 KiB in flight on a 512 KiB/s link: each answer waits up to 0.5 s behind the others."""
    faults = Faults(latency=0.05, per_block=32768 / (512 * 1024))
    for seed in range(3):
        _, duplicates, timeouts = _run(EngineSettings(block_size=32768, inflight=3), faults, seed, 2 << 20)
        assert (duplicates, timeouts) == (0, 0)


def test_hiccups_on_a_steady_link_are_not_taken_for_losses() -> None:
    faults = Faults(stall=0.05, stall_s=0.03, latency=0.15, per_block=4096 / 12.5e6)
    for seed in range(3):
        _, duplicates, timeouts = _run(EngineSettings(), faults, seed, 4 << 20)
        assert (duplicates, timeouts) == (0, 0)


def test_reordering_inside_answers_costs_no_duplicates() -> None:
    faults = Faults(reorder=0.3, latency=0.025, per_block=4096 / 12.5e6)
    for seed in range(3):
        _, duplicates, timeouts = _run(EngineSettings(inflight=2), faults, seed)
        assert (duplicates, timeouts) == (0, 0)


def test_late_blocks_teach_the_engine_to_wait_instead_of_duplicating() -> None:
    """A fifth of the blocks come 150 ms late (local_iot's delay fault): the first fast re-requests prove spurious,
    then the reordering window covers the lateness and duplicates stop."""
    faults = Faults(late=0.2, late_s=0.15, latency=0.025, per_block=4096 / 12.5e6)
    for seed in range(3):
        _, duplicates, timeouts = _run(EngineSettings(), faults, seed, 4 << 20)
        assert duplicates <= 0.03 * 1024 and timeouts == 0


def test_fast_re_requests_halve_the_time_at_five_percent_loss() -> None:
    faults = Faults(drop=0.05, latency=0.025, per_block=4096 / 12.5e6)
    fast = sorted(_run(EngineSettings(), faults, seed)[0] for seed in range(7))
    slow = sorted(_run(EngineSettings(fast_retry=False), faults, seed)[0] for seed in range(7))
    assert fast[3] < 0.6 * slow[3], (fast, slow)
