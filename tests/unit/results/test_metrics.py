"""Metrics: nearest-rank percentiles, metered messages and cost, DeviceMetrics validation and JSON round trips,
aggregation (hand examples and Hypothesis), progress sampling."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sim.device.meters import MessageMeter, ProgressSampler
from device_sim.protocol.codec import encode_data_block
from device_sim.protocol.limits import DEFAULT_PRICE_PER_MILLION_MESSAGES_USD, METERING_STEP_BYTES
from device_sim.protocol.topics import Format, Operation, build_topic
from device_sim.results.metrics import (
    MAX_PROGRESS_SAMPLES,
    DeviceMetrics,
    FailureKind,
    FleetSummary,
    MetricsFormatError,
    aggregate,
    aggregate_progress,
    cost_usd,
    distribution,
    failure_reason,
    percentile,
)

# --- percentiles ---------------------------------------------------------------------------------------------


def nearest_rank_by_definition(values: list[float], p: int) -> float:
    """The smallest value v such that at least p% of the values are <= v (exact arithmetic)."""
    n = len(values)
    return min(v for v in values if Fraction(sum(1 for x in values if x <= v), n) >= Fraction(p, 100))


@pytest.mark.parametrize(
    "values",
    [[7.0], [3.0, 1.0], [15.0, 20.0, 35.0, 40.0, 50.0], [float(k) for k in range(1, 11)], [2.0, 2.0, 2.0, 9.0]],
)
@pytest.mark.parametrize("p", [1, 25, 50, 90, 99, 100])
def test_percentile_is_nearest_rank(values: list[float], p: int) -> None:
    assert percentile(sorted(values), p) == nearest_rank_by_definition(values, p)


def test_percentile_textbook_example() -> None:
    # Wikipedia's nearest-rank example: 15 20 35 40 50 -> p30 = 20 (rank ceil(1.5) = 2), p40 = 20, p50 = 35.
    xs = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert [percentile(xs, p) for p in (30, 40, 50, 100)] == [xs[1], xs[1], xs[2], xs[4]]


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=60), st.integers(1, 100))
def test_percentile_property(values: list[float], p: int) -> None:
    assert percentile(sorted(values), p) == nearest_rank_by_definition(values, p)


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"1\.\.100"):
        percentile([1.0], 0)


def test_distribution_skips_missing_values() -> None:
    values = [4.0, None, 1.0, 3.0, None, 2.0]
    d = distribution(values)
    present = sorted(v for v in values if v is not None)
    assert d is not None
    assert d.count == len(present)
    assert (d.min, d.max) == (present[0], present[-1])
    assert d.p50 == nearest_rank_by_definition(present, 50)
    assert d.p90 == nearest_rank_by_definition(present, 90)
    assert d.mean == pytest.approx(sum(present) / len(present))
    assert distribution([None, None]) is None


# --- metered messages and cost -----------------------------------------------------------------------------


TOPIC = build_topic("device-0000001", "stream-v1", Operation.DATA, Format.CBOR)


@pytest.mark.parametrize(("block_size", "expected"), [(4096, 1), (16 * 1024, 4), (128 * 1024, 26)])
def test_data_block_metering_matches_protocol_md(block_size: int, expected: int) -> None:
    # docs/protocol.md section 5: a 4096-byte CBOR block is 1 metered message, 16 KiB is 4, 128 KiB is 26.
    assert 45 <= len(TOPIC) <= 55
    payload = encode_data_block(Format.CBOR, 0, 7, b"\xab" * block_size, client_token="rdy")
    meter = MessageMeter()
    meter.received(len(payload), len(TOPIC.encode()))
    assert meter.messages_in == expected
    assert meter.messages_in == math.ceil((len(payload) + len(TOPIC)) / METERING_STEP_BYTES)
    assert meter.messages_out == 0


def test_meter_counts_each_direction_and_small_messages_as_one() -> None:
    meter = MessageMeter()
    meter.sent(20, 50)
    meter.sent(0, 50)
    meter.received(METERING_STEP_BYTES - 50, 50)  # exactly one step
    meter.received(METERING_STEP_BYTES - 49, 50)  # one byte over: two steps
    assert (meter.messages_out, meter.messages_in) == (2, 1 + 2)


def test_cost_usd() -> None:
    assert cost_usd(1_000_000) == pytest.approx(DEFAULT_PRICE_PER_MILLION_MESSAGES_USD)
    assert cost_usd(26 * 4000, price_per_million=0.8) == pytest.approx(26 * 4000 * 0.8 / 1e6)
    assert cost_usd(0) == 0
    with pytest.raises(ValueError, match="messages"):
        cost_usd(-1)
    with pytest.raises(ValueError, match="price"):
        cost_usd(1, price_per_million=math.nan)


# --- DeviceMetrics ---------------------------------------------------------------------------------------------


def test_failure_reason_text() -> None:
    assert failure_reason(FailureKind.REJECTED, "ETagMismatch") == "rejected:ETagMismatch"
    assert failure_reason(FailureKind.TIMEOUT) == "timeout"


def test_device_metrics_normalises_rejections_and_progress() -> None:
    samples = [(k * 0.5, k * 100) for k in range(250)]
    d = DeviceMetrics(
        thing_name="d1",
        verified=True,
        rejections={"VersionMismatch": 2, "InvalidRequest": 1, "Unauthorized": 0},
        progress=list(reversed(samples)),
    )
    assert d.rejections == (("InvalidRequest", 1), ("VersionMismatch", 2))
    assert d.rejected == 3
    assert len(d.progress) == MAX_PROGRESS_SAMPLES
    assert d.progress[0] == samples[0] and d.progress[-1] == samples[-1]
    assert list(d.progress) == sorted(d.progress)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"verified": True, "failure_reason": "timeout"}, "failure_reason"),
        ({"verified": False}, "failure_reason"),
        ({"verified": True, "blocks": -1}, "blocks"),
        ({"verified": True, "bytes": True}, "bytes"),
        ({"verified": True, "download_s": math.inf}, "download_s"),
        ({"verified": True, "started_at": 5.0, "ended_at": 1.0}, "before"),
        ({"verified": True, "rejections": {"": 1}}, "rejections"),
        ({"verified": True, "progress": [(1.0,)]}, "progress"),
        ({"thing_name": "", "verified": True}, "thing_name"),
    ],
)
def test_device_metrics_rejects_inconsistent_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MetricsFormatError, match=match):
        DeviceMetrics(**{"thing_name": "d1", **kwargs})  # type: ignore[arg-type]


texts = st.text(max_size=40)
seconds = st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=10**9)


@st.composite
def device_records(draw: st.DrawFn, thing_name: str | None = None) -> DeviceMetrics:
    verified = draw(st.booleans())
    started = draw(seconds)
    return DeviceMetrics(
        thing_name=thing_name or draw(st.text(min_size=1, max_size=20)),
        settings=draw(texts),
        connect_s=draw(st.none() | seconds),
        first_block_s=draw(st.none() | seconds),
        download_s=draw(st.none() | seconds),
        bytes=draw(counts),
        blocks=draw(counts),
        duplicates=draw(counts),
        invalid_blocks=draw(counts),
        re_requests=draw(counts),
        requests=draw(counts),
        timeouts=draw(counts),
        rejections=draw(st.dictionaries(st.sampled_from(["InvalidRequest", "ETagMismatch", "X&<y>"]), counts)),
        disconnects=draw(counts),
        verified=verified,
        failure_reason=None if verified else draw(st.sampled_from(["timeout", "rejected:ETagMismatch", "connect"])),
        failure_message=None if verified else draw(st.none() | texts),
        sha256=draw(st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
        metered_messages_out=draw(counts),
        metered_messages_in=draw(counts),
        started_at=started,
        ended_at=started + draw(seconds),
        progress=draw(st.lists(st.tuples(seconds, counts), max_size=120)),
    )


@given(device_records())
def test_device_metrics_json_round_trip(record: DeviceMetrics) -> None:
    wire = json.dumps(record.to_dict(), allow_nan=False)
    assert DeviceMetrics.from_dict(json.loads(wire)) == record


def test_from_dict_ignores_unknown_keys_and_needs_a_name() -> None:
    d = DeviceMetrics(thing_name="d1", failure_reason="connect", failure_message="refused")
    data = {**d.to_dict(), "added_by_a_newer_worker": 1}
    assert DeviceMetrics.from_dict(data) == d
    with pytest.raises(MetricsFormatError, match="thing_name"):
        DeviceMetrics.from_dict({"verified": True})
    with pytest.raises(MetricsFormatError, match="object"):
        DeviceMetrics.from_dict([1, 2])  # type: ignore[arg-type]


def test_device_metrics_is_frozen() -> None:
    d = DeviceMetrics(thing_name="d1", verified=True)
    with pytest.raises(AttributeError):
        d.blocks = 3  # type: ignore[misc]


# --- aggregate ---------------------------------------------------------------------------------------------


def test_aggregate_hand_example() -> None:
    mib = 1 << 20
    ok1 = DeviceMetrics(
        thing_name="a", verified=True, bytes=mib, blocks=256, duplicates=2, connect_s=0.1, download_s=2.0,
        first_block_s=0.3, rejections={"InvalidRequest": 1}, metered_messages_out=20, metered_messages_in=256,
    )  # fmt: skip
    ok2 = DeviceMetrics(
        thing_name="b", verified=True, bytes=mib, blocks=256, re_requests=3, connect_s=0.2, download_s=4.0,
        first_block_s=0.5, metered_messages_out=23, metered_messages_in=259,
    )  # fmt: skip
    bad = DeviceMetrics(
        thing_name="c", failure_reason="rejected:ETagMismatch", bytes=4096, blocks=1, connect_s=0.4,
        rejections={"ETagMismatch": 1, "InvalidRequest": 2}, disconnects=1,
        metered_messages_out=2, metered_messages_in=3,
    )  # fmt: skip
    records = [ok1, ok2, bad]
    s = aggregate(records, wall_s=5.0, settings={"block_size": 4096, "inflight": 2}, price_per_million=2.0)
    assert (s.devices, s.verified, s.failed) == (3, 2, 1)
    assert s.failures_by_reason == (("rejected:ETagMismatch", 1),)
    assert s.bytes_verified == ok1.bytes + ok2.bytes
    assert s.bytes_total == ok1.bytes + ok2.bytes + bad.bytes
    assert s.throughput_mb_s == pytest.approx((ok1.bytes + ok2.bytes) / 5.0 / 1e6)
    assert dict(s.rejections) == {"ETagMismatch": 1, "InvalidRequest": 3}
    assert (s.blocks, s.duplicates, s.re_requests, s.disconnects) == (513, 2, 3, 1)
    messages = sum(r.metered_messages_out + r.metered_messages_in for r in records)
    assert s.metered_messages == messages
    assert s.cost_usd == pytest.approx(messages * 2.0 / 1e6)
    assert s.connect_s is not None and s.connect_s.count == 3 and s.connect_s.max == bad.connect_s
    assert s.download_s is not None and s.download_s.count == 2 and s.download_s.p50 == ok1.download_s
    assert s.settings_dict == {"block_size": 4096, "inflight": 2}
    assert not s.all_verified


def test_aggregate_of_nothing_and_zero_wall_time() -> None:
    s = aggregate([], wall_s=0.0)
    assert (s.devices, s.verified, s.failed, s.throughput_mb_s) == (0, 0, 0, 0.0)
    assert s.download_s is None
    assert not s.all_verified  # no device: nothing was shown to work
    with pytest.raises(ValueError, match="wall_s"):
        aggregate([], wall_s=-1.0)


@settings(max_examples=60)
@given(st.lists(device_records(), max_size=25), seconds)
def test_aggregate_counts_add_up(records: list[DeviceMetrics], wall_s: float) -> None:
    s = aggregate(records, wall_s=wall_s, settings={"block_size": 4096})
    assert s.devices == len(records) == s.verified + s.failed
    assert sum(n for _, n in s.failures_by_reason) == s.failed
    assert sum(n for _, n in s.rejections) == sum(r.rejected for r in records)
    assert s.metered_messages == sum(r.metered_messages for r in records)
    assert s.bytes_verified <= s.bytes_total
    for dist, values in (
        (s.connect_s, [r.connect_s for r in records if r.connect_s is not None]),
        (s.download_s, [r.download_s for r in records if r.download_s is not None]),
    ):
        assert (dist.count if dist else 0) == len(values)
        if dist:
            assert dist.min <= dist.p50 <= dist.p90 <= dist.p99 <= dist.max
    assert FleetSummary.from_dict(json.loads(json.dumps(s.to_dict(), allow_nan=False))) == s


def test_fleet_summary_rejects_inconsistent_counts() -> None:
    with pytest.raises(MetricsFormatError, match="devices"):
        FleetSummary(devices=3, verified=1, failed=1, wall_s=1.0)


# --- progress ----------------------------------------------------------------------------------------------


def test_aggregate_progress_sums_latest_bytes_per_device() -> None:
    a = DeviceMetrics(thing_name="a", verified=True, progress=[(1.0, 100), (3.0, 300)])
    b = DeviceMetrics(thing_name="b", verified=True, progress=[(2.0, 50), (3.0, 80), (4.0, 90)])
    # At each sample time: a's latest bytes + b's latest bytes.
    assert aggregate_progress([a, b]) == [(1.0, 100), (2.0, 100 + 50), (3.0, 300 + 80), (4.0, 300 + 90)]


def test_aggregate_progress_is_capped() -> None:
    records = [
        DeviceMetrics(thing_name=f"d{k}", verified=True, progress=[(k + j / 10, j) for j in range(50)])
        for k in range(20)
    ]
    points = aggregate_progress(records, max_points=100)
    assert len(points) == 100
    assert points[-1] == (19 + 49 / 10, 20 * 49)
    assert [t for t, _ in points] == sorted(t for t, _ in points)


@pytest.mark.parametrize(("step", "interval"), [(0.001, 0.05), (0.01, 0.0), (1.0, 0.05)])
def test_progress_sampler_keeps_a_bounded_even_series(step: float, interval: float) -> None:
    sampler = ProgressSampler(interval_s=interval)
    n = 5000
    for k in range(n):
        sampler.add(k * step, k)
    samples = sampler.samples()
    assert 2 <= len(samples) <= MAX_PROGRESS_SAMPLES
    assert samples[0] == (0.0, 0)
    assert samples[-1] == ((n - 1) * step, n - 1)  # the latest sample is always kept
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples[:-1])]
    span = (n - 1) * step
    # Evenly spread: no gap (except to the final sample) is more than 4x the average.
    assert max(gaps) <= 4 * span / (len(samples) - 1)
    # The samples fit a DeviceMetrics unchanged.
    assert DeviceMetrics(thing_name="d", verified=True, progress=samples).progress == samples
