"""Fuzzing the running service over MQTT: arbitrary request payloads, each answered exactly once, service alive.

Hypothesis (150 examples per test) generates raw bytes (on get and describe), maps of the known keys with values
of any type (CBOR definite/indefinite maps, JSON with NaN/Infinity), valid requests with a few bytes flipped,
inserted or deleted, and valid requests inside the file. Each is published by a raw paho client on the plain
listener, followed by a describe marker: everything that arrives before the marker's description is the request's
answer. It must be exactly one rejection with a documented code (never InternalError, a token echoed only when
it is the one sent), or the data messages of exactly the blocks docs/protocol.md 3 selects (computed here from the
request, independently of the service), with the file's bytes. The marker's own answer proves that the service
still serves. Rule -> test: docs/conformance.md.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from local_iot.runner import LocalIot

from .conformance_client import Answer, RawClient, StreamProbe, cbor_map, expect_blocks, expect_rejection
from .streams import make_stream

pytestmark = pytest.mark.e2e

STREAM = "conf_fuzz"
THING = "conf-fuzz-thing"
FILES = (random.Random(5).randbytes(40_000), random.Random(6).randbytes(300))  # 157 and 2 blocks of 256 B
CODES = {  # docs/protocol.md section 4, without InternalError: no request may make the service fail
    "InvalidTopic",
    "InvalidJson",
    "InvalidCbor",
    "InvalidRequest",
    "Unauthorized",
    "BlockSizeOutOfBounds",
    "OffsetOutOfBounds",
    "BlockCountLimitExceeded",
    "BlockBitmapLimitExceeded",
    "ResourceNotFound",
    "VersionMismatch",
    "ETagMismatch",
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_markers = itertools.count()


@pytest.fixture(scope="module")
def probe(local_iot: LocalIot) -> Iterator[StreamProbe]:
    make_stream(local_iot, STREAM, list(FILES))
    with RawClient.plain(local_iot.info, "conf-fuzz-client") as client:
        yield client.watch(THING, STREAM)


# ------------------------------------------------------------------------------------------------ strategies

BOUNDARIES = [-(2**64) - 1, -(2**63), -1, 0, 1, 2, 7, 8, 255, 256, 257, 512, 4096, 98304, 98305, 131072, 131073]
integers = st.one_of(st.sampled_from(BOUNDARIES), st.integers(-3, 12), st.integers(-(2**70), 2**70))
unicode = st.characters(exclude_categories=["Cs"])  # no lone surrogates: cbor2 cannot encode them
text = st.text(unicode, max_size=70)
values = st.one_of(
    integers,
    integers,  # twice: most values of the known keys should be of the right type
    text,
    st.binary(max_size=24),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.sampled_from("fl"), st.integers(0, 300), max_size=2),
)
keys = st.one_of(st.sampled_from("csflonb"), st.text(max_size=3))
junk = st.dictionaries(keys, values, max_size=3)  # wrong types, unknown keys

# Mostly well-typed requests near the limits (so that every stage of the checks and serving are reached), with
# junk merged in a third of the time.
FIELDS = {
    "c": text,
    "s": st.sampled_from([1, 1, 1, 0, 2, 65535]),
    "f": st.sampled_from([0, 0, 0, 0, 1, 1, 2, 255, 256, -1]),
    "l": st.one_of(st.sampled_from([255, 256, 256, 257, 512, 1024, 131072, 131073, 0]), st.integers(200, 2500)),
    "o": st.one_of(st.integers(-1, 9), st.sampled_from([98304, 98305])),
    "n": st.one_of(st.integers(-1, 9), st.sampled_from([98304, 98305, 600])),
    "b": st.one_of(st.binary(max_size=3), st.binary(max_size=3), st.just(b"\x01" + bytes(12287))),
}
well_typed = st.fixed_dictionaries({k: FIELDS[k] for k in "fl"}, optional={k: FIELDS[k] for k in "csonb"})
anything_missing = st.fixed_dictionaries({}, optional=FIELDS)
documents = st.builds(
    lambda base, extra: base | extra,
    st.one_of(well_typed, well_typed, anything_missing),
    st.one_of(st.just({}), st.just({}), junk),
)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed get requests inside the file: every one must be served exactly as docs/protocol.md 3 says."""
    file_id = draw(st.sampled_from([0, 0, 1]))
    size = len(FILES[file_id])
    block_size = draw(
        st.one_of(st.sampled_from([256, 257, 1000, 4096, 131072]), st.integers(256, 4096), st.integers(256, 131072))
    )
    total = -(-size // block_size)
    offset = draw(st.integers(0, total - 1))
    doc: dict[str, Any] = {"f": file_id, "l": block_size, "o": offset}
    if draw(st.booleans()):  # a bitmap of blocks inside the file, maybe with zero bytes after them, maybe capped
        wanted = draw(st.lists(st.integers(0, total - offset - 1), min_size=1, max_size=200, unique=True))
        bitmap = bytearray(max(wanted) // 8 + 1 + draw(st.integers(0, 2)))
        for bit in wanted:
            bitmap[bit >> 3] |= 1 << (bit & 7)
        doc["b"] = bytes(bitmap)
        if draw(st.booleans()):
            doc["n"] = draw(st.integers(1, 600))
    elif offset + 131072 // block_size > total or draw(st.booleans()):  # n, or the default n when it fits
        doc["n"] = draw(st.integers(1, total - offset))
    if draw(st.booleans()):
        doc["c"] = draw(st.text(unicode, max_size=16))
    if draw(st.booleans()):
        doc["s"] = 1
    return doc


def _json_value(value: Any, data: st.DataObject, forms: tuple[str, ...] = ("0x", "", "upper", "base64")) -> Any:
    """JSON has no byte strings: a bitmap-like hex string, with or without 0x, either case; or Base64."""
    if not isinstance(value, bytes):
        return value
    form = data.draw(st.sampled_from(forms))
    if form == "base64":
        return base64.b64encode(value).decode()
    digits = value.hex()
    return digits.upper() if form == "upper" else form + digits


# ------------------------------------------------------------------------------------------------- checking


def check_answer(probe: StreamProbe, fmt: str, payload: bytes, operation: str = "get") -> None:
    """Publish ``payload`` as a request; assert it got exactly one well-formed answer; the service serves on."""
    probe.send(operation, fmt, payload)
    answers = probe.until_marker(f"fuzz-{next(_markers)}")  # raises NoAnswer when the service stopped serving
    assert answers, f"no answer to {payload[:80]!r}"
    first = answers[0]
    if first.operation == "rejected":
        assert len(answers) == 1, [a.brief() for a in answers]
        doc = first.doc
        assert doc.get("o") in CODES, first.brief()
        token = doc.get("c")
        if token is not None:  # only ever the token that was sent, and only a valid one
            assert token == _sent(fmt, payload)["c"] and len(token.encode()) <= 64
        expect_rejection(first, fmt=fmt, code=doc["o"], token=token)
        event(f"{fmt} {operation}: {doc['o']}")
        return
    if operation == "describe":
        assert [a.operation for a in answers] == ["description"], [a.brief() for a in answers]
        assert set(first.doc) <= {"c", "s", "d", "r"} and first.doc["s"] == 1
    else:
        _check_data(answers, fmt, _sent(fmt, payload))
    event(f"{fmt} {operation}: served")


def _sent(fmt: str, payload: bytes) -> dict[str, Any]:
    """The request as a standard decoder reads it (only called when the service accepted it in some way)."""
    doc = cbor2.loads(payload) if fmt == "cbor" else json.loads(payload)
    assert isinstance(doc, dict)
    return doc


def _check_data(answers: list[Answer], fmt: str, request: dict[str, Any]) -> None:
    """Data answers: exactly the blocks docs/protocol.md 3 selects, with the file's bytes and the token echoed."""
    file_id, block_size = request["f"], request["l"]
    expect_blocks(
        answers,
        fmt=fmt,
        data=FILES[file_id],
        block_size=block_size,
        indices=_selected(request),
        file_id=file_id,
        token=request.get("c"),
    )


def _selected(request: dict[str, Any]) -> list[int]:
    """Which blocks a served request gets: n from o, or the bitmap's set bits lowest first; at most 128 KiB."""
    offset, count, cap = request.get("o", 0), request.get("n"), 131072 // request["l"]
    if "b" not in request:
        return list(range(offset, offset + min(cap if count is None else count, cap)))
    bitmap = request["b"]
    if isinstance(bitmap, str):  # JSON: hex digits, 0x optional
        bitmap = bytes.fromhex(bitmap[2:] if bitmap[:2] in ("0x", "0X") else bitmap)
    bits = [offset + 8 * k + j for k, byte in enumerate(bitmap) for j in range(8) if byte >> j & 1]
    return bits[: cap if count is None else min(count, cap)]


# ---------------------------------------------------------------------------------------------------- tests


@FUZZ
@given(
    payload=st.binary(max_size=96),
    fmt=st.sampled_from(["cbor", "json"]),
    operation=st.sampled_from(["get", "describe"]),
)
def test_arbitrary_bytes_are_answered_once(probe: StreamProbe, payload: bytes, fmt: str, operation: str) -> None:
    check_answer(probe, fmt, payload, operation)


@FUZZ
@given(doc=documents, indefinite=st.booleans())
def test_arbitrary_cbor_maps_are_answered_once(probe: StreamProbe, doc: dict[Any, Any], indefinite: bool) -> None:
    check_answer(probe, "cbor", cbor_map(doc, indefinite=indefinite))


@FUZZ
@given(doc=documents, data=st.data())
def test_arbitrary_json_objects_are_answered_once(probe: StreamProbe, doc: dict[str, Any], data: st.DataObject) -> None:
    converted = {key: _json_value(value, data) for key, value in doc.items()}
    check_answer(probe, "json", json.dumps(converted, allow_nan=True).encode())


@FUZZ
@given(doc=valid_requests(), fmt=st.sampled_from(["cbor", "json"]), indefinite=st.booleans(), data=st.data())
def test_valid_requests_get_exactly_the_selected_blocks(
    probe: StreamProbe, doc: dict[str, Any], fmt: str, indefinite: bool, data: st.DataObject
) -> None:
    if fmt == "cbor":
        payload = cbor_map(list(data.draw(st.permutations(list(doc.items())))), indefinite=indefinite)
    else:
        hex_forms = ("0x", "", "upper")
        payload = json.dumps({key: _json_value(value, data, hex_forms) for key, value in doc.items()}).encode()
    probe.send("get", fmt, payload)
    answers = probe.until_marker(f"valid-{next(_markers)}")
    expect_blocks(
        answers,
        fmt=fmt,
        data=FILES[doc["f"]],
        block_size=doc["l"],
        indices=_selected(doc),
        file_id=doc["f"],
        token=doc.get("c"),
    )
    event(f"{fmt}: {len(answers)} block(s)" if len(answers) < 3 else f"{fmt}: 3+ blocks")


@FUZZ
@given(
    doc=valid_requests(),
    fmt=st.sampled_from(["cbor", "json"]),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10_000), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_requests_are_answered_once(
    probe: StreamProbe, doc: dict[str, Any], fmt: str, edits: list[tuple[str, int, int]]
) -> None:
    """A valid request with a few bytes flipped, inserted or deleted: decoders see almost-valid input."""
    payload = bytearray(
        cbor2.dumps(doc) if fmt == "cbor" else json.dumps(doc | {"b": doc["b"].hex()} if "b" in doc else doc).encode()
    )
    for kind, position, byte in edits:
        at = position % (len(payload) + 1)
        if kind == "insert":
            payload[at:at] = bytes([byte])
        elif payload and kind == "flip":
            payload[at % len(payload)] ^= byte or 1
        elif payload:
            del payload[at % len(payload)]
    check_answer(probe, fmt, bytes(payload))


def test_service_still_serves_after_fuzzing(local_iot: LocalIot, probe: StreamProbe) -> None:
    """Runs after the fuzz tests (file order): a valid describe and get are answered exactly, no internal error."""
    description = probe.ask_one("describe", "cbor", cbor2.dumps({"c": "alive"}))
    assert description.doc == {"c": "alive", "s": 1, "d": "", "r": [{"f": 0, "z": 40_000}, {"f": 1, "z": 300}]}
    answers = probe.ask("get", "json", b'{"c":"alive","f":0,"l":256,"o":6,"n":2}', 2)
    expect_blocks(answers, fmt="json", data=FILES[0], block_size=256, indices=[6, 7], token="alive")
    assert probe.until_marker("last") == []
    assert local_iot.service is not None
    assert local_iot.service.stats().core.internal_errors == 0
