"""The rustot profile on a virtual clock: its 31-block window, 16 per request, 5 s wait and bytes."""

from __future__ import annotations

import functools

import pytest

from device_sim.engine.profiles import ProfileRefused, ProfileSettings, RustotMachine
from device_sim.engine.types import EngineState, FailureReason
from device_sim.protocol import Format, encode_request
from tests.support.fakes_service import FakeStreamService
from tests.support.fakes_service import content_of as _content_of
from tests.support.profile_link import ProfileLink

content_of = functools.cache(_content_of)


def machine(size: int, **kw: object) -> RustotMachine:
    return RustotMachine(file_id=0, file_size=size, now=0.0, settings=ProfileSettings.for_profile("rustot", **kw))  # type: ignore[arg-type]


def test_defaults() -> None:
    s = ProfileSettings.for_profile("rustot")
    assert (s.block_size, s.blocks_per_request, s.request_wait, s.momentum) == (1024, 16, 5.0, 3)
    with pytest.raises(ProfileRefused, match="31-block window"):
        ProfileSettings.for_profile("rustot", blocks_per_request=32)


def test_first_request_bytes() -> None:
    m = machine(100 * 1024)
    m.start(0.0)
    (action,) = m.next_actions()
    assert encode_request(action.request, Format.CBOR) == bytes.fromhex(  # type: ignore[union-attr]
        "a5 6166 00 616c 190400 616f 00 6162 44 ffffff7f 616e 10"
    )


def test_window_of_31_in_requests_of_16_then_slides() -> None:
    size = 100 * 1024 + 1
    run = ProfileLink(FakeStreamService({0: content_of(size)}), machine(size), latency=0.01).run()
    assert run.state is EngineState.COMPLETE and run.data == content_of(size)
    shapes = [(r.offset, r.number_of_blocks, int.from_bytes(r.bitmap or b"", "little")) for r in run.decoded]
    assert shapes == [
        (0, 16, 0x7FFFFFFF),
        (0, 15, 0x7FFF0000),
        (31, 16, 0x7FFFFFFF),
        (31, 15, 0x7FFF0000),
        (62, 16, 0x7FFFFFFF),
        (62, 15, 0x7FFF0000),
        (93, 8, 0xFF),  # 101 blocks: the last window has 8
    ]


def test_lost_block_waits_5_s_and_momentum_3_aborts() -> None:
    size = 40 * 1024
    run = ProfileLink(FakeStreamService({0: content_of(size)}), machine(size), lose={(4, 1)}, latency=0.01).run()
    assert run.state is EngineState.COMPLETE
    assert run.sent_at[1] - run.sent_at[0] == pytest.approx(5.0)
    assert run.decoded[1].bitmap == (1 << 4 | 0x7FFF0000).to_bytes(4, "little")
    lost = {(i, k) for i in range(40) for k in range(1, 9)}
    dead = ProfileLink(FakeStreamService({0: content_of(size)}), machine(size), lose=lost).run()
    assert dead.state is EngineState.FAILED and dead.failure is not None
    assert dead.failure.reason is FailureReason.TIMEOUT and dead.elapsed == pytest.approx(15.0)
    assert len(dead.wire) == 3


def test_reordered_and_duplicated_answers_complete() -> None:
    size = 70 * 1024
    run = ProfileLink(
        FakeStreamService({0: content_of(size)}), machine(size), reorder=True, duplicate=0.3, drop=0.05, latency=0.01
    ).run()
    assert run.state is EngineState.COMPLETE and run.data == content_of(size)
