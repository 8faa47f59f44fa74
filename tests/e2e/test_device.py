"""``device-sim download`` against local_iot (real mosquitto, real stream service, moto S3): formats, protocols,
plain and mutual TLS, block sizes, multi-file streams, requests in flight."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from local_iot.runner import LocalIot

from .device_support import Download, download
from .streams import make_stream

pytestmark = pytest.mark.e2e

#: One stream for the whole module (creating a stream costs about a second of moto calls): file id -> content.
SIZES = {0: 50_000, 1: 10_000, 2: 300_000, 3: 8192, 4: 1, 5: 100_000}
STREAM = "dev_shared"


@pytest.fixture(scope="module")
def files(local_iot: LocalIot) -> list[bytes]:
    contents = [os.urandom(SIZES[i]) for i in range(len(SIZES))]
    make_stream(local_iot, STREAM, contents)
    return contents


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_verified(result: Download, data: bytes) -> dict[str, object]:
    assert result.exit_code == 0, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None
    assert summary["verified"] is True and summary["failure"] is None
    assert summary["bytes"] == len(data)
    assert summary["files"][0]["sha256"] == sha(data)
    return summary


@pytest.mark.parametrize(
    ("fmt", "protocol", "tls"),
    [
        ("cbor", "mqtt5", True),
        ("json", "mqtt311", True),
        ("cbor", "mqtt311", False),
        ("json", "mqtt5", False),
    ],
)
def test_download_verifies_in_every_format_protocol_and_transport(
    local_iot: LocalIot,
    files: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fmt: str,
    protocol: str,
    tls: bool,
) -> None:
    data = files[0]  # 12.2 blocks of 4 KiB
    out = tmp_path / "fw.bin"
    result = download(
        local_iot,
        monkeypatch,
        thing=f"t-{fmt}-{protocol}-{tls}",
        stream=STREAM,
        certs=tmp_path if tls else None,
        extra=["--format", fmt, "--protocol", protocol, "--out", str(out), "--file-id", "0"],
    )
    summary = assert_verified(result, data)
    assert out.read_bytes() == data
    assert summary["files"][0]["path"] == str(out.absolute())
    assert summary["blocks_received"] == 13
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    ("block_size", "file_id", "blocks"),
    [
        pytest.param(256, 1, 40, id="256B-not-a-multiple"),
        pytest.param(131072, 2, 3, id="128KiB-not-a-multiple"),
        pytest.param(4096, 3, 2, id="4KiB-exact-multiple"),
        pytest.param(4096, 4, 1, id="one-byte"),
    ],
)
def test_block_sizes_and_odd_file_sizes(
    local_iot: LocalIot,
    files: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    block_size: int,
    file_id: int,
    blocks: int,
) -> None:
    data = files[file_id]
    out = tmp_path / "fw.bin"
    result = download(
        local_iot,
        monkeypatch,
        thing="t-sizes",
        stream=STREAM,
        certs=None,
        extra=["--block-size", str(block_size), "--out", str(out), "--flow-control", "none", "--file-id", str(file_id)],
    )
    summary = assert_verified(result, data)
    assert summary["blocks_received"] == blocks
    assert out.read_bytes() == data


def test_inflight_with_small_requests(local_iot: LocalIot, files: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    data = files[5]
    result = download(
        local_iot,
        monkeypatch,
        thing="t-inflight",
        stream=STREAM,
        certs=None,
        extra=["--block-size", "1KiB", "--blocks-per-request", "4", "--inflight", "3", "--file-id", "5"],
    )
    summary = assert_verified(result, data)
    assert summary["blocks_received"] == 98
    assert summary["duplicates"] == 0 and summary["re_requests"] == 0


def test_multi_file_stream_all_files_and_one_file(
    local_iot: LocalIot, files: list[bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "all" / "fw.bin"
    out.parent.mkdir()  # --out's directory must exist (a missing one is refused, never created)
    result = download(local_iot, monkeypatch, thing="t-multi", stream=STREAM, certs=tmp_path, extra=["--out", str(out)])
    assert result.exit_code == 0, result.stderr
    summary = result.summary
    assert summary is not None
    assert summary["file_ids"] == list(SIZES)
    assert summary["bytes"] == sum(SIZES.values())
    for file_id, content in enumerate(files):
        assert (out.parent / f"fw.bin.{file_id}").read_bytes() == content
        assert summary["files"][file_id]["sha256"] == sha(content)

    one = tmp_path / "one" / "fw.bin"
    one.parent.mkdir()
    result = download(
        local_iot,
        monkeypatch,
        thing="t-multi",
        stream=STREAM,
        certs=tmp_path,
        extra=["--out", str(one), "--file-id", "3", "--file-id", "1"],
    )
    assert result.exit_code == 0, result.stderr
    assert result.summary is not None and result.summary["file_ids"] == [3, 1]
    assert sorted(p.name for p in one.parent.iterdir()) == ["fw.bin.1", "fw.bin.3"]
    assert (one.parent / "fw.bin.3").read_bytes() == files[3]


def test_unknown_stream_is_rejected_with_exit_3(local_iot: LocalIot, monkeypatch: pytest.MonkeyPatch) -> None:
    result = download(local_iot, monkeypatch, thing="t-nostream", stream="dev_no_such_stream", certs=None)
    assert result.exit_code == 3
    assert result.summary is not None
    assert result.summary["failure"] == "rejected:ResourceNotFound"
    assert result.seconds < 10
