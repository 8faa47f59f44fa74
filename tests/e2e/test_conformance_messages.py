"""Conformance, docs/protocol.md section 3 (messages), over the real broker and control plane, in CBOR and JSON.

A raw paho client (tests/e2e/conformance_client.py) publishes hand-built requests on the plain listener and
checks the exact answers of local_iot's stream service; the stream is created with boto3 against the emulated
control plane. Rule -> test: docs/conformance.md.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest

from local_iot.runner import LocalIot

from .conformance_client import (
    Raw,
    RawClient,
    StreamProbe,
    cbor_map,
    cbor_top_keys,
    encode,
    expect_blocks,
    expect_rejection,
)
from .streams import make_stream

pytestmark = pytest.mark.e2e

STREAM = "conf_msg"
THING = "conf-msg-thing"
DESCRIPTION = "conformance firmware"
DATA = random.Random(3).randbytes(300_123)  # 1173 blocks of 256 B, the last one 91 B; 74 blocks of 4 KiB
SMALL = random.Random(4).randbytes(1_000)  # file 1: 4 blocks of 256 B (last 232 B), 2 of 512 B (last 488 B)
FORMATS = ("cbor", "json")
OUT_OF_RANGE = "The data requested is out of the range of data available."


@pytest.fixture(scope="module")
def probe(local_iot: LocalIot) -> Iterator[StreamProbe]:
    make_stream(local_iot, STREAM, [DATA, SMALL])
    local_iot.client("iot").update_stream(streamId=STREAM, description=DESCRIPTION)  # version 2
    with RawClient.plain(local_iot.info, "conf-msg-client") as client:
        yield client.watch(THING, STREAM)


@pytest.fixture(autouse=True)
def nothing_left_over(probe: StreamProbe) -> Iterator[None]:
    """Every test consumes exactly the answers it caused: a marker request after the test finds nothing before."""
    yield
    assert probe.until_marker("end-of-test") == []


def get(probe: StreamProbe, fmt: str, doc: Any, count: int) -> list[Any]:
    return probe.ask("get", fmt, encode(fmt, doc), count)


# ------------------------------------------------------------------------------------------------- describe


@pytest.mark.parametrize("fmt", FORMATS)
def test_describe_echoes_token_and_lists_files(probe: StreamProbe, fmt: str) -> None:
    answer = probe.ask_one("describe", fmt, encode(fmt, {"c": "desc-1"}))
    assert answer.topic == probe.topic("description", fmt)
    assert answer.doc == {
        "c": "desc-1",
        "s": 2,
        "d": DESCRIPTION,
        "r": [{"f": 0, "z": len(DATA)}, {"f": 1, "z": len(SMALL)}],
    }
    if fmt == "cbor":
        assert cbor_top_keys(answer.payload)[0], "CBOR answers are indefinite-length maps"


@pytest.mark.parametrize("fmt", FORMATS)
def test_describe_without_token(probe: StreamProbe, fmt: str) -> None:
    payload = b"\xa0" if fmt == "cbor" else b"{}"
    answer = probe.ask_one("describe", fmt, payload)
    assert answer.topic == probe.topic("description", fmt)
    assert answer.doc == {"s": 2, "d": DESCRIPTION, "r": [{"f": 0, "z": len(DATA)}, {"f": 1, "z": len(SMALL)}]}


# ------------------------------------------------------------------------------------------------------ get


@pytest.mark.parametrize("fmt", FORMATS)
def test_consecutive_blocks_from_offset(probe: StreamProbe, fmt: str) -> None:
    answers = get(probe, fmt, {"c": "g1", "f": 0, "l": 1024, "o": 5, "n": 4}, 4)
    expect_blocks(answers, fmt=fmt, data=DATA, block_size=1024, indices=[5, 6, 7, 8], token="g1")


@pytest.mark.parametrize("fmt", FORMATS)
def test_data_without_token_carries_no_c(probe: StreamProbe, fmt: str) -> None:
    answers = get(probe, fmt, {"f": 0, "l": 4096, "o": 0, "n": 2}, 2)
    expect_blocks(answers, fmt=fmt, data=DATA, block_size=4096, indices=[0, 1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_aws_bitmap_example(probe: StreamProbe, fmt: str) -> None:
    """AWS docs: l=256, o=20, bitmap 13 00 80 -> blocks 20, 21, 24, 43 (LSB of each byte is the lowest block)."""
    bitmap: Any = bytes.fromhex("130080") if fmt == "cbor" else "0x130080"
    answers = get(probe, fmt, {"c": "bm", "f": 0, "l": 256, "o": 20, "b": bitmap}, 4)
    expect_blocks(answers, fmt=fmt, data=DATA, block_size=256, indices=[20, 21, 24, 43], token="bm")


@pytest.mark.parametrize("spelling", ["0xab0c", "ab0c", "0xAB0C", "AB0C", "0xAb0c"])
def test_json_bitmap_prefix_optional_either_case(probe: StreamProbe, spelling: str) -> None:
    # ab = 1010 1011 -> bits 0 1 3 5 7; 0c = 0000 1100 -> bits 2 3 of the second byte (blocks +10, +11)
    answers = get(probe, "json", {"f": 0, "l": 256, "o": 100, "b": spelling}, 7)
    expect_blocks(answers, fmt="json", data=DATA, block_size=256, indices=[100, 101, 103, 105, 107, 110, 111])


@pytest.mark.parametrize("fmt", FORMATS)
def test_n_caps_a_bitmap_lowest_blocks_first(probe: StreamProbe, fmt: str) -> None:
    bitmap: Any = b"\xff\xff" if fmt == "cbor" else "ffff"
    answers = get(probe, fmt, {"f": 0, "l": 256, "o": 100, "b": bitmap, "n": 3}, 3)
    expect_blocks(answers, fmt=fmt, data=DATA, block_size=256, indices=[100, 101, 102])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("block_size", "count", "served"),
    [(256, 1000, 512), (4096, 40, 32), (131072, 2, 1), (4096, None, 32)],
    ids=["256x1000", "4096x40", "131072x2", "4096-default-n"],
)
def test_answer_is_capped_at_128_kib(
    probe: StreamProbe, fmt: str, block_size: int, count: int | None, served: int
) -> None:
    """At most floor(131072 / l) blocks per request (also the default n when neither n nor b is sent)."""
    doc = {"f": 0, "l": block_size, "o": 0} | ({} if count is None else {"n": count})
    answers = get(probe, fmt, doc, served)
    expect_blocks(answers, fmt=fmt, data=DATA, block_size=block_size, indices=list(range(served)))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("count", [None, 600])
def test_bitmap_beyond_128_kib_sends_lowest_blocks(probe: StreamProbe, fmt: str, count: int | None) -> None:
    bitmap = b"\xff" * 100  # 800 blocks of 256 B wanted; 512 fit
    doc: dict[str, Any] = {"f": 0, "l": 256, "o": 7, "b": bitmap if fmt == "cbor" else bitmap.hex()}
    if count is not None:
        doc["n"] = count
    answers = get(probe, fmt, doc, 512)
    expect_blocks(answers, fmt=fmt, data=DATA, block_size=256, indices=list(range(7, 7 + 512)))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("file_id", "block_size", "index", "length", "padding"),
    [(0, 256, 1172, 91, "=="), (1, 256, 3, 232, "=="), (1, 512, 1, 488, "=")],
)
def test_last_block_is_the_remainder(
    probe: StreamProbe, fmt: str, file_id: int, block_size: int, index: int, length: int, padding: str
) -> None:
    data = (DATA, SMALL)[file_id]
    (answer,) = get(probe, fmt, {"c": "last", "f": file_id, "l": block_size, "o": index, "n": 1}, 1)
    expect_blocks([answer], fmt=fmt, data=data, block_size=block_size, indices=[index], file_id=file_id, token="last")
    assert answer.doc["l"] == length == len(data) - index * block_size
    if fmt == "json":
        assert answer.doc["p"].endswith(padding) and not answer.doc["p"].endswith("=" + padding)


@pytest.mark.parametrize("fmt", FORMATS)
def test_block_index_is_absolute_not_relative_to_offset(probe: StreamProbe, fmt: str) -> None:
    bitmap: Any = b"\x00\x01" if fmt == "cbor" else "0x0001"  # bit 8 of the bitmap -> block o + 8
    (answer,) = get(probe, fmt, {"f": 0, "l": 256, "o": 300, "b": bitmap}, 1)
    expect_blocks([answer], fmt=fmt, data=DATA, block_size=256, indices=[308])


@pytest.mark.parametrize("block_size", [256, 131072])
def test_block_size_bounds_are_inclusive(probe: StreamProbe, block_size: int) -> None:
    answers = get(probe, "cbor", {"f": 0, "l": block_size, "o": 1, "n": 1}, 1)
    expect_blocks(answers, fmt="cbor", data=DATA, block_size=block_size, indices=[1])


# ------------------------------------------------------------------------------------- request encodings


CBOR_SPELLINGS = {
    "definite": cbor_map({"c": "enc", "f": 0, "l": 512, "o": 9, "n": 2}),
    "indefinite": cbor_map({"c": "enc", "f": 0, "l": 512, "o": 9, "n": 2}, indefinite=True),
    "reversed-keys": cbor_map([("n", 2), ("o", 9), ("l", 512), ("f", 0), ("c", "enc")]),
    "unknown-keys": cbor_map(
        [
            ("zz", [1, {"q": b"x"}]),
            ("c", "enc"),
            (7, "int key"),
            (b"f", 99),  # a byte-string key is not the text key "f"
            ("f", 0),
            ("l", 512),
            ("o", 9),
            ("n", 2),
            ("x", None),
            ("y", 1.5),
        ],
        indefinite=True,
    ),
    # f = 0 as a 1-byte argument, l = 512 as an 8-byte one, n = 2 as a 2-byte one: valid CBOR, not shortest
    "long-integers": cbor_map(
        [
            ("c", "enc"),
            ("f", Raw(b"\x18\x00")),
            ("l", Raw(b"\x1b" + (512).to_bytes(8, "big"))),
            ("o", 9),
            ("n", Raw(b"\x19\x00\x02")),
        ]
    ),
    "self-described-tag": b"\xd9\xd9\xf7" + cbor_map({"c": "enc", "f": 0, "l": 512, "o": 9, "n": 2}),
}

JSON_SPELLINGS = {
    "compact": b'{"c":"enc","f":0,"l":512,"o":9,"n":2}',
    "reversed-keys": b'{"n":2,"o":9,"l":512,"f":0,"c":"enc"}',
    "whitespace": b'\n {\t"c" : "enc" ,\r\n "f":0, "l" :512,"o":9 , "n":2 }\n',
    "unknown-keys": b'{"zz":[1,{"q":null}],"c":"enc","F":3,"f":0,"l":512,"o":9,"n":2,"x":1.5,"y":"s"}',
    "escaped-token": b'{"c":"\\u0065nc","f":0,"l":512,"o":9,"n":2}',
}


@pytest.mark.parametrize("spelling", list(CBOR_SPELLINGS))
def test_cbor_request_spellings(probe: StreamProbe, spelling: str) -> None:
    """Definite or indefinite maps, any key order, unknown keys ignored, any valid integer width."""
    answers = probe.ask("get", "cbor", CBOR_SPELLINGS[spelling], 2)
    expect_blocks(answers, fmt="cbor", data=DATA, block_size=512, indices=[9, 10], token="enc")


@pytest.mark.parametrize("spelling", list(JSON_SPELLINGS))
def test_json_request_spellings(probe: StreamProbe, spelling: str) -> None:
    answers = probe.ask("get", "json", JSON_SPELLINGS[spelling], 2)
    expect_blocks(answers, fmt="json", data=DATA, block_size=512, indices=[9, 10], token="enc")


@pytest.mark.parametrize("fmt", FORMATS)
def test_describe_ignores_unknown_keys(probe: StreamProbe, fmt: str) -> None:
    payload = (
        cbor_map([("x", 1), ("c", "d2"), ("f", 0)], indefinite=True) if fmt == "cbor" else b'{"x":1,"c":"d2","f":0}'
    )
    answer = probe.ask_one("describe", fmt, payload)
    assert answer.operation == "description" and answer.doc["c"] == "d2" and answer.doc["s"] == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_token_of_64_bytes_is_echoed(probe: StreamProbe, fmt: str) -> None:
    token = "\u00e9" * 32  # 32 characters, 64 UTF-8 bytes: the limit counts bytes
    answers = get(probe, fmt, {"c": token, "f": 1, "l": 256, "o": 0, "n": 1}, 1)
    expect_blocks(answers, fmt=fmt, data=SMALL, block_size=256, indices=[0], file_id=1, token=token)


# ------------------------------------------------------------------------------------------------- rejected


@pytest.mark.parametrize("fmt", FORMATS)
def test_rejection_with_and_without_token(probe: StreamProbe, fmt: str) -> None:
    with_token = probe.ask_one("get", fmt, encode(fmt, {"c": "rj", "f": 0, "l": 255, "n": 1}))
    message = expect_rejection(with_token, fmt=fmt, code="BlockSizeOutOfBounds", token="rj")
    without = probe.ask_one("get", fmt, encode(fmt, {"f": 0, "l": 255, "n": 1}))
    assert expect_rejection(without, fmt=fmt, code="BlockSizeOutOfBounds") == message
    assert without.topic == probe.topic("rejected", fmt)


def test_aws_json_rejection_example(probe: StreamProbe) -> None:
    """The real AWS answer quoted in docs/protocol.md 3, for a request past the end of the file with token "rdy"."""
    answer = probe.ask_one("get", "json", b'{"c":"rdy","f":0,"l":256,"o":1172,"n":2}')
    example = (
        '{"clientToken":"rdy","c":"rdy","code":"InvalidRequest","o":"InvalidRequest",'
        '"message":"The data requested is out of the range of data available.",'
        '"m":"The data requested is out of the range of data available."}'
    )
    assert answer.topic == probe.topic("rejected", "json")
    assert answer.doc == json.loads(example)
    assert list(answer.doc) == list(json.loads(example)), "key order differs from AWS's example"


def test_cbor_rejection_matches_the_example(probe: StreamProbe) -> None:
    answer = probe.ask_one("get", "cbor", cbor2.dumps({"c": "rdy", "f": 0, "l": 256, "o": 1172, "n": 2}))
    assert expect_rejection(answer, fmt="cbor", code="InvalidRequest", token="rdy") == OUT_OF_RANGE


# ------------------------------------------------------------------------------------------------ delivery


def test_answers_are_published_at_qos_0(local_iot: LocalIot) -> None:
    """Subscribed at QoS 1, the device still gets QoS 0: the service publishes its answers at QoS 0."""
    with RawClient.plain(local_iot.info, "conf-msg-qos") as client:
        probe = client.watch("conf-qos-thing", STREAM, qos=1)
        answers = probe.ask("get", "cbor", cbor2.dumps({"f": 0, "l": 256, "o": 0, "n": 2}), 2)
        answers.append(probe.ask_one("describe", "json", b"{}"))
        answers.append(probe.ask_one("get", "json", b'{"f":0,"l":1}'))
        kinds = [(a.operation, a.qos) for a in answers]
        assert kinds == [("data", 0), ("data", 0), ("description", 0), ("rejected", 0)]


def test_json_payload_is_standard_base64(probe: StreamProbe) -> None:
    """Standard alphabet (+ and /), not URL-safe; decodes strictly back to the file's bytes."""
    (answer,) = get(probe, "json", {"f": 0, "l": 4096, "o": 3, "n": 1}, 1)
    text = answer.doc["p"]
    assert base64.b64decode(text, validate=True) == DATA[3 * 4096 : 4 * 4096]
    assert "+" in text or "/" in text  # 4 KiB of random bytes use both with overwhelming probability
    assert "-" not in text and "_" not in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_past_the_end_is_rejected_even_when_the_cap_would_cut_it_short(probe: StreamProbe, fmt: str) -> None:
    """[emulator rule] without a bitmap, blocks 500..1499 of 1173: the first 512 exist, the request is rejected."""
    doc = {"c": "pe", "f": 0, "l": 256, "o": 500, "n": 1000}
    answer = probe.ask_one("get", fmt, encode(fmt, doc))
    assert expect_rejection(answer, fmt=fmt, code="InvalidRequest", token="pe") == OUT_OF_RANGE


@pytest.mark.parametrize("fmt", FORMATS)
def test_bitmap_bits_past_the_cap_are_never_looked_at(probe: StreamProbe, fmt: str) -> None:
    """[emulator rule] select first, then range-check: bits for blocks 0..1199 of 1173, the 128 KiB cap stops the
    walk at block 511, so the bits past the end are never looked at and the request is served."""
    doc: dict[str, Any] = {"c": "pc", "f": 0, "l": 256, "o": 0, "b": b"\xff" * 150}
    if fmt == "json":
        doc = doc | {"b": doc["b"].hex()}
    answers = probe.ask("get", fmt, encode(fmt, doc), 512)
    assert sorted(a.doc["i"] for a in answers) == list(range(512))
