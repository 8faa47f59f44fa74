"""Sweep results of a device profile: median and p90 ranking, stall columns, the recommended configuration, the
plain and CSV tables."""

from __future__ import annotations

import csv
from pathlib import Path

from device_sim.results.files import render_sweep_csv, write_reports
from device_sim.results.metrics import DeviceMetrics, aggregate
from device_sim.results.sweep import SweepPoint, best_by_median, best_by_p90, recommended_config
from device_sim.results.tables import SWEEP_COLUMNS, render_sweep_table


def point(block_size: int, n: int, times: list[float], *, stalls: int = 0) -> SweepPoint:
    recs = [
        DeviceMetrics(
            thing_name=f"d{k}", verified=True, download_s=t, stalls=stalls, stall_s=10.0 * stalls, lost_blocks=stalls
        )
        for k, t in enumerate(times)
    ]
    return SweepPoint(
        block_size=block_size, blocks_per_request=n, summary=aggregate(recs, wall_s=max(times)), profile="freertos-ota"
    )


def test_median_and_p90_can_pick_different_settings() -> None:
    steady = point(4096, 8, [20.0] * 10)  # everyone 20 s
    lucky = point(1024, 1, [5.0] * 8 + [60.0, 60.0], stalls=1)  # most fast, two devices hit stalls
    assert best_by_median([steady, lucky]) is lucky
    assert best_by_p90([steady, lucky]) is steady
    text = render_sweep_table([steady, lucky])
    assert "best by median time: 1KiB x1 (median 5.000 s, p90 60.000 s over 10 devices)" in text
    assert "best by p90 time: 4KiB x8" in text


def test_the_recommendation_is_the_agents_configuration() -> None:
    p = point(4096, 8, [1.0])
    assert recommended_config(p, request_wait_ms=10000, momentum=32) == [
        "#define otaconfigLOG2_FILE_BLOCK_SIZE       12UL  /* 4KiB */",
        "#define otaconfigMAX_NUM_BLOCKS_REQUEST     8U",
        "#define otaconfigFILE_REQUEST_WAIT_MS       10000U",
        "#define otaconfigMAX_NUM_REQUEST_MOMENTUM   32U",
    ]
    mfs = SweepPoint(block_size=2048, summary=p.summary, profile="mfs")
    assert recommended_config(mfs) == ["#define mqttFileDownloader_CONFIG_BLOCK_SIZE    2048U"]
    engine = SweepPoint(block_size=16384, blocks_per_request=8, summary=p.summary)
    assert recommended_config(engine) == ["device-sim --block-size 16KiB --blocks-per-request 8"]


def test_plain_table_and_csv_keep_every_column(tmp_path: Path) -> None:
    points = [point(1024, 32, [30.0, 41.0], stalls=3), point(4096, 8, [12.0, 13.0])]
    lines = render_sweep_table(points).splitlines()
    assert all(column in lines[0] for column in SWEEP_COLUMNS) and "…" not in "\n".join(lines)
    rows = list(csv.DictReader(render_sweep_csv(points).splitlines()))
    assert rows[0]["stalls"] == "6" and rows[0]["stall s"] == "60.0" and rows[0]["lost"] == "6"
    assert rows[0]["median s"] == "30.000" and rows[0]["p90 s"] == "41.000"
    summary = aggregate([], wall_s=1.0)
    paths = write_reports(tmp_path, summary, [], sweep=points)
    assert paths["sweep.csv"].read_text() == render_sweep_csv(points)
    assert paths["sweep.txt"].read_text().startswith("setting")
    again = SweepPoint.from_dict(points[0].to_dict())
    assert again.profile == "freertos-ota" and again.summary.stall_s == 60.0
