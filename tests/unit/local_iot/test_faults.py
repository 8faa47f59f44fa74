"""Fault spec parsing and seeded, reproducible fault decisions."""

from __future__ import annotations

import pytest

from local_iot.faults import (
    BumpVersion,
    DisconnectThing,
    FaultInjector,
    FaultSpec,
    FaultSpecError,
    OverwriteObject,
    Trigger,
    overwritten_content,
    parse_faults,
)

FULL = (
    "drop=0.1,dup=0.05,reorder=0.1,delay=0.05:200ms,reject=0.01:Throttling,"
    "disconnect=after:200,bump-version=after:100,overwrite=every:300"
)


def test_parse_full_spec() -> None:
    spec = parse_faults(FULL)
    assert spec == FaultSpec(
        drop=0.1,
        duplicate=0.05,
        reorder=0.1,
        delay=0.05,
        delay_seconds=0.2,
        rejects=((0.01, "Throttling"),),
        disconnect=Trigger(blocks=200, repeat=False),
        bump_version=Trigger(blocks=100, repeat=False),
        overwrite=Trigger(blocks=300, repeat=True),
    )
    assert spec.active and spec.shapes_data


def test_parse_variants() -> None:
    assert parse_faults(None) == FaultSpec()
    assert not parse_faults("none").active
    assert parse_faults("delay=1:1.5s").delay_seconds == 1.5
    assert parse_faults("delay=1:250").delay_seconds == 0.25  # bare number: milliseconds
    assert parse_faults("duplicate=0.5").duplicate == 0.5
    both = parse_faults("reject=0.1:Throttling, reject=0.2:InternalError")
    assert both.rejects == ((0.1, "Throttling"), (0.2, "InternalError"))
    assert not parse_faults("reject=0.5:Throttling").shapes_data


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("drop", "key=value"),
        ("drop=1.5", "from 0 to 1"),
        ("drop=x", "from 0 to 1"),
        ("delay=0.1", "delay=<rate>:<duration>"),
        ("delay=0.1:fast", "delay=<rate>:<duration>"),
        ("reject=0.1", "reject=<rate>:<ErrorCode>"),
        ("reject=0.1:not a code", "reject=<rate>:<ErrorCode>"),
        ("disconnect=200", "after:<K>"),
        ("bump-version=after:0", "after:<K>"),
        ("explode=0.1", "unknown fault"),
        ("drop=0.1,drop=0.2", "twice"),
        ("reject=0.6:A,reject=0.6:B", "more than 1"),
    ],
)
def test_parse_errors_say_what_to_fix(spec: str, needle: str) -> None:
    with pytest.raises(FaultSpecError, match=needle.replace("(", r"\(")):
        parse_faults(spec)


def _run(seed: int, spec: str, answers: int = 50, size: int = 20) -> list[object]:
    injector = FaultInjector(spec=parse_faults(spec), seed=seed)
    trace: list[object] = []
    for answer in range(answers):
        trace.append(injector.reject_code())
        items = [(answer, k) for k in range(size)]
        trace.append([(s.item, s.extra_delay) for s in injector.shape(items)])
        trace.append(injector.count_blocks(f"thing-{answer % 3}", "s1", 0, size))
    return trace


def test_same_seed_same_decisions_different_seed_different_decisions() -> None:
    spec = "drop=0.1,dup=0.1,reorder=0.2,delay=0.1:50ms,reject=0.2:Throttling,disconnect=every:100"
    assert _run(7, spec) == _run(7, spec)
    assert _run(7, spec) != _run(8, spec)


def test_shape_rates_and_invariants() -> None:
    injector = FaultInjector(spec=parse_faults("drop=0.2,dup=0.1,reorder=0.3,delay=0.1:100ms"), seed=1)
    total = 0
    seen: list[int] = []
    for answer in range(200):
        items = list(range(answer * 32, answer * 32 + 32))
        shaped = injector.shape(items)
        seen.extend(s.item for s in shaped)
        total += len(items)
        # nothing invented: every message is one of the answer's, at most twice
        assert all(items[0] <= s.item <= items[-1] for s in shaped)
        assert all(s.extra_delay in (0.0, 0.1) for s in shaped)
    c = injector.counters
    assert c.dropped / total == pytest.approx(0.2, abs=0.03)
    assert c.duplicated / total == pytest.approx(0.1 * 0.8, abs=0.03)  # dropped messages are not duplicated
    assert c.reordered / total == pytest.approx(0.3 * 31 / 32, abs=0.04)
    assert len(seen) == total - c.dropped + c.duplicated
    assert seen != sorted(seen)


def test_reorder_only_permutes_and_duplicate_follows_its_original() -> None:
    reorder = FaultInjector(spec=parse_faults("reorder=0.5"), seed=3)
    out = [s.item for s in reorder.shape(list(range(100)))]
    assert sorted(out) == list(range(100)) and out != list(range(100))
    dup = FaultInjector(spec=parse_faults("dup=0.5"), seed=3)
    out = [s.item for s in dup.shape(list(range(100)))]
    assert sorted(set(out)) == list(range(100)) and len(out) > 100
    assert out == sorted(out)  # the copy comes right after its original


def test_no_shaping_without_data_faults() -> None:
    injector = FaultInjector(spec=parse_faults("reject=0.5:Throttling"), seed=0)
    assert [s.item for s in injector.shape([1, 2, 3])] == [1, 2, 3]


def test_reject_rate_and_codes() -> None:
    injector = FaultInjector(spec=parse_faults("reject=0.1:Throttling,reject=0.2:InternalError"), seed=5)
    codes = [injector.reject_code() for _ in range(5000)]
    assert codes.count("Throttling") / 5000 == pytest.approx(0.1, abs=0.02)
    assert codes.count("InternalError") / 5000 == pytest.approx(0.2, abs=0.02)
    assert injector.counters.rejected == codes.count("Throttling") + codes.count("InternalError")


def test_triggers_after_and_every() -> None:
    injector = FaultInjector(spec=parse_faults("disconnect=after:50,bump-version=every:40,overwrite=after:100"), seed=0)
    assert injector.count_blocks("a", "s1", 0, 32) == []
    assert injector.count_blocks("a", "s1", 0, 32) == [DisconnectThing(thing_name="a"), BumpVersion(stream_id="s1")]
    assert injector.count_blocks("b", "s1", 2, 32) == [BumpVersion(stream_id="s1")]  # stream at 96
    # the stream passes 100 blocks; disconnect counts per thing and b is at 49
    assert injector.count_blocks("b", "s1", 2, 17) == [OverwriteObject(stream_id="s1", file_id=2)]
    assert injector.count_blocks("b", "s1", 2, 1) == [DisconnectThing(thing_name="b")]
    # one answer crossing several multiples of K changes the world once
    assert injector.count_blocks("a", "s1", 0, 500) == [BumpVersion(stream_id="s1")]
    assert Trigger(blocks=40, repeat=True).fired(100, 600) == 13


def test_overwritten_content_changes_bytes_keeps_length() -> None:
    assert overwritten_content(b"abc") == b"ab\x9c"
    assert overwritten_content(b"") == b"\x00"
