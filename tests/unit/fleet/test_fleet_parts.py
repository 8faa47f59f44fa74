"""Splitting one manifest between processes (--shard, --offset, --devices) and merging their reports again."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.cli import main as device_sim
from device_sim.cli.report import MergeError, ReportPart, merge_parts, read_part
from device_sim.fleet.plan import DeviceIdentity, Shard, select_identities
from device_sim.results.files import read_devices_jsonl, write_reports
from device_sim.results.metrics import DeviceMetrics, aggregate
from device_sim.results.sweep import SweepPoint

THINGS = [DeviceIdentity(thing_name=f"t{i}") for i in range(10)]


def names(identities: list[DeviceIdentity]) -> list[str]:
    return [i.thing_name for i in identities]


@pytest.mark.parametrize("total", [1, 2, 7, 10, 1000, 1001])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_are_disjoint_cover_everything_and_differ_by_at_most_one(total: int, count: int) -> None:
    things = [DeviceIdentity(thing_name=f"t{i}") for i in range(total)]
    parts = []
    for index in range(1, count + 1):
        try:
            parts.append(names(select_identities(things, shard=Shard(index=index, count=count))))
        except ValueError:  # more shards than things: an empty part is an error, not a silent no-op
            assert total < count
            parts.append([])
    flat = [n for part in parts for n in part]
    assert flat == names(things)  # disjoint, complete, in manifest order
    sizes = [len(p) for p in parts if p]
    assert max(sizes) - min(sizes) <= 1


def test_offset_and_devices_pick_a_window_after_the_shard() -> None:
    assert names(select_identities(THINGS, offset=3, devices=2)) == ["t3", "t4"]
    assert names(select_identities(THINGS, shard=Shard.parse("2/2"), offset=1, devices=3)) == ["t6", "t7", "t8"]
    assert names(select_identities(THINGS, devices=10)) == names(THINGS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offset": 10}, "offset 10 skips every device"),
        ({"devices": 11}, "only 10 things are left"),
        ({"shard": Shard(index=2, count=2), "offset": 5}, "shard 2/2 has 5 things"),
        ({"offset": 8, "devices": 3}, "only 2 things are left"),
    ],
)
def test_selections_that_leave_too_little_say_so(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_identities(THINGS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0/2", "3/2", "1", "a/b", "1/0", "-1/3", ""])
def test_bad_shards_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard.parse(text)


def test_fleet_cli_rejects_a_bad_shard_before_reading_anything(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text("{}")
    result = CliRunner().invoke(device_sim, ["fleet", "--manifest", str(manifest), "--shard", "3/2"])
    assert result.exit_code == 2
    assert "1 <= I <= N" in result.output


# ------------------------------------------------------------------------------------------------------- merge


def record(name: str, *, ok: bool = True, label: str = "4096B cbor", seconds: float = 2.0) -> DeviceMetrics:
    return DeviceMetrics(
        thing_name=name,
        settings=label,
        verified=ok,
        failure_reason=None if ok else "timeout",
        failure_message=None if ok else "no block for a while",
        connect_s=0.1,
        download_s=seconds if ok else None,
        bytes=1000 if ok else 10,
        blocks=1,
        metered_messages_in=3,
        metered_messages_out=2,
        ended_at=seconds,
    )


def write_part(directory: Path, records: list[DeviceMetrics], wall_s: float, *, price: float = 1.0) -> Path:
    summary = aggregate(
        records, wall_s=wall_s, settings={"devices": len(records), "block_size": 4096}, price_per_million=price
    )
    write_reports(directory, summary, records)
    return directory


def test_merge_aggregates_the_records_of_every_part_over_the_longest_wall_time(tmp_path: Path) -> None:
    a = read_part(write_part(tmp_path / "a", [record("t0"), record("t1")], wall_s=4.0))
    b = read_part(write_part(tmp_path / "b", [record("t2"), record("t3", ok=False)], wall_s=5.0))
    merged = merge_parts([a, b])
    s = merged.summary
    assert (s.devices, s.verified, s.failed) == (4, 3, 1)
    assert s.wall_s == 5.0
    assert s.bytes_verified == 3000 and s.throughput_mb_s == pytest.approx(3000 / 1e6 / 5.0)
    assert s.metered_messages == 20
    assert dict(s.failures_by_reason) == {"timeout": 1}
    assert s.settings_dict == {"devices": 4, "block_size": 4096, "parts": 2}
    assert [r.thing_name for r in merged.records] == ["t0", "t1", "t2", "t3"]


def test_merge_refuses_overlapping_parts(tmp_path: Path) -> None:
    a = read_part(write_part(tmp_path / "a", [record("t0"), record("t1")], wall_s=1.0))
    b = read_part(write_part(tmp_path / "b", [record("t1")], wall_s=1.0))
    with pytest.raises(MergeError, match=r"thing t1 is in .*a and in .*b: the parts overlap"):
        merge_parts([a, b])


def test_merge_refuses_different_prices_unless_one_is_given(tmp_path: Path) -> None:
    a = read_part(write_part(tmp_path / "a", [record("t0")], wall_s=1.0, price=1.0))
    b = read_part(write_part(tmp_path / "b", [record("t1")], wall_s=1.0, price=2.0))
    with pytest.raises(MergeError, match="priced differently"):
        merge_parts([a, b])
    assert merge_parts([a, b], price_per_million=3.0).summary.cost_usd == pytest.approx(10 * 3.0 / 1e6)


def test_settings_the_parts_disagree_on_list_every_value(tmp_path: Path) -> None:
    parts = []
    for n, rate in enumerate((100.0, 200.0, 100.0)):
        recs = [record(f"t{n}")]
        summary = aggregate(recs, wall_s=1.0, settings={"devices": 1, "connect_rate": rate})
        parts.append(ReportPart(directory=tmp_path / str(n), records=tuple(recs), summary=summary))
    assert merge_parts(parts).summary.settings_dict["connect_rate"] == "100.0|200.0"


def test_an_incomplete_part_is_named(tmp_path: Path) -> None:
    part = write_part(tmp_path / "a", [record("t0")], wall_s=1.0)
    (part / "summary.json").unlink()
    with pytest.raises(MergeError, match=r"has no summary\.json"):
        read_part(part)
    with pytest.raises(MergeError, match=r"has no summary\.json"):
        read_part(tmp_path / "missing")


def sweep_part(directory: Path, things: list[str]) -> Path:
    points, records = [], []
    for size, seconds in ((1024, 3.0), (8192, 1.0)):
        label = SweepPoint(block_size=size, summary=aggregate([], wall_s=0)).label
        recs = [record(t, label=label, seconds=seconds) for t in things]
        records += recs
        points.append(SweepPoint(block_size=size, summary=aggregate(recs, wall_s=seconds)))
    overall = aggregate(records, wall_s=4.0, settings={"sweep": "1KiB, 8KiB"})
    write_reports(directory, overall, records, sweep=points)
    return directory


def test_merging_sweeps_merges_each_setting(tmp_path: Path) -> None:
    parts = [read_part(sweep_part(tmp_path / "a", ["t0", "t1"])), read_part(sweep_part(tmp_path / "b", ["t2"]))]
    merged = merge_parts(parts)
    assert merged.sweep is not None
    points = [(p.label, p.summary.devices, p.summary.wall_s) for p in merged.sweep]
    assert points == [("1KiB", 3, 3.0), ("8KiB", 3, 1.0)]
    assert merged.summary.devices == 6 and merged.summary.wall_s == 4.0


def test_a_sweep_and_a_fleet_do_not_merge(tmp_path: Path) -> None:
    a = read_part(sweep_part(tmp_path / "a", ["t0"]))
    b = read_part(write_part(tmp_path / "b", [record("t9")], wall_s=1.0))
    with pytest.raises(MergeError, match="some parts are sweeps"):
        merge_parts([a, b])


def test_report_merge_command_writes_one_report_and_exits_by_the_verdict(tmp_path: Path) -> None:
    a = write_part(tmp_path / "a", [record("t0"), record("t1")], wall_s=2.0)
    b = write_part(tmp_path / "b", [record("t2")], wall_s=3.0)
    out = tmp_path / "merged"
    result = CliRunner().invoke(device_sim, ["report", "merge", str(a), str(b), "--report-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "merged 2 reports" in result.output
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert (summary["devices"], summary["verified"], summary["wall_s"]) == (3, 3, 3.0)
    assert [r.thing_name for r in read_devices_jsonl(out / "devices.jsonl")] == ["t0", "t1", "t2"]
    assert int(ET.parse(out / "junit.xml").getroot().get("tests")) == 3

    c = write_part(tmp_path / "c", [record("t3", ok=False)], wall_s=1.0)
    failed = CliRunner().invoke(device_sim, ["report", "merge", str(a), str(c), "--out", str(tmp_path / "m2")])
    assert failed.exit_code == 1
    overlap = CliRunner().invoke(device_sim, ["report", "merge", str(a), str(a), "--out", str(tmp_path / "m3")])
    assert overlap.exit_code == 2 and "overlap" in overlap.output
    assert not (tmp_path / "m3").exists()
