"""Conformance: requests exactly as AWS's embedded C "MQTT file streams" library sends them, over the real broker.

The library sends every CBOR GetStream with a fixed placeholder bitmap (the ASCII bytes of "MQ==": bits 0, 2, 3,
6, 8, 12, 14, 16, 18-21, 24, 26-29 set), ``n = 1`` and ``o`` = the wanted block. The emulator rule **select
first, then range-check** (docs/protocol.md 4) serves every block of files of any length; the earlier rule
("any set bit past the end is InvalidRequest") stopped every download 29 blocks before the end.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import cbor2
import pytest

from local_iot.runner import LocalIot

from .conformance_client import RawClient, StreamProbe, expect_rejection
from .streams import make_stream

pytestmark = pytest.mark.e2e

STREAM = "conf_library"
THING = "conf-library-thing"
BLOCK = 4096
LENGTHS = (1, 25, 29, 30, 98)  # blocks per file; file id = index
FILES = [random.Random(n).randbytes((n - 1) * BLOCK + 777) for n in LENGTHS]
OUT_OF_RANGE = "The data requested is out of the range of data available."
#: Byte for byte what the library publishes for block 0 of file 0 with 4 KiB blocks (token "rdy").
EXACT = bytes.fromhex("a6 61 63 63 72 64 79 61 66 00 61 6c 19 10 00 61 6f 00 61 62 44 4d 51 3d 3d 61 6e 01")


def library_request(file_id: int, block: int) -> bytes:
    """EXACT with f and o replaced (CBOR unsigned ints), keys in the library's order."""
    f_at, o_at = EXACT.index(b"af") + 2, EXACT.index(b"ao") + 2

    def uint(value: int) -> bytes:
        return bytes([value]) if value < 24 else bytes([0x18, value])

    return EXACT[:f_at] + uint(file_id) + EXACT[f_at + 1 : o_at] + uint(block) + EXACT[o_at + 1 :]


@pytest.fixture(scope="module")
def probe(local_iot: LocalIot) -> Iterator[StreamProbe]:
    make_stream(local_iot, STREAM, FILES)
    with RawClient.plain(local_iot.info, "conf-library-client") as client:
        yield client.watch(THING, STREAM)


def test_the_helper_rebuilds_the_exact_bytes() -> None:
    assert library_request(0, 0) == EXACT
    assert cbor2.loads(library_request(4, 97)) == {"c": "rdy", "f": 4, "l": 4096, "o": 97, "b": b"MQ==", "n": 1}


@pytest.mark.parametrize("file_id", range(len(LENGTHS)), ids=[f"{n}-blocks" for n in LENGTHS])
def test_the_library_downloads_every_block(probe: StreamProbe, file_id: int) -> None:
    blocks = LENGTHS[file_id]
    data = FILES[file_id]
    got = bytearray()
    for wanted in range(blocks):
        (answer,) = probe.ask("get", "cbor", library_request(file_id, wanted), 1)
        assert answer.operation == "data", answer.brief()
        doc = answer.doc
        assert (doc["c"], doc["f"], doc["i"]) == ("rdy", file_id, wanted)
        got += doc["p"]
    assert bytes(got) == data
    # asking for the block after the last one is out of range, placeholder bitmap or not
    end = probe.ask_one("get", "cbor", library_request(file_id, blocks))
    assert expect_rejection(end, fmt="cbor", code="InvalidRequest", token="rdy") == OUT_OF_RANGE


def test_a_json_request_shaped_like_the_library(probe: StreamProbe) -> None:
    """Spaces after the colons, no token, keys s, f, l, o, n."""
    (answer,) = probe.ask("get", "json", b'{"s": 1,"f": 0,"l": 1024,"o": 0,"n": 1}', 1)
    assert answer.operation == "data"
    assert answer.doc["i"] == 0 and "c" not in answer.doc


def test_invalid_cbor_answer_is_the_captured_one(probe: StreamProbe) -> None:
    """A text-string bitmap with a token: AWS answers without the token and with a fixed message."""
    payload = cbor2.dumps({"c": "rdy", "f": 0, "l": 4096, "o": 0, "b": "MQ==", "n": 1})
    answer = probe.ask_one("get", "cbor", payload)
    assert answer.doc == {
        "code": "InvalidCbor",
        "o": "InvalidCbor",
        "message": "Invalid CBOR message",
        "m": "Invalid CBOR message",
    }


def test_a_bignum_stream_version_is_a_version_mismatch(probe: StreamProbe) -> None:
    """A CBOR bignum (tag 2) as `s` is a wrong version like any other, not an InternalError."""
    payload = cbor2.dumps({"c": "big", "s": 10**5000, "f": 0, "l": 4096, "o": 0, "n": 1})
    answer = probe.ask_one("get", "cbor", payload)
    expect_rejection(answer, fmt="cbor", code="VersionMismatch", token="big")
