"""Device role of the codec: encode requests (refusing what a service would reject) and decode answers.

How this works: ``encode_request`` checks every value against the limits of docs/protocol.md section 3 and raises
``LocalProtocolError`` with a hint, so a device never publishes a request the service rejects for its form. It
emits definite-length CBOR maps / compact JSON with keys in the order ``c, s, f, l, o, n, b``.

The answer decoders are strict about types and tolerant about layout: keys in any order, unknown keys ignored,
definite or indefinite CBOR maps, and on rejections the long keys ``code``/``message``/``clientToken`` (the short
key wins when both are present; a JSON ``null`` token or message counts as absent). Anything else malformed,
including a data block whose ``l`` differs from the payload length, raises ``RemoteProtocolError``. Checks that
need the download (wrong file id, index past the end, wrong length for the block) are the engine's.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from device_sim.protocol._wire import (
    _F,
    _I,
    _L,
    _P,
    _START_C,
    _START_F,
    BREAK,
    FIELD_NAMES,
    KEY_BITMAP,
    KEY_BLOCK_INDEX,
    KEY_BLOCK_SIZE,
    KEY_CODE,
    KEY_COUNT,
    KEY_DESCRIPTION,
    KEY_FILE_ID,
    KEY_FILE_SIZE,
    KEY_FILES,
    KEY_MESSAGE,
    KEY_OFFSET,
    KEY_PAYLOAD,
    KEY_TOKEN,
    KEY_VERSION,
    LONG_CODE,
    LONG_MESSAGE,
    LONG_TOKEN,
    MalformedPayload,
    cbor_head,
    cbor_int,
    cbor_text,
    is_unicode,
    json_bytes,
    kind_of,
    load_document,
    show_int,
)
from device_sim.protocol.bitmap import bitmap_to_hex
from device_sim.protocol.errors import LocalProtocolError, RemoteProtocolError
from device_sim.protocol.limits import (
    MAX_BITMAP_BYTES,
    MAX_BLOCK_COUNT,
    MAX_BLOCK_SIZE,
    MAX_CLIENT_TOKEN_BYTES,
    MAX_FILE_ID,
    MAX_OFFSET,
    MAX_STREAM_VERSION,
    MIN_BLOCK_COUNT,
    MIN_BLOCK_SIZE,
    MIN_FILE_ID,
)
from device_sim.protocol.messages import (
    Answer,
    DataBlock,
    DescribeStreamRequest,
    FileInfo,
    GetStreamRequest,
    Rejection,
    Request,
    RequestShape,
    StreamDescription,
)
from device_sim.protocol.topics import Format, Operation

# ------------------------------------------------------------------------------------------- encode_request


def encode_request(request: Request, fmt: Format) -> bytes:
    if isinstance(request, GetStreamRequest) and request.shape is not RequestShape.SERVICE:
        from device_sim.protocol.library import encode_library_request  # a real library's bytes (docs/profiles.md)

        return encode_library_request(request, fmt)
    fields: list[tuple[str, int | str | bytes]] = []
    if isinstance(request, DescribeStreamRequest):
        _add_token(fields, request.client_token)
    elif isinstance(request, GetStreamRequest):
        _add_token(fields, request.client_token)
        if request.stream_version is not None:
            fields.append((KEY_VERSION, _bounded(request.stream_version, KEY_VERSION, 0, MAX_STREAM_VERSION)))
        fields.append((KEY_FILE_ID, _bounded(request.file_id, KEY_FILE_ID, MIN_FILE_ID, MAX_FILE_ID)))
        fields.append((KEY_BLOCK_SIZE, _bounded(request.block_size, KEY_BLOCK_SIZE, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)))
        fields.append((KEY_OFFSET, _bounded(request.offset, KEY_OFFSET, 0, MAX_OFFSET)))
        if request.number_of_blocks is not None:
            count = _bounded(request.number_of_blocks, KEY_COUNT, MIN_BLOCK_COUNT, MAX_BLOCK_COUNT)
            fields.append((KEY_COUNT, count))
        if request.bitmap is not None:
            fields.append((KEY_BITMAP, _bitmap(request.bitmap)))
    else:
        raise LocalProtocolError(
            f"cannot encode {type(request).__name__} as a request",
            hint="pass a DescribeStreamRequest or GetStreamRequest",
        )
    if fmt is Format.JSON:
        return json_bytes({k: bitmap_to_hex(v) if isinstance(v, bytes) else v for k, v in fields})
    parts = [cbor_head(5, len(fields))]
    for key, value in fields:
        parts.append(cbor_text(key))
        if isinstance(value, bytes):
            parts += (cbor_head(2, len(value)), value)
        elif isinstance(value, str):
            parts.append(cbor_text(value))
        else:
            parts.append(cbor_int(value))
    return b"".join(parts)


def _add_token(fields: list[tuple[str, int | str | bytes]], token: object) -> None:
    if token is None:
        return
    if type(token) is not str:
        raise LocalProtocolError(f"the client token must be a str, got {kind_of(token)}")
    if not is_unicode(token):
        raise LocalProtocolError("the client token is not valid Unicode (lone surrogate)")
    size = len(token.encode("utf-8"))
    if size > MAX_CLIENT_TOKEN_BYTES:
        raise LocalProtocolError(
            f"the client token is {size} bytes long; the service rejects tokens over {MAX_CLIENT_TOKEN_BYTES} bytes",
            hint="use a shorter token",
        )
    fields.append((KEY_TOKEN, token))


def _bounded(value: object, key: str, low: int, high: int) -> int:
    name = FIELD_NAMES[key]
    if type(value) is not int:
        raise LocalProtocolError(f"the {name} ({key}) must be an int, got {kind_of(value)}")
    if not low <= value <= high:
        raise LocalProtocolError(
            f"the {name} {key}={show_int(value)} is outside {low}..{high}; the service would reject it",
            hint=f"use a {name} in {low}..{high}",
        )
    return value


def _bitmap(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise LocalProtocolError(f"the bitmap must be bytes, got {kind_of(value)}")
    if len(value) >= MAX_BITMAP_BYTES:
        raise LocalProtocolError(
            f"the bitmap is {len(value)} bytes; the service rejects bitmaps of {MAX_BITMAP_BYTES} bytes or more",
            hint="ask for a smaller window of blocks",
        )
    return bytes(value)


# -------------------------------------------------------------------------------------------- decode_answer


def decode_answer(operation: Operation, payload: bytes, fmt: Format) -> Answer:
    if operation is Operation.DATA:
        return decode_data_block(payload, fmt)
    if operation is Operation.DESCRIPTION:
        return _description(_load(payload, fmt, operation), fmt)
    if operation is Operation.REJECTED:
        return _rejection(_load(payload, fmt, operation), fmt)
    raise LocalProtocolError(
        f"{operation.value!r} is not an answer operation", hint="use decode_request for device requests"
    )


def decode_data_block(payload: bytes, fmt: Format) -> DataBlock:
    """Device side fast path for ``data/<fmt>``; raises RemoteProtocolError (also when ``l`` != payload length).

    A CBOR message laid out exactly as AWS sends it (``bf [c] f i l p ff``, minimal heads) is decoded with
    ``cbor2.loads`` and accepted once its bytes are shown to be exactly that layout (so no trailing bytes);
    anything else goes through the general decoder, which also explains what is wrong.
    """
    if fmt is Format.CBOR and type(payload) is bytes and payload[-1:] == BREAK:
        block = _aws_layout_block(payload)
        if block is not None:
            return block
    return decode_data_block_general(payload, fmt)


def _minimal_head(buf: bytes, pos: int, major: int) -> tuple[int, int]:
    """The argument of the CBOR head of ``major`` type at ``pos`` and the position after it; (-1, pos) unless the
    head is of that type and minimally encoded (the layout AWS sends)."""
    first = buf[pos]
    if first >> 5 != major:
        return -1, pos
    info = first & 0x1F
    if info < 24:
        return info, pos + 1
    if info == 24:
        value = buf[pos + 1]
        return (value, pos + 2) if value >= 24 else (-1, pos)
    if info == 25:
        value = (buf[pos + 1] << 8) | buf[pos + 2]
        return (value, pos + 3) if value >= 0x100 else (-1, pos)
    if info == 26:
        value = int.from_bytes(buf[pos + 1 : pos + 5], "big")
        return (value, pos + 5) if value >= 0x10000 else (-1, pos)
    if info == 27:
        value = int.from_bytes(buf[pos + 1 : pos + 9], "big")
        return (value, pos + 9) if value >= 0x1_0000_0000 else (-1, pos)
    return -1, pos


def _aws_layout_block(payload: bytes) -> DataBlock | None:
    """Read ``bf [61 63 <text c>] 61 66 <f> 61 69 <i> 61 6c <l> 61 70 <bytes p> ff`` (minimal heads) by hand:
    a few index operations instead of a general decode. None for anything else (the general decoder decides)."""
    try:
        token: str | None = None
        pos = 1
        if payload[1:3] == b"\x61c":
            size, pos = _minimal_head(payload, 3, 3)
            if size < 0:
                return None
            token = payload[pos : pos + size].decode("utf-8")
            pos += size
        if payload[pos : pos + 2] != b"\x61f":
            return None
        file_id, pos = _minimal_head(payload, pos + 2, 0)
        if payload[pos : pos + 2] != b"\x61i":
            return None
        index, pos = _minimal_head(payload, pos + 2, 0)
        if payload[pos : pos + 2] != b"\x61l":
            return None
        length, pos = _minimal_head(payload, pos + 2, 0)
        if payload[pos : pos + 2] != b"\x61p":
            return None
        size, pos = _minimal_head(payload, pos + 2, 2)
    except (IndexError, UnicodeDecodeError):
        return None
    if (
        payload[0] != 0xBF
        or not 0 <= file_id <= MAX_FILE_ID
        or index < 0
        or not 0 <= length <= MAX_BLOCK_SIZE
        or size != length
        or len(payload) != pos + length + 1
    ):
        return None
    return DataBlock(
        client_token=token, file_id=file_id, block_index=index, block_length=length, payload=payload[pos:-1]
    )


class DataLayout:
    """The data messages of one download, recognised with two C-level byte comparisons (the device's hot path).

    Within one download the service sends every full block in the same bytes but for the block index and the
    data: ``bf [61 63 <token>] 61 66 <f> 61 69 <i> 61 6c <l> 61 70 <p head> <data> ff`` (docs/protocol.md
    section 4), where the token, the file id and the block length are the download's own. ``full_block`` checks
    the constant prefix and the constant middle with ``bytes.startswith``, reads the minimal head of ``i`` and
    checks the length and the closing break; anything else (another token or file id, the short last block, a
    JSON message, another key order or head width) returns None and goes through ``decode_data_block``, which
    also explains what is wrong. Whatever ``full_block`` accepts, ``decode_data_block`` decodes to the same block
    (a property test holds them to it).
    """

    __slots__ = ("_middle", "_prefixes", "_size")

    def __init__(self, client_token: str | None, file_id: int, block_size: int) -> None:
        ids = cbor_int(file_id) + _I
        bare = _START_F + ids
        # AWS echoes a token it was sent; the prefix without one also serves a service that leaves it out.
        self._prefixes = (bare,) if client_token is None else (_START_C + cbor_text(client_token) + _F + ids, bare)
        self._middle = _L + cbor_int(block_size) + _P + cbor_head(2, block_size)
        self._size = block_size

    def full_block(self, payload: bytes) -> tuple[int, bytes] | None:
        """``(block index, data)`` of a full-size block of this download in AWS's layout; None otherwise."""
        for prefix in self._prefixes:
            if payload.startswith(prefix):
                break
        else:
            return None
        pos = len(prefix)
        try:
            head = payload[pos]
            if head < 24:
                index, pos = head, pos + 1
            elif head == 24:
                index, pos = payload[pos + 1], pos + 2
                if index < 24:
                    return None
            elif head == 25:
                index, pos = (payload[pos + 1] << 8) | payload[pos + 2], pos + 3
                if index < 0x100:
                    return None
            elif head == 26:
                index, pos = int.from_bytes(payload[pos + 1 : pos + 5], "big"), pos + 5
                if index < 0x10000:
                    return None
            else:
                return None
        except IndexError:
            return None
        middle = self._middle
        if not payload.startswith(middle, pos):
            return None
        pos += len(middle)
        end = pos + self._size
        if len(payload) != end + 1 or payload[end] != 0xFF:
            return None
        return index, payload[pos:end]


def decode_data_block_general(payload: bytes, fmt: Format) -> DataBlock:
    """The full decoder (cbor2/json) that also explains what is wrong; the reference for ``_fast_data``."""
    doc = _load(payload, fmt, Operation.DATA)
    token = _optional_text(doc, fmt, KEY_TOKEN)
    file_id = _int(doc, KEY_FILE_ID, MIN_FILE_ID, MAX_FILE_ID)
    index = _int(doc, KEY_BLOCK_INDEX, 0, None)
    length = _int(doc, KEY_BLOCK_SIZE, 0, MAX_BLOCK_SIZE)
    data = _payload(doc, fmt)
    if len(data) != length:
        raise RemoteProtocolError(f"data block {index}: l={length} but the payload p has {len(data)} bytes")
    return DataBlock(client_token=token, file_id=file_id, block_index=index, block_length=length, payload=data)


def _load(payload: bytes, fmt: Format, operation: Operation) -> Mapping[object, object]:
    where = f"{operation.value}/{fmt.value}"
    try:
        doc = load_document(payload, fmt)
    except MalformedPayload as exc:
        raise RemoteProtocolError(f"malformed {where} message: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise RemoteProtocolError(f"malformed {where} message: {kind_of(doc)}, not a map")
    return doc


def _int(doc: Mapping[object, object], key: str, low: int, high: int | None) -> int:
    if key not in doc:
        raise RemoteProtocolError(f"the {FIELD_NAMES[key]} {key} is missing")
    value = doc[key]
    if type(value) is not int:
        raise RemoteProtocolError(f"the {FIELD_NAMES[key]} {key} is {kind_of(value)}, not an integer")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else str(high)
        raise RemoteProtocolError(f"the {FIELD_NAMES[key]} {key}={show_int(value)} is outside {low}..{upper}")
    return value


def _text(value: object, fmt: Format, what: str) -> str:
    if type(value) is not str:
        raise RemoteProtocolError(f"the {what} is {kind_of(value)}, not a text string")
    if fmt is Format.JSON and not is_unicode(value):
        raise RemoteProtocolError(f"the {what} is not valid Unicode")
    return value


def _optional_text(doc: Mapping[object, object], fmt: Format, key: str, long_key: str | None = None) -> str | None:
    for k in (key, long_key):
        if k is not None and k in doc and doc[k] is not None:
            return _text(doc[k], fmt, f"{FIELD_NAMES[key]} {k}")
    return None


def _payload(doc: Mapping[object, object], fmt: Format) -> bytes:
    if KEY_PAYLOAD not in doc:
        raise RemoteProtocolError("the payload p is missing")
    value = doc[KEY_PAYLOAD]
    if fmt is Format.CBOR:
        if type(value) is not bytes:
            raise RemoteProtocolError(f"the payload p is {kind_of(value)}, not a byte string")
        return value
    if type(value) is not str:
        raise RemoteProtocolError(f"the payload p is {kind_of(value)}, not a Base64 string")
    # b64decode(validate=True) checks the alphabet but tolerates surplus padding ("YWJj=", "YWJj====").
    if len(value) % 4 or value.endswith("==="):
        raise RemoteProtocolError("the payload p is not standard Base64 with padding")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RemoteProtocolError("the payload p is not standard Base64 with padding") from exc


def _description(doc: Mapping[object, object], fmt: Format) -> StreamDescription:
    token = _optional_text(doc, fmt, KEY_TOKEN)
    version = _int(doc, KEY_VERSION, 0, MAX_STREAM_VERSION)
    # A stream's description is optional in create_stream: a missing d reads as "".
    text = _optional_text(doc, fmt, KEY_DESCRIPTION) or ""
    if KEY_FILES not in doc:
        raise RemoteProtocolError("the file list r is missing")
    entries = doc[KEY_FILES]
    if not isinstance(entries, list | tuple):
        raise RemoteProtocolError(f"the file list r is {kind_of(entries)}, not an array")
    files: list[FileInfo] = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise RemoteProtocolError(f"an entry of the file list r is {kind_of(entry)}, not a map")
        file_id = _int(entry, KEY_FILE_ID, MIN_FILE_ID, MAX_FILE_ID)
        if any(f.file_id == file_id for f in files):
            raise RemoteProtocolError(f"file id {file_id} appears twice in the file list r")
        files.append(FileInfo(file_id=file_id, file_size=_int(entry, KEY_FILE_SIZE, 0, None)))
    return StreamDescription(client_token=token, stream_version=version, description=text, files=tuple(files))


def _rejection(doc: Mapping[object, object], fmt: Format) -> Rejection:
    if KEY_CODE in doc:
        code = _text(doc[KEY_CODE], fmt, "error code o")
    elif LONG_CODE in doc:
        code = _text(doc[LONG_CODE], fmt, "error code")
    else:
        raise RemoteProtocolError("the rejection has no error code (o or code)")
    token = _optional_text(doc, fmt, KEY_TOKEN, LONG_TOKEN)
    message = _optional_text(doc, fmt, KEY_MESSAGE, LONG_MESSAGE) or ""
    return Rejection(client_token=token, code=code, message=message)
