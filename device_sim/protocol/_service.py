"""Service role of the codec: validate requests the way the emulator answers them, encode answers the way AWS does.

How this works: ``decode_request`` runs the stream-independent checks of docs/protocol.md section 4 in the documented
order and stops at the first failure with ``RequestRejected(code, message, client_token=...)``:

1. decode: the payload must be one CBOR item / JSON text and a map/object (InvalidCbor / InvalidJson);
2. token ``c``: a text string of at most 64 UTF-8 bytes; otherwise the answer carries no token (wrong type:
   InvalidCbor in CBOR, InvalidRequest in JSON; too long: InvalidRequest);
3. field types, then presence: in CBOR an integer field must be a CBOR integer (major type 0/1; cbor2 also turns
   bignum tags 2/3 into ints, which then fail the bounds) and ``b`` a byte string, else InvalidCbor; in JSON
   every value must be an integer (floats such as 4096.0 are not) and ``b`` a hex string, else InvalidRequest;
   missing ``f`` or ``l`` is InvalidRequest;
4. bounds, in order ``l``, ``o``, ``n`` (``n`` = 0 is InvalidRequest, an emulator rule), ``b``, then the file id.

The stream version ``s`` is any integer here: one that differs from the stream's is the emulator's VersionMismatch.
From step 3 on, the rejection echoes the (valid) token. Checks that need the stream (exists, version, file id
known, range past the end of the file, S3) belong to the emulator. Keys the codec does not know are ignored.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping

from device_sim.protocol._wire import (
    BEGIN_MAP,
    BREAK,
    FIELD_NAMES,
    KEY_BITMAP,
    KEY_BLOCK_SIZE,
    KEY_COUNT,
    KEY_FILE_ID,
    KEY_OFFSET,
    KEY_TOKEN,
    KEY_VERSION,
    MalformedPayload,
    cbor_data_message,
    cbor_head,
    cbor_int,
    cbor_text,
    is_unicode,
    json_bytes,
    kind_of,
    load_document,
    show_int,
)
from device_sim.protocol.bitmap import bitmap_from_hex
from device_sim.protocol.errors import ErrorCode, LocalProtocolError, RequestRejected
from device_sim.protocol.limits import (
    MAX_BITMAP_BYTES,
    MAX_BLOCK_COUNT,
    MAX_BLOCK_SIZE,
    MAX_CLIENT_TOKEN_BYTES,
    MAX_FILE_ID,
    MAX_OFFSET,
    MIN_BLOCK_COUNT,
    MIN_BLOCK_SIZE,
    MIN_FILE_ID,
)
from device_sim.protocol.messages import (
    DataBlock,
    DescribeStreamRequest,
    GetStreamRequest,
    Rejection,
    Request,
    StreamDescription,
)
from device_sim.protocol.topics import Format, Operation

_INT_KEYS = (KEY_VERSION, KEY_FILE_ID, KEY_BLOCK_SIZE, KEY_OFFSET, KEY_COUNT)


# -------------------------------------------------------------------------------------------- decode_request


def decode_request(operation: Operation, payload: bytes, fmt: Format) -> Request:
    if not operation.is_request:
        raise LocalProtocolError(
            f"{operation.value!r} is not a request operation", hint="use decode_answer for service answers"
        )
    doc = _load_request(payload, fmt)
    token = _token(doc, fmt)
    if operation is Operation.DESCRIBE:
        return DescribeStreamRequest(client_token=token)
    return _get_request(doc, fmt, token)


def _load_request(payload: bytes, fmt: Format) -> Mapping[object, object]:
    code = ErrorCode.INVALID_CBOR if fmt is Format.CBOR else ErrorCode.INVALID_JSON
    try:
        doc = load_document(payload, fmt)
    except MalformedPayload as exc:
        raise RequestRejected(code, f"{exc}; send a single {_map_word(fmt)} with one-letter keys") from exc
    if not isinstance(doc, Mapping):
        raise RequestRejected(code, f"the request is {kind_of(doc)}; send a single {_map_word(fmt)}")
    return doc


def _map_word(fmt: Format) -> str:
    return "CBOR map" if fmt is Format.CBOR else "JSON object"


def _type_code(fmt: Format) -> ErrorCode:
    """A value of the wrong type: a CBOR type error is InvalidCbor, a JSON one InvalidRequest."""
    return ErrorCode.INVALID_CBOR if fmt is Format.CBOR else ErrorCode.INVALID_REQUEST


def _token(doc: Mapping[object, object], fmt: Format) -> str | None:
    if KEY_TOKEN not in doc:
        return None
    value = doc[KEY_TOKEN]
    if type(value) is not str:
        raise RequestRejected(
            _type_code(fmt), f"the client token c is {kind_of(value)}; send a text string of at most 64 bytes"
        )
    if not is_unicode(value):
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "the client token c is not valid Unicode")
    size = len(value.encode("utf-8"))
    if size > MAX_CLIENT_TOKEN_BYTES:
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            f"the client token c is {size} bytes long; AWS allows at most {MAX_CLIENT_TOKEN_BYTES} bytes",
        )
    return value


def _get_request(doc: Mapping[object, object], fmt: Format, token: str | None) -> GetStreamRequest:
    def reject(code: ErrorCode, message: str) -> RequestRejected:
        return RequestRejected(code, message, client_token=token)

    # Field types.
    ints: dict[str, int] = {}
    for key in _INT_KEYS:
        if key in doc:
            value = doc[key]
            if type(value) is not int:
                raise reject(_type_code(fmt), f"the {FIELD_NAMES[key]} {key} is {kind_of(value)}; send an integer")
            ints[key] = value
    bitmap: bytes | None = None
    if KEY_BITMAP in doc:
        bitmap = _bitmap(doc[KEY_BITMAP], fmt, reject)
    # Presence.
    for key in (KEY_FILE_ID, KEY_BLOCK_SIZE):
        if key not in ints:
            raise reject(
                ErrorCode.INVALID_REQUEST,
                f"the {FIELD_NAMES[key]} {key} is missing; a GetStream request needs f (file id) and l (block size)",
            )
    # Bounds, in the emulator's order.
    block_size = ints[KEY_BLOCK_SIZE]
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise reject(
            ErrorCode.BLOCK_SIZE_OUT_OF_BOUNDS,
            f"block size l={show_int(block_size)} is outside {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}",
        )
    offset = ints.get(KEY_OFFSET, 0)
    if not 0 <= offset <= MAX_OFFSET:
        raise reject(ErrorCode.OFFSET_OUT_OF_BOUNDS, f"offset o={show_int(offset)} is outside 0..{MAX_OFFSET}")
    count = ints.get(KEY_COUNT)
    if count == 0:
        raise reject(ErrorCode.INVALID_REQUEST, "number of blocks n=0 asks for nothing; send n >= 1 or leave it out")
    if count is not None and not MIN_BLOCK_COUNT <= count <= MAX_BLOCK_COUNT:
        raise reject(
            ErrorCode.BLOCK_COUNT_LIMIT_EXCEEDED,
            f"number of blocks n={show_int(count)} is outside {MIN_BLOCK_COUNT}..{MAX_BLOCK_COUNT}",
        )
    if bitmap is not None and len(bitmap) >= MAX_BITMAP_BYTES:
        raise reject(
            ErrorCode.BLOCK_BITMAP_LIMIT_EXCEEDED,
            f"the bitmap b is {len(bitmap)} bytes; it must be shorter than {MAX_BITMAP_BYTES} bytes",
        )
    # Decision: a file id outside the documented 0..255 is a malformed request (InvalidRequest), not an unknown
    # file (ResourceNotFound): the check needs no stream, so it is the codec's and comes last among its checks,
    # after the bounds the emulator orders explicitly and before any stream-dependent check.
    file_id = ints[KEY_FILE_ID]
    if not MIN_FILE_ID <= file_id <= MAX_FILE_ID:
        raise reject(ErrorCode.INVALID_REQUEST, f"file id f={show_int(file_id)} is outside 0..{MAX_FILE_ID}")
    return GetStreamRequest(
        client_token=token,
        stream_version=ints.get(KEY_VERSION),
        file_id=file_id,
        block_size=block_size,
        offset=offset,
        number_of_blocks=count,
        bitmap=bitmap,
    )


def _bitmap(value: object, fmt: Format, reject: Callable[[ErrorCode, str], RequestRejected]) -> bytes:
    if fmt is Format.CBOR:
        if type(value) is not bytes:
            raise reject(ErrorCode.INVALID_CBOR, f"the bitmap b is {kind_of(value)}; in CBOR send a byte string")
        return value
    if type(value) is not str:
        raise reject(
            ErrorCode.INVALID_REQUEST, f"the bitmap b is {kind_of(value)}; in JSON send a hex string such as 0x130080"
        )
    try:
        return bitmap_from_hex(value)
    except ValueError:
        raise reject(
            ErrorCode.INVALID_REQUEST,
            "the bitmap b is not an even-length hex string; send hex digits with an optional 0x, e.g. 0x130080",
        ) from None


# --------------------------------------------------------------------------------------------- encode_answer


def encode_answer(answer: DataBlock | StreamDescription | Rejection, fmt: Format) -> bytes:
    """Encode an answer. Only types are checked: the emulator may inject odd values (wrong ids, lengths)."""
    if isinstance(answer, DataBlock):
        return _data(fmt, answer.client_token, answer.file_id, answer.block_index, answer.block_length, answer.payload)
    if isinstance(answer, StreamDescription):
        return _description(answer, fmt)
    if isinstance(answer, Rejection):
        return _rejection(answer, fmt)
    raise LocalProtocolError(
        f"cannot encode {type(answer).__name__} as an answer", hint="pass a DataBlock, StreamDescription or Rejection"
    )


def encode_data_block(
    fmt: Format,
    file_id: int,
    block_index: int,
    payload: bytes | bytearray | memoryview,
    client_token: str | None = None,
) -> bytes:
    """Service side fast path for one data message (the emulator's hot loop); ``l`` is the payload's length.

    CBOR: an indefinite-length map ``c?, f, i, l, p`` assembled by hand; JSON: compact text with Base64.
    A memoryview (a slice of the file) is copied once, straight into the message.
    """
    if fmt is Format.CBOR and type(payload) is bytes and type(file_id) is int and type(block_index) is int:
        token = None if client_token is None else _check_text(client_token, "client token")
        return cbor_data_message(token, file_id, block_index, len(payload), payload, len(payload))
    return _data(fmt, client_token, file_id, block_index, None, payload)


_C = cbor_text("c")
_F = cbor_text("f")


def _check_int(value: object, name: str) -> int:
    if type(value) is not int:
        raise LocalProtocolError(f"{name} must be an int, got {kind_of(value)}")
    return value


def _check_text(value: object, name: str) -> str:
    if type(value) is not str:
        raise LocalProtocolError(f"{name} must be a str, got {kind_of(value)}")
    if not is_unicode(value):
        raise LocalProtocolError(f"{name} is not valid Unicode (lone surrogate)")
    return value


def _data(
    fmt: Format,
    token: str | None,
    file_id: int,
    block_index: int,
    block_length: int | None,
    payload: bytes | bytearray | memoryview,
) -> bytes:
    """The data message; ``block_length`` None means the payload's length."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"the payload must be bytes, got {kind_of(payload)}")
    size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    if block_length is None:
        block_length = size
    if type(file_id) is not int or type(block_index) is not int or type(block_length) is not int:
        raise LocalProtocolError("file id, block index and block length must be ints")
    if fmt is Format.CBOR:
        token = None if token is None else _check_text(token, "client token")
        return cbor_data_message(token, file_id, block_index, block_length, payload, size)
    head = b"{" if token is None else b'{"c":' + json_bytes(_check_text(token, "client token")) + b","
    return b"".join(
        (head, b'"f":%d,"i":%d,"l":%d,"p":"' % (file_id, block_index, block_length), base64.b64encode(payload), b'"}')
    )


def _description(answer: StreamDescription, fmt: Format) -> bytes:
    version = _check_int(answer.stream_version, "stream version")
    text = _check_text(answer.description, "description")
    files = [(_check_int(f.file_id, "file id"), _check_int(f.file_size, "file size")) for f in answer.files]
    token = None if answer.client_token is None else _check_text(answer.client_token, "client token")
    if fmt is Format.JSON:
        doc: dict[str, object] = {} if token is None else {"c": token}
        doc.update(s=version, d=text, r=[{"f": f, "z": z} for f, z in files])
        return json_bytes(doc)
    parts = [BEGIN_MAP]
    if token is not None:
        parts += (_C, cbor_text(token))
    parts += (cbor_text("s"), cbor_int(version), cbor_text("d"), cbor_text(text), cbor_text("r"))
    parts.append(cbor_head(4, len(files)))
    for file_id, size in files:
        parts += (BEGIN_MAP, _F, cbor_int(file_id), cbor_text("z"), cbor_int(size), BREAK)
    parts.append(BREAK)
    return b"".join(parts)


def _rejection(answer: Rejection, fmt: Format) -> bytes:
    """Short and long keys, in the order of AWS's real example: clientToken, c, code, o, message, m."""
    pairs: list[tuple[str, str]] = []
    if answer.client_token is not None:
        token = _check_text(answer.client_token, "client token")
        pairs += (("clientToken", token), ("c", token))
    code = _check_text(answer.code, "code")
    message = _check_text(answer.message, "message")
    pairs += (("code", code), ("o", code), ("message", message), ("m", message))
    if fmt is Format.JSON:
        return json_bytes(dict(pairs))
    return b"".join((BEGIN_MAP, *(cbor_text(k) + cbor_text(v) for k, v in pairs), BREAK))
