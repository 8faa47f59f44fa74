"""A ``Device`` cancelled (Ctrl-C, a fleet's deadline) reports what it had done and where it stopped.

Over the in-memory link of ``tests.support.memory_link`` (the emulator's service core, no broker): the cancel lands
while connecting, while describing, and in the middle of the download; ``DeviceCancelled`` carries the partial
metrics (connect time, blocks, bytes, requests) and a message a report can show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from device_sim.device.device import Device, DeviceCancelled
from device_sim.device.types import DownloadSettings, SinkKind
from device_sim.results.metrics import FailureKind, failure_reason
from device_sim.transport import ConnectionEvent, CrtResources, TransportSettings
from local_iot.service import AnswerKind
from tests.support.memory_link import MemoryLink, MemoryTransport
from tests.unit.device.test_device_memory import SHA, THING, _world

BLOCKS = 41  # test_device_memory's file: 41 blocks of 1 KiB


def _device(factory: Callable[..., MemoryTransport], **settings: object) -> Device:
    values: dict[str, object] = {
        "block_size": 1024,
        "blocks_per_request": 8,
        "sink": SinkKind.MEMORY,
        "verify_s3": False,
        "expect_sha256": SHA,
        **settings,
    }
    return Device(
        thing_name=THING,
        stream_id="s1",
        transport=TransportSettings(endpoint="memory", client_id=THING, no_tls=True),
        settings=DownloadSettings(**values),  # type: ignore[arg-type]
        transport_factory=factory,
    )


def _cancelled(device: Device, link: MemoryLink, when: Callable[[str], bool]) -> DeviceCancelled:
    """Run ``device``; cancel it from the link's hook once ``when(topic)`` holds for a request it published."""

    async def main() -> DeviceCancelled:
        task = asyncio.ensure_future(device.run())
        link.after_request = lambda topic: task.cancel() if when(topic) else None
        with pytest.raises(DeviceCancelled) as stopped:
            await asyncio.wait_for(task, 10)
        return stopped.value

    return asyncio.run(main())


def test_stopped_while_downloading_keeps_the_blocks_and_says_how_many() -> None:
    _, core = _world()
    link = MemoryLink(core)
    gets = 0

    def third_get(topic: str) -> bool:
        nonlocal gets
        gets += topic.endswith("/get/cbor")
        return gets == 3

    stopped = _cancelled(_device(link.factory), link, third_get)
    result = stopped.result
    m = result.metrics
    assert result.failure is not None and result.failure.kind is FailureKind.CANCELLED
    assert m.failure_reason == failure_reason(FailureKind.CANCELLED) and not m.verified
    assert 16 <= m.blocks < BLOCKS  # the answers to two requests were stored before the third was sent
    assert m.failure_message == f"stopped while downloading ({m.blocks} of {BLOCKS} blocks)"
    assert m.bytes == 1024 * m.blocks and m.requests >= 3
    assert m.connect_s is not None and m.first_block_s is not None and m.download_s is None
    assert link.transports[0].closed  # it disconnected on the way out


def test_stopped_while_describing() -> None:
    _, core = _world()
    link = MemoryLink(core, drop_answers=lambda out: out.kind is AnswerKind.DESCRIPTION)
    stopped = _cancelled(_device(link.factory, describe_timeout=30.0), link, lambda t: t.endswith("/describe/cbor"))
    m = stopped.result.metrics
    assert m.failure_message == "stopped while describing the stream"
    assert m.connect_s is not None and m.blocks == 0 and m.metered_messages_out == 1


class _HangingConnect(MemoryTransport):
    """A broker that never answers CONNECT; ``entered`` is set once the device waits for it."""

    entered: asyncio.Event

    async def connect(self) -> None:
        self.entered.set()
        await asyncio.Event().wait()


def test_stopped_while_connecting() -> None:
    _, core = _world()
    link = MemoryLink(core)

    def factory(
        settings: TransportSettings,
        *,
        on_message: Callable[[str, bytes], None],
        on_connection_event: Callable[[ConnectionEvent], None] | None = None,
        resources: CrtResources | None = None,
    ) -> MemoryTransport:
        transport = _HangingConnect(link, settings.client_id, on_message, on_connection_event)
        link.transports.append(transport)
        return transport

    async def main() -> DeviceCancelled:
        _HangingConnect.entered = asyncio.Event()
        task = asyncio.ensure_future(_device(factory).run())
        await asyncio.wait_for(_HangingConnect.entered.wait(), 10)
        task.cancel()
        with pytest.raises(DeviceCancelled) as stopped:
            await asyncio.wait_for(task, 10)
        return stopped.value

    m = asyncio.run(main()).result.metrics
    assert m.failure_message == "stopped while connecting"
    assert m.connect_s is None and m.blocks == 0 and link.published == []
