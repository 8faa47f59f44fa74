"""ServicePipeline: latency, quotas and faults around the core, with a virtual clock (no network, no sleeps)."""

from __future__ import annotations

from collections.abc import Sequence

import cbor2
import pytest

from local_iot.faults import parse_faults
from local_iot.memory_catalog import InMemoryCatalog
from local_iot.quotas import QuotaSettings
from local_iot.service import AnswerKind, Outgoing
from local_iot.service_pipeline import Action, DisconnectClient, ServicePipeline, ServiceSettings, thing_of_topic

ROLE = "arn:aws:iam::123456789012:role/r"
FILE_SIZE = 4 * 1024 * 1024
DATA = (bytes(range(251)) * (FILE_SIZE // 251 + 1))[:FILE_SIZE]


def _catalog() -> InMemoryCatalog:
    catalog = InMemoryCatalog()
    catalog.add_role(ROLE)
    catalog.put_object("b", "fw.bin", DATA)
    catalog.create_stream("s1", [(0, "b", "fw.bin", None)], ROLE)
    return catalog


def get(pipeline: ServicePipeline, now: float, thing: str = "dev", **doc: object) -> Sequence[Action]:
    return pipeline.receive(f"$aws/things/{thing}/streams/s1/get/cbor", cbor2.dumps(doc), now)


def outgoing(actions: Sequence[Action]) -> list[Outgoing]:
    return [a for a in actions if isinstance(a, Outgoing)]


def indices(actions: Sequence[Action]) -> list[int]:
    return [cbor2.loads(a.payload)["i"] for a in outgoing(actions) if a.kind is AnswerKind.DATA]


def test_thing_of_topic() -> None:
    assert thing_of_topic("$aws/things/dev-1/streams/s/get/cbor") == "dev-1"
    assert thing_of_topic("$aws/things//x") is None
    assert thing_of_topic("other/things/x") is None


def test_plain_answers_are_due_now_in_order() -> None:
    pipeline = ServicePipeline(_catalog())
    actions = get(pipeline, 3.0, f=0, l=4096, o=5, n=4)
    assert indices(actions) == [5, 6, 7, 8]
    assert {a.due for a in actions} == {3.0}


def test_latency_delays_every_answer_and_keeps_order() -> None:
    pipeline = ServicePipeline(_catalog(), ServiceSettings(latency_ms=250))
    actions = get(pipeline, 3.0, f=0, l=4096, o=0, n=8)
    assert indices(actions) == list(range(8))
    assert [a.due for a in actions] == [pytest.approx(3.25)] * 8
    [rejection] = get(pipeline, 4.0, f=0, l=1)
    assert rejection.due == pytest.approx(4.25)
    with pytest.raises(ValueError):
        ServiceSettings(latency_ms=-1)


def test_quota_drops_requests_beyond_100_publishes_per_second_in_plus_out() -> None:
    pipeline = ServicePipeline(_catalog(), ServiceSettings(quotas=QuotaSettings()))
    answered = [
        pipeline.receive("$aws/things/dev/streams/s1/describe/cbor", b"\xa0", 1.0) for _ in range(150)
    ]  # each admitted request costs 2 publishes: itself and its answer
    assert sum(1 for a in answered if a) == 50
    stats = pipeline.stats()
    assert stats.quotas is not None and stats.quotas.requests_dropped == 100
    assert pipeline.receive("$aws/things/other/streams/s1/describe/cbor", b"\xa0", 1.0)  # its own budget


def _download_rate(block_size: int, blocks_per_request: int, seconds: float = 20.0) -> float:
    """A virtual device: asks for the lowest missing blocks when the previous answer has arrived, and 1 s after
    a request that got no answer at all (dropped by the quota). Blocks over the publish budget never arrive."""
    pipeline = ServicePipeline(_catalog(), ServiceSettings(quotas=QuotaSettings()))
    now, received = 0.0, 0
    total = FILE_SIZE // block_size
    have: set[int] = set()
    offset = 0
    while now < seconds:
        n = min(blocks_per_request, total - offset)
        actions = get(pipeline, now, f=0, l=block_size, o=offset, n=n)
        if not actions:
            now += 1.0
            continue
        got = indices(actions)
        assert got == sorted(got) and set(got) <= set(range(offset, offset + n))  # a prefix of what was asked
        now = max(a.due for a in actions)
        if now <= seconds:
            received += len(got)
        have.update(got)
        if len(have) == total:
            have.clear()
        offset = min(set(range(total)) - have)
    return received / seconds


def test_quota_pacing_in_blocks_per_second() -> None:
    # 4 KiB blocks: the 100 publishes/s budget binds (32 blocks + 1 request per answer): about 97 blocks/s
    assert 85 <= _download_rate(4096, 32) <= 100
    # 32 KiB blocks: 512 KiB/s binds: 16 blocks/s
    assert 14 <= _download_rate(32768, 4) <= 17
    # 1 KiB blocks, n=128: the budget is paid in debt (requests dropped), still at most 100 publishes/s plus the
    # initial burst of 100 spread over the 20 s
    assert 80 <= _download_rate(1024, 128) <= 105


def test_injected_rejection_replaces_the_answer() -> None:
    pipeline = ServicePipeline(_catalog(), ServiceSettings(faults=parse_faults("reject=1:Throttling")))
    [action] = get(pipeline, 0.0, c="tok", f=0, l=4096, n=3)
    assert isinstance(action, Outgoing) and action.kind is AnswerKind.REJECTED
    assert cbor2.loads(action.payload) == {
        "clientToken": "tok",
        "c": "tok",
        "code": "Throttling",
        "o": "Throttling",
        "message": "Injected by local_iot --faults.",
        "m": "Injected by local_iot --faults.",
    }
    # a request that is rejected anyway keeps its own answer
    [real] = get(pipeline, 0.0, f=0, l=1)
    assert isinstance(real, Outgoing) and real.code == "BlockSizeOutOfBounds"


def _trace(seed: int) -> list[tuple[float, str, bytes]]:
    spec = parse_faults("drop=0.2,dup=0.1,reorder=0.2,delay=0.1:300ms,reject=0.1:Throttling")
    pipeline = ServicePipeline(_catalog(), ServiceSettings(faults=spec, seed=seed, latency_ms=10))
    trace = []
    for k in range(30):
        for a in get(pipeline, float(k), f=0, l=1024, o=32 * k, n=32):
            assert isinstance(a, Outgoing)
            trace.append((a.due, a.topic, a.payload))
    return trace


def test_faults_are_reproducible_by_seed() -> None:
    assert _trace(42) == _trace(42)
    assert _trace(42) != _trace(43)


def test_data_faults_shape_the_answer() -> None:
    spec = parse_faults("drop=0.1,dup=0.1,reorder=0.1,delay=0.1:300ms")
    pipeline = ServicePipeline(_catalog(), ServiceSettings(faults=spec, seed=1, latency_ms=100))
    actions = get(pipeline, 0.0, f=0, l=1024, o=0, n=128)
    got = indices(actions)
    assert set(got) < set(range(128))  # some dropped
    assert len(got) != len(set(got))  # some duplicated
    assert got != sorted(got)  # some reordered
    assert {round(a.due, 6) for a in actions} == {0.1, 0.4}  # latency, plus the fault delay for some
    c = pipeline.stats().faults
    assert c.dropped and c.duplicated and c.reordered and c.delayed


def test_bump_version_after_k_blocks() -> None:
    catalog = _catalog()
    pipeline = ServicePipeline(catalog, ServiceSettings(faults=parse_faults("bump-version=after:64")))
    assert indices(get(pipeline, 0.0, s=1, f=0, l=1024, o=0, n=32)) == list(range(32))
    assert indices(get(pipeline, 0.0, s=1, f=0, l=1024, o=32, n=32)) == list(range(32, 64))
    [rejection] = outgoing(get(pipeline, 0.0, s=1, f=0, l=1024, o=64, n=32))
    assert rejection.code == "VersionMismatch"
    assert indices(get(pipeline, 0.0, s=2, f=0, l=1024, o=64, n=32)) == list(range(64, 96))
    assert pipeline.stats().faults.version_bumps == 1
    stream = catalog.get_stream("s1")
    assert stream is not None and stream.version == 2


def test_overwrite_after_k_blocks_gives_etag_mismatch() -> None:
    pipeline = ServicePipeline(_catalog(), ServiceSettings(faults=parse_faults("overwrite=after:10")))
    assert indices(get(pipeline, 0.0, f=0, l=1024, o=0, n=10)) == list(range(10))
    [rejection] = outgoing(get(pipeline, 0.0, f=0, l=1024, o=10, n=10))
    assert rejection.code == "ETagMismatch"


def test_disconnect_after_k_blocks_is_an_action_after_the_kth_answer() -> None:
    pipeline = ServicePipeline(_catalog(), ServiceSettings(faults=parse_faults("disconnect=after:40"), latency_ms=5))
    assert not any(isinstance(a, DisconnectClient) for a in get(pipeline, 0.0, f=0, l=1024, o=0, n=32))
    actions = get(pipeline, 1.0, f=0, l=1024, o=32, n=32)
    assert isinstance(actions[-1], DisconnectClient)
    assert actions[-1].thing_name == "dev" and actions[-1].due == pytest.approx(1.005)
    assert len(outgoing(actions)) == 32
    assert not any(isinstance(a, DisconnectClient) for a in get(pipeline, 2.0, f=0, l=1024, o=64, n=32))
    assert any(isinstance(a, DisconnectClient) for a in get(pipeline, 2.0, thing="dev-2", f=0, l=1024, o=0, n=41))
