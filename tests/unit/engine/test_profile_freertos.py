"""The freertos-ota profile on a virtual clock: the OTA agent's bytes, batches, request wait, momentum and checks."""

from __future__ import annotations

import functools

import pytest

from device_sim.engine.profiles import FreeRtosOtaMachine, ProfileKind, ProfileRefused, ProfileSettings
from device_sim.engine.types import Complete, EngineState, FailureReason, SendRequest, WriteBlock
from device_sim.protocol import Format, encode_request
from device_sim.protocol.messages import DataBlock, Rejection
from tests.support.fakes_service import FakeStreamService
from tests.support.fakes_service import content_of as _content_of
from tests.support.profile_link import ProfileLink

KIB4 = 4096
content_of = functools.cache(_content_of)


def machine(size: int, **kw: object) -> FreeRtosOtaMachine:
    kind = kw.pop("kind", ProfileKind.FREERTOS_OTA)
    settings = ProfileSettings.for_profile(kind, **kw)  # type: ignore[arg-type]
    return FreeRtosOtaMachine(file_id=0, file_size=size, now=0.0, settings=settings)


def link(size: int, **kw: object) -> ProfileLink:
    link_kw = {
        k: kw.pop(k) for k in list(kw) if k in ("lose", "drop", "duplicate", "reorder", "quota_per_s", "latency")
    }
    m = machine(size, **kw)
    return ProfileLink(FakeStreamService({0: content_of(size)}), m, **link_kw)  # type: ignore[arg-type]


def sends(m: FreeRtosOtaMachine) -> list[SendRequest]:
    return [a for a in m.next_actions() if isinstance(a, SendRequest)]


def block(index: int, size: int, bs: int = KIB4) -> DataBlock:
    content = content_of(size)
    payload = content[index * bs : (index + 1) * bs]
    return DataBlock(client_token="rdy", file_id=0, block_index=index, block_length=len(payload), payload=payload)


# ------------------------------------------------------------------------------------------------- constants


def test_library_and_demo_defaults() -> None:
    lib = ProfileSettings.for_profile("freertos-ota")
    assert (lib.block_size, lib.blocks_per_request, lib.request_wait, lib.momentum, lib.status_frequency) == (
        4096,
        1,
        10.0,
        32,
        64,
    )
    demo = ProfileSettings.for_profile("freertos-ota-demo")
    assert (demo.blocks_per_request, demo.status_frequency, demo.request_wait, demo.momentum) == (8, 25, 10.0, 32)


def test_settings_the_agent_cannot_take_are_refused_with_the_reason() -> None:
    with pytest.raises(ProfileRefused, match="not a power of two"):
        ProfileSettings.for_profile("freertos-ota", block_size=3000)
    settings = ProfileSettings.for_profile("freertos-ota", block_size=1024)
    with pytest.raises(ProfileRefused, match="256 bytes, over otaconfigMAX_BLOCK_BITMAP_SIZE 128") as info:
        settings.check_file(2 << 20)  # 2048 blocks
    assert "2048" in str(info.value.hint)
    settings.check_file(1 << 20)  # 1024 blocks: exactly 128 bytes
    ProfileSettings.for_profile("freertos-ota", block_size=1024, bitmap_max_bytes=256).check_file(2 << 20)
    with pytest.raises(ProfileRefused, match="131072"):
        ProfileSettings.for_profile("freertos-ota", block_size=8192, blocks_per_request=32)
    with pytest.raises(ProfileRefused, match="CBOR requests only"):
        ProfileSettings.for_profile("freertos-ota", json=True)


# ---------------------------------------------------------------------------------------------------- bytes


def test_first_request_bytes_are_the_agents() -> None:
    m = machine(256 * KIB4, kind="freertos-ota-demo")
    m.start(0.0)
    (first,) = sends(m)
    expected = (
        bytes.fromhex("a6 6163 63726479 6166 00 616c 191000 616f 00 6162 5820")
        + b"\xff" * 32
        + bytes.fromhex("616e 08")
    )
    assert encode_request(first.request, Format.CBOR) == expected
    for i in range(8):
        m.receive_block(block(i, 256 * KIB4), 0.05)
    (second,) = sends(m)
    wire = encode_request(second.request, Format.CBOR)
    assert wire[wire.index(b"\x58\x20") + 2 :][:32] == b"\x00" + b"\xff" * 31


def test_bits_past_the_end_are_clear_and_a_resumed_block_is_not_asked() -> None:
    settings = ProfileSettings.for_profile("freertos-ota")
    m = FreeRtosOtaMachine(file_id=0, file_size=10 * KIB4 + 5, now=0.0, settings=settings, have=[0, 9])
    m.start(0.0)
    (first,) = sends(m)
    assert first.request.bitmap == bytes([0b11111110, 0b00000101])  # blocks 1-8 and 10 of 11


# ------------------------------------------------------------------------------------------ next-request rule


def test_next_request_only_when_the_batch_is_complete() -> None:
    size = 64 * KIB4
    m = machine(size, kind="freertos-ota-demo")
    m.start(0.0)
    assert len(sends(m)) == 1
    for i in range(7):
        m.receive_block(block(i, size), 0.1 + i / 100)
        assert sends(m) == []  # 7 of 8: nothing
    m.receive_block(block(7, size), 0.2)
    (nxt,) = sends(m)
    assert nxt.request.number_of_blocks == 8 and nxt.request.offset == 0
    assert m.get_timer() == pytest.approx(10.2)  # the wait restarts with every request


def test_clean_download_sends_one_request_per_batch() -> None:
    run = link(256 * KIB4, kind="freertos-ota-demo").run()
    assert run.state is EngineState.COMPLETE and run.data == content_of(256 * KIB4)
    assert run.stats.requests_sent == 32 and run.stats.stalls == 0 and run.stats.status_updates == 10  # 256 // 25


# ------------------------------------------------------------------------------------------------- the wait


def test_a_lost_block_costs_the_whole_request_wait() -> None:
    size = 64 * KIB4
    run = link(size, kind="freertos-ota-demo", lose={(3, 1)}, latency=0.02).run()
    assert run.state is EngineState.COMPLETE and run.data == content_of(size)
    assert run.sent_at[1] - run.sent_at[0] == pytest.approx(10.0)  # nothing happens until the wait expires
    assert run.decoded[1].bitmap is not None and run.decoded[1].bitmap[0] == 0b00001000  # block 3, then 8 ...
    assert run.writes[7:9] == [3, 8]
    s = run.stats
    assert (s.stalls, s.timeouts, s.lost_blocks, s.cut_answers, s.re_requests) == (1, 1, 1, 0, 1)
    assert 9.9 < s.stall_s < 10.0  # from the batch's last block to the expiry
    assert run.elapsed == pytest.approx(10.0 + 7 * 0.0400 + 0.05, abs=0.05)


def test_quota_discards_cut_answers_and_stall_the_agent() -> None:
    """n = 32 of 1 KiB: AWS's 100 publishes/s let the first answers through, then cut one short: a 10 s stall."""
    size = 512 * 1024
    run = link(size, block_size=1024, blocks_per_request=32, quota_per_s=100.0, latency=0.04).run()
    assert run.state is EngineState.COMPLETE and run.data == content_of(size)
    assert run.stats.stalls >= 1 and run.stats.cut_answers >= 1
    assert run.stats.stall_s > 9.0
    small = link(size, block_size=1024, blocks_per_request=1, quota_per_s=100.0, latency=0.04).run()
    assert small.stats.stalls == 0 and small.state is EngineState.COMPLETE


# -------------------------------------------------------------------------------------------------- momentum


def test_momentum_abort_after_32_requests_without_a_block() -> None:
    size = 8 * KIB4
    lost = {(i, k) for i in range(8) for k in range(1, 50)}
    run = link(size, lose=lost).run()
    assert run.state is EngineState.FAILED and run.failure is not None
    assert run.failure.reason is FailureReason.TIMEOUT and run.failure.code == "MomentumAbort"
    assert len(run.wire) == 32 and run.sent_at[-1] == pytest.approx(310.0)
    assert run.elapsed == pytest.approx(320.0)  # the 33rd request is due: the agent aborts instead
    assert run.stats.aborts == 1 and run.stats.stalls == 32


def test_a_new_block_resets_the_momentum() -> None:
    size = 4 * KIB4
    m = machine(size, momentum=2)
    m.start(0.0)
    m.handle_timer(10.0)  # second request
    assert m.momentum == 2
    m.receive_block(block(0, size), 10.1)  # resets, and n = 1: the next request goes out
    assert m.momentum == 1 and m.state is EngineState.RUNNING
    m.handle_timer(20.1)
    m.handle_timer(30.1)
    assert m.state is EngineState.FAILED and m.stats.aborts == 1


# ------------------------------------------------------------------------------------- duplicates and checks


def test_duplicates_are_dropped_but_count_towards_the_batch() -> None:
    size = 16 * KIB4
    m = machine(size, blocks_per_request=4)
    m.start(0.0)
    sends(m)
    m.receive_block(block(0, size), 0.1)
    m.receive_block(block(0, size), 0.11)  # duplicate: not written, counted down (ota.c)
    m.receive_block(block(1, size), 0.12)
    assert [a.index for a in m.next_actions() if isinstance(a, WriteBlock)] == [0, 1]
    m.receive_block(block(2, size), 0.13)  # 4 counted: block 3 is not awaited
    (nxt,) = sends(m)
    assert nxt.request.bitmap == bytes([0b11111000, 0xFF])
    assert m.stats.duplicates == 1


def test_the_last_short_block_is_accepted_and_a_wrong_length_rejects_the_image() -> None:
    size = 3 * KIB4 + 100
    m = machine(size, blocks_per_request=4)
    m.start(0.0)
    for i in (3, 0, 1, 2):
        m.receive_block(block(i, size), 0.1)
    actions = m.next_actions()
    assert isinstance(actions[-1], Complete) and m.state is EngineState.COMPLETE
    assert [len(a.payload) for a in actions if isinstance(a, WriteBlock)] == [100, KIB4, KIB4, KIB4]

    bad = machine(size, blocks_per_request=4)
    bad.start(0.0)
    short = block(1, size)
    bad.receive_block(DataBlock(file_id=0, block_index=1, block_length=10, payload=short.payload[:10]), 0.1)
    assert bad.state is EngineState.FAILED and bad.failure is not None
    assert bad.failure.code == "BlockOutOfRange"


def test_rejections_are_not_read_and_the_wait_decides() -> None:
    m = machine(4 * KIB4)
    m.start(0.0)
    sends(m)
    m.receive_rejection(Rejection(code="InvalidRequest", message="x"), 0.05)
    assert m.next_actions() == [] and m.get_timer() == pytest.approx(10.0)
    assert m.stats.rejections == {"InvalidRequest": 1} and m.stats.ignored_rejections == 1


# ------------------------------------------------------------------------------------------ device-side work


def test_block_processing_paces_the_next_request() -> None:
    size = 32 * KIB4
    m = machine(size, kind="freertos-ota-demo", block_process=0.01)
    m.start(0.0)
    sends(m)
    for i in range(8):
        m.receive_block(block(i, size), 0.05)  # all at once: handled one after another
    assert m.next_actions() == [] and m.get_timer() == pytest.approx(0.06)
    m.handle_timer(0.125)
    assert [a.index for a in m.next_actions() if isinstance(a, WriteBlock)] == [0, 1, 2, 3, 4, 5, 6]
    m.handle_timer(0.13)
    actions = m.next_actions()
    assert isinstance(actions[0], WriteBlock) and isinstance(actions[1], SendRequest)
    assert m.get_timer() == pytest.approx(10.13)  # the request left when the 8th block was handled, at 0.13


def test_an_expiry_waits_for_blocks_that_came_before_it() -> None:
    size = 4 * KIB4
    m = machine(size, block_process=0.5, request_wait=1.0)
    m.start(0.0)
    sends(m)
    m.receive_block(block(0, size), 0.9)  # handled at 1.4, after the wait's expiry at 1.0
    m.handle_timer(1.0)
    assert sends(m) == []  # the device is still busy with block 0
    m.handle_timer(1.4)
    (nxt,) = sends(m)
    assert nxt.request.bitmap == bytes([0b1110]) and m.stats.stalls == 0


def test_a_block_with_no_free_data_buffer_is_dropped_and_waited_for() -> None:
    """otaconfigMAX_NUM_OTA_DATA_BUFFERS 2 and 10 ms per block: a batch of 4 arriving at once loses 2 blocks."""
    size = 8 * KIB4
    m = machine(size, blocks_per_request=4, block_process=0.01, data_buffers=2)
    m.start(0.0)
    sends(m)
    for i in range(4):
        m.receive_block(block(i, size), 0.05)  # blocks 2 and 3 find both buffers taken
    m.handle_timer(0.07)
    assert [a.index for a in m.next_actions() if isinstance(a, WriteBlock)] == [0, 1]
    m.handle_timer(10.0)  # the batch never completes: the wait expires
    (again,) = sends(m)
    assert again.request.bitmap == bytes([0b11111100]) and m.stats.lost_blocks == 2 and m.stats.stalls == 1
