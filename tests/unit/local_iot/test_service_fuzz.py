"""Hypothesis: any payload on a request topic is answered (rejection, description or data) and never raises."""

from __future__ import annotations

import json

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local_iot.memory_catalog import InMemoryCatalog
from local_iot.service import AnswerKind, StreamServiceCore

ROLE = "arn:aws:iam::123456789012:role/r"


def _core() -> StreamServiceCore:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    catalog.put_object("b", "k", bytes(range(256)) * 40)  # 10240 bytes
    catalog.create_stream("s1", [(0, "b", "k", None), (1, "b", "k", None)], ROLE)
    return StreamServiceCore(catalog)


CORE = _core()
ints = st.one_of(st.integers(-5, 300), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 256, 1024, 131072]))
values = st.one_of(
    ints,
    st.text(max_size=80),
    st.binary(max_size=40),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=3),
)
requests = st.dictionaries(st.sampled_from(["c", "s", "f", "l", "o", "n", "b", "x"]), values, max_size=8)


def _check(op: str, fmt: str, payload: bytes) -> None:
    outs = CORE.handle(f"$aws/things/fuzz/streams/s1/{op}/{fmt}", payload, None, 0.0)
    assert outs, "every request gets an answer"
    kinds = {o.kind for o in outs}
    assert len(kinds) == 1
    if AnswerKind.REJECTED in kinds or AnswerKind.DESCRIPTION in kinds:
        assert len(outs) == 1
    assert all(o.topic.endswith(f"/{o.kind.value}/{fmt}") for o in outs)
    assert all(o.payload for o in outs)
    assert not any(o.code == "InternalError" for o in outs), "a payload must never trip a bug"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["get", "describe"]), fmt=st.sampled_from(["cbor", "json"]), payload=st.binary(max_size=64))
def test_random_bytes(op: str, fmt: str, payload: bytes) -> None:
    _check(op, fmt, payload)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["get", "describe"]), doc=requests)
def test_random_cbor_maps(op: str, doc: dict[str, object]) -> None:
    _check(op, "cbor", cbor2.dumps(doc))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(["get", "describe"]), doc=requests)
def test_random_json_objects(op: str, doc: dict[str, object]) -> None:
    json_doc = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in doc.items()}
    _check(op, "json", json.dumps(json_doc).encode())


@settings(max_examples=300, deadline=None)
@given(
    f=st.integers(0, 2),
    size=st.sampled_from([256, 1000, 1024, 4096, 131072]),
    o=st.integers(0, 50),
    n=st.one_of(st.none(), st.integers(1, 600)),
    b=st.one_of(st.none(), st.binary(max_size=8)),
)
def test_well_formed_gets_are_data_or_a_documented_rejection(
    f: int, size: int, o: int, n: int | None, b: bytes | None
) -> None:
    doc: dict[str, object] = {"f": f, "l": size, "o": o}
    if n is not None:
        doc["n"] = n
    if b is not None:
        doc["b"] = b
    outs = CORE.handle("$aws/things/fuzz/streams/s1/get/cbor", cbor2.dumps(doc), None, 0.0)
    if outs[0].kind is AnswerKind.DATA:
        indices = [cbor2.loads(o.payload)["i"] for o in outs]
        assert indices == sorted(set(indices))
        assert sum(len(cbor2.loads(o.payload)["p"]) for o in outs) <= 131072
        assert len(outs) <= (n or 131072)
        assert all(i * size < 10240 for i in indices)
    else:
        assert outs[0].code in ("InvalidRequest", "ResourceNotFound")


def test_service_still_answers_after_fuzzing() -> None:
    outs = CORE.handle("$aws/things/fuzz/streams/s1/get/cbor", cbor2.dumps({"f": 0, "l": 1024, "n": 2}), None, 0.0)
    assert [cbor2.loads(o.payload)["i"] for o in outs] == [0, 1]
