"""Device role: encode_request refuses what a service would reject; malformed answers raise RemoteProtocolError.

Also the service encoders' type checks."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest

from device_sim.protocol import (
    DataBlock,
    DescribeStreamRequest,
    FileInfo,
    Format,
    GetStreamRequest,
    LocalProtocolError,
    Operation,
    Rejection,
    RemoteProtocolError,
    StreamDescription,
    decode_answer,
    decode_data_block,
    encode_answer,
    encode_data_block,
    encode_request,
)

CBOR, JSON = Format.CBOR, Format.JSON
GOOD: dict[str, Any] = {"file_id": 0, "block_size": 4096}


# ---------------------------------------------------------------------------------------- encode_request


@pytest.mark.parametrize(
    "changes",
    [
        {"block_size": 255},
        {"block_size": 131073},
        {"offset": -1},
        {"offset": 98305},
        {"number_of_blocks": 0},
        {"number_of_blocks": 98305},
        {"file_id": 256},
        {"file_id": -1},
        {"stream_version": -1},
        {"stream_version": 65536},
        {"bitmap": b"\x01" * 12288},
        {"client_token": "x" * 65},
        {"client_token": "\u00e9" * 33},
        {"client_token": "\ud800"},
        {"client_token": 5},
        {"block_size": True},
        {"block_size": 4096.0},
        {"bitmap": "0x13"},
    ],
)
@pytest.mark.parametrize("fmt", list(Format))
def test_encode_request_refuses_what_the_service_rejects(fmt: Format, changes: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(GetStreamRequest(**{**GOOD, **changes}), fmt)


def test_encode_request_error_has_a_hint() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_request(GetStreamRequest(file_id=0, block_size=100), CBOR)
    assert info.value.hint == "use a block size in 256..131072"


@pytest.mark.parametrize("fmt", list(Format))
def test_encode_request_refuses_non_requests(fmt: Format) -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(Rejection(code="x"), fmt)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_request(DescribeStreamRequest(client_token="y" * 65), fmt)


def test_bitmap_of_12287_bytes_and_bytearray_are_fine() -> None:
    payload = encode_request(GetStreamRequest(**GOOD, bitmap=bytearray(b"\x01" * 12287)), CBOR)
    assert cbor2.loads(payload)["b"] == b"\x01" * 12287


# ----------------------------------------------------------------------------------------- decode_answer


def encode(doc: dict[str, Any], fmt: Format) -> bytes:
    return cbor2.dumps(doc) if fmt is CBOR else json.dumps(doc).encode()


DATA_CBOR: dict[str, Any] = {"f": 0, "i": 1, "l": 3, "p": b"abc"}
DATA_JSON: dict[str, Any] = {"f": 0, "i": 1, "l": 3, "p": "YWJj"}


@pytest.mark.parametrize(
    "changes",
    [
        {"f": None},
        {"f": "0"},
        {"f": 256},
        {"f": -1},
        {"i": -1},
        {"i": 1.0},
        {"i": True},
        {"l": 4},  # differs from the payload length
        {"l": 131073},
        {"c": 7},
        {"p": None},
        {"p": 5},
    ],
)
@pytest.mark.parametrize("fmt", list(Format))
def test_malformed_data_blocks(fmt: Format, changes: dict[str, Any]) -> None:
    doc = {**(DATA_CBOR if fmt is CBOR else DATA_JSON), **changes}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(RemoteProtocolError):
        decode_data_block(encode(doc, fmt), fmt)
    with pytest.raises(RemoteProtocolError):
        decode_answer(Operation.DATA, encode(doc, fmt), fmt)


@pytest.mark.parametrize("p", ["YWJj\n", "YWJ", "YW Jj", "YW-j", "YWJj=", "\u00e9WJj", "YWJj====", "=YWJj"])
def test_json_payload_must_be_standard_base64_with_padding(p: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_data_block(encode({**DATA_JSON, "p": p}, JSON), JSON)


def test_cbor_payload_must_be_a_byte_string() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_data_block(encode({**DATA_CBOR, "p": "abc"}, CBOR), CBOR)


@pytest.mark.parametrize(
    "doc",
    [
        {"d": "x", "r": []},  # no s
        {"s": 1},  # no r
        {"s": -1, "r": []},
        {"s": 65536, "r": []},
        {"s": 1.0, "r": []},
        {"s": 1, "d": 5, "r": []},
        {"s": 1, "r": {"f": 0, "z": 1}},
        {"s": 1, "r": [5]},
        {"s": 1, "r": [{"f": 0}]},
        {"s": 1, "r": [{"f": 0, "z": -1}]},
        {"s": 1, "r": [{"f": 300, "z": 1}]},
        {"s": 1, "r": [{"f": 0, "z": 1}, {"f": 0, "z": 2}]},  # duplicate file id
        {"s": 1, "r": [], "c": ["t"]},
    ],
)
@pytest.mark.parametrize("fmt", list(Format))
def test_malformed_descriptions(fmt: Format, doc: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_answer(Operation.DESCRIPTION, encode(doc, fmt), fmt)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"m": "no code"},
        {"o": 5},
        {"code": None},
        {"o": "X", "m": 5},
        {"o": "X", "clientToken": 5},
    ],
)
@pytest.mark.parametrize("fmt", list(Format))
def test_malformed_rejections(fmt: Format, doc: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_answer(Operation.REJECTED, encode(doc, fmt), fmt)


@pytest.mark.parametrize(
    ("fmt", "payload"),
    [
        (CBOR, b""),
        (CBOR, bytes.fromhex("a0 00".replace(" ", ""))),
        (CBOR, bytes.fromhex("80")),
        (JSON, b""),
        (JSON, b"[]"),
        (JSON, b'{"o":NaN}'),
        (JSON, b'{"o":"\\ud800"}'),
    ],
)
@pytest.mark.parametrize("operation", [Operation.DATA, Operation.DESCRIPTION, Operation.REJECTED])
def test_undecodable_answers(operation: Operation, fmt: Format, payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_answer(operation, payload, fmt)


# ------------------------------------------------------------------------------------- service encoders


@pytest.mark.parametrize(
    "answer",
    [
        DataBlock(file_id=True, block_index=0, block_length=1, payload=b"x"),
        DataBlock(file_id=0, block_index=0, block_length=1, payload="x"),  # type: ignore[arg-type]
        DataBlock(client_token=5, file_id=0, block_index=0, block_length=1, payload=b"x"),  # type: ignore[arg-type]
        DataBlock(client_token="\ud800", file_id=0, block_index=0, block_length=1, payload=b"x"),
        StreamDescription(stream_version=1.5, files=()),  # type: ignore[arg-type]
        StreamDescription(stream_version=1, files=(FileInfo(file_id=0, file_size="1"),)),  # type: ignore[arg-type]
        Rejection(code=5),  # type: ignore[arg-type]
        Rejection(code="X", message="\ud800"),
        GetStreamRequest(file_id=0, block_size=256),
    ],
)
@pytest.mark.parametrize("fmt", list(Format))
def test_encode_answer_checks_types(fmt: Format, answer: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode_answer(answer, fmt)


@pytest.mark.parametrize("fmt", list(Format))
def test_encode_answer_allows_injected_faults(fmt: Format) -> None:
    # Wrong length, a file id past 255, a negative and a huge index: faults the emulator may inject on purpose.
    for block in (
        DataBlock(file_id=300, block_index=-5, block_length=9, payload=b"abc"),
        DataBlock(file_id=0, block_index=2**70, block_length=3, payload=b"abc"),
    ):
        payload = encode_answer(block, fmt)
        doc = cbor2.loads(payload) if fmt is CBOR else json.loads(payload)
        assert (doc["f"], doc["i"], doc["l"]) == (block.file_id, block.block_index, block.block_length)


def test_encode_data_block_accepts_memoryview_and_bytearray() -> None:
    for payload in (memoryview(b"abcd"), bytearray(b"abcd")):
        for fmt in Format:
            assert decode_data_block(encode_data_block(fmt, 1, 2, payload), fmt) == DataBlock(
                file_id=1, block_index=2, block_length=4, payload=b"abcd"
            )


def test_encode_data_block_takes_a_memoryview_slice_of_the_file() -> None:
    # The emulator slices the file without copying; the message must carry exactly the slice.
    file = bytes(range(256)) * 40
    for fmt in Format:
        block = decode_data_block(encode_data_block(fmt, 0, 1, memoryview(file)[4096:8192], "t"), fmt)
        assert (block.block_length, block.payload) == (4096, file[4096:8192])


def test_encode_data_block_refuses_wrong_types() -> None:
    with pytest.raises(LocalProtocolError):
        encode_data_block(CBOR, "1", 2, b"x")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_data_block(JSON, 1, 2, "x")  # type: ignore[arg-type]
