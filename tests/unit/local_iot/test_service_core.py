"""StreamServiceCore against InMemoryCatalog: docs/protocol.md sections 3-4, raw CBOR/JSON payloads, no network."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import cbor2
import pytest

from device_sim.protocol import OUT_OF_RANGE_MESSAGE, ErrorCode
from device_sim.protocol.limits import MAX_DEVICE_PAYLOAD
from local_iot.catalog import CatalogError, StreamFile, StreamRecord
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service import AnswerKind, Outgoing, StreamServiceCore

ROLE = "arn:aws:iam::123456789012:role/stream-role"
SIZE = 10 * 1024 + 100  # 11 blocks of 1 KiB, the last one 100 bytes
DATA = bytes(k * 7 % 251 for k in range(SIZE))
BIG = bytes(k % 253 for k in range(1000 * 256))  # 1000 blocks of 256 B


def _world() -> InMemoryCatalog:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    catalog.put_object("fw", "small.bin", DATA)
    big = catalog.put_object("fw", "big.bin", BIG)
    catalog.create_stream("s1", [(0, "fw", "small.bin", None), (7, "fw", "big.bin", big.version_id)], ROLE, "fw 1")
    return catalog


@pytest.fixture
def catalog() -> InMemoryCatalog:
    return _world()


@pytest.fixture
def core(catalog: InMemoryCatalog) -> StreamServiceCore:
    return StreamServiceCore(catalog)


def encode(doc: Any, fmt: str) -> bytes:
    if fmt == "cbor":
        return cbor2.dumps(doc)
    if isinstance(doc, dict) and isinstance(doc.get("b"), bytes):
        doc = {**doc, "b": "0x" + doc["b"].hex()}
    return json.dumps(doc).encode()


def decode(out: Outgoing) -> dict[str, Any]:
    doc = cbor2.loads(out.payload) if out.format == "cbor" else json.loads(out.payload)
    assert isinstance(doc, dict)
    if out.format == "json" and "p" in doc:
        doc["p"] = base64.b64decode(doc["p"], validate=True)
    return doc


def ask(
    core: StreamServiceCore, op: str, doc: Any, fmt: str = "cbor", stream: str = "s1", thing: str = "dev-1"
) -> list[Outgoing]:
    payload = doc if isinstance(doc, bytes) else encode(doc, fmt)
    return core.handle(f"$aws/things/{thing}/streams/{stream}/{op}/{fmt}", payload, None, 5.0)


def rejected(outs: list[Outgoing]) -> dict[str, Any]:
    assert len(outs) == 1 and outs[0].kind is AnswerKind.REJECTED, outs
    doc = decode(outs[0])
    assert doc["o"] == doc["code"] == outs[0].code
    assert doc["m"] == doc["message"]
    assert doc.get("c") == doc.get("clientToken")
    return doc


def blocks(outs: list[Outgoing]) -> list[int]:
    assert all(o.kind is AnswerKind.DATA for o in outs), outs
    return [decode(o)["i"] for o in outs]


FORMATS = pytest.mark.parametrize("fmt", ["cbor", "json"])


# -- describe -----------------------------------------------------------------------------------------------------


@FORMATS
def test_describe(core: StreamServiceCore, fmt: str) -> None:
    [out] = ask(core, "describe", {"c": "tok"}, fmt)
    assert out.kind is AnswerKind.DESCRIPTION
    assert out.topic == f"$aws/things/dev-1/streams/s1/description/{fmt}"
    assert decode(out) == {"c": "tok", "s": 1, "d": "fw 1", "r": [{"f": 0, "z": SIZE}, {"f": 7, "z": len(BIG)}]}
    [out] = ask(core, "describe", {}, fmt)
    assert "c" not in decode(out)


def test_describe_of_a_missing_stream_and_an_unreadable_object(core: StreamServiceCore, catalog: Any) -> None:
    answer = rejected(ask(core, "describe", {"c": "x"}, stream="nope"))
    assert (answer["o"], answer["c"]) == ("ResourceNotFound", "x")
    assert "nope" in answer["m"]
    catalog.delete_role(ROLE)
    assert rejected(ask(core, "describe", {}))["o"] == "Unauthorized"


# -- get: data ------------------------------------------------------------------------------------------------------


@FORMATS
def test_get_consecutive_blocks(core: StreamServiceCore, fmt: str) -> None:
    outs = ask(core, "get", {"c": "t", "f": 0, "l": 1024, "o": 2, "n": 3}, fmt)
    assert [o.topic for o in outs] == [f"$aws/things/dev-1/streams/s1/data/{fmt}"] * 3
    docs = [decode(o) for o in outs]
    assert [d["i"] for d in docs] == [2, 3, 4]
    for d in docs:
        assert d == {"c": "t", "f": 0, "i": d["i"], "l": 1024, "p": DATA[d["i"] * 1024 : d["i"] * 1024 + 1024]}


def test_cbor_data_message_layout(core: StreamServiceCore) -> None:
    [out] = ask(core, "get", {"f": 0, "l": 1024, "o": 1, "n": 1})
    # indefinite-length map, keys f, i, l, p in that order (no c without a token)
    assert out.payload[0] == 0xBF and out.payload[-1] == 0xFF
    assert list(cbor2.loads(out.payload)) == ["f", "i", "l", "p"]
    [out] = ask(core, "get", {"c": "k", "f": 0, "l": 1024, "o": 1, "n": 1})
    assert list(cbor2.loads(out.payload)) == ["c", "f", "i", "l", "p"]


def test_last_block_is_the_remainder(core: StreamServiceCore) -> None:
    [out] = ask(core, "get", {"f": 0, "l": 1024, "o": 10, "n": 1})
    assert decode(out) == {"f": 0, "i": 10, "l": 100, "p": DATA[10240:]}


def test_default_n_is_128_kib_worth(core: StreamServiceCore) -> None:
    assert blocks(ask(core, "get", {"f": 7, "l": 1024})) == list(range(128))
    # on a file smaller than 128 KiB the default reaches past the end (docs/protocol.md: always send n or b)
    assert rejected(ask(core, "get", {"f": 0, "l": 1024}))["m"] == OUT_OF_RANGE_MESSAGE


def test_128_kib_cap_and_n(core: StreamServiceCore) -> None:
    assert blocks(ask(core, "get", {"f": 7, "l": 256, "o": 0, "n": 1000})) == list(range(512))
    assert blocks(ask(core, "get", {"f": 7, "l": 256, "o": 900, "n": 100})) == list(range(900, 1000))
    assert blocks(ask(core, "get", {"f": 7, "l": 131072, "o": 0, "n": 1})) == [0]
    [whole] = ask(core, "get", {"f": 7, "l": 131072, "o": 1, "n": 1})
    assert decode(whole)["l"] == len(BIG) - 131072


@FORMATS
def test_bitmap_aws_docs_example(core: StreamServiceCore, fmt: str) -> None:
    outs = ask(core, "get", {"f": 7, "l": 256, "o": 20, "b": bytes([0x13, 0x00, 0x80])}, fmt)
    assert blocks(outs) == [20, 21, 24, 43]  # absolute indices


def test_bitmap_json_hex_without_prefix_and_upper_case(core: StreamServiceCore) -> None:
    payload = json.dumps({"f": 7, "l": 256, "o": 20, "b": "1300AB"}).encode()
    assert blocks(ask(core, "get", payload, "json")) == [20, 21, 24, 36, 37, 39, 41, 43]


def test_bitmap_capped_by_n_then_by_128_kib_lowest_first(core: StreamServiceCore) -> None:
    every_other = bytes([0x55]) * 125  # 500 blocks from o=0, half of them set
    assert blocks(ask(core, "get", {"f": 7, "l": 256, "o": 0, "n": 5, "b": every_other})) == [0, 2, 4, 6, 8]
    all_set = bytes([0xFF]) * 124  # 992 blocks from o=8
    got = blocks(ask(core, "get", {"f": 7, "l": 256, "o": 8, "b": all_set}))
    assert got == list(range(8, 8 + 512))
    got = blocks(ask(core, "get", {"f": 7, "l": 256, "o": 8, "n": 600, "b": all_set}))
    assert len(got) == 512


# -- out of range -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {"f": 0, "l": 1024, "o": 10, "n": 2},  # one block past the end
        {"f": 0, "l": 1024, "o": 11, "n": 1},  # offset at the end
        {"f": 0, "l": 1024, "o": 5, "n": 200},  # past the end even though the cap would cut it at 128
        {"f": 0, "l": 1024, "o": 8, "b": bytes([0x08])},  # bit 3 = block 11
        {"f": 0, "l": 1024, "o": 0, "b": b""},  # empty bitmap
        {"f": 0, "l": 1024, "o": 0, "b": bytes(3)},  # all-zero bitmap
        {"f": 7, "l": 256, "o": 0, "n": 2, "b": bytes([1]) + bytes(124) + bytes([0x80])},  # selects 1007 of 1000
    ],
)
@FORMATS
def test_out_of_range_is_invalid_request(core: StreamServiceCore, doc: dict[str, Any], fmt: str) -> None:
    answer = rejected(ask(core, "get", {"c": "r", **doc}, fmt))
    assert (answer["o"], answer["m"], answer["c"]) == ("InvalidRequest", OUT_OF_RANGE_MESSAGE, "r")


# -- stream-dependent errors -----------------------------------------------------------------------------------------


@FORMATS
def test_version(core: StreamServiceCore, catalog: InMemoryCatalog, fmt: str) -> None:
    assert blocks(ask(core, "get", {"s": 1, "f": 0, "l": 1024, "n": 1}, fmt)) == [0]
    answer = rejected(ask(core, "get", {"c": "v", "s": 2, "f": 0, "l": 1024, "n": 1}, fmt))
    assert (answer["o"], answer["c"]) == ("VersionMismatch", "v")
    catalog.update_stream("s1")
    assert rejected(ask(core, "get", {"s": 1, "f": 0, "l": 1024, "n": 1}, fmt))["o"] == "VersionMismatch"
    assert blocks(ask(core, "get", {"s": 2, "f": 0, "l": 1024, "n": 1}, fmt)) == [0]
    assert blocks(ask(core, "get", {"f": 0, "l": 1024, "n": 1}, fmt)) == [0]  # no s: no check


def test_resource_not_found(core: StreamServiceCore, catalog: InMemoryCatalog) -> None:
    get = {"c": "n", "f": 0, "l": 1024, "n": 1}
    assert rejected(ask(core, "get", get, stream="other"))["o"] == "ResourceNotFound"
    assert rejected(ask(core, "get", {**get, "f": 3}))["o"] == "ResourceNotFound"
    catalog.delete_object("fw", "small.bin")
    answer = rejected(ask(core, "get", get))
    assert (answer["o"], answer["c"]) == ("ResourceNotFound", "n")


def test_pinned_version_gone_and_pinned_version_unaffected_by_overwrite(
    core: StreamServiceCore, catalog: InMemoryCatalog
) -> None:
    get = {"f": 7, "l": 256, "o": 999, "n": 1}
    catalog.put_object("fw", "big.bin", b"new content")  # a new current version; the stream pins the old one
    assert blocks(ask(core, "get", get)) == [999]
    stream = catalog.get_stream("s1")
    assert stream is not None
    pinned = stream.file(7)
    assert pinned is not None and pinned.version_id is not None
    catalog.delete_object("fw", "big.bin", pinned.version_id)
    assert rejected(ask(core, "get", get))["o"] == "ResourceNotFound"


def test_etag_mismatch_after_overwrite_of_an_unpinned_object(core: StreamServiceCore, catalog: Any) -> None:
    assert blocks(ask(core, "get", {"f": 0, "l": 1024, "n": 1})) == [0]
    catalog.put_object("fw", "small.bin", DATA[::-1])
    assert rejected(ask(core, "get", {"c": "e", "f": 0, "l": 1024, "n": 1}))["o"] == "ETagMismatch"
    assert rejected(ask(core, "describe", {}))["o"] == "ETagMismatch"
    catalog.update_stream("s1")  # records the new ETag: served again, the new bytes
    [out] = ask(core, "get", {"f": 0, "l": 1024, "n": 1})
    assert decode(out)["p"] == DATA[::-1][:1024]


@pytest.mark.parametrize(
    "role", [None, {"assumable_by_iot": False}, {"may_read_s3": False}], ids=["missing", "not-assumable", "no-s3"]
)
def test_unauthorized(catalog: InMemoryCatalog, role: dict[str, bool] | None) -> None:
    catalog.delete_role(ROLE)
    if role is not None:
        catalog.add_role(ROLE, **role)
    answer = rejected(ask(StreamServiceCore(catalog), "get", {"c": "u", "f": 0, "l": 1024, "n": 1}))
    assert (answer["o"], answer["c"]) == ("Unauthorized", "u")


# -- check order ----------------------------------------------------------------------------------------------------


def test_check_order(core: StreamServiceCore, catalog: InMemoryCatalog) -> None:
    def code(doc: dict[str, Any], stream: str = "s1") -> str:
        return str(rejected(ask(core, "get", doc, stream=stream))["o"])

    # codec checks: l before o before n before b, and all before the stream
    assert code({"f": 0, "l": 1, "o": -1}, stream="missing") == "BlockSizeOutOfBounds"
    assert code({"f": 0, "l": 1024, "o": 98305, "n": 0}, stream="missing") == "OffsetOutOfBounds"
    assert code({"f": 0, "l": 1024, "n": 98305, "b": bytes(12288)}) == "BlockCountLimitExceeded"
    assert code({"f": 0, "l": 1024, "b": bytes(12288)}, stream="missing") == "BlockBitmapLimitExceeded"
    # stream exists, then version, then file id, then access, then range
    assert code({"s": 9, "f": 99, "l": 1024, "n": 1}, stream="missing") == "ResourceNotFound"
    assert code({"s": 9, "f": 99, "l": 1024, "n": 1}) == "VersionMismatch"
    catalog.delete_role(ROLE)
    assert code({"f": 99, "l": 1024, "n": 1}) == "ResourceNotFound"
    assert code({"f": 0, "l": 1024, "o": 50, "n": 1}) == "Unauthorized"
    catalog.add_role(ROLE)
    catalog.put_object("fw", "small.bin", b"changed")
    assert code({"f": 0, "l": 1024, "o": 50, "n": 1}) == "ETagMismatch"


# -- malformed requests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "payload", "expected"),
    [
        ("cbor", b"\xff\x00garbage", "InvalidCbor"),
        ("cbor", b"", "InvalidCbor"),
        ("cbor", cbor2.dumps([1, 2]), "InvalidCbor"),
        ("cbor", cbor2.dumps({"f": 0, "l": 1024, "b": "0x01"}), "InvalidCbor"),  # text bitmap
        ("cbor", cbor2.dumps({"f": 0, "l": "1024"}), "InvalidCbor"),
        ("json", b"{not json", "InvalidJson"),
        ("json", b"[1]", "InvalidJson"),
        ("json", b'{"f": 0, "l": 1024.0}', "InvalidRequest"),
        ("json", b'{"l": 1024}', "InvalidRequest"),
        ("json", b'{"f": 0, "l": 1024, "n": 0}', "InvalidRequest"),
    ],
)
def test_malformed(core: StreamServiceCore, fmt: str, payload: bytes, expected: str) -> None:
    assert rejected(ask(core, "get", payload, fmt))["o"] == expected


def test_token_echo_rules(core: StreamServiceCore) -> None:
    assert rejected(ask(core, "get", {"c": "abc", "f": 0, "l": 1}))["c"] == "abc"
    too_long = rejected(ask(core, "get", {"c": "x" * 65, "f": 0, "l": 1024, "n": 1}))
    assert too_long["o"] == "InvalidRequest" and "c" not in too_long
    wrong_type = rejected(ask(core, "get", {"c": 5, "f": 0, "l": 1024, "n": 1}))
    assert wrong_type["o"] == "InvalidCbor" and "c" not in wrong_type


# -- topics ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "reply"),
    [
        ("$aws/things/dev-1/streams/s1/fetch/cbor", "$aws/things/dev-1/streams/s1/rejected/cbor"),
        ("$aws/things/dev-1/streams/s1/get/xml", "$aws/things/dev-1/streams/s1/rejected/json"),
        ("$aws/things/dev-1/streams/s1/get", "$aws/things/dev-1/streams/s1/rejected/json"),
        ("$aws/things/dev-1/streams/s1/get/cbor/more", "$aws/things/dev-1/streams/s1/rejected/json"),
    ],
)
def test_invalid_topic_answered_on_the_streams_rejected_topic(core: StreamServiceCore, topic: str, reply: str) -> None:
    outs = core.handle(topic, cbor2.dumps({"c": "t"}), None, 0.0)
    assert [o.topic for o in outs] == [reply]
    answer = rejected(outs)
    assert answer["o"] == "InvalidTopic" and "c" not in answer


def test_unanswerable_and_own_topics_are_dropped_and_counted(core: StreamServiceCore) -> None:
    for topic in ("$aws/things/dev 1/streams/s1/get/cbor", "$aws/things/dev-1/streams//get/cbor", "a/b"):
        assert core.handle(topic, b"{}", None, 0.0) == []
    for op in ("description", "data", "rejected"):
        assert core.handle(f"$aws/things/dev-1/streams/s1/{op}/cbor", b"\xa0", None, 0.0) == []
    stats = core.stats()
    assert (stats.unanswerable_topics, stats.ignored_answers, stats.requests) == (3, 3, 0)


# -- robustness and caching -----------------------------------------------------------------------------------------


class _BrokenCatalog(InMemoryCatalog):
    """A catalog with a bug: get_stream raises RuntimeError while ``broken`` is set."""

    broken = True

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        if self.broken:
            raise RuntimeError("catalog bug")
        return super().get_stream(stream_id)


def test_a_bug_is_internal_error_and_the_service_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    catalog = _BrokenCatalog()
    catalog.add_role(ROLE)
    catalog.put_object("fw", "small.bin", DATA)
    catalog.create_stream("s1", [(0, "fw", "small.bin", None)], ROLE)
    core = StreamServiceCore(catalog)
    with caplog.at_level(logging.ERROR, logger="local_iot.service"):
        answer = rejected(ask(core, "get", {"c": "ie", "f": 0, "l": 1024, "n": 1}, "json"))
    assert (answer["o"], answer["c"]) == ("InternalError", "ie")
    assert any(r.exc_info and "catalog bug" in str(r.exc_info[1]) for r in caplog.records)
    assert core.stats().internal_errors == 1
    catalog.broken = False
    assert blocks(ask(core, "get", {"f": 0, "l": 1024, "n": 2}, "json")) == [0, 1]


class _GoneOnRead(InMemoryCatalog):
    """The object disappears between check_access and read."""

    def read(self, file: StreamFile) -> bytes:
        raise CatalogError(ErrorCode.RESOURCE_NOT_FOUND, "gone between the check and the read")


def test_catalog_error_from_read_is_answered() -> None:
    gone = _GoneOnRead()
    gone.add_role(ROLE)
    gone.put_object("fw", "small.bin", DATA)
    gone.create_stream("s1", [(0, "fw", "small.bin", None)], ROLE)
    assert rejected(ask(StreamServiceCore(gone), "get", {"f": 0, "l": 1024, "n": 1}))["o"] == "ResourceNotFound"


def test_object_bytes_are_read_once_per_version(core: StreamServiceCore, catalog: InMemoryCatalog) -> None:
    for offset in range(10):
        ask(core, "get", {"f": 0, "l": 1024, "o": offset, "n": 1})
    ask(core, "describe", {})
    assert catalog.reads == 2  # small.bin and big.bin
    catalog.put_object("fw", "small.bin", b"x" * 2048)
    catalog.update_stream("s1")
    assert blocks(ask(core, "get", {"f": 0, "l": 1024, "o": 1, "n": 1})) == [1]
    assert catalog.reads == 3
    assert core.stats().cache_reads == 3


def test_stats_count_answers(core: StreamServiceCore) -> None:
    ask(core, "get", {"f": 0, "l": 1024, "o": 0, "n": 11})
    ask(core, "describe", {})
    ask(core, "get", {"f": 0, "l": 1024, "o": 0, "n": 12})
    stats = core.stats()
    assert (stats.requests, stats.descriptions, stats.data_messages, stats.data_bytes) == (3, 1, 11, SIZE)
    assert stats.rejections == {"InvalidRequest": 1}


def test_injected_rejection_echoes_the_token(core: StreamServiceCore) -> None:
    [first, *_] = ask(core, "get", {"c": "tk", "f": 0, "l": 1024, "n": 2}, "json")
    out = core.rejection(first, "Throttling", "slow down")
    assert out.topic == "$aws/things/dev-1/streams/s1/rejected/json"
    assert decode(out) == {
        "clientToken": "tk",
        "c": "tk",
        "code": "Throttling",
        "o": "Throttling",
        "message": "slow down",
        "m": "slow down",
    }


def test_request_over_the_128_kb_publish_limit_is_never_answered() -> None:
    """AWS IoT Core refuses a device publish over 128 KB before the stream service sees it."""
    core = StreamServiceCore(InMemoryCatalog())
    topic = "$aws/things/t/streams/s/get/cbor"
    assert core.handle(topic, b"\xa0" + bytes(MAX_DEVICE_PAYLOAD), None, 0.0) == []
    assert core.stats().oversized_requests == 1 and core.stats().requests == 0
    # one byte less is a request like any other (answered, here with a rejection)
    assert len(core.handle(topic, bytes(MAX_DEVICE_PAYLOAD), None, 0.0)) == 1
