"""``device-sim decode``: show a captured stream message as JSON with AWS's long field names.

The kind of message (describe, get, description, data, rejected) and the format come from ``--topic`` (its
operation and format segments), or from ``--kind``/``--format``; without a kind the command guesses it from the
keys of the message and says so on stderr. Requests are checked the way the service checks them: a payload the
service would reject prints the AWS error code and message and exits 1. Bad arguments exit 2.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import BinaryIO

import click

from device_sim.protocol import (
    DataBlock,
    DescribeStreamRequest,
    Format,
    GetStreamRequest,
    InvalidTopicError,
    Operation,
    Rejection,
    RemoteProtocolError,
    RequestRejected,
    StreamDescription,
    decode_answer,
    decode_bitmap,
    decode_request,
    parse_topic,
)
from device_sim.protocol._wire import MalformedPayload, load_document

Message = DescribeStreamRequest | GetStreamRequest | StreamDescription | DataBlock | Rejection

_KINDS = [op.value for op in Operation]


class MessageRejected(click.ClickException):
    """The payload is not a message the service (or a device) would accept."""

    exit_code = 1


def message_to_json(message: Message) -> dict[str, object]:
    """A message as a JSON-ready dict with AWS's long field names (payload as length + SHA-256)."""
    out: dict[str, object] = {}
    if message.client_token is not None:
        out["clientToken"] = message.client_token
    if isinstance(message, GetStreamRequest):
        if message.stream_version is not None:
            out["streamVersion"] = message.stream_version
        out.update(fileId=message.file_id, blockSize=message.block_size, offset=message.offset)
        if message.number_of_blocks is not None:
            out["numberOfBlocks"] = message.number_of_blocks
        if message.bitmap is not None:
            out["blockBitmap"] = decode_bitmap(message.bitmap, message.offset)
    elif isinstance(message, StreamDescription):
        out.update(
            streamVersion=message.stream_version,
            description=message.description,
            files=[{"fileId": f.file_id, "fileSize": f.file_size} for f in message.files],
        )
    elif isinstance(message, DataBlock):
        out.update(
            fileId=message.file_id,
            blockId=message.block_index,
            blockLength=message.block_length,
            payload={"length": len(message.payload), "sha256": hashlib.sha256(message.payload).hexdigest()},
        )
    elif isinstance(message, Rejection):
        out.update(code=message.code, message=message.message)
    return out


def guess_operation(payload: bytes, fmt: Format) -> Operation:
    """The most likely kind of a message from its keys; a payload that is not a map is read as a get request
    (so that the command reports what the service would answer)."""
    try:
        doc = load_document(payload, fmt)
    except MalformedPayload:
        return Operation.GET
    if not isinstance(doc, Mapping):
        return Operation.GET
    keys = set(doc)
    if keys & {"p", "i"}:
        return Operation.DATA
    if "r" in keys:
        return Operation.DESCRIPTION
    if keys & {"code", "message", "m"} or isinstance(doc.get("o"), str):
        return Operation.REJECTED
    if keys & {"f", "l", "o", "n", "b", "s"}:
        return Operation.GET
    return Operation.DESCRIBE


def decode_message(operation: Operation, payload: bytes, fmt: Format) -> Message:
    """Decode as ``operation``; raises MessageRejected with the code a service would answer, or the defect."""
    if operation.is_request:
        try:
            return decode_request(operation, payload, fmt)
        except RequestRejected as exc:
            raise MessageRejected(
                f"the service would reject this {operation.value} request: {exc.code.value}: {exc.message}"
            ) from exc
    try:
        return decode_answer(operation, payload, fmt)
    except RemoteProtocolError as exc:
        raise MessageRejected(f"malformed {operation.value} message: {exc}") from exc


@click.command("decode")
@click.option("--topic", help="Topic the payload was published on; sets the kind and the format.")
@click.option("--format", "fmt", type=click.Choice([f.value for f in Format]), help="Payload format (without --topic).")
@click.option("--kind", type=click.Choice(_KINDS), help="Message kind (without --topic); guessed when left out.")
@click.argument("source", type=click.File("rb"), default="-", metavar="[FILE|-]")
def decode_command(topic: str | None, fmt: str | None, kind: str | None, source: BinaryIO) -> None:
    """Print a captured stream message (raw payload from FILE or stdin) as JSON with AWS's long field names."""
    operation = Operation(kind) if kind else None
    fmt_enum = Format(fmt) if fmt else None
    if topic is not None:
        try:
            parsed = parse_topic(topic)
        except InvalidTopicError as exc:
            raise click.BadParameter(
                f"{exc.message}; pass a topic like $aws/things/<thing>/streams/<stream>/get/cbor", param_hint="--topic"
            ) from exc
        if fmt_enum is not None and fmt_enum is not parsed.format:
            raise click.UsageError(f"--format {fmt_enum.value} contradicts the topic's format {parsed.format.value}")
        if operation is not None and operation is not parsed.operation:
            raise click.UsageError(
                f"--kind {operation.value} contradicts the topic's operation {parsed.operation.value}"
            )
        operation, fmt_enum = parsed.operation, parsed.format
    if fmt_enum is None:
        raise click.UsageError("pass --format cbor|json, or --topic TOPIC to take the format from the topic")
    payload = source.read()
    if operation is None:
        operation = guess_operation(payload, fmt_enum)
        click.echo(
            f"decoding as {operation.value}/{fmt_enum.value} (guessed from the keys; pass --kind to choose)", err=True
        )
    message = decode_message(operation, payload, fmt_enum)
    click.echo(json.dumps(message_to_json(message), indent=2, ensure_ascii=False))
