"""The engine's new inputs wired through ``FileDownload`` (the device glue) in a real event loop, no network:
"request sent" reports start the idle timer when a request really left, and "link resumed" sends the requests
in flight again at once. The service is the in-memory ``FakeStreamService``."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from device_sim.device.download import FileDownload
from device_sim.device.types import DownloadSettings, SinkKind
from device_sim.protocol import FileInfo, GetStreamRequest, StreamDescription
from tests.support.fakes_service import FakeStreamService


def file_download(
    service: FakeStreamService,
    settings: DownloadSettings,
    send: Callable[[GetStreamRequest], None],
    send_and_report: Callable[[GetStreamRequest, Callable[[], None]], None] | None = None,
) -> FileDownload:
    async def describe() -> StreamDescription:
        return service.describe()

    return FileDownload(
        info=FileInfo(file_id=0, file_size=len(service.files[0])),
        stream_id="s",
        stream_version=service.stream_version,
        settings=settings,
        target=Path("unused.bin"),
        client_token=None,
        send=send,
        redescribe=describe,
        on_block=lambda now, n: None,
        label="glue",
        send_and_report=send_and_report,
    )


def test_requests_held_back_by_flow_control_are_timed_from_when_they_left() -> None:
    """Each request waits 0.25 s in "client-side flow control" and is answered as soon as it leaves. The idle timeout
    is 0.2 s: timed from the emission every request would time out; timed from the report none does."""
    data = os.urandom(4 * 256)
    service = FakeStreamService({0: data})
    settings = DownloadSettings(block_size=256, blocks_per_request=2, request_timeout=0.2, sink=SinkKind.MEMORY)

    async def main(report: bool) -> tuple[int, int]:
        loop = asyncio.get_running_loop()

        def leave(request: GetStreamRequest, sent: Callable[[], None] | None) -> None:
            if sent is not None:
                sent()
            answer = service.answer(request)
            assert isinstance(answer, list)
            for block in answer:
                loop.call_soon(download.receive_block, block)

        def send(request: GetStreamRequest) -> None:
            loop.call_later(0.25, leave, request, None)

        def send_and_report(request: GetStreamRequest, sent: Callable[[], None]) -> None:
            loop.call_later(0.25, leave, request, sent)

        download = file_download(service, settings, send, send_and_report if report else None)
        result = await asyncio.wait_for(download.run(), 10)
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        return download.stats.timeouts, download.stats.duplicates

    assert asyncio.run(main(report=True)) == (0, 0)
    timeouts, duplicates = asyncio.run(main(report=False))
    assert timeouts > 0 and duplicates > 0


def test_link_resumed_sends_the_lost_request_again_at_once() -> None:
    data = os.urandom(8 * 256)
    service = FakeStreamService({0: data})
    settings = DownloadSettings(block_size=256, sink=SinkKind.MEMORY)  # adaptive: 1 s before the first sample

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sent: list[tuple[float, GetStreamRequest]] = []
        first_out = asyncio.Event()

        def send(request: GetStreamRequest) -> None:
            sent.append((loop.time(), request))
            first_out.set()

        download = file_download(service, settings, send)
        running = asyncio.ensure_future(download.run())
        await asyncio.wait_for(first_out.wait(), 10)  # ... and lost with the connection: no answer
        resumed_at = loop.time()
        download.link_resumed()
        assert len(sent) == 2 and sent[1][0] - resumed_at < 0.05  # not after the 1 s idle timeout
        assert sent[1][1].bitmap == sent[0][1].bitmap
        answer = service.answer(sent[1][1])
        assert isinstance(answer, list)
        for block in answer:
            download.receive_block(block)
        result = await asyncio.wait_for(running, 10)
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        stats = download.stats
        assert (stats.resends, stats.timeouts, stats.requests_sent) == (1, 0, 2)

    asyncio.run(main())
