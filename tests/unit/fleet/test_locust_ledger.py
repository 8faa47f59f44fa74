"""The Locust fleet's pure parts: the master's ledger, the messages between processes, the option round trips."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from device_sim.fleet.locust.ledger import LOST, UNREPORTED, FleetLedger, WorkerInfo, start_delay
from device_sim.fleet.locust.messages import (
    Claim,
    Config,
    Finished,
    Grant,
    Granted,
    HostFailed,
    Progress,
    Ready,
    Records,
    Run,
    Stop,
    WireError,
    decode_host_line,
    encode_host_line,
)
from device_sim.results.metrics import DeviceMetrics

W1 = WorkerInfo(node_id="w1", pid=101, hostname="load-1")
W2 = WorkerInfo(node_id="w2", pid=202, hostname="load-2")


def ledger(n: int = 10, **kw: Any) -> FleetLedger:
    return FleetLedger([f"t{i}" for i in range(n)], label="4096B cbor", connect_rate=kw.pop("rate", 100.0), **kw)


def ok(thing: str) -> dict[str, Any]:
    return DeviceMetrics(thing_name=thing, verified=True, bytes=10, started_at=1.0, ended_at=2.0).to_dict()


# ------------------------------------------------------------------------------------------------------- ledger


def test_claims_get_disjoint_devices_in_order_until_used_up() -> None:
    book = ledger(10)
    a = book.grant(W1, 4)
    b = book.grant(W2, 4)
    c = book.grant(W1, 4)
    assert [g.index for g in a] == [0, 1, 2, 3]
    assert [g.index for g in b] == [4, 5, 6, 7]
    assert [g.index for g in c] == [8, 9]  # shorter: the fleet is used up
    assert book.grant(W2, 3) == []
    assert [g.thing_name for g in a + b + c] == [f"t{i}" for i in range(10)]
    assert book.granted == 10 and not book.done  # granted, not reported


def test_done_when_every_device_reported() -> None:
    book = ledger(3)
    for g in book.grant(W1, 3):
        assert not book.done
        assert book.accept("w1", g.index, ok(g.thing_name)) is not None
    assert book.done and book.reported == 3
    records = book.final_records(5.0, why_unstarted="unused")
    assert [r.thing_name for r in records] == ["t0", "t1", "t2"] and all(r.verified for r in records)


def test_lost_worker_names_only_its_unreported_devices() -> None:
    book = ledger(6)
    mine = book.grant(W1, 3)
    theirs = book.grant(W2, 3)
    book.accept("w1", mine[0].index, ok("t0"))
    lost = book.worker_lost("w1", at=4.2)
    assert lost == ["t1", "t2"]
    assert book.worker_lost("w1", at=5.0) == []  # once
    assert book.grant(W1, 2) == []  # a lost worker gets nothing more
    for g in theirs:
        book.accept("w2", g.index, ok(g.thing_name))
    assert book.done
    records = {r.thing_name: r for r in book.final_records(9.0, why_unstarted="unused")}
    assert records["t0"].verified
    assert records["t1"].failure_reason == LOST and "worker pid 101 on load-1" in (records["t1"].failure_message or "")
    assert book.lost_devices() == ["t1", "t2"] and book.lost_workers() == [W1]


def test_a_late_record_replaces_lost_but_a_second_record_is_ignored() -> None:
    book = ledger(2)
    book.grant(W1, 2)
    book.worker_lost("w1", at=1.0)
    assert book.accept("w1", 0, ok("t0")) is not None  # the worker came back
    assert book.accept("w1", 0, ok("t0")) is None
    assert book.lost_devices() == ["t1"]


def test_records_that_do_not_fit_are_refused_or_kept_as_errors() -> None:
    book = ledger(3)
    book.grant(W1, 2)
    assert book.accept("w1", 2, ok("t2")) is None  # never granted
    assert book.accept("w1", 0, ok("t1")) is None  # names another thing
    bad = book.accept("w1", 1, {"thing_name": "t1", "verified": "yes"})
    assert bad is not None and bad.failure_reason == "error:bad-record"


def test_records_without_a_settings_label_get_the_runs() -> None:
    book = ledger(2)
    book.grant(W1, 2)
    failed = DeviceMetrics(thing_name="t0", verified=False, failure_reason="error:device-host", failure_message="x")
    accepted = book.accept("w1", 0, failed.to_dict())
    assert accepted is not None and accepted.settings == "4096B cbor"
    labelled = book.accept("w1", 1, {**ok("t1"), "settings": "8192B json"})
    assert labelled is not None and labelled.settings == "8192B json"


def test_close_stops_grants_and_fills_the_gaps() -> None:
    book = ledger(5)
    book.grant(W1, 2)
    book.accept("w1", 0, ok("t0"))
    assert book.close() == 3
    assert book.grant(W2, 3) == []
    assert not book.done  # t1 is still out
    records = book.final_records(7.5, why_unstarted="the deadline passed before this device started")
    reasons = [r.failure_reason for r in records]
    assert reasons == [None, UNREPORTED, "cancelled", "cancelled", "cancelled"]
    assert records[2].failure_message == "the deadline passed before this device started"
    assert records[1].ended_at == 7.5


def test_thing_names_must_be_unique() -> None:
    with pytest.raises(ValueError):
        FleetLedger(["a", "a"], label="x", connect_rate=1)


def test_start_delays_smooth_the_spawn_staircase() -> None:
    delays = [start_delay(i, connect_rate=100, start_jitter=0, seed=7) for i in range(2000)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert delays == [start_delay(i, connect_rate=100, start_jitter=0, seed=7) for i in range(2000)]
    assert delays != [start_delay(i, connect_rate=100, start_jitter=0, seed=8) for i in range(2000)]
    per_tenth = Counter(int(d * 10) for d in delays)  # 200 expected per 0.1 s slot
    assert len(per_tenth) == 10 and min(per_tenth.values()) > 140 and max(per_tenth.values()) < 260


def test_slow_rates_spread_over_the_longer_step_plus_jitter() -> None:
    delays = [start_delay(i, connect_rate=0.5, start_jitter=3, seed=0) for i in range(500)]
    assert max(delays) <= 5.0 and max(delays) > 4.5  # step 2 s (one user per 2 s) + 3 s jitter


# ----------------------------------------------------------------------------------------------------- messages


def test_locust_messages_round_trip() -> None:
    claim = Claim(count=3, pid=9, hostname="h", host_pid=10)
    assert Claim.from_wire(claim.to_wire()) == claim
    grant = Grant(devices=(Granted(index=4, thing_name="t4", delay_s=0.25),), asked=3, epoch=1e9)
    assert Grant.from_wire(grant.to_wire()) == grant
    records = Records(records=((4, ok("t4")),), progress=Progress(verified=1, bytes=10))
    assert Records.from_wire(records.to_wire()) == records
    assert Stop.from_wire(Stop(reason="deadline").to_wire()) == Stop(reason="deadline")
    assert Progress(verified=1, bytes=5) + Progress(failed=2, bytes=1) == Progress(verified=1, failed=2, bytes=6)


@pytest.mark.parametrize(
    "message",
    [
        Config(plan='{"manifest": "m.json"}', manifest=None),
        Config(plan="{}", manifest="/copy/run.json"),
        Run(index=3, thing_name="t3", delay_s=0.5, epoch=1.7e9),
        Stop(reason="deadline"),
        Ready(pid=77, identities=100),
        HostFailed(message="no manifest"),
        Finished(index=2, record=ok("t2")),
        Progress(connecting=1, downloading=2, verified=3, failed=4, bytes=5),
    ],
)
def test_host_lines_round_trip(message: Any) -> None:
    line = encode_host_line(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_host_line(line) == message


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"op": "dance"}\n',
        b'{"op": "run", "index": -1, "thing": "t", "delay": 0, "epoch": 0}\n',
        b'{"op": "run", "index": 1, "thing": "t", "delay": "soon", "epoch": 0}\n',
        b'{"op": "config", "plan": ["a", 3]}\n',
        b'{"op": "finished", "index": 1, "record": []}\n',
        b'{"op": "progress", "verified": true}\n',
    ],
)
def test_bad_host_lines_are_wire_errors(line: bytes) -> None:
    with pytest.raises(WireError):
        decode_host_line(line)


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (Claim, {"count": 0, "pid": 1, "hostname": "h"}),
        (Claim, "claim"),
        (Grant, {"devices": [[1, "t", 0.1]], "asked": 0, "epoch": 1}),
        (Grant, {"devices": [[1, "t"]], "asked": 1, "epoch": 1}),
        (Grant, {"devices": [[1, "t", 0.1], [2, "u", 0.1]], "asked": 1, "epoch": 1}),
        (Records, {"records": [[1, "x"]]}),
        (Stop, {}),
    ],
)
def test_bad_locust_messages_are_wire_errors(cls: Any, data: Any) -> None:
    with pytest.raises(WireError):
        cls.from_wire(data)
