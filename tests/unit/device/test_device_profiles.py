"""A ``Device`` running each library profile against the emulator's stream service core over an in-memory link:
the profile is picked from the settings, its bytes reach the real service decoder, and the file verifies."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from device_sim.device.device import Device
from device_sim.device.types import DownloadSettings, SinkKind
from device_sim.engine.profiles import ProfileKind
from device_sim.protocol import Format
from device_sim.transport import TransportSettings
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service import StreamServiceCore
from tests.support.memory_link import MemoryLink

ROLE = "arn:aws:iam::123456789012:role/stream-role"
DATA = bytes((k * 31 + 7) % 251 for k in range(40 * 1024 + 123))  # 41 blocks of 1 KiB, the last one short
SHA = hashlib.sha256(DATA).hexdigest()


def _device(link: MemoryLink, profile: ProfileKind, fmt: Format, **settings: object) -> Device:
    values: dict[str, object] = {
        "format": fmt,
        "block_size": 1024,
        "profile": profile,
        "sink": SinkKind.MEMORY,
        "verify_s3": False,
        "expect_sha256": SHA,
        "describe_timeout": 0.2,
        **settings,
    }
    return Device(
        thing_name="dev-1",
        stream_id="s1",
        transport=TransportSettings(endpoint="memory", client_id="dev-1", no_tls=True),
        settings=DownloadSettings(**values),  # type: ignore[arg-type]
        transport_factory=link.factory,
    )


@pytest.mark.parametrize(
    ("profile", "fmt", "first_request", "requests"),
    [
        (ProfileKind.FREERTOS_OTA, Format.CBOR, b"\xa6\x61c\x63rdy\x61f\x00\x61l\x19\x04\x00\x61o\x00\x61b\x46", 41),
        (ProfileKind.FREERTOS_OTA_DEMO, Format.CBOR, b"\xa6\x61c\x63rdy", 6),  # ceil(41 / 8)
        (ProfileKind.MFS, Format.CBOR, bytes.fromhex("a6616363726479616600616c190400616f00616244") + b"MQ==", 41),
        (ProfileKind.MFS, Format.JSON, b'{"s": 1,"f": 0,"l": 1024,"o": 0,"n": 1}', 41),
        (ProfileKind.RUSTOT, Format.CBOR, bytes.fromhex("a5616600616c190400616f00616244ffffff7f616e10"), 3),
    ],
)
def test_each_profile_downloads_through_the_service_core(
    profile: ProfileKind, fmt: Format, first_request: bytes, requests: int
) -> None:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    version = catalog.put_object("fw", "fw.bin", DATA)
    catalog.create_stream("s1", [(0, "fw", "fw.bin", version.version_id)], ROLE, "firmware")
    link = MemoryLink(StreamServiceCore(catalog))
    result = asyncio.run(asyncio.wait_for(_device(link, profile, fmt).run(), 30))
    assert result.ok, result.failure
    gets = link.requests("get")
    assert gets[0].startswith(first_request) and len(gets) == requests
    assert result.metrics.stalls == 0 and result.metrics.blocks == 41 and result.metrics.sha256 == SHA
    assert profile.value in _device(link, profile, fmt).settings.label


def test_a_file_the_agent_cannot_take_fails_with_the_reason() -> None:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    big = bytes(1100 * 1024)  # 1100 blocks of 1 KiB: a 138-byte bitmap, over the agent's 128
    version = catalog.put_object("fw", "fw.bin", big)
    catalog.create_stream("s1", [(0, "fw", "fw.bin", version.version_id)], ROLE, "firmware")
    link = MemoryLink(StreamServiceCore(catalog))
    result = asyncio.run(asyncio.wait_for(_device(link, ProfileKind.FREERTOS_OTA, Format.CBOR).run(), 30))
    assert not result.ok and result.failure is not None
    assert "otaconfigMAX_BLOCK_BITMAP_SIZE 128" in result.failure.message
    assert link.requests("get") == []
