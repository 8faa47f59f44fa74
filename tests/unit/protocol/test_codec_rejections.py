"""Service role: every rejection the codec owns, with the AWS code, the token echoed, and the check order."""

from __future__ import annotations

import json

import cbor2
import pytest

from device_sim.protocol import ErrorCode, Format, Operation, RequestRejected, decode_request

CBOR, JSON = Format.CBOR, Format.JSON
E = ErrorCode
TOKEN_65 = "x" * 65


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def rejected(operation: Operation, payload: bytes, fmt: Format) -> RequestRejected:
    with pytest.raises(RequestRejected) as info:
        decode_request(operation, payload, fmt)
    return info.value


def cbor(doc: dict[str, object]) -> bytes:
    return cbor2.dumps(doc)


def js(doc: dict[str, object]) -> bytes:
    return json.dumps(doc).encode()


# ------------------------------------------------------------------------------------------ decode stage

UNDECODABLE_CBOR = {
    "empty": b"",
    "trailing byte": h("a0 00"),
    "two items": h("a0 a0"),
    "truncated map": h("a2 6166 00 616c"),
    "truncated text": h("a1 6163 6572"),
    "huge byte string header": h("a1 6162 5b7fffffffffffffff"),
    "huge map header": h("bb7fffffffffffffff"),
    "unterminated indefinite map": h("bf 6166 00"),
    "invalid UTF-8 in a key": h("a1 61ff 00"),
    "invalid UTF-8 in the token": h("a1 6163 61ff"),
    "break outside indefinite item": h("ff"),
    "reserved additional info": h("1c"),
    "deep nesting": h("a1 6178" + "81" * 200 + "00"),
    "unknown shared reference": h("a1 6178 d81d 05"),
}


@pytest.mark.parametrize("payload", UNDECODABLE_CBOR.values(), ids=UNDECODABLE_CBOR.keys())
@pytest.mark.parametrize("operation", [Operation.DESCRIBE, Operation.GET])
def test_undecodable_cbor_is_invalid_cbor(operation: Operation, payload: bytes) -> None:
    error = rejected(operation, payload, CBOR)
    assert (error.code, error.client_token) == (E.INVALID_CBOR, None)


NOT_A_MAP_CBOR = {"array": h("80"), "int": h("01"), "text": h("6161"), "bytes": h("40"), "null": h("f6")}


@pytest.mark.parametrize("payload", NOT_A_MAP_CBOR.values(), ids=NOT_A_MAP_CBOR.keys())
def test_cbor_that_is_not_a_map_is_invalid_cbor(payload: bytes) -> None:
    assert rejected(Operation.GET, payload, CBOR).code is E.INVALID_CBOR


UNDECODABLE_JSON = {
    "empty": b"",
    "blank": b"  ",
    "truncated": b'{"f":0',
    "trailing garbage": b"{} x",
    "two objects": b"{}{}",
    "NaN": b'{"f":0,"l":NaN}',
    "Infinity": b'{"f":0,"l":Infinity}',
    "-Infinity": b'{"f":-Infinity,"l":256}',
    "invalid UTF-8": b'{"c":"\xff"}',
    "UTF-8 BOM": b'\xef\xbb\xbf{"f":0,"l":256}',
    "single quotes": b"{'f':0}",
    "deep nesting": b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "array": b"[]",
    "number": b"1",
    "string": b'"f"',
    "null": b"null",
}


@pytest.mark.parametrize("payload", UNDECODABLE_JSON.values(), ids=UNDECODABLE_JSON.keys())
@pytest.mark.parametrize("operation", [Operation.DESCRIBE, Operation.GET])
def test_undecodable_json_is_invalid_json(operation: Operation, payload: bytes) -> None:
    error = rejected(operation, payload, JSON)
    assert (error.code, error.client_token) == (E.INVALID_JSON, None)


# ------------------------------------------------------------------------------------------- token stage


@pytest.mark.parametrize(
    ("fmt", "payload", "code"),
    [
        (CBOR, h("a1 6163 43726479"), E.INVALID_CBOR),  # byte-string token
        (CBOR, h("a1 6163 07"), E.INVALID_CBOR),
        (CBOR, h("a1 6163 f6"), E.INVALID_CBOR),
        (CBOR, cbor({"c": TOKEN_65}), E.INVALID_REQUEST),
        (CBOR, cbor({"c": "\u00e9" * 33}), E.INVALID_REQUEST),  # 66 bytes in 33 characters
        (JSON, b'{"c":5}', E.INVALID_REQUEST),
        (JSON, b'{"c":null}', E.INVALID_REQUEST),
        (JSON, b'{"c":["rdy"]}', E.INVALID_REQUEST),
        (JSON, b'{"c":"\\ud800"}', E.INVALID_REQUEST),  # lone surrogate: not Unicode
        (JSON, js({"c": TOKEN_65}), E.INVALID_REQUEST),
    ],
)
@pytest.mark.parametrize("operation", [Operation.DESCRIBE, Operation.GET])
def test_bad_token_is_rejected_without_echo(operation: Operation, fmt: Format, payload: bytes, code: E) -> None:
    error = rejected(operation, payload, fmt)
    assert (error.code, error.client_token) == (code, None)


def test_bad_token_is_checked_before_fields() -> None:
    error = rejected(Operation.GET, cbor({"c": TOKEN_65, "l": 1.5}), CBOR)
    assert (error.code, error.client_token) == (E.INVALID_REQUEST, None)


# ------------------------------------------------------------------------------------ types and presence

VALID = {"c": "tok", "f": 0, "l": 256}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("l", 4096.0),
        ("l", 1.5),
        ("f", True),
        ("f", False),
        ("o", None),
        ("n", "4"),
        ("s", b"\x01"),
        ("l", [256]),
        ("l", {"v": 256}),
        ("b", "0x130080"),  # text-string bitmap: the documented InvalidCbor case
        ("b", 5),
        ("b", [1, 2]),
    ],
)
def test_cbor_field_of_wrong_type_is_invalid_cbor(key: str, value: object) -> None:
    error = rejected(Operation.GET, cbor({**VALID, key: value}), CBOR)
    assert (error.code, error.client_token) == (E.INVALID_CBOR, "tok")


CBOR_ODD_VALUES = {
    "undefined": "f7",
    "simple(16)": "f0",
    "half float 1.0": "f93c00",
    "epoch datetime tag": "c11a514b67b0",
    "set tag": "d90102 83 010203",
    "unknown tag 99 on an int": "d863 190100",
}


@pytest.mark.parametrize("value_hex", CBOR_ODD_VALUES.values(), ids=CBOR_ODD_VALUES.keys())
def test_cbor_odd_items_as_block_size_are_invalid_cbor(value_hex: str) -> None:
    payload = h("a3 6163 63746f6b 6166 00 616c " + value_hex)
    error = rejected(Operation.GET, payload, CBOR)
    assert (error.code, error.client_token) == (E.INVALID_CBOR, "tok")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("l", 4096.0),
        ("l", 1e3),
        ("l", "4096"),
        ("f", True),
        ("o", None),
        ("n", [1]),
        ("s", {"v": 1}),
        ("b", 130080),
        ("b", "0x13008"),  # odd length
        ("b", "0xzz"),
        ("b", "0x 13"),
        ("b", "0x0x13"),
        ("b", ["13"]),
    ],
)
def test_json_value_of_wrong_type_is_invalid_request(key: str, value: object) -> None:
    error = rejected(Operation.GET, js({**VALID, key: value}), JSON)
    assert (error.code, error.client_token) == (E.INVALID_REQUEST, "tok")


def test_json_float_overflow_is_a_wrong_type_not_a_crash() -> None:
    error = rejected(Operation.GET, b'{"f":0,"l":1e400}', JSON)
    assert error.code is E.INVALID_REQUEST


@pytest.mark.parametrize("fmt", list(Format))
@pytest.mark.parametrize("missing", ["f", "l"])
def test_missing_required_field_is_invalid_request(fmt: Format, missing: str) -> None:
    doc = {k: v for k, v in VALID.items() if k != missing}
    error = rejected(Operation.GET, cbor(doc) if fmt is CBOR else js(doc), fmt)
    assert (error.code, error.client_token) == (E.INVALID_REQUEST, "tok")


def test_types_are_checked_before_presence() -> None:
    assert rejected(Operation.GET, cbor({"l": "x"}), CBOR).code is E.INVALID_CBOR


def test_a_byte_string_key_is_not_the_text_key() -> None:
    # {h'66': 0, "l": 256}: the file id key must be text, so f is missing
    assert rejected(Operation.GET, h("a2 4166 00 616c 190100"), CBOR).code is E.INVALID_REQUEST


# ----------------------------------------------------------------------------------------------- bounds

HUGE = 2**70


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        ("l", 255, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ("l", 131073, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ("l", 0, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ("l", -4096, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ("l", HUGE, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ("l", -HUGE, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ("o", -1, E.OFFSET_OUT_OF_BOUNDS),
        ("o", 98305, E.OFFSET_OUT_OF_BOUNDS),
        ("o", HUGE, E.OFFSET_OUT_OF_BOUNDS),
        ("n", 0, E.INVALID_REQUEST),
        ("n", -1, E.BLOCK_COUNT_LIMIT_EXCEEDED),
        ("n", 98305, E.BLOCK_COUNT_LIMIT_EXCEEDED),
        ("n", HUGE, E.BLOCK_COUNT_LIMIT_EXCEEDED),
        ("f", 256, E.INVALID_REQUEST),
        ("f", -1, E.INVALID_REQUEST),
        ("f", HUGE, E.INVALID_REQUEST),
    ],
)
@pytest.mark.parametrize("fmt", list(Format))
def test_bounds(fmt: Format, key: str, value: int, code: E) -> None:
    doc = {**VALID, key: value}
    error = rejected(Operation.GET, cbor(doc) if fmt is CBOR else js(doc), fmt)
    assert (error.code, error.client_token) == (code, "tok")


@pytest.mark.parametrize(
    ("key", "value"), [("l", 256), ("l", 131072), ("o", 0), ("o", 98304), ("n", 1), ("n", 98304), ("f", 255)]
)
@pytest.mark.parametrize("fmt", list(Format))
def test_bound_edges_are_accepted(fmt: Format, key: str, value: int) -> None:
    doc = {**VALID, key: value}
    decode_request(Operation.GET, cbor(doc) if fmt is CBOR else js(doc), fmt)


def test_cbor_64_bit_extremes() -> None:
    # l = 2**64-1 (major type 0) and l = -2**64 (major type 1): integers, out of bounds.
    for value_hex in ("1bffffffffffffffff", "3bffffffffffffffff"):
        error = rejected(Operation.GET, h("a2 6166 00 616c " + value_hex), CBOR)
        assert error.code is E.BLOCK_SIZE_OUT_OF_BOUNDS


@pytest.mark.parametrize("digits", [31, 45, 5000, 100_000])
@pytest.mark.parametrize("sign", ["", "-"])
def test_json_integers_with_many_digits_fail_the_bound(digits: int, sign: str) -> None:
    payload = b'{"f":0,"l":' + sign.encode() + b"9" * digits + b"}"
    assert rejected(Operation.GET, payload, JSON).code is E.BLOCK_SIZE_OUT_OF_BOUNDS


@pytest.mark.parametrize("fmt", list(Format))
def test_bitmap_limit(fmt: Format) -> None:
    def doc(size: int) -> bytes:
        bitmap = b"\x01" * size
        if fmt is CBOR:
            return cbor({**VALID, "b": bitmap})
        return js({**VALID, "b": "0x" + bitmap.hex()})

    decode_request(Operation.GET, doc(12287), fmt)
    error = rejected(Operation.GET, doc(12288), fmt)
    assert (error.code, error.client_token) == (E.BLOCK_BITMAP_LIMIT_EXCEEDED, "tok")


# ----------------------------------------------------------------------------------------- check order


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ({"f": 0, "l": 1, "o": -1}, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ({"f": 0, "l": 256, "o": -1, "n": -1}, E.OFFSET_OUT_OF_BOUNDS),
        ({"f": 0, "l": 256, "n": 0, "b": b"\0" * 12288}, E.INVALID_REQUEST),
        ({"f": 0, "l": 256, "n": -1, "b": b"\0" * 12288}, E.BLOCK_COUNT_LIMIT_EXCEEDED),
        ({"f": 999, "l": 256, "b": b"\0" * 12288}, E.BLOCK_BITMAP_LIMIT_EXCEEDED),
        ({"f": 999, "l": 256}, E.INVALID_REQUEST),
        ({"f": 999, "l": 1}, E.BLOCK_SIZE_OUT_OF_BOUNDS),
        ({"l": 1}, E.INVALID_REQUEST),  # presence before bounds
        ({"f": 0, "l": 1, "n": 1.0}, E.INVALID_CBOR),  # types before bounds
    ],
)
def test_check_order(doc: dict[str, object], code: E) -> None:
    assert rejected(Operation.GET, cbor(doc), CBOR).code is code


def test_describe_ignores_get_fields() -> None:
    # describe only checks the token; odd values under other keys are unknown keys there
    decode_request(Operation.DESCRIBE, cbor({"f": "x", "l": 1.5}), CBOR)


def test_rejection_message_says_what_to_do() -> None:
    error = rejected(Operation.GET, js({"f": 0, "l": 100}), JSON)
    assert "256..131072" in error.message and "l=100" in error.message
    assert str(error).startswith("BlockSizeOutOfBounds: ")
