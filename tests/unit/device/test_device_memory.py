"""``Device`` against the emulator's stream service core over an in-memory link: no broker, no sockets.

Covers what used to be reachable only end to end: describe retries, topic routing, reconnect and resume,
rejections during a download (version change, stream gone), a refused subscription.
"""

from __future__ import annotations

import asyncio
import hashlib

import cbor2
import pytest

from device_sim.device.device import Device
from device_sim.device.types import DownloadSettings, SinkKind
from device_sim.device.verify import S3Location, SourceObject, block_crcs
from device_sim.protocol import Format
from device_sim.results.metrics import FailureKind, failure_reason
from device_sim.transport import TransportSettings
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service import AnswerKind, Outgoing, StreamServiceCore
from tests.support.memory_link import MemoryLink

ROLE = "arn:aws:iam::123456789012:role/stream-role"
DATA = bytes((k * 31 + 7) % 251 for k in range(40 * 1024 + 123))  # 41 blocks of 1 KiB, the last one short
SHA = hashlib.sha256(DATA).hexdigest()
THING = "dev-1"


def _world() -> tuple[InMemoryCatalog, StreamServiceCore]:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    version = catalog.put_object("fw", "fw.bin", DATA)
    catalog.create_stream("s1", [(0, "fw", "fw.bin", version.version_id)], ROLE, "firmware")
    return catalog, StreamServiceCore(catalog)


def _device(link: MemoryLink, fmt: Format = Format.CBOR, source: object = None, **settings: object) -> Device:
    values: dict[str, object] = {
        "format": fmt,
        "block_size": 1024,
        "blocks_per_request": 8,
        "sink": SinkKind.MEMORY,
        "verify_s3": False,
        "expect_sha256": SHA,
        "describe_timeout": 0.2,
        **settings,
    }
    return Device(
        thing_name=THING,
        stream_id="s1",
        transport=TransportSettings(endpoint="memory", client_id=THING, no_tls=True),
        settings=DownloadSettings(**values),  # type: ignore[arg-type]
        transport_factory=link.factory,
        source=source,  # type: ignore[arg-type]  # duck-typed S3Source
    )


def _run(device: Device) -> object:
    return asyncio.run(asyncio.wait_for(device.run(), 30))


@pytest.mark.parametrize("runs", [False, True], ids=["one-by-one", "runs"])
@pytest.mark.parametrize("fmt", [Format.CBOR, Format.JSON])
def test_a_device_downloads_and_verifies_with_no_broker(fmt: Format, runs: bool) -> None:
    """``runs``: each request's answers reach the device together (``MessageRuns``), as a fleet's often do."""
    _, core = _world()
    link = MemoryLink(core, runs=runs)
    result = _run(_device(link, fmt))
    assert result.ok, result.failure  # type: ignore[attr-defined]
    m = result.metrics  # type: ignore[attr-defined]
    assert m.bytes == len(DATA) and m.blocks == 41 and m.duplicates == 0 and m.timeouts == 0
    assert m.sha256 == SHA
    # subscribed to the three answer topics before the first request, and only ever asked its own stream
    assert link.transports[0].subscriptions == {
        f"$aws/things/{THING}/streams/s1/{op}/{fmt.value}" for op in ("description", "data", "rejected")
    }
    assert all(topic.startswith(f"$aws/things/{THING}/streams/s1/") for _, topic, _ in link.published)
    assert len(link.requests("describe")) == 1 and len(link.requests("get")) == 6  # ceil(41 / 8)


def test_a_lost_describe_answer_is_asked_again() -> None:
    _, core = _world()
    lost: list[Outgoing] = []

    def drop_first_description(out: Outgoing) -> bool:
        if out.kind is AnswerKind.DESCRIPTION and not lost:
            lost.append(out)
            return True
        return False

    link = MemoryLink(core, drop_answers=drop_first_description)
    result = _run(_device(link))
    assert result.ok  # type: ignore[attr-defined]
    assert len(lost) == 1 and len(link.requests("describe")) == 2


def test_describe_gives_up_after_its_retries() -> None:
    _, core = _world()
    link = MemoryLink(core, drop_answers=lambda out: out.kind is AnswerKind.DESCRIPTION)
    result = _run(_device(link, describe_retries=2))
    assert not result.ok  # type: ignore[attr-defined]
    assert result.failure.reason == failure_reason(FailureKind.TIMEOUT, "describe")  # type: ignore[attr-defined]
    assert len(link.requests("describe")) == 3


def test_messages_on_other_topics_are_ignored() -> None:
    _, core = _world()
    link = MemoryLink(core)
    device = _device(link)
    noise_sent = []

    def noise(topic: str) -> None:
        if topic.endswith("/get/cbor") and not noise_sent:
            noise_sent.append(topic)
            other = link.transports[0]
            # a block of another stream, a block in the other format, and garbage on the data topic
            block = cbor2.dumps({"f": 0, "i": 0, "l": 1024, "p": b"\0" * 1024})
            other._on_message(f"$aws/things/{THING}/streams/other/data/cbor", block)
            other._on_message(f"$aws/things/{THING}/streams/s1/data/json", b'{"f":0,"i":0,"l":1024,"p":""}')
            other._on_message(f"$aws/things/{THING}/streams/s1/data/cbor", b"\xff\x00garbage")

    link.after_request = noise
    result = _run(device)
    assert noise_sent and result.ok  # type: ignore[attr-defined]
    assert result.metrics.blocks == 41 and result.metrics.invalid_blocks == 0  # type: ignore[attr-defined]


def test_a_connection_that_drops_and_resumes_asks_again_at_once() -> None:
    _, core = _world()
    link = MemoryLink(core)
    gets = 0

    def cut_after_second_request(topic: str) -> None:
        nonlocal gets
        if topic.endswith("/get/cbor"):
            gets += 1
            if gets == 2:
                link.transports[0].interrupt()  # the whole answer to this request is lost in transit

    link.after_request = cut_after_second_request
    result = _run(_device(link, request_timeout=20.0))  # a timeout would take 20 s: only the resume can save it
    assert result.ok  # type: ignore[attr-defined]
    m = result.metrics  # type: ignore[attr-defined]
    assert m.disconnects == 1 and m.timeouts == 0 and m.blocks == 41


def test_a_version_change_mid_download_is_described_again_and_finishes() -> None:
    catalog, core = _world()
    link = MemoryLink(core)
    bumped = []

    def bump_once(topic: str) -> None:
        if topic.endswith("/get/cbor") and not bumped:
            bumped.append(catalog.bump_stream_version("s1"))

    link.after_request = bump_once
    result = _run(_device(link))
    assert result.ok, result.failure  # type: ignore[attr-defined]
    assert result.stream_version == bumped[0] == 2  # type: ignore[attr-defined]
    assert dict(result.metrics.rejections).get("VersionMismatch", 0) >= 1  # type: ignore[attr-defined]
    assert len(link.requests("describe")) == 2


def test_a_stream_deleted_mid_download_fails_with_the_service_code() -> None:
    catalog, core = _world()
    link = MemoryLink(core)

    def delete_after_first(topic: str) -> None:
        if topic.endswith("/get/cbor") and catalog.get_stream("s1") is not None:
            catalog.delete_stream("s1")

    link.after_request = delete_after_first
    result = _run(_device(link))
    assert not result.ok  # type: ignore[attr-defined]
    failure = result.failure  # type: ignore[attr-defined]
    assert failure.kind is FailureKind.REJECTED and "ResourceNotFound" in failure.reason


def test_a_refused_subscription_is_a_rejection_before_any_request() -> None:
    _, core = _world()
    data_topic = f"$aws/things/{THING}/streams/s1/data/cbor"
    link = MemoryLink(core, refuse={data_topic: 0x87})
    result = _run(_device(link))
    assert not result.ok  # type: ignore[attr-defined]
    assert result.failure.reason == failure_reason(FailureKind.REJECTED, "SubscribeRejected")  # type: ignore[attr-defined]
    assert link.published == []


class _ObjectSource:
    """The S3 side of verification (what ``S3Source`` reads from AWS): one object for file 0 of ``s1``."""

    def __init__(self, data: bytes, version: str | None) -> None:
        self.object = SourceObject(
            location=S3Location(bucket="fw", key="fw.bin", version=version),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            data=data,
        )
        self.fetches = 0

    def prepare(self, stream_id: str) -> None:
        pass

    def prepared(self, stream_id: str) -> bool:
        return False

    def locate(self, stream_id: str, file_id: int) -> S3Location:
        assert (stream_id, file_id) == ("s1", 0)
        return self.object.location

    def fetch(self, location: S3Location) -> SourceObject:
        self.fetches += 1
        return self.object

    def fetched(self, stream_id: str, file_id: int) -> SourceObject | None:
        return None  # never fetched before: each device here asks

    def source_crcs(self, obj: SourceObject, block_size: int) -> list[int]:
        return block_crcs(obj.data, block_size)


@pytest.mark.parametrize("runs", [False, True], ids=["one-by-one", "runs"])
@pytest.mark.parametrize("version", ["v1", None])
def test_a_digest_download_verified_against_s3_compares_each_block_with_the_object(
    version: str | None, runs: bool
) -> None:
    """A pinned object is fetched before the download and every block compared with it (ReferenceSink); an
    unpinned one may change meanwhile, so it is fetched after the download and the blocks hashed (DigestSink).
    Either way, where the object differs from what the stream served, the verdict names the first block."""
    _, core = _world()
    changed = bytearray(DATA)
    changed[5 * 1024 + 3] ^= 1
    changed[9 * 1024] ^= 1
    for reference, verified in ((DATA, True), (bytes(changed), False)):
        source = _ObjectSource(reference, version)
        result = _run(
            _device(
                MemoryLink(core, runs=runs), source=source, sink=SinkKind.DIGEST, verify_s3=True, expect_sha256=None
            )
        )
        (file,) = result.files  # type: ignore[attr-defined]
        assert file.verified is verified and file.sha256 == SHA
        assert file.first_bad_block == (None if verified else 5)
        assert source.fetches == (2 if version is not None else 1)  # before (pinned only) and at verification
