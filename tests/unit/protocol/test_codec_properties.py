"""Property tests: every valid message round-trips in both formats and both roles; hostile input only ever raises
the documented errors (RequestRejected on the service side, RemoteProtocolError on the device side)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sim.protocol import (
    DataBlock,
    DataLayout,
    DescribeStreamRequest,
    ErrorCode,
    FileInfo,
    Format,
    GetStreamRequest,
    Operation,
    Rejection,
    RemoteProtocolError,
    RequestRejected,
    StreamDescription,
    decode_answer,
    decode_data_block,
    decode_request,
    encode_answer,
    encode_data_block,
    encode_request,
)
from device_sim.protocol._device import _aws_layout_block, decode_data_block_general

CBOR, JSON = Format.CBOR, Format.JSON
formats = st.sampled_from(list(Format))
text = st.text(st.characters(codec="utf-8"), max_size=80)
tokens = st.none() | st.text(st.characters(codec="utf-8"), max_size=64).filter(lambda t: len(t.encode()) <= 64)

get_requests = st.builds(
    GetStreamRequest,
    client_token=tokens,
    stream_version=st.none() | st.integers(0, 65535),
    file_id=st.integers(0, 255),
    block_size=st.integers(256, 131072),
    offset=st.integers(0, 98304),
    number_of_blocks=st.none() | st.integers(1, 98304),
    bitmap=st.none() | st.binary(max_size=64) | st.just(b"\x80" * 12287),
)
describe_requests = st.builds(DescribeStreamRequest, client_token=tokens)


@st.composite
def descriptions(draw: st.DrawFn) -> StreamDescription:
    ids = draw(st.lists(st.integers(0, 255), unique=True, max_size=50))
    files = tuple(FileInfo(file_id=i, file_size=draw(st.integers(0, 2**40))) for i in ids)
    return StreamDescription(
        client_token=draw(tokens), stream_version=draw(st.integers(0, 65535)), description=draw(text), files=files
    )


@st.composite
def data_blocks(draw: st.DrawFn) -> DataBlock:
    payload = draw(st.binary(max_size=2048))
    return DataBlock(
        client_token=draw(tokens),
        file_id=draw(st.integers(0, 255)),
        block_index=draw(st.integers(0, 2**40)),
        block_length=len(payload),
        payload=payload,
    )


rejections = st.builds(Rejection, client_token=tokens, code=text, message=text)


# ------------------------------------------------------------------------------------------ round trips


@given(request=get_requests | describe_requests, fmt=formats)
def test_requests_round_trip(request: GetStreamRequest | DescribeStreamRequest, fmt: Format) -> None:
    operation = Operation.GET if isinstance(request, GetStreamRequest) else Operation.DESCRIBE
    assert decode_request(operation, encode_request(request, fmt), fmt) == request


@given(answer=descriptions() | data_blocks() | rejections, fmt=formats)
def test_answers_round_trip(answer: StreamDescription | DataBlock | Rejection, fmt: Format) -> None:
    operation = {StreamDescription: Operation.DESCRIPTION, DataBlock: Operation.DATA, Rejection: Operation.REJECTED}
    assert decode_answer(operation[type(answer)], encode_answer(answer, fmt), fmt) == answer


@given(block=data_blocks(), fmt=formats)
def test_data_fast_paths_agree_with_the_general_path(block: DataBlock, fmt: Format) -> None:
    fast = encode_data_block(fmt, block.file_id, block.block_index, block.payload, block.client_token)
    assert fast == encode_answer(block, fmt)
    assert decode_data_block(fast, fmt) == block


@given(block=data_blocks())
def test_cbor_data_block_matches_cbor2_indefinite_encoding(block: DataBlock) -> None:
    doc: dict[str, Any] = {} if block.client_token is None else {"c": block.client_token}
    doc.update(f=block.file_id, i=block.block_index, l=block.block_length, p=block.payload)
    expected = cbor2.dumps(doc, indefinite_containers=True)
    assert encode_data_block(CBOR, block.file_id, block.block_index, block.payload, block.client_token) == expected


def _wire_doc(request: GetStreamRequest, fmt: Format) -> dict[str, Any]:
    doc: dict[str, Any] = {"f": request.file_id, "l": request.block_size, "o": request.offset}
    for key, value in (("c", request.client_token), ("s", request.stream_version), ("n", request.number_of_blocks)):
        if value is not None:
            doc[key] = value
    if request.bitmap is not None:
        doc["b"] = request.bitmap if fmt is CBOR else request.bitmap.hex().upper()
    return doc


@given(request=get_requests, fmt=formats, data=st.data(), indefinite=st.booleans())
def test_any_key_order_and_map_kind_decodes_the_same(
    request: GetStreamRequest, fmt: Format, data: st.DataObject, indefinite: bool
) -> None:
    doc = _wire_doc(request, fmt)
    shuffled = dict(data.draw(st.permutations(list(doc.items()))))
    shuffled["zz"] = [1, {"x": None}]  # an unknown key
    if fmt is CBOR:
        payload = cbor2.dumps(shuffled, indefinite_containers=indefinite)
    else:
        payload = json.dumps(shuffled, indent=2 if indefinite else None).encode()
    assert decode_request(Operation.GET, payload, fmt) == request


@given(request=get_requests | describe_requests, fmt=formats, data=st.data())
def test_every_strict_prefix_of_a_request_is_undecodable(
    request: GetStreamRequest | DescribeStreamRequest, fmt: Format, data: st.DataObject
) -> None:
    payload = encode_request(request, fmt)
    cut = data.draw(st.integers(0, len(payload) - 1))
    operation = Operation.GET if isinstance(request, GetStreamRequest) else Operation.DESCRIBE
    try:
        decode_request(operation, payload[:cut], fmt)
    except RequestRejected as error:
        assert error.code is (ErrorCode.INVALID_CBOR if fmt is CBOR else ErrorCode.INVALID_JSON)
        assert error.client_token is None
    else:
        raise AssertionError(f"prefix {payload[:cut]!r} was accepted")


# --------------------------------------------------------------------------------------------------- fuzz

ALL_OPERATIONS = list(Operation)
KEYS = st.sampled_from([*"csflonbdrzipm", "code", "message", "clientToken"]) | st.text(max_size=3)
NEAR_BOUNDS = st.sampled_from([0, 1, 255, 256, 4096, 65535, 98304, 98305, 131072, 131073, 12288, -1, 2**64, -(2**64)])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | NEAR_BOUNDS
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from([cbor2.undefined, cbor2.CBORSimpleValue(16)])
)


def cbor_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(KEYS, inner, max_size=8)
            | st.builds(cbor2.CBORTag, st.integers(0, 300), inner)
        ),
        max_leaves=20,
    )


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers() | NEAR_BOUNDS | st.floats() | st.text(max_size=20)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=8),
        max_leaves=20,
    )


def check_all_decoders(payload: bytes, fmt: Format) -> None:
    """Every decoder either returns a message or raises its documented error; accepted requests are in bounds."""
    for operation in ALL_OPERATIONS:
        if operation.is_request:
            try:
                request = decode_request(operation, payload, fmt)
            except RequestRejected as error:
                assert isinstance(error.code, ErrorCode)
                continue
            if isinstance(request, GetStreamRequest):
                assert 256 <= request.block_size <= 131072 and 0 <= request.offset <= 98304
                assert 0 <= request.file_id <= 255
                assert request.number_of_blocks is None or 1 <= request.number_of_blocks <= 98304
                assert request.bitmap is None or len(request.bitmap) < 12288
            assert request.client_token is None or len(request.client_token.encode()) <= 64
        else:
            with contextlib.suppress(RemoteProtocolError):
                decode_answer(operation, payload, fmt)


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=300), fmt=formats)
def test_arbitrary_bytes_only_raise_documented_errors(payload: bytes, fmt: Format) -> None:
    check_all_decoders(payload, fmt)


def near_valid(values: st.SearchStrategy[Any], bitmaps: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Maps with the request keys, each holding a plausible integer or a hostile value, to reach the bound checks."""
    numbers = st.integers(0, 300) | NEAR_BOUNDS | st.integers() | values
    return st.fixed_dictionaries(
        {"f": numbers, "l": numbers},
        optional={
            "c": tokens | values,
            "s": numbers,
            "o": numbers,
            "n": numbers,
            "b": bitmaps | values,
            "x": values,
            "code": values,
        },
    )


CBOR_DOCS = st.dictionaries(KEYS, cbor_values(), max_size=10) | cbor_values()
CBOR_DOCS |= near_valid(cbor_values(), st.binary(max_size=40) | st.just(b"\0" * 12288))
JSON_DOCS = st.dictionaries(KEYS, json_values(), max_size=10) | json_values()
JSON_DOCS |= near_valid(json_values(), st.binary(max_size=40).map(lambda b: "0x" + b.hex()) | st.just("00" * 12288))


@settings(max_examples=300, deadline=None)
@given(doc=CBOR_DOCS)
def test_arbitrary_cbor_structures_only_raise_documented_errors(doc: Any) -> None:
    check_all_decoders(cbor2.dumps(doc), CBOR)


@settings(max_examples=300, deadline=None)
@given(doc=JSON_DOCS)
def test_arbitrary_json_structures_only_raise_documented_errors(doc: Any) -> None:
    check_all_decoders(json.dumps(doc).encode(), JSON)


@settings(max_examples=300, deadline=None)
@given(request=get_requests, fmt=formats, data=st.data())
def test_mutated_requests_only_raise_documented_errors(
    request: GetStreamRequest, fmt: Format, data: st.DataObject
) -> None:
    payload = bytearray(encode_request(request, fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    check_all_decoders(bytes(payload), fmt)


@settings(max_examples=300, deadline=None)
@given(answer=descriptions() | data_blocks() | rejections, fmt=formats, data=st.data())
def test_mutated_answers_only_raise_documented_errors(
    answer: StreamDescription | DataBlock | Rejection, fmt: Format, data: st.DataObject
) -> None:
    payload = bytearray(encode_answer(answer, fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    check_all_decoders(bytes(payload), fmt)


def _general_or_error(payload: bytes, fmt: Format) -> DataBlock | str:
    try:
        return decode_data_block_general(payload, fmt)
    except RemoteProtocolError:
        return "error"


def _fast_or_error(payload: bytes, fmt: Format) -> DataBlock | str:
    try:
        return decode_data_block(payload, fmt)
    except RemoteProtocolError:
        return "error"


@settings(max_examples=300, deadline=None)
@given(block=data_blocks(), data=st.data(), trailing=st.sampled_from([b"", b"\xff", b"\x00", b"\x41\xff"]))
def test_data_fast_path_agrees_with_the_general_decoder(block: DataBlock, data: st.DataObject, trailing: bytes) -> None:
    payload = bytearray(encode_answer(block, CBOR) + trailing)
    for _ in range(data.draw(st.integers(0, 3))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    assert _fast_or_error(bytes(payload), CBOR) == _general_or_error(bytes(payload), CBOR)


@given(block=data_blocks())
def test_aws_layout_takes_the_fast_path(block: DataBlock) -> None:
    assert _aws_layout_block(encode_answer(block, CBOR)) == block


# --------------------------------------------------------------------------------------- the device's hot path


@given(block=data_blocks(), own=st.booleans(), data=st.data())
def test_the_data_layout_takes_exactly_this_downloads_full_blocks_and_agrees_with_the_decoder(
    block: DataBlock, own: bool, data: st.DataObject
) -> None:
    """``DataLayout.full_block`` accepts a message only when ``decode_data_block`` decodes it to a block of this
    download (its token, or none; its file id; the full block length), and then to the same index and bytes; it
    accepts every such message the service encodes; mutated messages never decode differently through it."""
    size = len(block.payload)
    token = block.client_token if own else data.draw(tokens)
    file_id = block.file_id if own or data.draw(st.booleans()) else (block.file_id + 1) % 256
    block_size = size if own or data.draw(st.booleans()) else size + 1
    layout = DataLayout(token, file_id, block_size)
    message = encode_data_block(CBOR, block.file_id, block.block_index, block.payload, block.client_token)
    if data.draw(st.booleans()):  # flip, cut or extend the message somewhere
        mutated = bytearray(message)
        at = data.draw(st.integers(0, len(mutated) - 1))
        change = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if change == "flip":
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif change == "cut":
            del mutated[at:]
        else:
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        message = bytes(mutated)
    fields = layout.full_block(message)
    try:
        decoded: DataBlock | None = decode_data_block(message, CBOR)
    except RemoteProtocolError:
        decoded = None
    ours = (
        decoded is not None
        and decoded.client_token in (token, None)
        and decoded.file_id == file_id
        and decoded.block_length == block_size
    )
    if fields is not None:
        assert decoded is not None and ours
        assert fields == (decoded.block_index, decoded.payload)
    elif message == encode_data_block(CBOR, block.file_id, block.block_index, block.payload, block.client_token):
        # an unchanged message of this download always takes the hot path, unless its index needs an 8-byte head
        assert not ours or block.block_index >= 2**32


def test_the_data_layout_reads_every_width_of_the_block_index() -> None:
    payload = bytes(range(256)) * 4
    layout = DataLayout("tok", 7, len(payload))
    for index in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1):
        message = encode_data_block(CBOR, 7, index, payload, "tok")
        assert layout.full_block(message) == (index, payload)
        assert layout.full_block(encode_data_block(CBOR, 7, index, payload, None)) == (index, payload)
    assert layout.full_block(encode_data_block(CBOR, 7, 2**32, payload, "tok")) is None  # 8-byte head: decoder
    assert layout.full_block(encode_data_block(CBOR, 7, 1, payload[:-1], "tok")) is None  # the short last block
    assert layout.full_block(encode_data_block(JSON, 7, 1, payload, "tok")) is None
