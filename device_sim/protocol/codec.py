"""CBOR and JSON codecs for both roles (docs/protocol.md sections 3-4).

Device role: ``encode_request`` / ``decode_answer`` (``_device.py``). Service role: ``decode_request`` /
``encode_answer`` (``_service.py``). Decoders look keys up by name, ignore unknown keys, accept definite and
indefinite CBOR maps and the long-form rejection keys (``code``/``message``/``clientToken``). Service-side decoders
raise ``RequestRejected`` with the AWS code the service answers with, in the documented check order; device-side
decoders raise ``RemoteProtocolError``. Encoders for the service emit what AWS emits: indefinite-length CBOR maps,
data keys in the order ``c?, f, i, l, p``, rejections with both short and long keys. Payload parsing and the
translation of cbor2/json exceptions happen in one place, ``_wire.load_document``.
"""

from __future__ import annotations

from device_sim.protocol import _device, _service
from device_sim.protocol._device import DataLayout
from device_sim.protocol.messages import Answer, Request
from device_sim.protocol.topics import Format, Operation

__all__ = [
    "DataLayout",
    "decode_answer",
    "decode_data_block",
    "decode_request",
    "encode_answer",
    "encode_data_block",
    "encode_request",
]


def encode_request(request: Request, fmt: Format) -> bytes:
    """Device side: payload for ``describe/<fmt>`` or ``get/<fmt>``. Raises LocalProtocolError on bad values."""
    return _device.encode_request(request, fmt)


def decode_request(operation: Operation, payload: bytes, fmt: Format) -> Request:
    """Service side: parse and validate a request; raises RequestRejected (code, message, token to echo).

    Only stream-independent checks: the emulator still checks stream, version, file id and range.
    """
    return _service.decode_request(operation, payload, fmt)


def encode_answer(answer: Answer, fmt: Format) -> bytes:
    """Service side: payload for ``description``/``data``/``rejected``.

    Only types are checked (LocalProtocolError), not protocol ranges, so that the emulator can inject faults.
    """
    return _service.encode_answer(answer, fmt)


def decode_answer(operation: Operation, payload: bytes, fmt: Format) -> Answer:
    """Device side: parse ``description``/``data``/``rejected``; raises RemoteProtocolError."""
    return _device.decode_answer(operation, payload, fmt)


# The two hot paths are the implementations themselves, without a wrapper call:
# encode_data_block(fmt, file_id, block_index, payload, client_token=None) -> bytes   (service, the emulator's loop)
# decode_data_block(payload, fmt) -> DataBlock   (device; a block whose l differs from its payload is malformed)
encode_data_block = _service.encode_data_block
decode_data_block = _device.decode_data_block
