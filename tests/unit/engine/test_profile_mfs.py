"""The mfs profile on a virtual clock: the MQTT file streams library's bytes, one block per request, its wait."""

from __future__ import annotations

import functools

import pytest

from device_sim.engine.profiles import MfsMachine, ProfileRefused, ProfileSettings
from device_sim.engine.types import EngineState, FailureReason
from device_sim.protocol import Format, encode_request
from tests.support.fakes_service import FakeStreamService
from tests.support.fakes_service import content_of as _content_of
from tests.support.profile_link import ProfileLink

content_of = functools.cache(_content_of)


def machine(size: int, **kw: object) -> MfsMachine:
    return MfsMachine(file_id=0, file_size=size, now=0.0, settings=ProfileSettings.for_profile("mfs", **kw))  # type: ignore[arg-type]


def test_cbor_request_bytes_are_the_librarys() -> None:
    m = machine(10 * 4096)
    m.start(0.0)
    (action,) = m.next_actions()
    assert encode_request(action.request, Format.CBOR) == bytes.fromhex(  # type: ignore[union-attr]
        "a6 61 63 63 72 64 79 61 66 00 61 6c 19 10 00 61 6f 00 61 62 44 4d 51 3d 3d 61 6e 01"
    )


def test_json_request_text_is_the_librarys() -> None:
    size = 10 * 4096
    service = FakeStreamService({0: content_of(size)})
    run = ProfileLink(service, machine(size, json=True), fmt=Format.JSON, lose={(5, 1)}, latency=0.01).run()
    assert run.state is EngineState.COMPLETE
    assert run.wire[5] == b'{"s": 1,"f": 0,"l": 4096,"o": 5,"n": 1}'
    assert run.wire[6] == run.wire[5]  # block 5 was lost: asked again, the same text


def test_one_block_per_request_and_the_placeholder_bitmap_reaches_the_last_block() -> None:
    size = 40 * 4096 + 7  # the placeholder's bits reach 29 blocks past o: the service selects first
    run = ProfileLink(FakeStreamService({0: content_of(size)}), machine(size), latency=0.01).run()
    assert run.state is EngineState.COMPLETE and run.data == content_of(size)
    assert [r.offset for r in run.decoded] == list(range(41))
    assert all(r.number_of_blocks == 1 and r.bitmap == b"MQ==" for r in run.decoded)
    assert run.elapsed == pytest.approx(41 * 0.0201, abs=0.01)  # one round trip per block


def test_a_lost_block_waits_for_the_application_timeout() -> None:
    size = 4 * 4096
    run = ProfileLink(
        FakeStreamService({0: content_of(size)}), machine(size, request_wait=2.0), lose={(1, 1)}, latency=0.01
    ).run()
    assert run.state is EngineState.COMPLETE
    assert run.sent_at[2] - run.sent_at[1] == pytest.approx(2.0)
    assert run.stats.stalls == 1 and run.stats.lost_blocks == 1


def test_hard_coded_version_fails_after_a_stream_update_until_the_give_up_rule() -> None:
    size = 4 * 4096
    service = FakeStreamService({0: content_of(size)})
    service.update_file(0, content_of(size)[::-1])  # version 2: the JSON request's "s": 1 is now wrong
    run = ProfileLink(service, machine(size, json=True, request_wait=1.0, momentum=5), fmt=Format.JSON).run()
    assert run.state is EngineState.FAILED and run.failure is not None
    assert run.failure.reason is FailureReason.TIMEOUT and run.failure.code == "MomentumAbort"
    assert run.stats.rejections == {"VersionMismatch": 5} and len(run.wire) == 5
    cbor = ProfileLink(service, machine(size)).run()  # the CBOR request has no s: it downloads version 2
    assert cbor.state is EngineState.COMPLETE and cbor.data == content_of(size)[::-1]


def test_more_than_one_block_per_request_is_refused() -> None:
    with pytest.raises(ProfileRefused, match="one block per request"):
        ProfileSettings.for_profile("mfs", blocks_per_request=4)


def test_a_duplicate_does_not_end_the_wait() -> None:
    size = 3 * 4096
    run = ProfileLink(FakeStreamService({0: content_of(size)}), machine(size), duplicate=1.0, latency=0.01).run()
    assert run.state is EngineState.COMPLETE and run.stats.duplicates == 2  # the third comes after the end
    assert len(run.wire) == 3  # a duplicate of block k never sends a request of its own
