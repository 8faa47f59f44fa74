"""Conformance, docs/protocol.md section 4: every error code a request alone can cause, and the check order.

One table of (topic, raw payload, expected code, expected echoed token): each case is published by a raw paho
client on the plain listener, and exactly one answer must come, on ``rejected/<format>``, with exactly the keys
and values of docs/protocol.md section 3. Codes that depend on the state of the control plane (roles, S3 objects,
stream versions) are in test_conformance_streams.py. Rule -> test: docs/conformance.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest

from local_iot.runner import LocalIot

from .conformance_client import Answer, ClientError, RawClient, StreamProbe, expect_blocks, expect_rejection
from .streams import make_stream

pytestmark = pytest.mark.e2e

STREAM = "conf_err"
MISSING = "conf_err_absent"  # never created
THING = "conf-err-thing"
DATA = bytes(range(256)) * 11 + bytes(184)  # 3000 bytes: 12 blocks of 256 B (the last 184 B)
OUT_OF_RANGE = "The data requested is out of the range of data available."
BIG_BITMAP = b"\x01" + bytes(12287)  # 12288 bytes: one too many
LONG_TOKEN = "t" * 65
WIDE_TOKEN = "\u00e9" * 33  # 33 characters, 66 UTF-8 bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Case:
    """One request and the one rejection it must get."""

    id: str
    suffix: str  # topic after the stream id: "<operation>/<format>"
    payload: bytes
    code: str
    token: str | None = None  # the token the rejection must echo (None: no c/clientToken at all)
    reply: str  # format of the rejected topic
    stream: str = STREAM
    message: str | None = None  # exact message, where docs/protocol.md quotes it


def _json(doc: dict[str, Any]) -> bytes:
    """Compact JSON; a bytes value (a bitmap) becomes the documented hex string with 0x."""
    return json.dumps({k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in doc.items()}).encode()


def both(
    id: str, doc: dict[str, Any], code: str, token: str | None = None, *, op: str = "get", **extra: Any
) -> list[Case]:
    """The same request document in CBOR and in JSON."""
    return [
        Case(id=f"{id}-{fmt}", suffix=f"{op}/{fmt}", payload=enc(doc), code=code, token=token, reply=fmt, **extra)
        for fmt, enc in (("cbor", cbor2.dumps), ("json", _json))
    ]


#: AWS answers these with a fixed message and no client token, even when one was sent (a captured real answer).
UNDECODABLE = {"InvalidCbor": "Invalid CBOR message", "InvalidJson": "Invalid JSON message"}


def raw(id: str, fmt: str, payload: bytes, code: str, token: str | None = None, **extra: Any) -> Case:
    """One raw request; ``token`` is what the request sent (not echoed by InvalidCbor/InvalidJson answers)."""
    extra.setdefault("suffix", f"get/{fmt}")
    extra.setdefault("reply", fmt)
    if code in UNDECODABLE:
        token = None
        extra.setdefault("message", UNDECODABLE[code])
    return Case(id=id, payload=payload, code=code, token=token, **extra)


GOOD = {"f": 0, "l": 256, "o": 0, "n": 1}
VALID_CBOR = cbor2.dumps({"c": "v", **GOOD})

CASES: list[Case] = [
    # InvalidTopic: answered on rejected/<format> of the same stream, JSON when the format is unknown
    raw("topic-bad-operation-cbor", "cbor", VALID_CBOR, "InvalidTopic", suffix="bogus/cbor"),
    raw("topic-bad-operation-json", "json", b"{}", "InvalidTopic", suffix="fetch/json"),
    raw("topic-unknown-format", "json", VALID_CBOR, "InvalidTopic", suffix="get/xml"),
    raw("topic-uppercase-format", "json", VALID_CBOR, "InvalidTopic", suffix="get/CBOR"),
    raw("topic-no-format", "json", b"{}", "InvalidTopic", suffix="describe"),
    # InvalidJson
    raw("json-garbage", "json", b"{garbage", "InvalidJson"),
    raw("json-array", "json", b"[0,256,0,1]", "InvalidJson"),
    raw("json-string", "json", b'"f"', "InvalidJson"),
    raw("json-number", "json", b"42", "InvalidJson"),
    raw("json-null", "json", b"null", "InvalidJson"),
    raw("json-nan", "json", b'{"c":"x","f":0,"l":NaN,"n":1}', "InvalidJson"),
    raw("json-infinity", "json", b'{"c":"x","f":0,"l":256,"n":-Infinity}', "InvalidJson"),
    raw("json-empty", "json", b"", "InvalidJson"),
    raw("json-not-utf8", "json", b'{"c":"\xff","f":0,"l":256,"n":1}', "InvalidJson"),
    raw("json-two-documents", "json", b'{"f":0}{"l":256}', "InvalidJson"),
    raw("json-describe-garbage", "json", b"{,}", "InvalidJson", suffix="describe/json"),
    # InvalidCbor
    raw("cbor-garbage", "cbor", b"\xff\xfe garbage", "InvalidCbor"),
    raw("cbor-trailing-bytes", "cbor", VALID_CBOR + b"\x00", "InvalidCbor"),
    raw("cbor-truncated", "cbor", VALID_CBOR[:-1], "InvalidCbor"),
    raw("cbor-empty", "cbor", b"", "InvalidCbor"),
    raw("cbor-array", "cbor", cbor2.dumps([0, 256, 0, 1]), "InvalidCbor"),
    raw("cbor-text", "cbor", cbor2.dumps("f"), "InvalidCbor"),
    raw("cbor-text-bitmap", "cbor", cbor2.dumps({"c": "tb", "f": 0, "l": 256, "b": "130080"}), "InvalidCbor", "tb"),
    raw("cbor-float-l", "cbor", cbor2.dumps({"c": "fl", "f": 0, "l": 256.0, "n": 1}), "InvalidCbor", "fl"),
    raw("cbor-float-n", "cbor", cbor2.dumps({"c": "fn", "f": 0, "l": 256, "n": 1.0}), "InvalidCbor", "fn"),
    raw("cbor-bool-f", "cbor", cbor2.dumps({"c": "bf", "f": False, "l": 256, "n": 1}), "InvalidCbor", "bf"),
    raw("cbor-null-o", "cbor", cbor2.dumps({"c": "no", "f": 0, "l": 256, "o": None}), "InvalidCbor", "no"),
    raw("cbor-text-s", "cbor", cbor2.dumps({"c": "ts", "s": "1", "f": 0, "l": 256, "n": 1}), "InvalidCbor", "ts"),
    raw("cbor-int-token", "cbor", cbor2.dumps({"c": 5, **GOOD}), "InvalidCbor"),
    raw("cbor-bytes-token", "cbor", cbor2.dumps({"c": b"tok", **GOOD}), "InvalidCbor"),
    raw("cbor-null-token", "cbor", cbor2.dumps({"c": None, **GOOD}), "InvalidCbor"),
    raw("cbor-describe-garbage", "cbor", b"\x1f", "InvalidCbor", suffix="describe/cbor"),
    raw("cbor-describe-trailing", "cbor", b"\xa0\xa0", "InvalidCbor", suffix="describe/cbor"),
    # InvalidRequest
    *both("missing-f", {"c": "mf", "l": 256, "n": 1}, "InvalidRequest", "mf"),
    *both("missing-l", {"c": "ml", "f": 0, "n": 1}, "InvalidRequest", "ml"),
    *both("token-65-bytes", {"c": LONG_TOKEN, **GOOD}, "InvalidRequest"),
    *both("token-66-utf8-bytes", {"c": WIDE_TOKEN, **GOOD}, "InvalidRequest"),
    *both("describe-token-65-bytes", {"c": LONG_TOKEN}, "InvalidRequest", op="describe"),
    raw("json-int-token", "json", b'{"c":5,"f":0,"l":256,"n":1}', "InvalidRequest"),
    raw("json-null-token", "json", b'{"c":null,"f":0,"l":256,"n":1}', "InvalidRequest"),
    raw("json-describe-int-token", "json", b'{"c":7}', "InvalidRequest", suffix="describe/json"),
    raw("json-string-l", "json", b'{"c":"j1","f":0,"l":"256","n":1}', "InvalidRequest", "j1"),
    raw("json-float-l", "json", b'{"c":"j2","f":0,"l":256.0,"n":1}', "InvalidRequest", "j2"),
    raw("json-exponent-l", "json", b'{"c":"j3","f":0,"l":2.56e2,"n":1}', "InvalidRequest", "j3"),
    raw("json-bool-f", "json", b'{"c":"j4","f":false,"l":256,"n":1}', "InvalidRequest", "j4"),
    raw("json-null-o", "json", b'{"c":"j5","f":0,"l":256,"o":null,"n":1}', "InvalidRequest", "j5"),
    raw("json-float-n", "json", b'{"c":"j6","f":0,"l":256,"n":1.5}', "InvalidRequest", "j6"),
    raw("json-string-s", "json", b'{"c":"j7","s":"1","f":0,"l":256,"n":1}', "InvalidRequest", "j7"),
    raw("json-number-bitmap", "json", b'{"c":"j8","f":0,"l":256,"b":130080}', "InvalidRequest", "j8"),
    raw("json-odd-hex-bitmap", "json", b'{"c":"j9","f":0,"l":256,"b":"0x130"}', "InvalidRequest", "j9"),
    raw("json-non-hex-bitmap", "json", b'{"c":"ja","f":0,"l":256,"b":"0xzz"}', "InvalidRequest", "ja"),
    *both("n-zero", {"c": "n0", "f": 0, "l": 256, "n": 0}, "InvalidRequest", "n0"),
    *both(
        "blocks-past-end", {"c": "pe", "f": 0, "l": 256, "o": 11, "n": 2}, "InvalidRequest", "pe", message=OUT_OF_RANGE
    ),
    *both(
        "offset-at-end", {"c": "oe", "f": 0, "l": 256, "o": 12, "n": 1}, "InvalidRequest", "oe", message=OUT_OF_RANGE
    ),
    *both("default-n-past-end", {"c": "dn", "f": 0, "l": 256}, "InvalidRequest", "dn", message=OUT_OF_RANGE),
    *both("max-offset-past-end", {"c": "mo", "f": 0, "l": 256, "o": 98304, "n": 1}, "InvalidRequest", "mo"),
    *both("max-count-past-end", {"c": "mn", "f": 0, "l": 256, "n": 98304}, "InvalidRequest", "mn"),
    *both(
        "bitmap-bit-past-end",
        {"c": "bp", "f": 0, "l": 256, "o": 8, "b": b"\x10"},
        "InvalidRequest",
        "bp",
        message=OUT_OF_RANGE,
    ),
    *both("bitmap-all-zero", {"c": "bz", "f": 0, "l": 256, "o": 0, "b": b"\x00\x00"}, "InvalidRequest", "bz"),
    *both("bitmap-empty", {"c": "be", "f": 0, "l": 256, "o": 0, "b": b""}, "InvalidRequest", "be"),
    # BlockSizeOutOfBounds, OffsetOutOfBounds, BlockCountLimitExceeded, BlockBitmapLimitExceeded
    *both("l-255", {"c": "l1", "f": 0, "l": 255, "n": 1}, "BlockSizeOutOfBounds", "l1"),
    *both("l-131073", {"c": "l2", "f": 0, "l": 131073, "n": 1}, "BlockSizeOutOfBounds", "l2"),
    *both("l-negative", {"c": "l3", "f": 0, "l": -4096, "n": 1}, "BlockSizeOutOfBounds", "l3"),
    *both("o-98305", {"c": "o1", "f": 0, "l": 256, "o": 98305, "n": 1}, "OffsetOutOfBounds", "o1"),
    *both("o-negative", {"c": "o2", "f": 0, "l": 256, "o": -1, "n": 1}, "OffsetOutOfBounds", "o2"),
    *both("n-98305", {"c": "n1", "f": 0, "l": 256, "n": 98305}, "BlockCountLimitExceeded", "n1"),
    *both("n-negative", {"c": "n2", "f": 0, "l": 256, "n": -1}, "BlockCountLimitExceeded", "n2"),
    *both("bitmap-12288-bytes", {"c": "b1", "f": 0, "l": 256, "b": BIG_BITMAP}, "BlockBitmapLimitExceeded", "b1"),
    # ResourceNotFound (stream or file id; missing S3 objects: test_conformance_streams.py)
    *both("unknown-stream", {"c": "us", **GOOD}, "ResourceNotFound", "us", stream=MISSING),
    *both("unknown-stream-describe", {"c": "ud"}, "ResourceNotFound", "ud", op="describe", stream=MISSING),
    *both("unknown-file-id", {"c": "uf", "f": 9, "l": 256, "n": 1}, "ResourceNotFound", "uf"),
    *both("unknown-file-id-255", {"c": "ug", "f": 255, "l": 256, "n": 1}, "ResourceNotFound", "ug"),
    # VersionMismatch without any update (the stream is at version 1)
    *both("version-2-of-1", {"c": "vm", "s": 2, **GOOD}, "VersionMismatch", "vm"),
]

# The documented check order: topic, decode, token, field types and presence, l, o, n, b bounds, stream exists,
# version, file id, (role/S3 access, ETag: test_conformance_streams.py), range. Each request has two faults and
# must get the code of the earlier check.
ORDER: list[Case] = [
    raw("topic-before-decode", "cbor", b"\xff\xfe", "InvalidTopic", suffix="bogus/cbor"),
    raw("topic-before-decode-json", "json", b"{", "InvalidTopic", suffix="get/bin"),
    raw("decode-before-token", "cbor", cbor2.dumps({"c": LONG_TOKEN}) + b"\x00", "InvalidCbor", suffix="get/cbor"),
    raw("token-before-types", "cbor", cbor2.dumps({"c": LONG_TOKEN, "f": 0, "l": 256.0}), "InvalidRequest"),
    raw("types-before-presence", "cbor", cbor2.dumps({"c": "tp", "l": "256"}), "InvalidCbor", "tp"),
    *both("presence-before-l", {"c": "pl", "l": 100, "n": 1}, "InvalidRequest", "pl"),
    *both("l-before-o", {"c": "lo", "f": 0, "l": 255, "o": 98305, "n": 1}, "BlockSizeOutOfBounds", "lo"),
    *both("o-before-n", {"c": "on", "f": 0, "l": 256, "o": -1, "n": 98305}, "OffsetOutOfBounds", "on"),
    *both("o-before-n-zero", {"c": "oz", "f": 0, "l": 256, "o": 98305, "n": 0}, "OffsetOutOfBounds", "oz"),
    *both("n-before-b", {"c": "nb", "f": 0, "l": 256, "n": 98305, "b": BIG_BITMAP}, "BlockCountLimitExceeded", "nb"),
    *both("n-zero-before-b", {"c": "zb", "f": 0, "l": 256, "n": 0, "b": BIG_BITMAP}, "InvalidRequest", "zb"),
    *both(
        "b-before-stream",
        {"c": "bs", "f": 0, "l": 256, "b": BIG_BITMAP},
        "BlockBitmapLimitExceeded",
        "bs",
        stream=MISSING,
    ),
    *both(
        "o-before-stream", {"c": "os", "f": 0, "l": 256, "o": 98305, "n": 1}, "OffsetOutOfBounds", "os", stream=MISSING
    ),
    *both("stream-before-version", {"c": "sv", "s": 99, **GOOD}, "ResourceNotFound", "sv", stream=MISSING),
    *both("version-before-file-id", {"c": "vf", "s": 99, "f": 9, "l": 256, "n": 1}, "VersionMismatch", "vf"),
    *both("version-before-range", {"c": "vr", "s": 99, "f": 0, "l": 256, "o": 500, "n": 1}, "VersionMismatch", "vr"),
    *both("file-id-before-range", {"c": "fr", "f": 9, "l": 256, "o": 500, "n": 1}, "ResourceNotFound", "fr"),
]


@pytest.fixture(scope="module")
def client(local_iot: LocalIot) -> Iterator[RawClient]:
    make_stream(local_iot, STREAM, DATA)
    with RawClient.plain(local_iot.info, "conf-err-client") as raw_client:
        yield raw_client


@pytest.fixture(scope="module")
def probes(client: RawClient) -> dict[str, StreamProbe]:
    return {stream: client.watch(THING, stream) for stream in (STREAM, MISSING)}


def answers_to(probes: dict[str, StreamProbe], case: Case) -> list[Answer]:
    """Publish the case's request; every answer it got (a describe marker on the known stream ends the wait)."""
    probe = probes[case.stream]
    probe.client.publish(f"$aws/things/{THING}/streams/{case.stream}/{case.suffix}", case.payload)
    answers = probes[STREAM].until_marker(f"after-{case.id}")
    if case.stream != STREAM:  # one connection, one service: the other stream's answer arrived before the marker
        assert answers == [], f"answers on {STREAM}: {answers}"
        answers = probe.drain()
    return answers


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_code(probes: dict[str, StreamProbe], case: Case) -> None:
    answers = answers_to(probes, case)
    assert len(answers) == 1, f"expected exactly one rejection, got {[a.brief() for a in answers]}"
    (answer,) = answers
    assert answer.topic == probes[case.stream].topic("rejected", case.reply)
    message = expect_rejection(answer, fmt=case.reply, code=case.code, token=case.token)
    if case.message is not None:
        assert message == case.message


@pytest.mark.parametrize("case", ORDER, ids=[c.id for c in ORDER])
def test_check_order(probes: dict[str, StreamProbe], case: Case) -> None:
    answers = answers_to(probes, case)
    assert len(answers) == 1, f"expected exactly one rejection, got {[a.brief() for a in answers]}"
    expect_rejection(answers[0], fmt=case.reply, code=case.code, token=case.token)


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES + ORDER]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("fmt", ["cbor", "json"])
def test_largest_bitmap_is_accepted(probes: dict[str, StreamProbe], fmt: str) -> None:
    """12287 bytes is the largest bitmap: its one set bit (block 3) is served."""
    bitmap = b"\x08" + bytes(12286)
    payload = cbor2.dumps({"f": 0, "l": 256, "b": bitmap}) if fmt == "cbor" else _json({"f": 0, "l": 256, "b": bitmap})
    answers = probes[STREAM].ask("get", fmt, payload)
    expect_blocks(answers, fmt=fmt, data=DATA, block_size=256, indices=[3])
    assert probes[STREAM].until_marker("after-largest") == []


@pytest.mark.parametrize("fmt", ["cbor", "json"])
def test_service_still_serves_after_the_table(probes: dict[str, StreamProbe], fmt: str) -> None:
    payload = cbor2.dumps({"c": "ok", **GOOD, "o": 11}) if fmt == "cbor" else _json({"c": "ok", **GOOD, "o": 11})
    expect_blocks(probes[STREAM].ask("get", fmt, payload), fmt=fmt, data=DATA, block_size=256, indices=[11], token="ok")
    assert probes[STREAM].until_marker("after-serves") == []


@pytest.mark.parametrize("fmt", ["cbor", "json"])
def test_zero_bits_past_the_end_are_allowed(probes: dict[str, StreamProbe], fmt: str) -> None:
    """Only set bits must stay inside the file: a bitmap longer than the file with zeros there is fine."""
    for offset, bitmap, index in ((0, b"\x01\x00\x00\x00", 0), (8, b"\x08\x00", 11)):
        doc = {"f": 0, "l": 256, "o": offset, "b": bitmap}
        payload = cbor2.dumps(doc) if fmt == "cbor" else _json(doc)
        expect_blocks(probes[STREAM].ask("get", fmt, payload), fmt=fmt, data=DATA, block_size=256, indices=[index])
    assert probes[STREAM].until_marker("after-zero-bits") == []


def test_request_over_128_kb_never_reaches_the_service(local_iot: LocalIot) -> None:
    """A 140000-byte request: AWS drops it (and may close the connection); it must not be answered."""
    with RawClient.plain(local_iot.info, "conf-err-big") as big:
        probe = big.watch("conf-err-big-thing", STREAM)  # its own thing: the module's client sees none of this
        big.publish(probe.topic("get", "cbor"), cbor2.dumps({"f": 0, "l": 256, "n": 1}) + bytes(140_000), wait=False)
        try:
            answers = probe.until_marker("after-big")
        except ClientError:  # the broker closed the connection, as AWS may: nothing can have been answered
            assert not big.disconnects.empty()
            return
        assert answers == [], [a.brief() for a in answers]
