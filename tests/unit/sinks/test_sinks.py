from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sim.protocol.limits import block_count
from device_sim.sinks import (
    BlockSink,
    DigestSink,
    FileSink,
    MemorySink,
    ReferenceSink,
    ResumeKey,
    ResumeStatus,
    SinkResult,
    SinkStorageError,
    SinkUsageError,
)

KEY = ResumeKey(stream_id="fw", file_id=3, stream_version=7)


def blocks_of(data: bytes, block_size: int) -> list[tuple[int, int, bytes]]:
    return [
        (i, i * block_size, data[i * block_size : (i + 1) * block_size])
        for i in range(block_count(len(data), block_size))
    ]


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def expected(data: bytes) -> SinkResult:
    return SinkResult(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


# ------------------------------------------------------------------------------------------- common behaviour


@pytest.fixture(params=["memory", "digest", "reference", "file"])
def make_sink(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(size: int, block_size: int) -> BlockSink:
        if request.param == "memory":
            return MemorySink(size, block_size)
        if request.param == "digest":
            return DigestSink(size, block_size)
        if request.param == "reference":  # the common tests write payload(size): the sink's reference is that
            data = payload(size)
            return ReferenceSink(data, hashlib.sha256(data).hexdigest(), block_size)
        return FileSink(tmp_path / "out.bin", size, block_size)

    return make


def test_every_sink_is_a_block_sink(make_sink) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(make_sink(10, 4), BlockSink)


def test_shuffled_blocks_with_duplicates_hash_to_the_file(make_sink) -> None:  # type: ignore[no-untyped-def]
    data = payload(10_000)  # not a multiple of the block size: the last block is 784 bytes
    sink = make_sink(len(data), 1024)
    order = blocks_of(data, 1024)
    random.Random(5).shuffle(order)
    fresh = [sink.write(i, off, chunk) for i, off, chunk in order]
    dupes = [sink.write(i, off, chunk) for i, off, chunk in order[:3]]
    assert fresh == [True] * 10 and dupes == [False] * 3
    assert sorted(sink.received_blocks()) == list(range(10))
    assert sink.finish() == expected(data)
    sink.close()


def test_blocks_that_do_not_fit_are_refused(make_sink) -> None:  # type: ignore[no-untyped-def]
    sink = make_sink(1000, 256)  # blocks 0..3, the last one 232 bytes
    with pytest.raises(SinkUsageError, match="outside the file"):
        sink.write(4, 1024, b"x")
    with pytest.raises(SinkUsageError, match="must start at byte 256"):
        sink.write(1, 0, bytes(256))
    with pytest.raises(SinkUsageError, match="must be 232 bytes"):
        sink.write(3, 768, bytes(256))
    with pytest.raises(SinkUsageError, match="must be 256 bytes"):
        sink.write(0, 0, bytes(10))
    assert not sink.has(0)
    sink.abort()


def test_finish_names_the_first_missing_block(make_sink) -> None:  # type: ignore[no-untyped-def]
    data = payload(2048)
    sink = make_sink(len(data), 256)
    for i, off, chunk in blocks_of(data, 256):
        if i != 5:
            sink.write(i, off, chunk)
    with pytest.raises(SinkUsageError, match=r"1 of 8 blocks are missing \(first: block 5\)"):
        sink.finish()
    sink.abort()


def test_empty_file(make_sink) -> None:  # type: ignore[no-untyped-def]
    sink = make_sink(0, 256)
    assert sink.finish() == expected(b"")


# --------------------------------------------------------------------------------------------------- DigestSink


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=6000),
    block_size=st.sampled_from([256, 300, 1024, 4096]),
    seed=st.integers(min_value=0, max_value=2**32),
    dup_rate=st.floats(min_value=0, max_value=0.5),
)
def test_digest_sink_in_any_order_equals_hashlib(size: int, block_size: int, seed: int, dup_rate: float) -> None:
    data = payload(size, seed)
    rnd = random.Random(seed)
    order = blocks_of(data, block_size)
    rnd.shuffle(order)
    order += [b for b in order if rnd.random() < dup_rate]  # duplicates arrive late, after the original
    sink = DigestSink(size, block_size)
    for i, off, chunk in order:
        sink.write(i, off, chunk)
    assert sink.finish() == expected(data)
    assert sink.buffered_bytes == 0


def test_digest_sink_keeps_nothing_for_in_order_delivery() -> None:
    data = payload(64 * 1024)
    sink = DigestSink(len(data), 512)
    for i, off, chunk in blocks_of(data, 512):
        sink.write(i, off, chunk)
    assert sink.peak_buffered_bytes == 0
    assert sink.finish() == expected(data)


def test_digest_sink_buffers_only_the_blocks_after_a_gap() -> None:
    data = payload(10 * 256)
    sink = DigestSink(len(data), 256)
    blocks = blocks_of(data, 256)
    for i, off, chunk in blocks[:3] + blocks[4:7]:  # block 3 is late
        sink.write(i, off, chunk)
    assert sink.buffered_bytes == 3 * 256
    assert sink.has(5) and not sink.has(3)
    sink.write(*blocks[3])
    assert sink.buffered_bytes == 0
    for block in blocks[7:]:
        sink.write(*block)
    assert sink.finish() == expected(data)


# ----------------------------------------------------------------------------------------------------- FileSink


def test_file_sink_commit_moves_the_verified_file_into_place(tmp_path: Path) -> None:
    data = payload(5000)
    state = tmp_path / "state"
    sink = FileSink(tmp_path / "fw.bin", len(data), 512, state, resume_key=KEY)
    assert sink.part_path == tmp_path / "fw.bin.part" and sink.part_path.exists()
    for block in reversed(blocks_of(data, 512)):
        sink.write(*block)
    with pytest.raises(SinkUsageError, match="must be finished"):
        sink.commit()
    assert sink.finish() == expected(data)
    assert not (tmp_path / "fw.bin").exists()  # nothing at the final path before commit
    final = sink.commit(tmp_path / "fw-final.bin")
    assert final.read_bytes() == data
    assert not sink.part_path.exists()
    assert list(state.iterdir()) == []  # resume state removed once committed


def test_file_sink_without_state_dir_removes_the_partial_on_close(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "fw.bin", 1000, 256)
    sink.write(0, 0, bytes(256))
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_resumable_sink_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(SinkUsageError, match="resume_key"):
        FileSink(tmp_path / "fw.bin", 1000, 256, tmp_path / "state")


def test_resume_trusts_only_the_blocks_of_the_last_flushed_bitmap(tmp_path: Path) -> None:
    data = payload(20 * 256)
    blocks = blocks_of(data, 256)
    state = tmp_path / "state"
    sink = FileSink(tmp_path / "fw.bin", len(data), 256, state, resume_key=KEY, flush_every_blocks=4)
    for block in blocks[:10]:  # bitmap persisted after blocks 0-3 and 0-7; blocks 8 and 9 only in the part file
        sink.write(*block)
    # 'crash': the object is dropped without finish/close, and the unflushed block 9 is half written on disk
    with open(sink.part_path, "r+b") as f:
        f.seek(9 * 256 + 100)
        f.write(b"\xff" * 156)
    del sink

    again = FileSink(tmp_path / "fw.bin", len(data), 256, state, resume_key=KEY, flush_every_blocks=4)
    assert again.resume_status is ResumeStatus.RESUMED
    assert list(again.received_blocks()) == list(range(8)) and again.resumed_blocks == 8
    assert not again.has(8) and not again.has(9)
    written = [again.write(*block) for block in blocks]
    assert written == [False] * 8 + [True] * 12
    assert again.finish() == expected(data)


def test_time_based_flush_uses_the_callers_clock(tmp_path: Path) -> None:
    data = payload(8 * 256)
    blocks = blocks_of(data, 256)
    state = tmp_path / "state"
    sink = FileSink(
        tmp_path / "fw.bin", len(data), 256, state, resume_key=KEY, flush_every_blocks=1000, flush_every_s=1
    )
    for block, now in zip(blocks[:4], [10.0, 10.4, 10.9, 11.0], strict=True):  # the 4th write is 1 s after the 1st
        sink.write(*block, now=now)
    sink.write(*blocks[4], now=11.5)  # not yet due again
    del sink
    again = FileSink(tmp_path / "fw.bin", len(data), 256, state, resume_key=KEY)
    assert list(again.received_blocks()) == [0, 1, 2, 3]


def test_close_persists_the_state_for_a_later_resume(tmp_path: Path) -> None:
    data = payload(8 * 256)
    state = tmp_path / "state"
    with FileSink(tmp_path / "fw.bin", len(data), 256, state, resume_key=KEY) as sink:
        for block in blocks_of(data, 256)[:5]:
            sink.write(*block)
    again = FileSink(tmp_path / "fw.bin", len(data), 256, state, resume_key=KEY)
    assert list(again.received_blocks()) == [0, 1, 2, 3, 4]
    again.abort()
    assert not again.part_path.exists() and list(state.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resume_key": ResumeKey(stream_id="fw", file_id=3, stream_version=8)}, "stream_version"),
        ({"block_size": 512}, "block_size"),
        ({"file_size": 4096 + 1}, "file_size"),
    ],
)
def test_a_changed_stream_discards_the_partial(tmp_path: Path, change: dict[str, object], field: str) -> None:
    state = tmp_path / "state"
    sink = FileSink(tmp_path / "fw.bin", 4096, 256, state, resume_key=KEY, flush_every_blocks=1)
    sink.write(0, 0, b"\x01" * 256)
    del sink
    args: dict[str, object] = {"file_size": 4096, "block_size": 256, "resume_key": KEY, **change}
    again = FileSink(tmp_path / "fw.bin", state_dir=state, **args)  # type: ignore[arg-type]
    assert again.resume_status is ResumeStatus.DISCARDED
    assert again.discard_reason is not None and field in again.discard_reason
    assert list(again.received_blocks()) == []
    assert again.part_path.stat().st_size == args["file_size"]
    assert json.loads((state / "fw.bin.resume.json").read_text())[field] == (
        args["resume_key"].stream_version if field == "stream_version" else args[field]  # type: ignore[union-attr]
    )


def test_a_missing_part_file_discards_the_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sink = FileSink(tmp_path / "fw.bin", 1024, 256, state, resume_key=KEY, flush_every_blocks=1)
    sink.write(0, 0, bytes(256))
    del sink
    (tmp_path / "fw.bin.part").unlink()
    again = FileSink(tmp_path / "fw.bin", 1024, 256, state, resume_key=KEY)
    assert again.resume_status is ResumeStatus.DISCARDED and not again.has(0)


def test_storage_failures_become_sink_storage_errors(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SinkStorageError, match="cannot open") as info:
        FileSink(tmp_path / "a-file" / "fw.bin", 1024, 256)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.hint and "writable" in info.value.hint


_CRASHER = textwrap.dedent(
    """
    import os, random, signal, sys
    from device_sim.sinks import FileSink, ResumeKey
    path, state, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = random.Random(42).randbytes(64 * 256)
    sink = FileSink(path, len(data), 256, state, resume_key=ResumeKey(stream_id="fw", file_id=3, stream_version=7),
                    flush_every_blocks=5)
    order = list(range(64))
    random.Random(1).shuffle(order)
    for n, i in enumerate(order):
        if n == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        sink.write(i, i * 256, data[i * 256 : (i + 1) * 256])
    """
)


def test_a_sigkilled_writer_resumes_with_only_intact_blocks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(tmp_path / "fw.bin"), str(state), "23"], timeout=60)
    assert proc.returncode == -9
    data = random.Random(42).randbytes(64 * 256)
    sink = FileSink(tmp_path / "fw.bin", len(data), 256, state, resume_key=KEY, flush_every_blocks=5)
    trusted = list(sink.received_blocks())
    assert len(trusted) == 20  # 23 written, flushed after every 5th: the last 3 are downloaded again
    on_disk = sink.part_path.read_bytes()
    assert all(on_disk[i * 256 : (i + 1) * 256] == data[i * 256 : (i + 1) * 256] for i in trusted)
    for block in blocks_of(data, 256):
        sink.write(*block)
    assert sink.finish() == expected(data)
    sink.commit()
    assert (tmp_path / "fw.bin").read_bytes() == data
    assert os.listdir(state) == []


# ------------------------------------------------------------------------------------------------- ReferenceSink


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 9000),
    block_size=st.sampled_from([256, 1000, 1024]),
    seed=st.integers(0, 1000),
    changes=st.lists(st.integers(0, 9000), max_size=4),
)
def test_reference_sink_hashes_what_arrived_and_names_the_first_block_that_differs(
    size: int, block_size: int, seed: int, changes: list[int]
) -> None:
    reference = payload(size, seed)
    arrived = bytearray(reference)
    for at in changes:
        if at < size:
            arrived[at] ^= 0x5A
    sink = ReferenceSink(reference, hashlib.sha256(reference).hexdigest(), block_size)
    order = blocks_of(bytes(arrived), block_size)
    random.Random(seed).shuffle(order)
    for index, offset, data in order + order[:2]:  # the duplicates at the end change nothing
        sink.write(index, offset, data)
    assert sink.finish() == expected(bytes(arrived))
    bad = [i for i, o, data in blocks_of(bytes(arrived), block_size) if data != reference[o : o + len(data)]]
    assert sink.first_mismatch == (bad[0] if bad else None)


def test_reference_sink_keeps_only_the_blocks_that_differ() -> None:
    reference = payload(64 * 1024)
    sink = ReferenceSink(reference, hashlib.sha256(reference).hexdigest(), 1024)
    for index, offset, data in blocks_of(reference, 1024):
        if index == 9:
            data = bytes(len(data))
        assert sink.write(index, offset, data)
    assert list(sink._differing) == [9]  # 1 KiB kept, not the file
    assert sink.first_mismatch == 9
    assert sink.finish().sha256 != hashlib.sha256(reference).hexdigest()
