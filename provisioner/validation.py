"""Checks of user input against AWS's constraints (docs/protocol.md section 1), made before any AWS call.

Every function raises ``InputError`` with a message that names the bad value and says what is allowed.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from device_sim import fileio
from device_sim.protocol.limits import (
    DOCUMENTED_MAX_FILE_SIZE,
    MAX_BLOCK_SIZE,
    MAX_FILE_ID,
    MAX_FILES_PER_STREAM,
    MAX_OFFSET,
    MIN_FILE_ID,
)
from device_sim.protocol.topics import valid_stream_id, valid_thing_name

from .errors import InputError

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 2028
#: The largest file a device can fetch from a stream. A GetStream request names its first block with the offset
#: ``o`` in 0..MAX_OFFSET (98304) and asks for blocks of ``l`` <= MAX_BLOCK_SIZE (128 KiB) bytes; a block past
#: offset 98304 is unreachable (``o`` out of range -> OffsetOutOfBounds; a bitmap or ``n`` past it only reaches
#: blocks from the same ``o``, and one answer carries at most 128 KiB). So the last reachable block is block
#: 98304: 98305 blocks of 128 KiB = 12,885,032,960 bytes (12 GiB + 128 KiB). With smaller blocks the limit is lower
#: (98305 x l); AWS documents 98304 blocks of 256 bytes (DOCUMENTED_MAX_FILE_SIZE, 24 MiB) as always reachable.
MAX_STREAM_FILE_SIZE = (MAX_OFFSET + 1) * MAX_BLOCK_SIZE
MIN_ROLE_ARN = 20
MAX_ROLE_ARN = 2048
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
#: Run ids end up in S3 keys, IAM/IoT names, tag values and thing attributes: keep them to this alphabet.
_RUN_ID = re.compile(r"[A-Za-z0-9-]{1,40}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamFileSpec:
    """One ``files`` entry: fileId and the pinned S3 object."""

    file_id: int
    bucket: str
    key: str
    version_id: str | None


def check_stream_id(stream_id: str) -> str:
    if not valid_stream_id(stream_id):
        raise InputError(
            f"invalid stream id {stream_id!r}", hint="use 1-128 characters of a-z A-Z 0-9 _ - (e.g. fw-test)"
        )
    return stream_id


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise InputError(
            f"stream description has {len(description)} characters", hint=f"AWS allows at most {MAX_DESCRIPTION}"
        )
    bad = [c for c in description if unicodedata.category(c).startswith("C")]
    if bad:
        raise InputError(
            f"stream description contains control/format characters {bad!r}",
            hint="AWS rejects them ([^\\p{C}]); use printable text",
        )
    return description


def check_file_ids(file_ids: Sequence[int]) -> None:
    """1..50 files with unique ids in 0..255."""
    if not file_ids:
        raise InputError("a stream needs at least one file", hint="pass --file PATH or --generate SIZE")
    if len(file_ids) > MAX_FILES_PER_STREAM:
        raise InputError(f"{len(file_ids)} files given", hint=f"a stream holds at most {MAX_FILES_PER_STREAM} files")
    for file_id in file_ids:
        if not MIN_FILE_ID <= file_id <= MAX_FILE_ID:
            raise InputError(f"file id {file_id} out of range", hint=f"use {MIN_FILE_ID}..{MAX_FILE_ID}")
    dupes = sorted(i for i, n in Counter(file_ids).items() if n > 1)
    if dupes:
        raise InputError(f"duplicate file ids {dupes}", hint="every file of a stream needs its own fileId")


def check_stream_files(files: Sequence[StreamFileSpec]) -> None:
    check_file_ids([f.file_id for f in files])
    for f in files:
        check_bucket(f.bucket)
        if not f.key:
            raise InputError(f"file {f.file_id} has an empty S3 key")


def check_role_arn(role_arn: str) -> str:
    if not MIN_ROLE_ARN <= len(role_arn) <= MAX_ROLE_ARN or not _ROLE_ARN.fullmatch(role_arn):
        raise InputError(
            f"invalid role ARN {role_arn!r}",
            hint="expected arn:aws:iam::<12-digit account>:role/<name> (20-2048 characters)",
        )
    return role_arn


def role_name_from_arn(role_arn: str) -> str:
    return check_role_arn(role_arn).rsplit("/", 1)[-1]


def check_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    """The tags as AWS's ``[{"Key": ..., "Value": ...}]`` list, after checking their lengths."""
    out = []
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_TAG_KEY or key.lower().startswith("aws:"):
            raise InputError(f"invalid tag key {key!r}", hint=f"1-{MAX_TAG_KEY} characters, not starting with aws:")
        if len(value) > MAX_TAG_VALUE:
            raise InputError(f"tag {key!r} has a value of {len(value)} characters", hint=f"at most {MAX_TAG_VALUE}")
        out.append({"Key": key, "Value": value})
    return out


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise InputError(f"invalid run id {run_id!r}", hint="use 1-40 characters of A-Z a-z 0-9 -")
    return run_id


def check_bucket(bucket: str) -> str:
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InputError(
            f"invalid S3 bucket name {bucket!r}", hint="3-63 characters of a-z 0-9 . - starting with a letter/digit"
        )
    return bucket


def check_thing_prefix(prefix: str, count: int) -> str:
    if count < 0:
        raise InputError(f"--things must not be negative, not {count}")
    last = f"{prefix}-{max(count - 1, 0)}"
    if not valid_thing_name(last) or len(last) > 128:
        raise InputError(f"invalid thing name {last!r}", hint="use a prefix of a-z A-Z 0-9 : _ - (e.g. sim)")
    return prefix


def parse_size(text: str) -> int:
    """``1MiB`` -> 1048576, ``512KiB`` -> 524288, ``1000000`` -> 1000000, ``1.5MB`` -> 1500000 (the one size
    parser of the project, ``device_sim.fileio.parse_size``, with the provisioner's error type)."""
    try:
        return fileio.parse_size(text)
    except ValueError as exc:
        raise InputError(
            f"invalid size: {exc}", hint="use a number with an optional unit: 1000000, 512KiB, 1MiB"
        ) from None


def check_stream_file_size(size: int, what: str) -> int:
    """``size`` when a device can fetch a file of that many bytes from a stream (see ``MAX_STREAM_FILE_SIZE``)."""
    if size > MAX_STREAM_FILE_SIZE:
        raise InputError(
            f"{what} is {size} bytes, more than a stream can deliver",
            hint=f"at most {MAX_STREAM_FILE_SIZE} bytes ({MAX_OFFSET + 1} blocks of {MAX_BLOCK_SIZE} bytes, "
            "GetStream offsets 0..98304)",
        )
    if size > DOCUMENTED_MAX_FILE_SIZE:
        blocks = -(-size // (MAX_OFFSET + 1))
        log.info("%s: devices need a block size of at least %d bytes to reach its end", what, blocks)
    return size


def parse_host_port(text: str, *, default_port: int = 8883) -> tuple[str, int]:
    """``host:port`` (or ``host`` with ``default_port``; ``[v6]:port`` for IPv6)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or "]" in port_text:
        host, port_text = text, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"invalid MQTT endpoint {text!r}", hint="use HOST:PORT, e.g. 127.0.0.1:8883") from None
    if not host or not 0 < port < 65536:
        raise InputError(f"invalid MQTT endpoint {text!r}", hint="use HOST:PORT, e.g. 127.0.0.1:8883")
    return host, port
