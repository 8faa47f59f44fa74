"""``FileDownload`` (engine + sink + timer) against the real stream service core over an in-memory link.

No network: requests go straight into ``StreamServiceCore.handle`` and its answers come back through the event
loop (``call_soon``), optionally losing some. Real time runs, but the files are small and the link is instant.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from device_sim.device.download import FileDownload
from device_sim.device.types import DeviceFailure, DownloadSettings, SinkKind
from device_sim.protocol import (
    DescribeStreamRequest,
    FileInfo,
    Format,
    GetStreamRequest,
    Operation,
    Rejection,
    StreamDescription,
    build_topic,
    decode_answer,
    decode_data_block,
    encode_request,
)
from device_sim.results.metrics import FailureKind
from device_sim.sinks import FileSink, MemorySink
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service import AnswerKind, Outgoing, StreamServiceCore

ROLE = "arn:aws:iam::123456789012:role/fw"
THING = "t-unit"
FMT = Format.CBOR


class Link:
    """The device end of an in-memory link to the service core. ``drop(n)`` loses the n-th data message."""

    def __init__(self, catalog: InMemoryCatalog, stream_id: str, drop: Callable[[int], bool] = lambda n: False) -> None:
        self.core = StreamServiceCore(catalog)
        self.stream_id = stream_id
        self.drop = drop
        self.download: FileDownload | None = None
        self.data_messages = 0
        self.requests: list[GetStreamRequest] = []
        self.on_data: Callable[[int], None] = lambda n: None
        self.pace_s = 0.0
        self._next_due = 0.0

    def send(self, request: GetStreamRequest) -> None:
        self.requests.append(request)
        topic = build_topic(THING, self.stream_id, Operation.GET, FMT)
        loop = asyncio.get_running_loop()
        for out in self.core.handle(topic, encode_request(request, FMT)):
            if out.kind is AnswerKind.DATA:
                self.data_messages += 1
                self.on_data(self.data_messages)
                if self.drop(self.data_messages):
                    continue
            if self.pace_s:  # one message per pace_s, in order (like AWS's per-connection byte pacing)
                self._next_due = max(loop.time(), self._next_due) + self.pace_s
                loop.call_at(self._next_due, self._deliver, out)
            else:
                loop.call_soon(self._deliver, out)

    def _deliver(self, out: Outgoing) -> None:
        assert self.download is not None
        if out.kind is AnswerKind.DATA:
            self.download.receive_block(decode_data_block(out.payload, FMT))
        else:
            answer = decode_answer(Operation.REJECTED, out.payload, FMT)
            assert isinstance(answer, Rejection)
            self.download.receive_rejection(answer)

    async def describe(self) -> StreamDescription:
        topic = build_topic(THING, self.stream_id, Operation.DESCRIBE, FMT)
        (out,) = self.core.handle(topic, encode_request(DescribeStreamRequest(client_token=None), FMT))
        answer = decode_answer(
            Operation.DESCRIPTION if out.kind is AnswerKind.DESCRIPTION else Operation.REJECTED, out.payload, FMT
        )
        if isinstance(answer, Rejection):
            raise DeviceFailure(FailureKind.REJECTED, f"DescribeStream rejected: {answer.code}", answer.code)
        assert isinstance(answer, StreamDescription)
        return answer


def world(stream_id: str, data: bytes, *, pin: bool = True) -> InMemoryCatalog:
    catalog = InMemoryCatalog()
    catalog.create_bucket("b")
    version = catalog.put_object("b", "fw.bin", data).version_id
    catalog.add_role(ROLE)
    catalog.create_stream(stream_id, [(0, "b", "fw.bin", version if pin else None)], ROLE)
    return catalog


def make_download(
    link: Link,
    settings: DownloadSettings,
    target: Path | None = None,
    describe: Callable[[], Awaitable[StreamDescription]] | None = None,
    on_block: Callable[[float, int], None] = lambda now, n: None,
) -> FileDownload:
    record = link.core.catalog.get_stream(link.stream_id)
    assert record is not None
    file = record.file(0)
    assert file is not None
    download = FileDownload(
        info=FileInfo(file_id=0, file_size=len(link.core.read_file(file))),
        stream_id=link.stream_id,
        stream_version=record.version,
        settings=settings,
        target=target or Path("unused.bin"),
        client_token="g1",
        send=link.send,
        redescribe=describe or link.describe,
        on_block=on_block,
        label="unit",
    )
    link.download = download
    return download


def test_downloads_and_verifies_a_file_with_an_odd_size() -> None:
    data = os.urandom(10_000)
    link = Link(world("s1", data), "s1")
    settings = DownloadSettings(
        block_size=256,
        blocks_per_request=8,
        inflight=2,
        sink=SinkKind.MEMORY,
        expect_sha256=hashlib.sha256(data).hexdigest(),
    )

    async def main() -> None:
        download = make_download(link, settings)
        result = await download.run()
        assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
        assert isinstance(download.sink, MemorySink) and download.sink.getvalue() == data
        assert (await download.verify(result, None)).verified
        assert download.stats.blocks_received == 40 and download.stats.requests_sent == 5
        assert all(r.number_of_blocks <= 8 for r in link.requests)

    asyncio.run(main())


def test_lost_blocks_are_asked_again_and_a_wrong_digest_is_not_verified() -> None:
    data = os.urandom(64 * 256)
    link = Link(world("s2", data), "s2", drop=lambda n: n % 7 == 3)  # every 7th data message is lost
    settings = DownloadSettings(block_size=256, sink=SinkKind.DIGEST, expect_sha256="0" * 64)

    async def main() -> None:
        download = make_download(link, settings)
        result = await download.run()
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert download.stats.timeouts > 0 and download.stats.re_requests > 0
        verdict = await download.verify(result, None)
        assert not verdict.verified and "the source has 16384 bytes" in verdict.message

    asyncio.run(main())


def test_a_stream_updated_mid_download_is_re_described_and_restarted() -> None:
    data = os.urandom(40 * 256)
    catalog = world("s3", data)
    link = Link(catalog, "s3")
    link.on_data = lambda n: catalog.bump_stream_version("s3") if n == 8 else None
    settings = DownloadSettings(block_size=256, blocks_per_request=4, sink=SinkKind.MEMORY)

    async def main() -> None:
        download = make_download(link, settings)
        result = await download.run()
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert download.stream_version == 2
        assert dict(download.stats.rejections) == {"VersionMismatch": 1}
        assert link.requests[-1].stream_version == 2

    asyncio.run(main())


def test_etag_mismatch_fails_with_the_code() -> None:
    data = os.urandom(4096)
    catalog = world("s4", data, pin=False)
    catalog.put_object("b", "fw.bin", b"new firmware")
    link = Link(catalog, "s4")

    async def main() -> None:
        download = make_download(link, DownloadSettings(block_size=1024))
        with pytest.raises(DeviceFailure) as failed:
            await download.run()
        assert failed.value.kind is FailureKind.REJECTED and failed.value.detail == "ETagMismatch"
        assert failed.value.reason == "rejected:ETagMismatch"
        assert "pin the object version" in failed.value.message

    asyncio.run(main())


def test_a_resumable_file_download_continues_from_the_persisted_blocks(tmp_path: Path) -> None:
    data = os.urandom(100 * 256 + 5)
    target, state = tmp_path / "fw.bin", tmp_path / "state"
    settings = DownloadSettings(block_size=256, blocks_per_request=4, sink=SinkKind.FILE, out=target, state_dir=state)
    stop_after = 30

    async def first_run() -> int:
        link = Link(world("s5", data), "s5")
        download = make_download(link, settings, target)
        link.on_data = lambda n: (
            download.fail(DeviceFailure(FailureKind.CANCELLED, "stop")) if n == stop_after else None
        )
        with pytest.raises(DeviceFailure):
            await download.run()
        blocks = download.stats.blocks_received
        download.close(abort=False)  # persists the bitmap, keeps the part file
        return blocks

    stored = asyncio.run(first_run())
    assert 0 < stored <= stop_after and not target.exists()

    async def second_run() -> None:
        link = Link(world("s5", data), "s5")
        download = make_download(link, settings, target)
        result = await download.run()
        assert download.resumed_blocks == stored
        assert download.stats.blocks_received == 101 - stored
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert isinstance(download.sink, FileSink)
        assert download.commit() == str(target)

    asyncio.run(second_run())
    assert target.read_bytes() == data and list(state.iterdir()) == []


def test_a_failed_re_describe_ends_the_download_with_its_failure() -> None:
    """The stream changes (VersionMismatch), and is gone by the time the device describes it again."""
    data = os.urandom(20 * 256)
    catalog = world("s6", data)
    link = Link(catalog, "s6")
    link.on_data = lambda n: catalog.bump_stream_version("s6") if n == 4 else None

    async def describe_after_delete() -> StreamDescription:
        catalog.delete_stream("s6")
        return await link.describe()

    async def main() -> None:
        download = make_download(
            link, DownloadSettings(block_size=256, blocks_per_request=4), None, describe_after_delete
        )
        with pytest.raises(DeviceFailure) as failed:
            await download.run()
        assert failed.value.reason == "rejected:ResourceNotFound"
        assert dict(download.stats.rejections) == {"VersionMismatch": 1}

    asyncio.run(main())


def test_requests_queued_behind_paced_answers_are_not_timed_out() -> None:
    """Three requests in flight, answers paced at one block per 30 ms: the third request's first block comes
    ~0.25 s after it was sent, past the 0.2 s idle timeout; but blocks keep arriving, so nothing is asked twice."""
    data = os.urandom(24 * 256)
    link = Link(world("s7", data), "s7")
    link.pace_s = 0.03

    async def main() -> None:
        download = make_download(link, DownloadSettings(block_size=256, blocks_per_request=4, inflight=3))
        result = await download.run()
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        stats = download.stats
        assert stats.timeouts == 0 and stats.re_requests == 0 and stats.duplicates == 0
        assert stats.requests_sent == 6

    asyncio.run(main())


@pytest.mark.parametrize("where", ["timer", "message"])
def test_an_exception_in_an_input_handler_fails_the_download_instead_of_hanging(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that raises while the download handles its timer (here: the re-request after the last block was lost
    fails to publish) or a data message (the progress callback raises at the fifth block) ends the download with an
    internal error, and what comes after is ignored. Before, the exception went to the event loop's handler and
    ``run()`` waited forever."""
    data = os.urandom(20 * 256)
    # One request for the whole file; its last block is lost, so the next request comes from the idle timer.
    link = Link(world("s8", data), "s8", drop=lambda n: where == "timer" and n == 20)
    sent = link.send

    def send_once(request: GetStreamRequest) -> None:
        if link.requests:
            raise RuntimeError("publish exploded")
        sent(request)

    stored: list[int] = []

    def progress(now: float, n: int) -> None:
        stored.append(n)
        if where == "message" and len(stored) == 5:
            raise RuntimeError("progress exploded")

    link.send = send_once  # type: ignore[method-assign]

    async def main() -> None:
        download = make_download(
            link, DownloadSettings(block_size=256, blocks_per_request=20, inflight=1), on_block=progress
        )
        with pytest.raises(DeviceFailure) as failed:
            await asyncio.wait_for(download.run(), timeout=10)
        assert failed.value.kind is FailureKind.ERROR
        assert "internal: RuntimeError" in failed.value.message and "exploded" in failed.value.message
        assert len(link.requests) == 1  # the failed publish reached nothing
        # After the failure the blocks still on their way are ignored.
        assert download.stats.blocks_received == len(stored) == (19 if where == "timer" else 5)

    asyncio.run(main())
    handler = "_on_timer" if where == "timer" else "receive_block"
    assert f"internal error in {handler}" in caplog.text


def test_a_run_with_the_short_last_block_first_is_taken_whole() -> None:
    """One run of data messages (as awscrt hands them over together) where the file's short last block, which takes
    the general path, comes before full blocks, which take the hot path (a reordering link). Every block counts;
    before, the hot blocks after it were given an older clock reading than the general path's, the engine refused
    them (time going backwards), and the rest of the run was lost."""
    data = os.urandom(6 * 256 + 100)
    link = Link(world("s9", data), "s9")
    link.send = lambda request: _answer_as_one_run(link, request)  # type: ignore[method-assign]

    async def main() -> None:
        download = make_download(link, DownloadSettings(block_size=256, blocks_per_request=8, inflight=1))
        result = await asyncio.wait_for(download.run(), timeout=10)
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        stats = download.stats
        assert stats.blocks_received == 7 and stats.duplicates == 0 and stats.timeouts == 0
        assert stats.requests_sent == 1

    asyncio.run(main())


def _answer_as_one_run(link: Link, request: GetStreamRequest) -> None:
    """The service's whole answer as one run, its last message (the short last block) moved to the front."""
    link.requests.append(request)
    topic = build_topic(THING, link.stream_id, Operation.GET, FMT)
    payloads = [out.payload for out in link.core.handle(topic, encode_request(request, FMT))]
    assert link.download is not None
    asyncio.get_running_loop().call_soon(link.download.receive_data, [payloads[-1], *payloads[:-1]])
