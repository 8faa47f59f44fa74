"""Quota logic with a virtual clock (docs/protocol.md section 5)."""

from __future__ import annotations

import pytest

from local_iot.quotas import Pacer, Quotas, QuotaSettings, QuotaSpecError, parse_quotas


def test_parse_quotas() -> None:
    assert parse_quotas(None) is None
    assert parse_quotas("none") is None
    assert parse_quotas("aws") == QuotaSettings()
    raised = parse_quotas("aws:account=50000")
    assert raised is not None and raised.account_outbound_publishes_per_second == 50000
    for bad in ("azure", "aws:account=lots", "aws:connection=5"):
        with pytest.raises(QuotaSpecError):
            parse_quotas(bad)
    with pytest.raises(QuotaSpecError):
        QuotaSettings(connection_bytes_per_second=0)


def test_aws_defaults() -> None:
    s = QuotaSettings()
    assert (s.connection_publishes_per_second, s.connection_bytes_per_second) == (100, 512 * 1024)
    assert s.account_outbound_publishes_per_second == 20000


def test_pacer_lets_a_burst_through_then_paces_at_the_rate() -> None:
    pacer = Pacer(rate=1000.0, burst=100.0)
    times = [pacer.schedule(10.0, 10) for _ in range(30)]
    assert times[:10] == [10.0] * 10  # the burst of 100 units
    # then one item of 10 units every 10 ms
    assert times[10:] == pytest.approx([10.0 + 0.01 * k for k in range(1, 21)])


def test_pacer_refills_while_idle_and_never_goes_back_in_time() -> None:
    pacer = Pacer(rate=100.0, burst=10.0)
    assert pacer.schedule(0.0, 10) == 0.0
    assert pacer.schedule(0.0, 5) == pytest.approx(0.05)
    assert pacer.schedule(10.0, 10) == 10.0  # refilled while idle, capped at the burst
    assert pacer.schedule(10.0, 10) == pytest.approx(10.1)
    # an item larger than the burst waits for a full bucket, then goes into debt that later items pay
    big = Pacer(rate=100.0, burst=10.0)
    assert big.schedule(0.0, 30) == 0.0
    assert big.schedule(0.0, 10) == pytest.approx(0.3)


def test_requests_over_100_per_second_are_dropped() -> None:
    quotas = Quotas(settings=QuotaSettings())
    admitted = sum(quotas.admit_request("thing-1", 5.0) for _ in range(150))
    assert admitted == 100
    assert quotas.counters.requests_dropped == 50
    # another thing has its own budget
    assert quotas.admit_request("thing-2", 5.0)
    # half a second later, 50 tokens are back
    assert sum(quotas.admit_request("thing-1", 5.5) for _ in range(80)) == 50


def test_answers_over_the_publish_budget_are_discarded() -> None:
    quotas = Quotas(settings=QuotaSettings())
    assert quotas.admit_request("t", 0.0)
    # one request answered with 130 small messages: the budget has 99 tokens left, the other 31 are discarded
    sent = [quotas.schedule_answer("t", 0.0, 100) for _ in range(130)]
    assert sum(at is not None for at in sent) == 99
    assert sent[99:] == [None] * 31
    assert quotas.counters.answers_dropped == 31 and quotas.counters.answers == 99
    assert not quotas.admit_request("t", 0.0)  # requests find the budget spent too
    assert quotas.admit_request("t", 0.011)  # 1.1 tokens back
    assert quotas.schedule_answer("other", 0.0, 100) == 0.0  # another connection has its own budget


def test_bytes_per_connection_are_delayed_to_512_kib_per_second() -> None:
    quotas = Quotas(settings=QuotaSettings())
    size = 32 * 1024
    times = [quotas.schedule_answer("t", 0.0, size) for _ in range(40)]  # 1.25 MiB decided at once, 40 publishes
    sent = [t for t in times if t is not None]
    assert len(sent) == 40
    assert sent[:4] == [0.0] * 4  # the 128 KiB burst
    rate = (len(sent) - 4) * size / (sent[-1] - sent[3])
    assert rate == pytest.approx(512 * 1024, rel=0.01)
    assert sent == sorted(sent)  # order kept
    assert quotas.counters.answers_delayed == len(sent) - 4
    # another connection is not held up
    assert quotas.schedule_answer("other", 0.0, size) == 0.0


def test_account_outbound_publishes_are_paced() -> None:
    quotas = Quotas(settings=QuotaSettings(account_outbound_publishes_per_second=1000, account_outbound_burst=10))
    times = [quotas.schedule_answer(f"thing-{k}", 0.0, 10) for k in range(110)]
    assert times[:10] == [0.0] * 10
    assert times[-1] == pytest.approx(0.1)
