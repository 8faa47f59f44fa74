"""Stream topics: ``$aws/things/<thingName>/streams/<streamId>/<operation>/<format>`` (docs/protocol.md section 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from device_sim.protocol.errors import InvalidTopicError, LocalProtocolError
from device_sim.protocol.limits import MAX_TOPIC_BYTES, MAX_TOPIC_SLASHES


class Format(StrEnum):
    """The last topic segment: encoding of the request and of its answers."""

    CBOR = "cbor"
    JSON = "json"


class Operation(StrEnum):
    DESCRIBE = "describe"  # device -> service
    DESCRIPTION = "description"  # service -> device
    GET = "get"  # device -> service
    DATA = "data"  # service -> device
    REJECTED = "rejected"  # service -> device

    @property
    def is_request(self) -> bool:
        return self in (Operation.DESCRIBE, Operation.GET)


PREFIX = "$aws/things/"
_STREAM_ID = re.compile(r"[a-zA-Z0-9_-]{1,128}")
# Thing names: AWS allows [a-zA-Z0-9:_-]{1,128}.
_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")


def valid_stream_id(stream_id: str) -> bool:
    return _STREAM_ID.fullmatch(stream_id) is not None


def valid_thing_name(thing_name: str) -> bool:
    return _THING_NAME.fullmatch(thing_name) is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTopic:
    thing_name: str
    stream_id: str
    operation: Operation
    format: Format

    def __str__(self) -> str:
        return f"{PREFIX}{self.thing_name}/streams/{self.stream_id}/{self.operation.value}/{self.format.value}"

    def reply(self, operation: Operation) -> StreamTopic:
        """The same stream and format with another operation (e.g. the answer topic of a request)."""
        return StreamTopic(
            thing_name=self.thing_name, stream_id=self.stream_id, operation=operation, format=self.format
        )


def build_topic(thing_name: str, stream_id: str, operation: Operation, fmt: Format) -> str:
    """The topic string; raises LocalProtocolError for a bad thing name or stream id or a too-long topic."""
    if not valid_thing_name(thing_name):
        raise LocalProtocolError(f"bad thing name {thing_name!r}", hint="use 1-128 characters of a-z A-Z 0-9 : _ -")
    if not valid_stream_id(stream_id):
        raise LocalProtocolError(f"bad stream id {stream_id!r}", hint="use 1-128 characters of a-z A-Z 0-9 _ -")
    topic = str(StreamTopic(thing_name=thing_name, stream_id=stream_id, operation=operation, format=fmt))
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        raise LocalProtocolError(
            f"topic {topic!r} is longer than AWS's {MAX_TOPIC_BYTES} bytes",
            hint="use a shorter thing name or stream id",
        )
    return topic


def subscription_filters(thing_name: str, stream_id: str, fmt: Format) -> list[str]:
    """The three topics a device subscribes to before it publishes requests."""
    return [
        build_topic(thing_name, stream_id, op, fmt)
        for op in (Operation.DESCRIPTION, Operation.DATA, Operation.REJECTED)
    ]


def parse_topic(topic: str) -> StreamTopic:
    """Parse a stream topic. Raises InvalidTopicError (with the stream when it could be read)."""
    if not topic.startswith(PREFIX):
        raise InvalidTopicError(f"not a stream topic: {topic!r}")
    parts = topic[len(PREFIX) :].split("/")
    # <thing> streams <stream> <operation> <format>
    if len(parts) < 3 or parts[1] != "streams" or not parts[0] or not parts[2]:
        raise InvalidTopicError(f"not a stream topic: {topic!r}")
    thing_name, stream_id = parts[0], parts[2]
    fmt_text = parts[4] if len(parts) == 5 else None
    reply_format = fmt_text if fmt_text in ("json", "cbor") else "json"
    known = valid_thing_name(thing_name) and valid_stream_id(stream_id)

    def bad(why: str) -> InvalidTopicError:
        return InvalidTopicError(
            f"{why}: {topic!r}",
            thing_name=thing_name if known else None,
            stream_id=stream_id if known else None,
            reply_format=reply_format,
        )

    if not known:
        raise bad("bad thing name or stream id in topic")
    if len(parts) != 5:
        raise bad("a stream topic has an operation and a format after the stream id")
    if topic.count("/") > MAX_TOPIC_SLASHES or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise bad("topic longer than AWS allows")
    try:
        operation = Operation(parts[3])
    except ValueError:
        raise bad(f"unknown operation {parts[3]!r}") from None
    try:
        fmt = Format(parts[4])
    except ValueError:
        raise bad(f"unknown format {parts[4]!r}") from None
    return StreamTopic(thing_name=thing_name, stream_id=stream_id, operation=operation, format=fmt)
