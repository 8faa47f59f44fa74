"""Click options shared by ``download``, ``fleet`` and ``sweep``, and their conversion into settings objects."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from device_sim.device.device import DownloadSettings
from device_sim.engine.profiles import ProfileKind, ProfileSettings
from device_sim.engine.types import EngineUsageError
from device_sim.fileio import parse_size
from device_sim.protocol import Format
from device_sim.transport import FlowControl, MqttProtocol, QoS

F = TypeVar("F", bound=Callable[..., Any])


class ReportFailed(click.ClickException):
    """The reports could not be written (exit code 6)."""

    exit_code = 6


class SizeType(click.ParamType):  # type: ignore[type-arg]
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SizeListType(click.ParamType):  # type: ignore[type-arg]
    name = "SIZES"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            return [parse_size(part) for part in str(value).split(",") if part.strip()]
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def download_options(func: F) -> F:
    """The download settings every device command takes."""
    options = [
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["cbor", "json"]),
            default="cbor",
            show_default=True,
            help="Wire format of requests and answers.",
        ),
        click.option(
            "--profile",
            type=click.Choice([k.value for k in ProfileKind]),
            default=ProfileKind.DEVICE_SIM.value,
            show_default=True,
            help="Which client each device runs: this project's engine, or a real library's request strategy "
            "(freertos-ota: AWS's OTA agent; freertos-ota-demo: its demo values; mfs: AWS's MQTT file streams "
            "library; rustot). See docs/profiles.md.",
        ),
        click.option(
            "--block-size",
            type=SizeType(),
            default=None,
            help="Block size (256 B .. 128 KiB), e.g. 4096 or 4KiB [default: 4KiB; rustot: 1KiB].",
        ),
        click.option(
            "--blocks-per-request",
            type=click.IntRange(1),
            default=None,
            help="Blocks asked per GetStream request [default: as many as fit 128 KiB; a profile: its library's "
            "(freertos-ota 1, freertos-ota-demo 8, mfs 1, rustot 16)].",
        ),
        click.option(
            "--request-wait-ms",
            type=click.FloatRange(1, 3_600_000),
            default=None,
            help="Profiles: the fixed wait before missing blocks are asked again (otaconfigFILE_REQUEST_WAIT_MS) "
            "[default: the library's: 10000, rustot 5000].",
        ),
        click.option(
            "--momentum",
            type=click.IntRange(1),
            default=None,
            help="Profiles: requests in a row without a new block before the download is aborted "
            "(otaconfigMAX_NUM_REQUEST_MOMENTUM) [default: the library's: 32, rustot 3].",
        ),
        click.option(
            "--block-process-ms",
            type=click.FloatRange(0, 60_000),
            default=0.0,
            show_default=True,
            help="Profiles: device-side work per block (decode, flash write); blocks are handled one after another "
            "and the next request waits for them.",
        ),
        click.option(
            "--max-bitmap-bytes",
            type=click.IntRange(1, 12287),
            default=None,
            help="freertos-ota: the agent's bitmap buffer (otaconfigMAX_BLOCK_BITMAP_SIZE); a file of more than 8 x "
            "this many blocks is refused [default: 128].",
        ),
        click.option(
            "--data-buffers",
            type=click.IntRange(1),
            default=None,
            help="Profiles, with --block-process-ms: blocks the device can hold while it works "
            "(otaconfigMAX_NUM_OTA_DATA_BUFFERS); a block arriving when all are taken is dropped [default: no limit].",
        ),
        click.option(
            "--status-frequency",
            type=click.IntRange(1),
            default=None,
            help="Profiles: blocks between job progress updates (otaconfigOTA_UPDATE_STATUS_FREQUENCY; counted, "
            "not published) [default: the library's: 64, demo 25, rustot 24].",
        ),
        click.option(
            "--inflight",
            type=click.IntRange(1, 64),
            default=1,
            show_default=True,
            help="Requests in flight (AWS advises 1).",
        ),
        click.option(
            "--request-timeout",
            type=click.FloatRange(0.01, 600, min_open=False),
            default=None,
            help="Fixed idle timeout in seconds before missing blocks are asked again "
            "[default: adaptive, follows the measured round trip].",
        ),
        click.option(
            "--describe-timeout",
            type=click.FloatRange(0.05, 600),
            default=5.0,
            show_default=True,
            help="Seconds to wait for the DescribeStream answer before asking again.",
        ),
        click.option(
            "--describe-retries",
            type=click.IntRange(0, 100),
            default=5,
            show_default=True,
            help="DescribeStream is re-sent this many times before the device gives up (exit 4).",
        ),
        click.option(
            "--max-retries",
            type=click.IntRange(0),
            default=32,
            show_default=True,
            help="Give up after this many timeouts in a row without a new block.",
        ),
        click.option(
            "--qos",
            type=click.Choice(["0", "1"]),
            default="0",
            show_default=True,
            help="QoS of requests and subscriptions (AWS's device libraries use 0).",
        ),
        click.option(
            "--send-version/--no-send-version",
            default=True,
            show_default=True,
            help="Send the described stream version (s) so a changed stream is noticed.",
        ),
        click.option(
            "--client-token/--no-client-token",
            default=True,
            show_default=True,
            help="Send a client token (c) and match answers on it.",
        ),
        click.option(
            "--file-id",
            "file_ids",
            type=click.IntRange(0, 255),
            multiple=True,
            help="File id to download (repeatable) [default: every file of the stream].",
        ),
        click.option("--protocol", type=click.Choice(["mqtt5", "mqtt311"]), default="mqtt5", show_default=True),
        click.option(
            "--keepalive",
            type=click.IntRange(1, 65535),
            default=30,
            show_default=True,
            help="MQTT keepalive in seconds (AWS accepts 30-1200).",
        ),
        click.option(
            "--flow-control",
            type=click.Choice(["aws", "none"]),
            default="aws",
            show_default=True,
            help="Client-side outbound pacing: 'aws' = 100 publishes/s and 512 KiB/s, like a real device.",
        ),
        click.option(
            "--verify-s3/--no-verify-s3",
            default=True,
            show_default=True,
            help="Compare the download with the S3 object the stream points at (boto3 credential chain).",
        ),
        click.option(
            "--expect-sha256",
            default=None,
            metavar="HEX",
            help="Compare with this SHA-256 instead of S3 (benches without S3 access).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_download_settings(params: dict[str, Any], **overrides: Any) -> DownloadSettings:
    """DownloadSettings from the parsed options (click.BadParameter naming the option on a bad combination)."""
    sha = params.get("expect_sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise click.BadParameter("must be 64 hex digits", param_hint="--expect-sha256")
    profile = ProfileKind(params.get("profile") or ProfileKind.DEVICE_SIM)
    block_size = params.get("block_size")
    if block_size is None:
        block_size = default_block_size(profile)
    values: dict[str, Any] = {
        "format": Format(params["fmt"]),
        "block_size": block_size,
        "profile": profile,
        "request_wait_ms": params.get("request_wait_ms"),
        "momentum": params.get("momentum"),
        "block_process_ms": params.get("block_process_ms") or 0.0,
        "status_frequency": params.get("status_frequency"),
        "max_bitmap_bytes": params.get("max_bitmap_bytes"),
        "data_buffers": params.get("data_buffers"),
        "blocks_per_request": params["blocks_per_request"],
        "inflight": params["inflight"],
        "request_timeout": params["request_timeout"],
        "max_retries": params["max_retries"],
        "send_version": params["send_version"],
        "client_token": params["client_token"],
        "file_ids": tuple(params["file_ids"]) or None,
        "describe_timeout": params.get("describe_timeout", 5.0),
        "describe_retries": params.get("describe_retries", 5),
        "verify_s3": params["verify_s3"],
        "expect_sha256": sha.lower() if sha else None,
    }
    values.update(overrides)
    settings = DownloadSettings(**values)
    try:  # validate now, with the option names the user typed
        if settings.profile is ProfileKind.DEVICE_SIM:
            settings.engine_settings("t")
        else:
            settings.profile_settings()  # the engine is not used: the library's own limits apply
    except EngineUsageError as exc:
        hint = {
            "block size": "--block-size",
            "block_size": "--block-size",
            "blocks per": "--blocks-per-request",
            "blocks_per_request": "--blocks-per-request",
            "per request": "--blocks-per-request",
            "CBOR": "--format",
        }
        name = next((opt for key, opt in hint.items() if key in str(exc)), "--profile")
        raise click.BadParameter(str(exc), param_hint=name) from None
    return settings


def default_block_size(profile: ProfileKind) -> int:
    """The block size a profile uses when --block-size is not given: its library's default."""
    if profile is ProfileKind.DEVICE_SIM:
        return 4096
    return ProfileSettings.for_profile(profile).block_size


def transport_choices(params: dict[str, Any]) -> dict[str, Any]:
    """The TransportSettings fields that come from the shared options."""
    return {
        "protocol": MqttProtocol(params["protocol"]),
        "keepalive_s": params["keepalive"],
        "flow_control": FlowControl(params["flow_control"]),
        "qos": QoS(int(params["qos"])),
    }


def existing_file(path: Path | None, option: str) -> Path | None:
    """``path`` when it is a readable file; click.BadParameter naming ``option`` otherwise."""
    if path is None:
        return None
    if not path.is_file():
        raise click.BadParameter(f"{path} does not exist or is not a file", param_hint=option)
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=option) from None
    return path


def pem_file(path: Path | None, option: str, label: str) -> Path | None:
    """``existing_file`` that must also hold a PEM block whose label ends with ``label`` (e.g. ``PRIVATE KEY``)."""
    if existing_file(path, option) is None:
        return None
    assert path is not None
    head = path.read_bytes()[: 1 << 16]
    if re.search(rb"-----BEGIN [A-Z0-9 ]*" + label.encode() + rb"-----", head) is None:
        raise click.BadParameter(f"{path} holds no PEM {label.lower()} (-----BEGIN ...{label}-----)", param_hint=option)
    return path
