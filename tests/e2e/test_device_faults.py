"""``device-sim download`` against a local_iot that injects every kind of fault: lossy, duplicating, reordering,
delaying and rejecting links; a disconnect mid-download; the stream updated mid-download; the S3 object overwritten
under an unpinned stream (during and right after the download)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from local_iot.runner import LocalIot

from .device_support import download
from .streams import make_stream

pytestmark = pytest.mark.e2e

Factory = Callable[..., LocalIot]


@pytest.mark.parametrize(
    ("faults", "counter"),
    [
        pytest.param("drop=0.2", "re_requests", id="drop"),
        pytest.param("dup=0.3", "duplicates", id="dup"),
        pytest.param("reorder=0.5", None, id="reorder"),
        pytest.param("delay=0.2:150ms", None, id="delay"),
        pytest.param("reject=0.3:Throttling", "rejections", id="reject-throttling"),
    ],
)
def test_link_faults_are_survived(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch, faults: str, counter: str | None
) -> None:
    iot = local_iot_factory(faults=faults, seed=7)
    stream = f"dev_fault_{faults.partition('=')[0]}"
    data = os.urandom(200_000)  # 196 blocks of 1 KiB: two requests of 128 blocks at most
    make_stream(iot, stream, data)
    result = download(
        iot, monkeypatch, thing="t-faults", stream=stream, certs=None, extra=["--block-size", "1KiB", "--qos", "0"]
    )
    assert result.exit_code == 0, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None and summary["verified"] is True
    assert summary["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary["blocks_received"] == 196
    if counter == "rejections":
        assert summary["rejections"].get("Throttling", 0) > 0
    elif counter is not None:
        assert summary[counter] > 0
    assert result.seconds < 20


def test_lossy_link_recovers_in_round_trips_not_fixed_waits(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """15 % of blocks lost: a FreeRTOS-style agent waits 10 s per loss (minutes here); the adaptive timer finishes
    in a few seconds, re-requesting."""
    iot = local_iot_factory(faults="drop=0.15", seed=3)
    data = os.urandom(1 << 20)
    make_stream(iot, "dev_lossy", data)
    result = download(
        iot, monkeypatch, thing="t-lossy", stream="dev_lossy", certs=None, extra=["--flow-control", "none"]
    )
    assert result.exit_code == 0, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None and summary["verified"] is True
    assert summary["re_requests"] > 0 and summary["timeouts"] > 0
    # 256 blocks at 15 % loss lose ~38: a FreeRTOS-style agent needs ~380 s; here the whole file takes less than
    # one of its 10 s waits (about 2 s on an idle machine: ~10 rounds of a 0.2 s idle timeout).
    assert summary["seconds"] < 8.0, summary


def test_disconnect_mid_download_resumes_the_download(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    iot = local_iot_factory(faults="disconnect=after:40")
    data = os.urandom(200_000)
    make_stream(iot, "dev_disconnect", data)
    result = download(
        iot,
        monkeypatch,
        thing="t-disconnect",
        stream="dev_disconnect",
        certs=tmp_path,
        extra=["--block-size", "1KiB", "--blocks-per-request", "20"],
    )
    assert result.exit_code == 0, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None and summary["verified"] is True
    assert summary["disconnects"] >= 1
    assert summary["sha256"] == hashlib.sha256(data).hexdigest()
    assert result.seconds < 15


def test_stream_updated_mid_download_is_re_described_and_verified(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    iot = local_iot_factory(faults="bump-version=after:40")
    data = os.urandom(100_000)
    created = make_stream(iot, "dev_bump", data)
    result = download(
        iot,
        monkeypatch,
        thing="t-bump",
        stream="dev_bump",
        certs=None,
        extra=["--block-size", "1KiB", "--blocks-per-request", "20"],
    )
    assert result.exit_code == 0, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None and summary["verified"] is True
    assert summary["stream_version"] == created["version"] + 1
    assert summary["rejections"].get("VersionMismatch", 0) >= 1
    assert summary["sha256"] == hashlib.sha256(data).hexdigest()


def test_object_overwritten_under_an_unpinned_stream_fails_with_etag_mismatch(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    iot = local_iot_factory(faults="overwrite=after:40")
    make_stream(iot, "dev_overwrite", os.urandom(100_000), pin_version=False)
    out = tmp_path / "fw.bin"
    result = download(
        iot,
        monkeypatch,
        thing="t-overwrite",
        stream="dev_overwrite",
        certs=None,
        extra=["--block-size", "1KiB", "--blocks-per-request", "20", "--out", str(out)],
    )
    assert result.exit_code == 3, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None and summary["verified"] is False
    assert summary["failure"] == "rejected:ETagMismatch"
    assert "pin the object version" in summary["message"]
    assert result.seconds < 10
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_object_overwritten_after_the_download_names_the_first_differing_block(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The service overwrites the object right after serving the last block: the device got the old bytes, S3 now
    holds new ones (last byte flipped), so verification against S3 fails and names the last block."""
    iot = local_iot_factory(faults="overwrite=after:20")
    data = os.urandom(20_000)  # 20 blocks of 1 KiB, one request
    make_stream(iot, "dev_overwritten_late", data, pin_version=False)
    out = tmp_path / "fw.bin"
    result = download(
        iot,
        monkeypatch,
        thing="t-late",
        stream="dev_overwritten_late",
        certs=None,
        extra=["--block-size", "1KiB", "--out", str(out)],
    )
    assert result.exit_code == 1, (result.stderr, result.summary)
    summary = result.summary
    assert summary is not None and summary["verified"] is False
    assert summary["failure"] == "verify-mismatch"
    assert "first differing block 19" in summary["message"]
    assert summary["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not out.exists() and not list(tmp_path.glob("*.part"))
