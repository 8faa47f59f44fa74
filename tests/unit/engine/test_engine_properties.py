"""Property tests: the engine against the in-memory service over an adversarial link, thousands of schedules.

Each example builds a file, settings and a fault mix, runs ``LinkSimulation`` (which checks every request
and every write as it goes) and asserts the end: complete with exactly the file's bytes, or failed with a
reason the faults explain, within a bounded number of steps and of virtual seconds.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sim.engine.machine import (
    TRANSITIONS,
    Complete,
    DiscardBlocks,
    DownloadEngine,
    EngineInput,
    EngineSettings,
    EngineState,
    EngineStateError,
    EngineStats,
    Failed,
    FailureReason,
    SendRequest,
    WriteBlock,
)
from device_sim.protocol import DataBlock, Rejection, decode_bitmap
from device_sim.protocol.limits import MAX_BITMAP_BYTES, block_count, block_length
from tests.support.fakes_service import FakeStreamService, Faults, LinkSimulation, Outcome

EXAMPLES = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILE_ID = 9


@st.composite
def files(draw: st.DrawFn) -> tuple[int, bytes]:
    block_size = draw(st.sampled_from([256, 300, 512, 1024]))
    blocks = draw(st.integers(0, 40))
    size = draw(st.sampled_from([blocks * block_size, max(0, blocks * block_size - draw(st.integers(1, 255)))]))
    return block_size, random.Random(size).randbytes(size)


@st.composite
def engine_settings(draw: st.DrawFn, /, block_size: int, *, max_retries: Any = None, **fixed: Any) -> EngineSettings:
    window = 131072 // block_size
    return EngineSettings(
        block_size=block_size,
        blocks_per_request=draw(st.none() | st.integers(1, min(window, 12))),
        inflight=draw(st.integers(1, 4)),
        client_token=draw(st.none() | st.just("tok")),
        send_version=fixed.get("send_version", draw(st.booleans())),
        request_timeout=draw(st.none() | st.floats(0.05, 2.0)),
        max_retries=draw(max_retries) if max_retries is not None else 32,
        backoff_initial=0.1,
        backoff_max=1.0,
        fast_retry=draw(st.booleans()),
        report_sends=draw(st.booleans()),
    )


def faults(data: st.DataObject, s: EngineSettings, *, hostile: bool = False, **overrides: Any) -> Faults:
    """A fault mix. Client-side pacing is only drawn when the engine hears of each send (as the device does). Long
    stalls and outages can stop a download with a short fixed timeout for good, so they only come ``hostile``."""
    draw = data.draw
    values: dict[str, Any] = {
        "drop": draw(st.floats(0, 0.4)),
        "duplicate": draw(st.floats(0, 0.3)),
        "jitter": draw(st.sampled_from([0.0, 0.01, 0.2])),
        "garbage": draw(st.floats(0, 0.3)),
        "throttle": draw(st.floats(0, 0.2)),
        "foreign": draw(st.floats(0, 0.1)),
        "reorder": draw(st.sampled_from([0.0, 0.0, 0.3, 1.0])),
        "late": draw(st.sampled_from([0.0, 0.0, 0.2])),
        "late_s": draw(st.sampled_from([0.05, 0.3])),
        "stall": draw(st.sampled_from([0.0, 0.05, 0.3] if hostile else [0.0, 0.05])),
        "stall_s": draw(st.sampled_from([0.01, 0.3] if hostile else [0.01, 0.03])),
        "outage": draw(st.sampled_from([0.0, 0.05] if hostile else [0.0])),
        "send_gap": draw(st.sampled_from([0.0, 0.01, 0.3] if s.report_sends else [0.0])),
        "latency": draw(st.floats(0.001, 0.2)),
        "per_block": draw(st.sampled_from([0.0, 0.0001, 0.01])),
    }
    values.update(overrides)
    return Faults(**values)


def run(block_size: int, content: bytes, s: EngineSettings, f: Faults, rng: random.Random, **kw: Any) -> Outcome:
    service = FakeStreamService({FILE_ID: content})
    sim = LinkSimulation(service, file_id=FILE_ID, settings=s, faults=f, rng=rng, **kw)
    blocks = block_count(len(content), block_size)
    return sim.run(max_steps=5000 + 400 * blocks * (s.max_retries + 2))


def time_bound(blocks: int, s: EngineSettings, f: Faults, restarts: int) -> float:
    """Virtual seconds an engine may take: each new block, restart or the end follows at most
    ``max_retries + 1`` rounds without progress, each no longer than the longest wait plus a round trip."""
    longest = max(s.request_timeout or s.max_timeout, s.backoff_max, s.describe_timeout) + 2 * f.latency + f.jitter + 1
    longest += f.outage_s * (f.outage > 0) + f.stall_s * (f.stall > 0) + f.late_s * (f.late > 0)
    longest += f.send_gap * s.inflight
    return (blocks + restarts + 1) * (s.max_retries + 2) * longest


def check_end(out: Outcome, blocks: int, s: EngineSettings, f: Faults) -> None:
    assert out.violations == []
    assert out.state.terminal
    assert out.elapsed <= time_bound(blocks, s, f, out.stats.restarts)
    if out.state is EngineState.COMPLETE:
        assert out.data == out.expected
        assert out.failure is None
    else:
        assert out.failure is not None and out.failure.message


@EXAMPLES
@given(data=st.data(), rng=st.randoms(use_true_random=False))
def test_adversarial_link_ends_complete_or_failed_with_a_reason(data: st.DataObject, rng: random.Random) -> None:
    # st.randoms lets hypothesis steer every coin: it tries "drop everything", "throttle forever", ...
    block_size, content = data.draw(files())
    s = data.draw(engine_settings(block_size, max_retries=st.integers(0, 6)))
    f = faults(data, s, hostile=True, fatal=data.draw(st.floats(0, 0.05)), drop=data.draw(st.floats(0, 1)))
    out = run(block_size, content, s, f, rng)
    check_end(out, block_count(len(content), block_size), s, f)
    if out.state is EngineState.FAILED:
        assert out.failure is not None
        if out.failure.reason is FailureReason.REJECTED:
            assert f.fatal > 0 and out.failure.code == "ETagMismatch"
        else:
            assert out.failure.reason in (FailureReason.TIMEOUT, FailureReason.THROTTLED)


@EXAMPLES
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_recoverable_faults_always_complete_with_the_exact_bytes(data: st.DataObject, seed: int) -> None:
    # A seeded PRNG (not hypothesis-steered coins): loss is random, as on a real link, and never 100 %.
    block_size, content = data.draw(files())
    s = data.draw(engine_settings(block_size))
    f = faults(data, s)
    out = run(block_size, content, s, f, random.Random(seed))
    blocks = block_count(len(content), block_size)
    check_end(out, blocks, s, f)
    assert out.state is EngineState.COMPLETE, (out.failure, out.stats)
    assert out.stats.blocks_received == blocks
    assert out.stats.blocks_requested <= out.stats.requests_sent * s.window


@EXAMPLES
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_stream_updates_mid_download_restart_cleanly(data: st.DataObject, seed: int) -> None:
    block_size, content = data.draw(files())
    s = data.draw(engine_settings(block_size, send_version=True))
    f = faults(data, s, update=data.draw(st.floats(0.01, 0.15)), drop=data.draw(st.floats(0, 0.25)))
    out = run(block_size, content, s, f, random.Random(seed))
    check_end(out, 40 * (1 + out.stats.restarts), s, f)
    assert out.state is EngineState.COMPLETE, (out.failure, out.stats)
    assert out.data == out.expected  # the whole file of the version the engine ended on: no mixed versions


@EXAMPLES
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_resume_never_asks_for_stored_blocks(data: st.DataObject, seed: int) -> None:
    block_size, content = data.draw(files())
    blocks = block_count(len(content), block_size)
    have = data.draw(st.sets(st.integers(0, blocks - 1))) if blocks else set()
    s = data.draw(engine_settings(block_size))
    f = faults(data, s)
    out = run(block_size, content, s, f, random.Random(seed), have=have)
    check_end(out, blocks, s, f)  # the harness flags any request naming a stored block
    assert out.state is EngineState.COMPLETE, (out.failure, out.stats)
    assert out.stats.blocks_received == blocks - len(have)
    assert all(b not in have for r in out.requests for b in decode_bitmap(r.bitmap or b"", r.offset))


@EXAMPLES
@given(data=st.data(), seed=st.integers(0, 2**32))
def test_an_in_order_link_that_only_loses_never_gets_a_block_twice(data: st.DataObject, seed: int) -> None:
    """One MQTT connection: answers in order, answers queued behind answers, outages, some messages lost (data
    blocks discarded at the source, as AWS discards over its quotas). Every block asked again (idle timeout on a
    quiet link, fast re-request after the highest block, re-send after the link resumed) was really lost, so
    nothing arrives twice."""
    block_size, content = data.draw(files())
    s = dataclasses.replace(data.draw(engine_settings(block_size)), request_timeout=None)
    f = Faults(
        drop=data.draw(st.floats(0, 0.4)),
        drop_at_source=True,
        outage=data.draw(st.sampled_from([0.0, 0.05])),
        send_gap=data.draw(st.sampled_from([0.0, 0.01, 0.3] if s.report_sends else [0.0])),
        latency=data.draw(st.floats(0.001, 0.2)),
        per_block=data.draw(st.sampled_from([0.0, 0.0001, 0.01, 0.06])),
    )
    out = run(block_size, content, s, f, random.Random(seed))
    check_end(out, block_count(len(content), block_size), s, f)
    assert out.state is EngineState.COMPLETE, (out.failure, out.stats)
    assert out.stats.duplicates == 0, out.stats


# ------------------------------------------------------------------------ arbitrary input sequences (fuzz)

_INPUTS = st.one_of(
    st.tuples(st.just("start")),
    st.tuples(st.just("timer")),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("restart"), st.integers(0, 12 * 256), st.integers(1, 3)),
    st.tuples(st.just("block"), st.integers(-2, 14), st.integers(0, 2), st.integers(-1, 1)),
    st.tuples(st.just("rejection"), st.sampled_from(["InternalError", "VersionMismatch", "ETagMismatch", "Nope"])),
    st.tuples(st.just("sent"), st.integers(0, 8)),
    st.tuples(st.just("resumed")),
)
_METHOD = {
    "start": EngineInput.START,
    "timer": EngineInput.TIMER,
    "cancel": EngineInput.CANCEL,
    "restart": EngineInput.RESTART,
    "block": EngineInput.RECEIVE_BLOCK,
    "rejection": EngineInput.RECEIVE_REJECTION,
    "sent": EngineInput.REQUEST_SENT,
    "resumed": EngineInput.LINK_RESUMED,
}


@EXAMPLES
@given(
    ops=st.lists(st.tuples(_INPUTS, st.floats(0, 3)), max_size=60),
    inflight=st.integers(1, 3),
    window=st.integers(1, 5),
)
def test_any_input_sequence_keeps_the_invariants(
    ops: list[tuple[tuple[Any, ...], float]], inflight: int, window: int
) -> None:
    s = EngineSettings(block_size=256, blocks_per_request=window, inflight=inflight, max_retries=4)
    engine = DownloadEngine(file_id=1, file_size=10 * 256 + 50, stream_version=1, now=0.0, settings=s)
    stored: set[int] = set()
    in_flight: dict[int, int] = {}  # block -> requests that named it since the last timeout/back-off/restart
    now = 0.0
    for op, step in ops:
        now += step
        name = op[0]
        state = engine.state
        before = engine.stats
        try:
            if name == "start":
                engine.start(now)
            elif name == "timer":
                engine.handle_timer(now)
            elif name == "cancel":
                engine.cancel("stop", now)
            elif name == "restart":
                engine.restart(op[1], op[2], now)
            elif name == "sent":
                engine.request_sent(op[1], now)
            elif name == "resumed":
                engine.link_resumed(now)
            elif name == "block":
                index, file_id, skew = op[1], op[2], op[3]
                payload = bytes(block_length(engine.file_size, 256, index)) if index >= 0 else b"x"
                if skew:
                    payload = payload[:-1] if skew < 0 else payload + b"!"
                engine.receive_block(
                    DataBlock(file_id=file_id, block_index=index, block_length=len(payload), payload=payload), now
                )
            else:
                engine.receive_rejection(Rejection(code=op[1], message="fuzz"), now)
        except EngineStateError as refused:
            assert (state, _METHOD[name]) not in TRANSITIONS
            assert refused.state is state and engine.state is state
            continue
        assert (state, _METHOD[name]) in TRANSITIONS
        assert engine.state in TRANSITIONS[(state, _METHOD[name])]
        after = engine.stats

        def expiries(stats: EngineStats) -> int:
            return (
                stats.timeouts
                + stats.fast_retries
                + stats.resends
                + stats.backoffs
                + stats.restarts
                + stats.redescribes
            )

        if expiries(after) > expiries(before):
            in_flight.clear()
        total = block_count(engine.file_size, 256)
        for action in engine.next_actions():
            if isinstance(action, SendRequest):
                r = action.request
                assert r.bitmap is not None and 0 < len(r.bitmap) < MAX_BITMAP_BYTES and r.bitmap[-1]
                named = decode_bitmap(r.bitmap, r.offset)
                assert named[0] == r.offset and named[-1] < total and r.number_of_blocks == len(named) <= window
                assert not stored & set(named), "asked for a stored block"
                assert not in_flight.keys() & set(named), "two requests in flight name the same block"
                in_flight.update(dict.fromkeys(named, 1))
            elif isinstance(action, WriteBlock):
                assert action.index not in stored
                assert len(action.payload) == block_length(engine.file_size, 256, action.index)
                stored.add(action.index)
                in_flight.pop(action.index, None)
            elif isinstance(action, Complete):
                assert engine.state is EngineState.COMPLETE and len(stored) == total
            elif isinstance(action, Failed):
                assert engine.state is EngineState.FAILED
            else:
                if isinstance(action, DiscardBlocks):
                    stored.clear()
                in_flight.clear()
        assert (engine.get_timer() is None) == engine.state.terminal
        assert engine.blocks_have == len(stored)
