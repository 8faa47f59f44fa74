"""GetStream requests laid out exactly as real device libraries write them (docs/profiles.md).

How this works: ``encode_library_request`` turns a ``GetStreamRequest`` whose ``shape`` is not ``SERVICE`` into the
bytes the library itself publishes. The CBOR shapes are definite-length maps with one-letter text keys in the
order the libraries emit them (``c, f, l, o, b, n``; rustot leaves out ``c``) and minimal integer heads, as TinyCBOR
and minicbor write them; none of them carries ``s``. The JSON shape of AWS's MQTT file streams library is its fixed
text with a hard-coded ``"s": 1`` and no token. Only the checks a library itself makes are made here (the value
ranges and the bitmap length); whether the service accepts the request is the service's business, since
reproducing what a library sends, flaws included, is the point.

``encode_request`` (the device codec) calls this for every non-SERVICE request, so protocol/ stays the one place
that encodes.
"""

from __future__ import annotations

from device_sim.protocol._wire import cbor_head, cbor_int, cbor_text
from device_sim.protocol.errors import LocalProtocolError
from device_sim.protocol.limits import MAX_FILE_ID, MAX_OFFSET, MIN_FILE_ID
from device_sim.protocol.messages import GetStreamRequest, RequestShape
from device_sim.protocol.topics import Format

__all__ = [
    "FREERTOS_CLIENT_TOKEN",
    "MFS_CLIENT_TOKEN",
    "MFS_PLACEHOLDER_BITMAP",
    "RUSTOT_BITMAP_BYTES",
    "encode_library_request",
]

#: The OTA agent's fixed client token (OTA_CLIENT_TOKEN in ota_mqtt.c).
FREERTOS_CLIENT_TOKEN = "rdy"
#: The MQTT file streams library's CBOR client token.
MFS_CLIENT_TOKEN = "rdy"
#: The MQTT file streams library's fixed CBOR bitmap: the ASCII bytes of "MQ==".
MFS_PLACEHOLDER_BITMAP = b"MQ=="
#: rustot's bitmap: a 32-bit set serialised as 4 little-endian bytes.
RUSTOT_BITMAP_BYTES = 4


def encode_library_request(request: GetStreamRequest, fmt: Format) -> bytes:
    """The bytes ``request.shape``'s library publishes for ``request`` in ``fmt`` (LocalProtocolError when the
    library cannot send it: JSON from a CBOR-only library, a missing field, a value outside its range)."""
    shape = request.shape
    if shape is RequestShape.SERVICE:
        raise LocalProtocolError("a SERVICE-shaped request is encoded by encode_request", hint="call encode_request")
    _check(request.file_id, "file id", MIN_FILE_ID, MAX_FILE_ID)
    _check(request.block_size, "block size", 1, 0xFFFFFFFF)
    _check(request.offset, "offset", 0, MAX_OFFSET)
    count = request.number_of_blocks
    if count is None:
        raise LocalProtocolError(f"{shape.value} always sends n", hint="set number_of_blocks")
    _check(count, "number of blocks", 1, 0xFFFFFFFF)
    if request.stream_version is not None:
        raise LocalProtocolError(f"{shape.value} never sends a stream version in CBOR", hint="leave s out")
    if shape is RequestShape.MFS and fmt is Format.JSON:
        # The library's text, spaces exactly as it writes them; the hard-coded "s": 1 is its own.
        return (
            f'{{"s": 1,"f": {request.file_id},"l": {request.block_size},"o": {request.offset},"n": {count}}}'
        ).encode()
    if fmt is not Format.CBOR:
        raise LocalProtocolError(f"{shape.value} requests are CBOR only", hint="use --format cbor")
    bitmap = request.bitmap
    if bitmap is None:
        raise LocalProtocolError(f"{shape.value} always sends a bitmap", hint="set bitmap")
    fields: list[tuple[str, int | str | bytes]] = []
    if shape is RequestShape.RUSTOT:
        if len(bitmap) != RUSTOT_BITMAP_BYTES:
            raise LocalProtocolError(f"rustot's bitmap is {RUSTOT_BITMAP_BYTES} bytes, got {len(bitmap)}")
    else:
        token = request.client_token
        if token is None:
            raise LocalProtocolError(f"{shape.value} always sends its client token", hint="client_token='rdy'")
        fields.append(("c", token))
    fields += [
        ("f", request.file_id),
        ("l", request.block_size),
        ("o", request.offset),
        ("b", bytes(bitmap)),
        ("n", count),
    ]
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


def _check(value: object, name: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise LocalProtocolError(f"the {name} {value!r} is outside {low}..{high}")
