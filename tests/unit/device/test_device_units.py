"""Device helpers without a network: sizes, shared options, verification verdicts, exit codes, engine failures."""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import click
import pytest

from device_sim.cli.download import EXIT_CODES, exit_code
from device_sim.cli.options import (
    SizeListType,
    SizeType,
    build_download_settings,
    download_options,
    transport_choices,
)
from device_sim.device.device import NO_SUCH_FILE, DeviceFailure, DeviceResult, DownloadSettings, FileResult, SinkKind
from device_sim.device.download import engine_failure
from device_sim.device.verify import block_crcs, compare
from device_sim.engine.types import Failed, FailureReason
from device_sim.fileio import parse_size
from device_sim.protocol import Format
from device_sim.results.metrics import DeviceMetrics, FailureKind
from device_sim.transport import FlowControl, MqttProtocol, QoS


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("4KiB", 4096),
        ("4 kib", 4096),
        ("1MiB", 1 << 20),
        ("1MB", 10**6),
        ("500KB", 500_000),
        ("1.5KiB", 1536),
        ("1.5MB", 1_500_000),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "4 bananas", "-1", "KiB", "1e3"])
def test_parse_size_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="use bytes or a unit like 4KiB"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "0KiB", "1.3", "0.5B"])
def test_parse_size_wants_a_positive_whole_number_of_bytes(text: str) -> None:
    with pytest.raises(ValueError, match="positive whole number of bytes"):
        parse_size(text)


def test_size_types_convert_and_fail_like_click() -> None:
    assert SizeType().convert("32KiB", None, None) == 32768
    assert SizeListType().convert("1KiB, 4KiB,128KiB", None, None) == [1024, 4096, 131072]
    with pytest.raises(click.BadParameter):
        SizeListType().convert("1KiB,oops", None, None)


def _params(*args: str) -> dict[str, Any]:
    captured: dict[str, Any] = {}

    @click.command()
    @download_options
    def command(**params: Any) -> None:
        captured.update(params)

    command.main(list(args), standalone_mode=False)
    return captured


def test_download_options_build_settings_and_transport_choices() -> None:
    params = _params(
        "--format", "json", "--block-size", "1KiB", "--blocks-per-request", "8", "--inflight", "2",
        "--file-id", "3", "--file-id", "1", "--qos", "1", "--protocol", "mqtt311", "--flow-control", "none",
        "--describe-timeout", "0.5", "--describe-retries", "1", "--no-send-version", "--no-client-token",
    )  # fmt: skip
    settings = build_download_settings(params, sink=SinkKind.FILE)
    assert settings.format is Format.JSON and settings.block_size == 1024 and settings.blocks_per_request == 8
    assert settings.inflight == 2 and settings.file_ids == (3, 1) and settings.sink is SinkKind.FILE
    assert settings.describe_timeout == 0.5 and settings.describe_retries == 1
    assert not settings.send_version and not settings.client_token
    assert settings.engine_settings(None).window == 8
    assert transport_choices(params) == {
        "protocol": MqttProtocol.MQTT311,
        "keepalive_s": 30,
        "flow_control": FlowControl.NONE,
        "qos": QoS.AT_LEAST_ONCE,
    }
    defaults = build_download_settings(_params())
    assert defaults == DownloadSettings(format=Format.CBOR, block_size=4096, file_ids=None)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--block-size", "128"], "--block-size"),
        (["--block-size", "4KiB", "--blocks-per-request", "33"], "--blocks-per-request"),
        (["--expect-sha256", "12ab"], "--expect-sha256"),
    ],
)
def test_bad_combinations_name_the_option(args: list[str], option: str) -> None:
    with pytest.raises(click.BadParameter) as bad:
        build_download_settings(_params(*args))
    assert bad.value.param_hint == option


def test_settings_label() -> None:
    assert DownloadSettings().label == "4096B cbor"
    assert DownloadSettings(block_size=1024, blocks_per_request=4, inflight=2).label == "1024B cbor x4 inflight 2"


def test_compare_names_the_first_differing_block() -> None:
    good = bytes(range(256)) * 40  # 10 blocks of 1 KiB
    bad = bytearray(good)
    bad[3 * 1024 + 5] ^= 1
    bad[7 * 1024] ^= 1
    verdict = compare(
        sha256=hashlib.sha256(bad).hexdigest(),
        size=len(bad),
        expected_sha256=hashlib.sha256(good).hexdigest(),
        expected_size=len(good),
        crcs=block_crcs(bytes(bad), 1024),
        source_crcs=block_crcs(good, 1024),
    )
    assert not verdict.verified and verdict.first_bad_block == 3
    assert verdict.message.endswith("first differing block 3")


def test_compare_size_and_digest() -> None:
    data = b"firmware"
    digest = hashlib.sha256(data).hexdigest()
    assert compare(sha256=digest, size=8, expected_sha256=digest.upper(), expected_size=8).verified
    short = compare(sha256=digest, size=8, expected_sha256=digest, expected_size=9)
    assert not short.verified and short.first_bad_block is None
    longer = compare(sha256="0" * 64, size=8, expected_sha256=digest, expected_size=8, crcs=[1, 2], source_crcs=[1])
    assert longer.first_bad_block == 1


def test_block_crcs_last_block_is_the_remainder() -> None:
    data = bytes(2500)
    assert block_crcs(data, 1024) == [zlib.crc32(bytes(1024)), zlib.crc32(bytes(1024)), zlib.crc32(bytes(452))]


def _result(failure: DeviceFailure | None, verified: bool = True) -> DeviceResult:
    files = (FileResult(file_id=0, file_size=1, sha256="00", verified=verified, seconds=0.1),)
    return DeviceResult(
        thing_name="t",
        stream_id="s",
        stream_version=1,
        files=files if failure is None else (),
        metrics=DeviceMetrics(
            thing_name="t", verified=failure is None, failure_reason=failure.reason if failure else None
        ),
        failure=failure,
    )


@pytest.mark.parametrize(
    ("kind", "detail", "code"),
    [
        (FailureKind.VERIFY_MISMATCH, None, 1),
        (FailureKind.REJECTED, "ETagMismatch", 3),
        (FailureKind.TIMEOUT, "describe", 4),
        (FailureKind.CONNECT, None, 5),
        (FailureKind.DISCONNECTED, None, 5),
        (FailureKind.ERROR, None, 6),
        (FailureKind.ERROR, NO_SUCH_FILE, 2),
    ],
)
def test_exit_codes(kind: FailureKind, detail: str | None, code: int) -> None:
    assert exit_code(_result(DeviceFailure(kind, "m", detail))) == code


def test_exit_code_zero_only_when_every_file_verified() -> None:
    assert exit_code(_result(None)) == 0
    assert exit_code(_result(None, verified=False)) == EXIT_CODES[FailureKind.VERIFY_MISMATCH]
    assert set(EXIT_CODES) == set(FailureKind)


@pytest.mark.parametrize(
    ("reason", "code", "kind", "text"),
    [
        (FailureReason.REJECTED, "ETagMismatch", FailureKind.REJECTED, "rejected:ETagMismatch"),
        (FailureReason.TIMEOUT, None, FailureKind.TIMEOUT, "timeout:timeout"),
        (FailureReason.THROTTLED, "Throttling", FailureKind.TIMEOUT, "timeout:throttled"),
        (FailureReason.VERSION_MISMATCH, "VersionMismatch", FailureKind.TIMEOUT, "timeout:version_mismatch"),
        (FailureReason.CANCELLED, None, FailureKind.CANCELLED, "cancelled"),
    ],
)
def test_engine_failures_keep_their_message_once(
    reason: FailureReason, code: str | None, kind: FailureKind, text: str
) -> None:
    failure = engine_failure(Failed(reason=reason, code=code, message="what happened (what to do)"), 4)
    assert failure.kind is kind and failure.reason == text
    assert failure.message == "file 4: what happened (what to do)"
