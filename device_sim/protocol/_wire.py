"""Wire-level helpers shared by both roles of the codec: loading payloads and hand-assembling CBOR/JSON bytes.

How this works:
- ``load_document`` turns a payload into plain Python values. It is the one place where the exceptions of cbor2
  and json (whatever a hostile payload makes them raise: decode errors, nesting limits, memory) are caught and
  translated into ``MalformedPayload``; the role modules turn that into RequestRejected or RemoteProtocolError.
  CBOR must be exactly one item (trailing bytes are malformed; we decode from a BytesIO and compare the position).
  JSON must be UTF-8 text without NaN/Infinity; integers longer than 30 digits are clamped to +-10**40 (still an
  ``int``, and out of every bound), so a huge number is answered with the bound's error code instead of crashing
  Python's int-from-text digit limit.
- The CBOR emitter writes the few item kinds this protocol uses (unsigned/negative ints, text, bytes, arrays and
  maps) by hand, from the item heads of RFC 8949 section 3. That is what makes the emulator's data path fast;
  integers past 64 bits fall back to cbor2 (tagged bignums).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from typing import Final

import cbor2

from device_sim.protocol.topics import Format

# One-letter wire keys (docs/protocol.md section 3) and the long-form keys of rejections.
KEY_TOKEN: Final = "c"
KEY_VERSION: Final = "s"
KEY_FILE_ID: Final = "f"
KEY_BLOCK_SIZE: Final = "l"
KEY_OFFSET: Final = "o"
KEY_COUNT: Final = "n"
KEY_BITMAP: Final = "b"
KEY_DESCRIPTION: Final = "d"
KEY_FILES: Final = "r"
KEY_FILE_SIZE: Final = "z"
KEY_BLOCK_INDEX: Final = "i"
KEY_PAYLOAD: Final = "p"
KEY_CODE: Final = "o"
KEY_MESSAGE: Final = "m"
LONG_TOKEN: Final = "clientToken"
LONG_CODE: Final = "code"
LONG_MESSAGE: Final = "message"

#: Words used in error messages, by wire key.
FIELD_NAMES: Final = {
    "c": "client token",
    "s": "stream version",
    "f": "file id",
    "l": "block size",
    "o": "offset",
    "n": "number of blocks",
    "b": "bitmap",
    "d": "description",
    "r": "file list",
    "z": "file size",
    "i": "block index",
    "p": "payload",
    "m": "message",
}

# Requests and answers are flat maps (a description nests two levels); anything deeper is hostile.
_MAX_CBOR_DEPTH: Final = 16
_JSON_MAX_INT_DIGITS: Final = 30
JSON_HUGE_INT: Final = 10**40

_U8: Final = struct.Struct(">BB")
_U16: Final = struct.Struct(">BH")
_U32: Final = struct.Struct(">BI")
_U64: Final = struct.Struct(">BQ")


class MalformedPayload(Exception):
    """The payload is not one well-formed CBOR item / JSON text. The message says what is wrong."""


# ---------------------------------------------------------------------------------------------------- loading


def load_document(payload: bytes, fmt: Format) -> object:
    """The payload's single CBOR item or JSON value; raises MalformedPayload."""
    if not payload:
        raise MalformedPayload("the payload is empty")
    return _load_cbor(payload) if fmt is Format.CBOR else _load_json(payload)


def _load_cbor(payload: bytes) -> object:
    stream = io.BytesIO(payload)
    try:
        value = cbor2.CBORDecoder(stream, max_depth=_MAX_CBOR_DEPTH).decode()
    except Exception as exc:  # the boundary: cbor2 raises CBORDecodeError, and others on hostile input
        raise MalformedPayload(f"not valid CBOR ({exc})") from exc
    extra = len(payload) - stream.tell()
    if extra:
        raise MalformedPayload(f"{extra} byte(s) after the end of the CBOR item")
    return value


def load_first_cbor_item(payload: bytes) -> object:
    """The first CBOR item of the payload, via ``cbor2.loads`` (about twice as fast as a CBORDecoder on a stream,
    but it ignores trailing bytes). Only for callers that then prove the item spans the whole payload."""
    try:
        return cbor2.loads(payload, max_depth=_MAX_CBOR_DEPTH)
    except Exception as exc:  # the same boundary as _load_cbor
        raise MalformedPayload(f"not valid CBOR ({exc})") from exc


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json_int(text: str) -> int:
    if len(text) - text.startswith("-") > _JSON_MAX_INT_DIGITS:
        return -JSON_HUGE_INT if text.startswith("-") else JSON_HUGE_INT
    return int(text)


def _load_json(payload: bytes) -> object:
    try:
        text = bytes(payload).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_json_int)
    except (ValueError, RecursionError) as exc:  # the boundary: JSONDecodeError/UnicodeDecodeError are ValueErrors
        raise MalformedPayload(f"not valid JSON ({exc})") from exc


def is_unicode(text: str) -> bool:
    """False for strings with lone surrogates (JSON allows ``"\\ud800"``; UTF-8 cannot carry it)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def kind_of(value: object) -> str:
    """A short type word for error messages (never the value itself: it may be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a text string"
    if isinstance(value, bytes | bytearray):
        return "a byte string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a map"
    return f"a {type(value).__name__} value"


def show_int(value: int) -> str:
    """An integer for an error message; huge ones are not spelled out."""
    return str(value) if -(10**12) < value < 10**12 else ("-huge" if value < 0 else "huge")


# --------------------------------------------------------------------------------------------- CBOR emitting


def cbor_head(major: int, length: int) -> bytes:
    """The head of a CBOR item: major type and argument (0 <= length < 2**64)."""
    mt = major << 5
    if length < 24:
        return bytes((mt | length,))
    if length < 0x100:
        return _U8.pack(mt | 24, length)
    if length < 0x10000:
        return _U16.pack(mt | 25, length)
    if length < 0x100000000:
        return _U32.pack(mt | 26, length)
    return _U64.pack(mt | 27, length)


_SMALL_UINTS: Final = tuple(cbor_head(0, v) for v in range(256))
_U64_LIMIT: Final = 1 << 64


def cbor_int(value: int) -> bytes:
    if 0 <= value < 256:
        return _SMALL_UINTS[value]
    if 0 <= value < _U64_LIMIT:
        return cbor_head(0, value)
    if -_U64_LIMIT <= value < 0:
        return cbor_head(1, -1 - value)
    return cbor2.dumps(value)  # a tagged bignum


def cbor_text(text: str) -> bytes:
    """Raises UnicodeEncodeError for strings with lone surrogates."""
    data = text.encode("utf-8")
    return cbor_head(3, len(data)) + data


def cbor_key(key: str) -> bytes:
    return cbor_text(key)


BEGIN_MAP: Final = b"\xbf"  # indefinite-length map
BREAK: Final = b"\xff"
_START_F: Final = BEGIN_MAP + cbor_text("f")
_START_C: Final = BEGIN_MAP + cbor_text("c")
_F: Final = cbor_text("f")
_I: Final = cbor_text("i")
_L: Final = cbor_text("l")
_P: Final = cbor_text("p")


def cbor_data_message(
    token: str | None,
    file_id: int,
    block_index: int,
    block_length: int,
    payload: bytes | bytearray | memoryview,
    size: int,
) -> bytes:
    """A data message as AWS lays it out: ``bf [c] f i l p <payload> ff`` (ints already checked to be ints).

    One join, no intermediate buffers: this is the emulator's hot path. Raises UnicodeEncodeError for a token with
    lone surrogates.
    """
    start = _START_F if token is None else _START_C + cbor_text(token) + _F
    head = cbor_head(2, size)
    return b"".join(
        (start, cbor_int(file_id), _I, cbor_int(block_index), _L, cbor_int(block_length), _P, head, payload, BREAK)
    )


def cbor_data_prefix(token: str | None, file_id: int, block_index: int, block_length: int, size: int) -> bytes:
    """The bytes of ``cbor_data_message`` before the payload (the message is prefix + payload + BREAK)."""
    start = _START_F if token is None else _START_C + cbor_text(token) + _F
    return b"".join(
        (start, cbor_int(file_id), _I, cbor_int(block_index), _L, cbor_int(block_length), _P, cbor_head(2, size))
    )


def json_bytes(value: object) -> bytes:
    """Compact JSON, UTF-8, as AWS sends it. Raises UnicodeEncodeError for lone surrogates."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
