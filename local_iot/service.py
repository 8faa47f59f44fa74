"""The stream service's protocol core: answers describe/get requests exactly as docs/protocol.md sections 3-4 say.

How this works: ``StreamServiceCore.handle(topic, payload, client_id, now)`` is sans-IO: a plain synchronous call
that returns the messages to publish (``Outgoing``), due at ``now``. Checks run in the documented order: topic
(``parse_topic``), then ``decode_request`` (decode, token, field types and presence, ``l``/``o``/``n``/``b``
bounds, all raising ``RequestRejected``), then here: stream exists, version ``s``, file id, role/S3 access and
ETag (``Catalog.check_access``), range. Data messages are cut from a ``memoryview`` of the object bytes, which
are read through the catalog once per (bucket, key, version, etag) and kept in a byte-bounded LRU cache.

Never raises: a request the protocol rejects gets its rejection; any other exception is a bug in the service and
gets ``InternalError`` plus a logged traceback, and the next request is served normally. Topics that are our own
answers (description/data/rejected) are ignored; a topic whose thing/stream cannot be read cannot be answered and
is dropped (counted). Latency, quotas and faults are layered on top by ``local_iot.service_pipeline``.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from device_sim.protocol import (
    OUT_OF_RANGE_MESSAGE,
    DescribeStreamRequest,
    ErrorCode,
    FileInfo,
    Format,
    GetStreamRequest,
    InvalidTopicError,
    Operation,
    Rejection,
    RequestRejected,
    StreamDescription,
    StreamTopic,
    block_count,
    decode_request,
    encode_answer,
    encode_data_block,
    parse_topic,
)
from device_sim.protocol.limits import MAX_DATA_PER_REQUEST, MAX_DEVICE_PAYLOAD

from .catalog import Catalog, CatalogError, StreamFile, StreamRecord

__all__ = ["AnswerKind", "BlockCache", "Outgoing", "ServiceStats", "StreamServiceCore"]

log = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "The service failed to process the request."
INVALID_CBOR_MESSAGE = "Invalid CBOR message"
INVALID_JSON_MESSAGE = "Invalid JSON message"
#: Rejections AWS answers with a fixed message and no client token (captured: docs/protocol.md section 4).
_UNDECODABLE = {ErrorCode.INVALID_CBOR: INVALID_CBOR_MESSAGE, ErrorCode.INVALID_JSON: INVALID_JSON_MESSAGE}
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


class AnswerKind(StrEnum):
    DESCRIPTION = "description"
    DATA = "data"
    REJECTED = "rejected"


@dataclass(frozen=True, kw_only=True, slots=True)
class Outgoing:
    """One message the service publishes (QoS 0) at monotonic time ``due``, with what it is about."""

    topic: str
    payload: bytes
    kind: AnswerKind
    due: float
    thing_name: str
    stream_id: str
    format: Format
    client_token: str | None = None
    file_id: int | None = None  # data: the block's file
    block_index: int | None = None  # data: absolute block index
    code: str | None = None  # rejected: the error code


@dataclass(kw_only=True, slots=True)
class ServiceStats:
    """Counters of the core (a copy is handed out; the live one is touched only by the service's thread)."""

    requests: int = 0
    descriptions: int = 0
    data_messages: int = 0
    data_bytes: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    internal_errors: int = 0
    unanswerable_topics: int = 0  # no readable thing/stream in the topic: nowhere to answer
    ignored_answers: int = 0  # publishes on description/data/rejected (our own answers' topics)
    oversized_requests: int = 0  # over AWS's 128 KB publish limit: AWS never delivers them
    cache_reads: int = 0

    def copy(self) -> ServiceStats:
        return ServiceStats(
            requests=self.requests,
            descriptions=self.descriptions,
            data_messages=self.data_messages,
            data_bytes=self.data_bytes,
            rejections=Counter(self.rejections),
            internal_errors=self.internal_errors,
            unanswerable_topics=self.unanswerable_topics,
            ignored_answers=self.ignored_answers,
            oversized_requests=self.oversized_requests,
            cache_reads=self.cache_reads,
        )


class BlockCache:
    """Object bytes per (bucket, key, version, etag), least recently used evicted beyond ``max_bytes``."""

    def __init__(self, catalog: Catalog, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._catalog = catalog
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[tuple[str, str, str | None, str], bytes] = OrderedDict()
        self.reads = 0

    def get(self, file: StreamFile) -> bytes:
        key = (file.bucket, file.key, file.version_id, file.etag)
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
            return data
        data = self._catalog.read(file)
        self.reads += 1
        self._entries[key] = data
        self._bytes += len(data)
        while self._bytes > self._max_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
        return data


def _reject(code: ErrorCode, message: str) -> RequestRejected:
    return RequestRejected(code, message)


class StreamServiceCore:
    """The protocol answers of the AWS IoT stream service over a ``Catalog``. Not thread-safe: one caller."""

    def __init__(self, catalog: Catalog, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._catalog = catalog
        self._cache = BlockCache(catalog, cache_bytes)
        self._stats = ServiceStats()

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def stats(self) -> ServiceStats:
        self._stats.cache_reads = self._cache.reads
        return self._stats.copy()

    def read_file(self, file: StreamFile) -> bytes:
        """The object's bytes through the cache (raises CatalogError)."""
        return self._cache.get(file)

    def handle(self, topic: str, payload: bytes, client_id: str | None = None, now: float = 0.0) -> list[Outgoing]:
        """Answer one publish received on ``topic``. Never raises.

        ``client_id`` is the publisher's MQTT client id when the transport knows it (it does not change answers).
        """
        try:
            return self._handle(topic, payload, now)
        except Exception:  # a bug must not stop the service; _handle already answered what it could
            log.exception("stream service failed on a publish to %r", topic)
            self._stats.internal_errors += 1
            return []

    def rejection(self, about: Outgoing, code: str, message: str) -> Outgoing:
        """A rejection on the stream and format of ``about`` (an answer to the same request), echoing its token."""
        reply = StreamTopic(
            thing_name=about.thing_name, stream_id=about.stream_id, operation=Operation.REJECTED, format=about.format
        )
        return self._rejection(reply, code, message, about.client_token, about.due)

    # -- internals ------------------------------------------------------------------------------------------------

    def _handle(self, topic: str, payload: bytes, now: float) -> list[Outgoing]:
        try:
            request_topic = parse_topic(topic)
        except InvalidTopicError as bad:
            if bad.thing_name is None or bad.stream_id is None:
                self._stats.unanswerable_topics += 1
                log.debug("dropped a publish on %r: no stream to answer on", topic)
                return []
            reply = StreamTopic(
                thing_name=bad.thing_name,
                stream_id=bad.stream_id,
                operation=Operation.REJECTED,
                format=Format(bad.reply_format),
            )
            return [self._rejection(reply, ErrorCode.INVALID_TOPIC, bad.message, None, now)]
        if not request_topic.operation.is_request:
            self._stats.ignored_answers += 1
            return []
        if len(payload) > MAX_DEVICE_PAYLOAD:
            # AWS IoT Core refuses a device publish over 128 KB before any service sees it: never answered.
            self._stats.oversized_requests += 1
            log.debug(
                "dropped a %d-byte request on %r: over AWS's %d-byte publish limit",
                len(payload),
                topic,
                MAX_DEVICE_PAYLOAD,
            )
            return []
        self._stats.requests += 1
        token: str | None = None
        try:
            request = decode_request(request_topic.operation, payload, request_topic.format)
            token = request.client_token
            if isinstance(request, DescribeStreamRequest):
                return [self._describe(request_topic, request, now)]
            return self._get(request_topic, request, now)
        except RequestRejected as rejected:
            reply = request_topic.reply(Operation.REJECTED)
            fixed = _UNDECODABLE.get(rejected.code)
            if fixed is not None:
                # As AWS answers (a captured real answer): no client token even when one was sent, and one fixed
                # message under both the short and the long keys. The codec's detail goes to the debug log.
                log.debug("%s on %r: %s", rejected.code, topic, rejected.message)
                return [self._rejection(reply, rejected.code, fixed, None, now)]
            # the codec's rejections carry the token to echo; ours (stream checks) come after a decoded token
            echo = token if token is not None else rejected.client_token
            return [self._rejection(reply, rejected.code, rejected.message, echo, now)]
        except CatalogError as denied:
            return [self._rejection(request_topic.reply(Operation.REJECTED), denied.code, denied.message, token, now)]
        except Exception:
            log.exception("stream service bug while answering %r", topic)
            self._stats.internal_errors += 1
            reply = request_topic.reply(Operation.REJECTED)
            return [self._rejection(reply, ErrorCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE, token, now)]

    def _stream(self, stream_id: str) -> StreamRecord:
        stream = self._catalog.get_stream(stream_id)
        if stream is None:
            raise _reject(ErrorCode.RESOURCE_NOT_FOUND, f"The stream {stream_id} does not exist.")
        return stream

    def _describe(self, topic: StreamTopic, request: DescribeStreamRequest, now: float) -> Outgoing:
        stream = self._stream(topic.stream_id)
        files = []
        for file in stream.files:
            self._catalog.check_access(stream, file)
            files.append(FileInfo(file_id=file.file_id, file_size=len(self._cache.get(file))))
        answer = StreamDescription(
            client_token=request.client_token,
            stream_version=stream.version,
            description=stream.description,
            files=tuple(files),
        )
        self._stats.descriptions += 1
        return Outgoing(
            topic=str(topic.reply(Operation.DESCRIPTION)),
            payload=encode_answer(answer, topic.format),
            kind=AnswerKind.DESCRIPTION,
            due=now,
            thing_name=topic.thing_name,
            stream_id=topic.stream_id,
            format=topic.format,
            client_token=request.client_token,
        )

    def _get(self, topic: StreamTopic, request: GetStreamRequest, now: float) -> list[Outgoing]:
        stream = self._stream(topic.stream_id)
        if request.stream_version is not None and request.stream_version != stream.version:
            raise _reject(
                ErrorCode.VERSION_MISMATCH,
                f"The stream version {_show_int(request.stream_version)} does not match the current version "
                f"{stream.version}.",
            )
        file = stream.file(request.file_id)
        if file is None:
            raise _reject(ErrorCode.RESOURCE_NOT_FOUND, f"The stream {stream.stream_id} has no file {request.file_id}.")
        self._catalog.check_access(stream, file)
        data = self._cache.get(file)
        block_size = request.block_size
        blocks = _selected_blocks(request, block_count(len(data), block_size))
        fmt, token, file_id = topic.format, request.client_token, request.file_id
        data_topic = str(topic.reply(Operation.DATA))
        view = memoryview(data)
        out = []
        sent = 0
        for index in blocks:
            start = index * block_size
            block = view[start : start + block_size]
            sent += len(block)
            out.append(
                Outgoing(
                    topic=data_topic,
                    payload=encode_data_block(fmt, file_id, index, block, token),
                    kind=AnswerKind.DATA,
                    due=now,
                    thing_name=topic.thing_name,
                    stream_id=topic.stream_id,
                    format=fmt,
                    client_token=token,
                    file_id=file_id,
                    block_index=index,
                )
            )
        self._stats.data_messages += len(out)
        self._stats.data_bytes += sent
        return out

    def _rejection(self, reply: StreamTopic, code: str, message: str, token: str | None, now: float) -> Outgoing:
        code = str(code)  # an ErrorCode (StrEnum) or the text of an injected code
        self._stats.rejections[code] += 1
        return Outgoing(
            topic=str(reply),
            payload=encode_answer(Rejection(client_token=token, code=code, message=message), reply.format),
            kind=AnswerKind.REJECTED,
            due=now,
            thing_name=reply.thing_name,
            stream_id=reply.stream_id,
            format=reply.format,
            client_token=token,
            code=code,
        )


def _show_int(value: int) -> str:
    """An integer for a message: a CBOR bignum can be far past Python's int-to-str digit limit."""
    return str(value) if value.bit_length() <= 64 else f"<a {value.bit_length()}-bit integer>"


def _selected_blocks(request: GetStreamRequest, total: int) -> Iterable[int]:
    """The absolute block indices to send, in order: **select first, then range-check** (docs/protocol.md 4).

    Without a bitmap: ``n`` (default ``floor(131072 / l)``) consecutive blocks from ``o``; ``o + n`` past the end
    is InvalidRequest. With a bitmap: its set bits (``o + bit``) in block order, stopping at the ``n`` cap and then
    at the 128 KiB cap; bits beyond the caps are never looked at (AWS's own MQTT file streams library sends a fixed
    placeholder bitmap with bits up to 29 set and ``n = 1``). InvalidRequest when ``o`` is at or past the end,
    when a *selected* block is, or when nothing is selected.
    """
    cap = MAX_DATA_PER_REQUEST // request.block_size
    offset, wanted = request.offset, request.number_of_blocks
    bitmap = request.bitmap
    if offset >= total:
        raise _reject(ErrorCode.INVALID_REQUEST, OUT_OF_RANGE_MESSAGE)
    if bitmap is None:
        count = cap if wanted is None else wanted
        if offset + count > total:
            raise _reject(ErrorCode.INVALID_REQUEST, OUT_OF_RANGE_MESSAGE)
        return range(offset, offset + min(count, cap))
    limit = cap if wanted is None else min(wanted, cap)
    selected: list[int] = []
    for k, byte in enumerate(bitmap):
        if not byte:
            continue
        base = offset + 8 * k
        for bit in range(8):
            if byte >> bit & 1:
                index = base + bit
                if index >= total:
                    raise _reject(ErrorCode.INVALID_REQUEST, OUT_OF_RANGE_MESSAGE)
                selected.append(index)
                if len(selected) == limit:
                    return selected
    if not selected:
        raise _reject(ErrorCode.INVALID_REQUEST, OUT_OF_RANGE_MESSAGE)
    return selected
