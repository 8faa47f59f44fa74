"""Device profiles against local_iot: each library's strategy downloads through drops, duplicates, reordering and
AWS's quotas and ends verified, or aborts exactly where the library aborts. The request waits are shortened
(--request-wait-ms) so no test waits out a real 10 s stall; the real defaults are checked by the unit tests."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import main as device_sim
from local_iot.runner import LocalIot

from .device_support import download
from .streams import make_stream
from .test_fleet import provision

pytestmark = pytest.mark.e2e

Factory = Callable[..., LocalIot]

LINK = "drop=0.05,dup=0.1,reorder=0.3"


@pytest.mark.parametrize(
    ("profile", "extra"),
    [
        pytest.param("freertos-ota", ["--block-size", "1KiB"], id="freertos-ota"),
        pytest.param("freertos-ota-demo", ["--block-size", "1KiB"], id="freertos-ota-demo"),
        pytest.param("mfs", ["--block-size", "1KiB"], id="mfs-cbor"),
        pytest.param("mfs", ["--block-size", "1KiB", "--format", "json"], id="mfs-json"),
        pytest.param("rustot", [], id="rustot"),
    ],
)
def test_profile_downloads_verified_through_faults_and_aws_quotas(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch, profile: str, extra: list[str]
) -> None:
    iot = local_iot_factory(faults=LINK, seed=11, quotas="aws", latency_ms=5)
    data = os.urandom(120_000)  # 118 blocks of 1 KiB
    stream = f"prof_{profile.replace('-', '_')}_{len(extra)}"
    make_stream(iot, stream, data)
    args = ["--profile", profile, "--request-wait-ms", "200", "--qos", "0", *extra]
    result = download(iot, monkeypatch, thing=f"t-{profile}", stream=stream, certs=None, extra=args)
    assert result.exit_code == 0, (result.stderr, result.summary)
    s = result.summary
    assert s is not None and s["verified"] is True and s["sha256"] == hashlib.sha256(data).hexdigest()
    assert s["blocks_received"] == 118
    assert s["stalls"] >= 1 and s["lost_blocks"] >= 1  # 5 % of blocks lost: each one waited out a request wait
    assert s["stall_s"] >= 0.15 * s["stalls"]  # ... of 200 ms, from the batch's last block
    assert s["files"][0]["seconds"] >= 0.15 * s["stalls"]  # the transfer time holds the waits


def test_freertos_ota_large_batches_are_cut_by_the_publish_quota(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 blocks per request at 1 KiB, 40 ms away: AWS's 100 publishes/s run out, the service discards the rest of
    an answer and the agent sits out its wait."""
    iot = local_iot_factory(quotas="aws", latency_ms=40)
    data = os.urandom(300 * 1024)
    make_stream(iot, "prof_quota", data)
    args = ["--profile", "freertos-ota", "--block-size", "1KiB", "--blocks-per-request", "32"]
    result = download(
        iot, monkeypatch, thing="t-quota", stream="prof_quota", certs=None,
        extra=[*args, "--request-wait-ms", "400", "--flow-control", "none"],
    )  # fmt: skip
    assert result.exit_code == 0, (result.stderr, result.summary)
    s = result.summary
    assert s is not None and s["verified"] is True
    assert s["stalls"] >= 1 and s["lost_blocks"] >= 1 and s["rejections"] == {}


def test_rustot_aborts_after_its_momentum_on_a_dead_link(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    iot = local_iot_factory(faults="drop=1.0", seed=1)
    make_stream(iot, "prof_dead", os.urandom(10_000))
    args = ["--profile", "rustot", "--request-wait-ms", "200", "--qos", "0"]
    result = download(iot, monkeypatch, thing="t-dead", stream="prof_dead", certs=None, extra=args)
    assert result.exit_code != 0
    s = result.summary
    assert s is not None and s["failure"] == "timeout:MomentumAbort", s
    assert s["requests"] == 3 and s["aborts"] == 1 and s["stalls"] == 3  # momentum 3: the 4th request is the abort


def test_mfs_json_hard_coded_version_fails_after_a_stream_update(
    local_iot_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's JSON request always says "s": 1: once the stream is updated every request is VersionMismatch,
    which the library cannot read; the application's give-up rule ends it."""
    iot = local_iot_factory(faults="bump-version=after:5", seed=1)
    make_stream(iot, "prof_bump", os.urandom(20 * 1024))
    args = ["--profile", "mfs", "--format", "json", "--block-size", "1KiB", "--request-wait-ms", "150"]
    result = download(
        iot, monkeypatch, thing="t-bump", stream="prof_bump", certs=None, extra=[*args, "--momentum", "4"]
    )
    assert result.exit_code != 0
    s = result.summary
    assert s is not None and s["failure"] == "timeout:MomentumAbort", s
    assert s["rejections"].get("VersionMismatch", 0) == 4 and 5 <= s["blocks_received"] < 20


def test_sweep_of_the_ota_agent_recommends_a_configuration(
    local_iot_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iot = local_iot_factory(quotas="aws", latency_ms=40, faults="drop=0.05", seed=5)
    manifest = provision(iot, tmp_path, monkeypatch, things=3, stream="profsweep", size="48KiB")
    reports = tmp_path / "sweep"
    result = CliRunner().invoke(
        device_sim,
        [
            "sweep", "--manifest", str(manifest), "--report-dir", str(reports), "--quiet",
            "--profile", "freertos-ota", "--block-sizes", "1KiB,3KiB,4KiB", "--blocks-per-request-list", "1,8",
            "--request-wait-ms", "300",
        ],
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output  # 1: a device may fail; the table is still printed
    out = result.output
    assert "refused 3KiB x1: " in out and "not a power of two" in out  # the agent cannot take 3 KiB blocks
    assert "stall s" in out and "median s" in out and "p90 s" in out  # piped: the plain full-width table
    assert "…" not in out
    assert "recommended configuration by median time" in out and "otaconfigLOG2_FILE_BLOCK_SIZE" in out
    assert "otaconfigMAX_NUM_BLOCKS_REQUEST" in out and "#define otaconfigFILE_REQUEST_WAIT_MS       300U" in out
    summary = json.loads((reports / "summary.json").read_text())
    points = summary["sweep"]["points"]
    assert [(p["block_size"], p["blocks_per_request"]) for p in points] == [(1024, 1), (1024, 8), (4096, 1), (4096, 8)]
    assert all(p["profile"] == "freertos-ota" for p in points)
    assert summary["sweep"]["best_by_median"] is not None
    rows = list(csv.DictReader((reports / "sweep.csv").read_text().splitlines()))
    assert len(rows) == 4 and {"stalls", "stall s", "aborts", "median s", "p90 s"} <= set(rows[0])
    assert sum(int(r["stalls"]) for r in rows) >= 1  # 5 % loss: some request waits expired
