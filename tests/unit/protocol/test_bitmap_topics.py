from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sim.protocol import (
    Format,
    InvalidTopicError,
    LocalProtocolError,
    Operation,
    bitmap_from_hex,
    bitmap_to_hex,
    build_topic,
    decode_bitmap,
    encode_bitmap,
    parse_topic,
)


def test_aws_docs_bitmap_example() -> None:
    # docs/protocol.md: l=256, blocks 20, 21, 24, 43 -> o=20, bytes 13 00 80, JSON "0x130080".
    bitmap = encode_bitmap([20, 21, 24, 43], offset=20)
    assert bitmap == bytes([0x13, 0x00, 0x80])
    assert bitmap_to_hex(bitmap) == "0x130080"
    assert decode_bitmap(bitmap, 20) == [20, 21, 24, 43]


def test_bitmap_refuses_bits_past_end_and_before_offset() -> None:
    with pytest.raises(LocalProtocolError):
        encode_bitmap([10], offset=0, total_blocks=10)
    with pytest.raises(LocalProtocolError):
        encode_bitmap([3], offset=4)


@pytest.mark.parametrize("text", ["0x130080", "130080", "0X130080", "0x13008A".lower()])
def test_hex_accepts_prefix_and_case(text: str) -> None:
    assert bitmap_from_hex(text) == bytes.fromhex(text[2:] if text[:2].lower() == "0x" else text)


@pytest.mark.parametrize("text", ["0x1", "zz", "0x13 00", "0xg0"])
def test_hex_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        bitmap_from_hex(text)


@given(st.sets(st.integers(0, 5000), max_size=200), st.integers(0, 100))
def test_bitmap_roundtrip(blocks: set[int], offset: int) -> None:
    wanted = sorted(b + offset for b in blocks)
    assert decode_bitmap(encode_bitmap(wanted, offset), offset) == wanted


def test_topic_build_and_parse() -> None:
    topic = build_topic("sim-0", "fw_1", Operation.GET, Format.CBOR)
    assert topic == "$aws/things/sim-0/streams/fw_1/get/cbor"
    parsed = parse_topic(topic)
    assert (parsed.thing_name, parsed.stream_id, parsed.operation, parsed.format) == (
        "sim-0",
        "fw_1",
        Operation.GET,
        Format.CBOR,
    )
    assert str(parsed.reply(Operation.DATA)) == "$aws/things/sim-0/streams/fw_1/data/cbor"


@pytest.mark.parametrize(
    ("topic", "stream", "fmt"),
    [
        ("$aws/things/t/streams/s/fetch/cbor", "s", "cbor"),
        ("$aws/things/t/streams/s/get/xml", "s", "json"),
        ("$aws/things/t/streams/s/get", "s", "json"),
        ("$aws/things/t/streams/s/get/cbor/extra", "s", "json"),
        ("$aws/things/t/jobs/s/get/cbor", None, "json"),
        ("things/t/streams/s/get/cbor", None, "json"),
        ("$aws/things/t/streams/bad.id/get/cbor", None, "cbor"),
    ],
)
def test_topic_rejects_malformed(topic: str, stream: str | None, fmt: str) -> None:
    with pytest.raises(InvalidTopicError) as info:
        parse_topic(topic)
    assert info.value.stream_id == stream
    assert info.value.reply_format == fmt


def test_build_topic_rejects_bad_names() -> None:
    with pytest.raises(LocalProtocolError):
        build_topic("bad/thing", "s", Operation.GET, Format.JSON)
    with pytest.raises(LocalProtocolError):
        build_topic("t", "x" * 129, Operation.GET, Format.JSON)
