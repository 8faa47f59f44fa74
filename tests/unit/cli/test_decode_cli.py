"""``device-sim decode`` through click's CliRunner."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from device_sim.cli import main

AWS_BITMAP_CBOR = bytes.fromhex("a5616600616c190100616f14616e04616243130080")
TOPIC = "$aws/things/dev-1/streams/fw_2/{}/{}"
REAL_REJECTION_JSON = (
    b'{"clientToken":"rdy","c":"rdy","code":"InvalidRequest","o":"InvalidRequest",'
    b'"message":"The data requested is out of the range of data available.",'
    b'"m":"The data requested is out of the range of data available."}'
)


def run(args: list[str], payload: bytes = b"") -> Result:
    return CliRunner().invoke(main, ["decode", *args], input=payload)


def output_json(result: Result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_aws_bitmap_example_from_stdin_with_topic() -> None:
    result = run(["--topic", TOPIC.format("get", "cbor")], AWS_BITMAP_CBOR)
    assert output_json(result) == {"fileId": 0, "blockSize": 256, "offset": 20, "numberOfBlocks": 4,
                                   "blockBitmap": [20, 21, 24, 43]}  # fmt: skip
    assert result.stderr == ""  # nothing guessed


def test_json_request_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "get.json"
    path.write_bytes(b'{"c":"rdy","s":3,"f":1,"l":4096,"o":2,"b":"0x03"}')
    result = run(["--format", "json", "--kind", "get", str(path)])
    assert output_json(result) == {
        "clientToken": "rdy",
        "streamVersion": 3,
        "fileId": 1,
        "blockSize": 4096,
        "offset": 2,
        "blockBitmap": [2, 3],
    }


def test_data_block_shows_length_and_sha256() -> None:
    block = bytes(range(200))
    payload = bytes.fromhex("bf616600616903616c18c8617058c8") + block + b"\xff"
    result = run(["--topic", TOPIC.format("data", "cbor"), "-"], payload)
    assert output_json(result) == {
        "fileId": 0,
        "blockId": 3,
        "blockLength": 200,
        "payload": {"length": 200, "sha256": hashlib.sha256(block).hexdigest()},
    }


def test_real_rejection() -> None:
    result = run(["--topic", TOPIC.format("rejected", "json")], REAL_REJECTION_JSON)
    assert output_json(result) == {
        "clientToken": "rdy",
        "code": "InvalidRequest",
        "message": "The data requested is out of the range of data available.",
    }


def test_description() -> None:
    payload = b'{"c":"t","s":2,"d":"fw","r":[{"f":0,"z":1000},{"f":7,"z":5}]}'
    result = run(["--format", "json", "--kind", "description"], payload)
    assert output_json(result) == {
        "clientToken": "t",
        "streamVersion": 2,
        "description": "fw",
        "files": [{"fileId": 0, "fileSize": 1000}, {"fileId": 7, "fileSize": 5}],
    }


@pytest.mark.parametrize(
    ("payload", "kind", "key"),
    [
        (b'{"f":0,"i":1,"l":1,"p":"YQ=="}', "data", "blockId"),
        (b'{"s":1,"d":"","r":[]}', "description", "files"),
        (REAL_REJECTION_JSON, "rejected", "code"),
        (b'{"f":0,"l":256,"n":1}', "get", "blockSize"),
        (b'{"c":"x"}', "describe", "clientToken"),
    ],
)
def test_kind_is_guessed_and_reported(payload: bytes, kind: str, key: str) -> None:
    result = run(["--format", "json"], payload)
    decoded = output_json(result)
    assert isinstance(decoded, dict) and key in decoded
    assert f"decoding as {kind}/json" in result.stderr


@pytest.mark.parametrize(
    ("args", "payload", "words"),
    [
        (
            ["--topic", TOPIC.format("get", "cbor")],
            bytes.fromhex("a2616600616c1864"),
            ["BlockSizeOutOfBounds", "l=100"],
        ),
        (["--topic", TOPIC.format("get", "cbor")], b"", ["InvalidCbor", "empty"]),
        (["--topic", TOPIC.format("get", "json")], b'{"f":0,"l":NaN}', ["InvalidJson"]),
        (["--format", "cbor", "--kind", "get"], bytes.fromhex("a3616600616c1901006162626868"), ["InvalidCbor"]),
        (["--format", "json"], b'{"f":0,"l":256,"n":0}', ["InvalidRequest", "n=0"]),
        (["--topic", TOPIC.format("data", "json")], b'{"f":0,"i":1,"l":2,"p":"YQ=="}', ["malformed data", "l=2"]),
    ],
)
def test_rejected_payload_exits_1_with_code_and_message(args: list[str], payload: bytes, words: list[str]) -> None:
    result = run(args, payload)
    assert result.exit_code == 1
    assert result.stdout == ""
    for word in words:
        assert word in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], ["--format"]),
        (["--topic", "$aws/things/t/streams/s/fetch/cbor"], ["--topic", "unknown operation"]),
        (["--topic", "not/a/topic"], ["--topic"]),
        (["--topic", TOPIC.format("get", "cbor"), "--format", "json"], ["contradicts"]),
        (["--topic", TOPIC.format("get", "cbor"), "--kind", "data"], ["contradicts"]),
        (["--format", "xml"], ["xml"]),
        (["--format", "json", "/nonexistent/capture.bin"], ["/nonexistent/capture.bin"]),
    ],
)
def test_bad_arguments_exit_2(args: list[str], words: list[str]) -> None:
    result = run(args, b"{}")
    assert result.exit_code == 2
    for word in words:
        assert word in result.stderr


def test_help_lists_the_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "decode" in result.stdout
