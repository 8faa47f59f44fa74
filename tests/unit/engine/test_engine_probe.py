"""Probing (EngineSettings.probe): an idle timeout asks again for one block first, so a late answer costs one
duplicate instead of a whole request's, and a lost one a round trip more."""

from __future__ import annotations

import pytest

from device_sim.engine.machine import DownloadEngine, EngineSettings, EngineState
from device_sim.engine.rtt import SHARED_TIMEOUT_MAX_SCALE, SharedRtt, SpuriousTimeouts
from tests.support.fakes_service import BS, asked, blk, content_of, make, requests

CONTENT = content_of(40 * BS)


def _second_request_waiting(**settings: object) -> tuple[DownloadEngine, float]:
    """The first request (blocks 0-7) answered at once, which gives a round-trip sample; the second (8-15) gets
    blocks 8 and 9, then nothing until its idle timer fires. Returns the engine and the time of the timeout."""
    engine = make(40 * BS, blocks_per_request=8, **settings)  # type: ignore[arg-type]
    engine.start(0.0)
    assert [asked(r) for r in requests(engine)] == [list(range(8))]
    for i in range(8):
        engine.receive_block(blk(CONTENT, i), 0.05)
    assert [asked(r) for r in requests(engine)] == [list(range(8, 16))]
    engine.receive_block(blk(CONTENT, 8), 0.10)
    engine.receive_block(blk(CONTENT, 9), 0.10)
    assert requests(engine) == []
    deadline = engine.get_timer()
    assert deadline is not None
    engine.handle_timer(deadline)
    return engine, deadline


def test_a_timeout_asks_again_for_the_lowest_missing_block_alone() -> None:
    engine, _ = _second_request_waiting()
    assert [asked(r) for r in requests(engine)] == [[10]]
    assert engine.stats.timeouts == 1 and engine.stats.re_requests == 1


def test_a_late_answer_costs_one_duplicate_and_proves_the_timeout_spurious() -> None:
    engine, at = _second_request_waiting()
    requests(engine)
    for i in range(10, 16):  # the second request's answer was only late: it arrives before the probe's
        engine.receive_block(blk(CONTENT, i), at + 0.01)
    # block 10 completed the probe (1 block), so the slot went to the next window at once
    assert [asked(r) for r in requests(engine)] == [list(range(16, 24))]
    engine.receive_block(blk(CONTENT, 10), at + 0.02)  # the probe's own answer
    stats = engine.stats
    assert stats.duplicates == 1 and stats.spurious_timeouts == 1 and stats.timeouts == 1
    for i in range(16, 40):
        engine.receive_block(blk(CONTENT, i), at + 0.03)
        requests(engine)
    assert engine.state is EngineState.COMPLETE and engine.stats.duplicates == 1


def test_without_probing_a_late_answer_costs_the_whole_rest_of_the_request() -> None:
    engine, at = _second_request_waiting(probe=False)
    assert [asked(r) for r in requests(engine)] == [list(range(10, 18))]
    for i in range(10, 16):
        engine.receive_block(blk(CONTENT, i), at + 0.01)
    for i in range(10, 16):  # the re-request's answer
        engine.receive_block(blk(CONTENT, i), at + 0.02)
    assert engine.stats.duplicates == 6


def test_when_the_probe_is_answered_first_the_rest_is_asked_again_after_one_more_idle_timeout() -> None:
    engine, at = _second_request_waiting()
    requests(engine)
    engine.receive_block(blk(CONTENT, 10), at + 0.05)  # the probe's answer (or the late request's first block)
    assert requests(engine) == []  # 11-15 may still follow: the request holds its slot again
    deadline = engine.get_timer()
    assert deadline is not None
    assert deadline == pytest.approx(at + 0.05 + engine.stats.timeout)  # a whole timeout, not a short grace
    engine.handle_timer(deadline - 0.01)
    assert requests(engine) == []
    engine.handle_timer(deadline)
    assert [asked(r) for r in requests(engine)] == [list(range(11, 19))]  # not probed twice
    stats = engine.stats
    assert stats.timeouts == 2 and stats.fast_retries == 0 and stats.duplicates == 0


def test_when_the_probe_times_out_too_the_block_is_probed_again_and_the_request_keeps_waiting() -> None:
    """A service whose queue grew past two idle timeouts: neither the late answer nor the probe's came. The block
    is asked for alone again (not the whole rest of the request), and when the queue drains the late answer
    completes the request: two duplicate blocks (the two probes' answers) instead of the whole rest again."""
    engine, _ = _second_request_waiting()
    assert [asked(r) for r in requests(engine)] == [[10]]
    deadline = engine.get_timer()
    assert deadline is not None
    engine.handle_timer(deadline)
    assert [asked(r) for r in requests(engine)] == [[10]]  # probed again, alone
    assert engine.stats.timeouts == 2
    again = engine.get_timer()
    assert again is not None and again > deadline
    for i in range(10, 16):  # the queue drains: the late answer first, then the two probes' answers
        engine.receive_block(blk(CONTENT, i), deadline + 0.05)
    assert [asked(r) for r in requests(engine)] == [list(range(16, 24))]
    engine.receive_block(blk(CONTENT, 10), deadline + 0.06)
    engine.receive_block(blk(CONTENT, 10), deadline + 0.06)
    for i in range(16, 40):
        engine.receive_block(blk(CONTENT, i), deadline + 0.07)
        requests(engine)
    assert engine.state is EngineState.COMPLETE
    assert engine.stats.duplicates == 2 and engine.stats.re_requests == 2


def test_a_dead_link_still_fails_while_the_probe_is_asked_again() -> None:
    engine, at = _second_request_waiting(max_retries=3)
    sent = [asked(r) for r in requests(engine)]
    now = at
    while engine.state is not EngineState.FAILED:
        deadline = engine.get_timer()
        assert deadline is not None and deadline > now and deadline < at + 60
        now = deadline
        engine.handle_timer(now)
        sent += [asked(r) for r in requests(engine)]
    assert sent[:3] == [[10], [10], [10]]  # probes while the link is quiet, then the abort rule
    assert engine.stats.timeouts == 4


def test_a_late_answer_after_the_probe_block_completes_the_request_within_the_grace() -> None:
    engine, at = _second_request_waiting()
    requests(engine)
    engine.receive_block(blk(CONTENT, 10), at + 0.05)
    for i in range(11, 16):  # it was the late answer after all: the rest follows, even 0.1 s later
        engine.receive_block(blk(CONTENT, i), at + 0.15)
    assert [asked(r) for r in requests(engine)] == [list(range(16, 24))]
    engine.receive_block(blk(CONTENT, 10), at + 0.16)  # the probe's own answer
    stats = engine.stats
    assert stats.duplicates == 1 and stats.fast_retries == 0


def test_a_block_of_a_request_sent_after_the_probe_releases_the_suspect_at_once() -> None:
    engine = make(40 * BS, blocks_per_request=8, inflight=2)
    engine.start(0.0)
    assert [asked(r) for r in requests(engine)] == [list(range(8)), list(range(8, 16))]
    for i in range(8):  # a sample; the slot goes to 16-23
        engine.receive_block(blk(CONTENT, i), 0.05)
    assert [asked(r) for r in requests(engine)] == [list(range(16, 24))]
    for i in range(16, 24):  # 8-15 waits, 16-23 is answered (another service path, say): 24-31 next
        engine.receive_block(blk(CONTENT, i), 0.06)
    assert [asked(r) for r in requests(engine)] == [list(range(24, 32))]
    engine.receive_block(blk(CONTENT, 24), 0.07)
    engine.receive_block(blk(CONTENT, 25), 0.07)
    deadline = engine.get_timer()
    assert deadline is not None
    engine.handle_timer(deadline)  # both idle: 8-15 probed with block 8 alone, 24-31 asked again whole
    sent = [asked(r) for r in requests(engine)]
    assert sent == [[8], [26, 27, 28, 29, 30, 31, 32, 33]]
    engine.receive_block(blk(CONTENT, 26), deadline + 0.01)  # a block asked after the probe: 9-15 are lost
    assert not any(engine.has_block(i) for i in range(8, 16))
    engine.receive_block(blk(CONTENT, 8), deadline + 0.02)  # the probe's answer comes too
    for i in range(27, 34):
        engine.receive_block(blk(CONTENT, i), deadline + 0.02)
    again = [asked(r) for r in requests(engine)]
    assert again[0][:7] == list(range(9, 16))  # two slots free: 9-15 first


def test_after_a_loss_timeouts_ask_again_whole_until_loss_memory_requests_went_clean() -> None:
    engine = make(40 * BS, blocks_per_request=8)
    engine.start(0.0)
    requests(engine)
    for i in (0, 1, 2, 3, 4, 5, 7):  # 6 is lost: the fast re-request finds it
        engine.receive_block(blk(CONTENT, i), 0.05)
    deadline = engine.get_timer()
    assert deadline is not None
    engine.handle_timer(deadline)
    assert [asked(r) for r in requests(engine)] == [[6, *range(8, 15)]]
    assert engine.stats.fast_retries == 1
    engine.receive_block(blk(CONTENT, 6), deadline + 0.05)
    engine.receive_block(blk(CONTENT, 8), deadline + 0.05)  # then the answer stops: a lossy link
    deadline = engine.get_timer()
    assert deadline is not None
    engine.handle_timer(deadline)
    assert [asked(r) for r in requests(engine)] == [list(range(9, 17))]  # whole, no probe


@pytest.mark.parametrize("received", [(8, 10), ()])
def test_no_probe_for_a_request_with_a_hole_or_before_a_round_trip_sample(received: tuple[int, ...]) -> None:
    engine = make(40 * BS, blocks_per_request=8)
    engine.start(0.0)
    requests(engine)
    if received:  # a sample from the first request, then a hole in the second's answer (9 lost)
        for i in range(8):
            engine.receive_block(blk(CONTENT, i), 0.05)
        requests(engine)
        for i in received:
            engine.receive_block(blk(CONTENT, i), 0.10)
    deadline = engine.get_timer()
    assert deadline is not None
    engine.handle_timer(deadline)
    (again,) = requests(engine)
    assert len(asked(again)) == 8


def test_in_a_fleet_a_first_request_that_waited_too_long_probes_too() -> None:
    # Before any sample a lone device asks for everything again (a lost first request is as likely as a slow one);
    # a fleet's device waits behind the others' first requests, so it probes.
    shared = SharedRtt()
    engine = DownloadEngine(
        file_id=2,
        file_size=40 * BS,
        stream_version=1,
        now=0.0,
        settings=EngineSettings(block_size=BS, blocks_per_request=8, answer_rate=None),
        shared=shared,
    )
    engine.start(0.0)
    requests(engine)
    deadline = engine.get_timer()
    assert deadline is not None
    engine.handle_timer(deadline)
    assert [asked(r) for r in requests(engine)] == [[0]]
    for i in range(8):  # the late first answer
        engine.receive_block(blk(CONTENT, i), deadline + 0.5)
    engine.receive_block(blk(CONTENT, 0), deadline + 0.6)  # and the probe's
    assert engine.stats.duplicates == 1


def test_a_spurious_timeout_is_one_proof_and_a_fleet_stretches_at_most_four_times() -> None:
    own = SpuriousTimeouts()
    own.expired(range(32))
    for index in range(32):  # the whole late answer comes twice
        own.duplicate(index)
    assert own.spurious == 1 and own.scale == 2
    shared = SharedRtt()
    for _ in range(5):
        shared.timeouts.proved()
    assert shared.timeouts.scale == SHARED_TIMEOUT_MAX_SCALE == 4
    for _ in range(5):
        own.proved()
    assert own.scale == 16  # a device's own stretch still reaches 16
