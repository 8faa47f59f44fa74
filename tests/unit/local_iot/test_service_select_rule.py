"""Select first, then range-check (docs/protocol.md 4), the fixed InvalidCbor/InvalidJson answers, and a bignum
stream version: StreamServiceCore against InMemoryCatalog, raw payloads, no network."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest

from device_sim.protocol import OUT_OF_RANGE_MESSAGE
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service import AnswerKind, Outgoing, StreamServiceCore

ROLE = "arn:aws:iam::123456789012:role/stream-role"
BLOCK = 4096
#: AWS's MQTT file streams library: every CBOR GetStream carries this placeholder bitmap ("MQ==") with n = 1.
PLACEHOLDER = b"MQ=="
PLACEHOLDER_BITS = [0, 2, 3, 6, 8, 12, 14, 16, 18, 19, 20, 21, 24, 26, 27, 28, 29]


EXACT = bytes.fromhex("a6 61 63 63 72 64 79 61 66 00 61 6c 19 10 00 61 6f 00 61 62 44 4d 51 3d 3d 61 6e 01")


def request_for(offset: int) -> bytes:
    """EXACT with o = offset (a CBOR unsigned int: one byte below 24, else 0x18 + byte / 0x19 + two bytes)."""
    head = EXACT[: EXACT.index(b"ao") + 2]
    tail = EXACT[EXACT.index(b"ao") + 3 :]
    if offset < 24:
        o = bytes([offset])
    elif offset < 256:
        o = bytes([0x18, offset])
    else:
        o = bytes([0x19]) + offset.to_bytes(2, "big")
    return head + o + tail


def world(blocks: int) -> InMemoryCatalog:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    size = (blocks - 1) * BLOCK + 1000  # the last block is short
    catalog.put_object("fw", "f.bin", bytes(k % 249 for k in range(size)))
    catalog.create_stream("s1", [(0, "fw", "f.bin", None)], ROLE, "library")
    return catalog


def answer(core: StreamServiceCore, payload: bytes, fmt: str = "cbor") -> list[Outgoing]:
    return core.handle(f"$aws/things/dev-1/streams/s1/get/{fmt}", payload, None, 1.0)


def doc(out: Outgoing) -> dict[str, Any]:
    loaded = cbor2.loads(out.payload) if out.format == "cbor" else json.loads(out.payload)
    assert isinstance(loaded, dict)
    return loaded


def test_the_exact_bytes_decode_as_documented() -> None:
    assert cbor2.loads(EXACT) == {"c": "rdy", "f": 0, "l": 4096, "o": 0, "b": PLACEHOLDER, "n": 1}
    bits = [k * 8 + b for k, byte in enumerate(PLACEHOLDER) for b in range(8) if byte >> b & 1]
    assert bits == PLACEHOLDER_BITS
    assert cbor2.loads(request_for(97))["o"] == 97


@pytest.mark.parametrize("blocks", [1, 25, 29, 30, 98])
def test_the_library_downloads_every_block_of_files_of_any_length(blocks: int) -> None:
    core = StreamServiceCore(world(blocks))
    for wanted in range(blocks):
        outs = answer(core, request_for(wanted))
        assert [o.kind for o in outs] == [AnswerKind.DATA], (wanted, outs)
        assert (doc(outs[0])["i"], doc(outs[0])["c"]) == (wanted, "rdy")
    # o at the end of the file is out of range, even with n = 1 and the placeholder bitmap
    end = doc(answer(core, request_for(blocks))[0])
    assert (end["o"], end["m"], end["c"]) == ("InvalidRequest", OUT_OF_RANGE_MESSAGE, "rdy")


def test_a_json_request_shaped_like_the_library() -> None:
    core = StreamServiceCore(world(2))
    payload = b'{"s": 1,"f": 0,"l": 1024,"o": 0,"n": 1}'
    outs = answer(core, payload, "json")
    assert [o.kind for o in outs] == [AnswerKind.DATA]
    assert doc(outs[0])["i"] == 0 and "c" not in doc(outs[0])


def test_selection_stops_at_n_then_at_128_kib_and_only_selected_blocks_are_range_checked() -> None:
    core = StreamServiceCore(world(30))
    # bits 0..7 from o = 28: blocks 28, 29 exist, 30.. do not; n = 2 selects only existing ones
    full = cbor2.dumps({"f": 0, "l": BLOCK, "o": 28, "n": 2, "b": b"\xff"})
    assert [doc(o)["i"] for o in answer(core, full)] == [28, 29]
    past = doc(answer(core, cbor2.dumps({"c": "x", "f": 0, "l": BLOCK, "o": 28, "n": 3, "b": b"\xff"}))[0])
    assert (past["o"], past["m"], past["c"]) == ("InvalidRequest", OUT_OF_RANGE_MESSAGE, "x")
    # the 128 KiB cap (32 blocks of 4 KiB) stops the walk before the bits past the end (104 bits, 98 blocks)...
    core98 = StreamServiceCore(world(98))
    capped = cbor2.dumps({"f": 0, "l": BLOCK, "o": 0, "b": b"\xff" * 13})
    assert [doc(o)["i"] for o in answer(core98, capped)] == list(range(32))
    # ...and a walk that reaches a block past the end before a cap is rejected
    walk = doc(answer(core, cbor2.dumps({"f": 0, "l": BLOCK, "o": 0, "b": b"\xff" * 4}))[0])
    assert walk["o"] == "InvalidRequest"
    # nothing selected, and no bitmap with o + n past the end
    assert doc(answer(core, cbor2.dumps({"f": 0, "l": BLOCK, "o": 0, "n": 1, "b": b"\x00"}))[0])["o"] == (
        "InvalidRequest"
    )
    assert doc(answer(core, cbor2.dumps({"f": 0, "l": BLOCK, "o": 29, "n": 2}))[0])["o"] == "InvalidRequest"
    assert [doc(o)["i"] for o in answer(core, cbor2.dumps({"f": 0, "l": BLOCK, "o": 29, "n": 1}))] == [29]


@pytest.mark.parametrize(
    ("fmt", "payload", "code", "message"),
    [
        (
            "cbor",
            cbor2.dumps({"c": "tok", "f": 0, "l": 1024, "n": 1, "b": "0x01"}),
            "InvalidCbor",
            "Invalid CBOR message",
        ),
        ("cbor", cbor2.dumps({"c": "tok", "f": 0, "l": "1024"}), "InvalidCbor", "Invalid CBOR message"),
        ("cbor", cbor2.dumps({"c": "tok"}) + b"\x00", "InvalidCbor", "Invalid CBOR message"),
        ("json", b'{"c": "tok", "f": 0,', "InvalidJson", "Invalid JSON message"),
        ("json", b'["c", "tok"]', "InvalidJson", "Invalid JSON message"),
    ],
)
def test_undecodable_requests_answer_without_a_token_and_with_the_fixed_message(
    fmt: str, payload: bytes, code: str, message: str
) -> None:
    core = StreamServiceCore(world(2))
    outs = answer(core, payload, fmt)
    assert len(outs) == 1 and outs[0].kind is AnswerKind.REJECTED
    assert doc(outs[0]) == {"code": code, "o": code, "message": message, "m": message}


def test_a_bignum_stream_version_is_a_version_mismatch_not_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    core = StreamServiceCore(world(2))
    huge = 10**5000
    outs = answer(core, cbor2.dumps({"c": "big", "s": huge, "f": 0, "l": 1024, "n": 1}))
    rejection = doc(outs[0])
    assert (rejection["o"], rejection["c"]) == ("VersionMismatch", "big")
    assert core.stats().internal_errors == 0
    assert "Traceback" not in caplog.text
