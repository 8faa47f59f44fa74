"""Codec vectors: hand-written CBOR hex and JSON text, decoded and encoded by both roles."""

from __future__ import annotations

import cbor2
import pytest

from device_sim.protocol import (
    OUT_OF_RANGE_MESSAGE,
    DataBlock,
    DescribeStreamRequest,
    ErrorCode,
    FileInfo,
    Format,
    GetStreamRequest,
    LocalProtocolError,
    Operation,
    Rejection,
    RemoteProtocolError,
    StreamDescription,
    decode_answer,
    decode_bitmap,
    decode_data_block,
    decode_request,
    encode_answer,
    encode_data_block,
    encode_request,
)

CBOR, JSON = Format.CBOR, Format.JSON

# The AWS docs bitmap example: l=256, wanted blocks 20, 21, 24, 43 -> o=20, b = 13 00 80.
AWS_BITMAP_REQUEST = GetStreamRequest(file_id=0, block_size=256, offset=20, number_of_blocks=4, bitmap=b"\x13\x00\x80")
# Definite map, keys f, l, o, n, b (what encode_request emits; c and s would come first).
AWS_BITMAP_CBOR = "a5 6166 00 616c 190100 616f 14 616e 04 6162 43130080"
AWS_BITMAP_JSON = b'{"f":0,"l":256,"o":20,"n":4,"b":"0x130080"}'

# The real rejection AWS sent (docs/protocol.md section 3).
REAL_REJECTION_JSON = (
    b'{"clientToken":"rdy","c":"rdy","code":"InvalidRequest","o":"InvalidRequest",'
    b'"message":"The data requested is out of the range of data available.",'
    b'"m":"The data requested is out of the range of data available."}'
)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --------------------------------------------------------------------------------------------- requests


def test_aws_bitmap_example_encodes_to_hand_written_bytes() -> None:
    assert encode_request(AWS_BITMAP_REQUEST, CBOR) == h(AWS_BITMAP_CBOR)
    assert encode_request(AWS_BITMAP_REQUEST, JSON) == AWS_BITMAP_JSON


@pytest.mark.parametrize(("fmt", "payload"), [(CBOR, h(AWS_BITMAP_CBOR)), (JSON, AWS_BITMAP_JSON)])
def test_aws_bitmap_example_decodes_on_the_service(fmt: Format, payload: bytes) -> None:
    request = decode_request(Operation.GET, payload, fmt)
    assert request == AWS_BITMAP_REQUEST
    assert isinstance(request, GetStreamRequest) and request.bitmap is not None
    assert decode_bitmap(request.bitmap, request.offset) == [20, 21, 24, 43]


def test_freertos_style_request_definite_map() -> None:
    # {c:"rdy", f:0, l:4096, o:0, b:h'ff', n:1} in the FreeRTOS OTA agent's key order.
    payload = h("a6 6163 63726479 6166 00 616c 191000 616f 00 6162 41ff 616e 01")
    assert decode_request(Operation.GET, payload, CBOR) == GetStreamRequest(
        client_token="rdy", file_id=0, block_size=4096, offset=0, number_of_blocks=1, bitmap=b"\xff"
    )


def test_indefinite_map_any_key_order_unknown_key_ignored() -> None:
    # bf n:4, x:[1,2], l:256, f:0, o:20, b:h'130080' ff
    payload = h("bf 616e 04 6178 820102 616c 190100 6166 00 616f 14 6162 43130080 ff")
    assert decode_request(Operation.GET, payload, CBOR) == AWS_BITMAP_REQUEST


def test_json_request_with_spaces_uppercase_hex_without_prefix_and_unknown_key() -> None:
    payload = b'{ "b" : "13AB80", "x": {"y": [1, 2.5, null]}, "l": 256, "f": 7, "s": 3 }'
    assert decode_request(Operation.GET, payload, JSON) == GetStreamRequest(
        stream_version=3, file_id=7, block_size=256, offset=0, bitmap=b"\x13\xab\x80"
    )
    assert decode_request(Operation.GET, b'{"f":1,"l":256,"b":"0X0f"}', JSON) == GetStreamRequest(
        file_id=1, block_size=256, bitmap=b"\x0f"
    )


@pytest.mark.parametrize(
    ("fmt", "payload", "token"),
    [
        (CBOR, h("a0"), None),
        (CBOR, h("bfff"), None),
        (CBOR, h("a1 6163 63726479"), "rdy"),
        (CBOR, h("bf 6178 f5 6163 6474c3a96b ff"), "t\u00e9k"),  # unknown key x: true
        (JSON, b"{}", None),
        (JSON, b'{"c":"ec944cfb-1e3c-49ac-97de-9dc4aaad0039"}', "ec944cfb-1e3c-49ac-97de-9dc4aaad0039"),
    ],
)
def test_describe_requests(fmt: Format, payload: bytes, token: str | None) -> None:
    assert decode_request(Operation.DESCRIBE, payload, fmt) == DescribeStreamRequest(client_token=token)


def test_describe_request_encodings() -> None:
    assert encode_request(DescribeStreamRequest(), CBOR) == h("a0")
    assert encode_request(DescribeStreamRequest(), JSON) == b"{}"
    assert encode_request(DescribeStreamRequest(client_token="rdy"), CBOR) == h("a1 6163 63726479")
    assert encode_request(DescribeStreamRequest(client_token="rdy"), JSON) == b'{"c":"rdy"}'


def test_full_request_key_order_and_values() -> None:
    request = GetStreamRequest(
        client_token="t", stream_version=2, file_id=255, block_size=131072, offset=98304, number_of_blocks=98304
    )
    assert encode_request(request, CBOR) == h(
        "a6 6163 6174 6173 02 6166 18ff 616c 1a00020000 616f 1a00018000 616e 1a00018000"
    )
    assert encode_request(request, JSON) == b'{"c":"t","s":2,"f":255,"l":131072,"o":98304,"n":98304}'


def test_token_of_exactly_64_bytes_is_accepted_both_ways() -> None:
    token = "\u00e9" * 32  # 64 UTF-8 bytes
    for fmt in Format:
        payload = encode_request(DescribeStreamRequest(client_token=token), fmt)
        assert decode_request(Operation.DESCRIBE, payload, fmt) == DescribeStreamRequest(client_token=token)


def test_bignum_stream_version_passes_the_codec() -> None:
    # s as a tag-2 bignum (2**64): not the codec's check; the emulator answers VersionMismatch.
    payload = h("a3 6173 c249010000000000000000 6166 00 616c 190100")
    request = decode_request(Operation.GET, payload, CBOR)
    assert isinstance(request, GetStreamRequest) and request.stream_version == 2**64


def test_stream_dependent_values_are_left_to_the_emulator() -> None:
    # A bitmap of zeros and a huge n within limits: the codec accepts, the emulator checks the file.
    request = decode_request(Operation.GET, b'{"f":9,"l":256,"o":98304,"n":98304,"b":"0x0000"}', JSON)
    assert request == GetStreamRequest(file_id=9, block_size=256, offset=98304, number_of_blocks=98304, bitmap=b"\0\0")


# ------------------------------------------------------------------------------------------------ answers

TINY_DATA_CBOR = "bf 6163 63726479 6166 00 6169 03 616c 04 6170 4401020304 ff"
TINY_DATA = DataBlock(client_token="rdy", file_id=0, block_index=3, block_length=4, payload=b"\x01\x02\x03\x04")


def test_data_block_is_an_indefinite_map_in_aws_key_order() -> None:
    assert encode_data_block(CBOR, 0, 3, b"\x01\x02\x03\x04", client_token="rdy") == h(TINY_DATA_CBOR)
    assert encode_answer(TINY_DATA, CBOR) == h(TINY_DATA_CBOR)
    assert encode_data_block(JSON, 0, 3, b"\x01\x02\x03\x04", "rdy") == b'{"c":"rdy","f":0,"i":3,"l":4,"p":"AQIDBA=="}'


def test_data_block_without_token_and_with_a_256_byte_payload() -> None:
    payload = bytes(range(256))
    encoded = encode_data_block(CBOR, 2, 70000, payload)
    assert encoded == h("bf 6166 02 6169 1a00011170 616c 190100 6170 590100") + payload + b"\xff"
    assert list(cbor2.loads(encoded)) == ["f", "i", "l", "p"]


@pytest.mark.parametrize(
    "payload",
    [
        h(TINY_DATA_CBOR),
        # definite map, reversed key order
        h("a5 6170 4401020304 616c 04 6169 03 6166 00 6163 63726479"),
        # indefinite byte string payload (two chunks) and an unknown key
        h("bf 6163 63726479 6166 00 6169 03 617a a0 616c 04 6170 5f 420102 420304 ff ff"),
    ],
)
def test_data_block_decodes_from_any_layout(payload: bytes) -> None:
    assert decode_data_block(payload, CBOR) == TINY_DATA
    assert decode_answer(Operation.DATA, payload, CBOR) == TINY_DATA


@pytest.mark.parametrize("extra", [b"\x00", b"\xff", b"\x41\xff"])
def test_data_block_with_trailing_bytes_is_malformed(extra: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="after the end"):
        decode_data_block(h(TINY_DATA_CBOR) + extra, CBOR)


def test_data_block_with_non_minimal_heads_still_decodes() -> None:
    # f as 18 00 and l as 19 0004: valid CBOR, not AWS's layout (so not the fast path)
    payload = h("bf 6163 63726479 6166 1800 6169 03 616c 190004 6170 4401020304 ff")
    assert decode_data_block(payload, CBOR) == TINY_DATA


def test_json_data_block_in_aws_docs_key_order() -> None:
    payload = b'{"c":"rdy","f":0,"l":4,"i":3,"p":"AQIDBA=="}'
    assert decode_data_block(payload, JSON) == TINY_DATA


def test_real_aws_json_rejection_decodes_and_reencodes_byte_for_byte() -> None:
    rejection = decode_answer(Operation.REJECTED, REAL_REJECTION_JSON, JSON)
    assert rejection == Rejection(client_token="rdy", code="InvalidRequest", message=OUT_OF_RANGE_MESSAGE)
    assert isinstance(rejection, Rejection) and rejection.error_code is ErrorCode.INVALID_REQUEST
    assert encode_answer(rejection, JSON) == REAL_REJECTION_JSON


def test_cbor_rejection_is_an_indefinite_map_with_short_and_long_keys() -> None:
    encoded = encode_answer(Rejection(code="VersionMismatch", message="s"), CBOR)
    assert encoded[0] == 0xBF and encoded[-1] == 0xFF
    decoded = cbor2.loads(encoded)
    assert list(decoded.items()) == [
        ("code", "VersionMismatch"),
        ("o", "VersionMismatch"),
        ("message", "s"),
        ("m", "s"),
    ]


@pytest.mark.parametrize(
    ("fmt", "payload", "expected"),
    [
        # long keys only (definite map): code "InvalidRequest", message "hi"
        (
            CBOR,
            h("a2 64636f6465 6e496e76616c696452657175657374 676d657373616765 626869"),
            ("InvalidRequest", "hi", None),
        ),
        # short keys win over long ones
        (
            JSON,
            b'{"code":"B","o":"A","message":"y","m":"x","clientToken":"u","c":"t"}',
            ("A", "x", "t"),
        ),
        # a code this library does not know, no message
        (JSON, b'{"o":"SomethingNew"}', ("SomethingNew", "", None)),
        # null token and message read as absent; the long token is then used
        (JSON, b'{"o":"X","c":null,"clientToken":"u","m":null}', ("X", "", "u")),
    ],
)
def test_rejection_layouts(fmt: Format, payload: bytes, expected: tuple[str, str, str | None]) -> None:
    rejection = decode_answer(Operation.REJECTED, payload, fmt)
    assert isinstance(rejection, Rejection)
    assert (rejection.code, rejection.message, rejection.client_token) == expected


AWS_DOCS_DESCRIPTION = (
    b'{ "c": "ec944cfb-1e3c-49ac-97de-9dc4aaad0039", "s": 1, "d": "This is the description of stream ABC.", '
    b'"r": [ { "f": 0, "z": 131072 }, { "f": 1, "z": 51200 } ] }'
)


def test_aws_docs_description_example() -> None:
    description = decode_answer(Operation.DESCRIPTION, AWS_DOCS_DESCRIPTION, JSON)
    assert description == StreamDescription(
        client_token="ec944cfb-1e3c-49ac-97de-9dc4aaad0039",
        stream_version=1,
        description="This is the description of stream ABC.",
        files=(FileInfo(file_id=0, file_size=131072), FileInfo(file_id=1, file_size=51200)),
    )
    assert isinstance(description, StreamDescription) and description.file(1) == FileInfo(file_id=1, file_size=51200)


def test_cbor_description_encodes_indefinite_and_decodes_definite() -> None:
    description = StreamDescription(stream_version=1, description="", files=(FileInfo(file_id=0, file_size=4096),))
    assert encode_answer(description, CBOR) == h("bf 6173 01 6164 60 6172 81 bf 6166 00 617a 191000 ff ff")
    assert decode_answer(Operation.DESCRIPTION, h("a3 6172 81 a2 617a 191000 6166 00 6173 01 6164 60"), CBOR) == (
        description
    )
    # d missing reads as an empty description
    assert decode_answer(Operation.DESCRIPTION, b'{"s":1,"r":[{"f":0,"z":4096}]}', JSON) == description
    assert encode_answer(description, JSON) == b'{"s":1,"d":"","r":[{"f":0,"z":4096}]}'


def test_self_described_cbor_is_accepted() -> None:
    # tag 55799 (self-described CBOR) around a map
    assert decode_request(Operation.DESCRIBE, h("d9d9f7 a1 6163 6178"), CBOR) == DescribeStreamRequest(client_token="x")


def test_wrong_direction_is_a_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        decode_request(Operation.DATA, b"{}", JSON)
    with pytest.raises(LocalProtocolError):
        decode_answer(Operation.GET, b"{}", JSON)
