"""The transport's pure parts: settings, the lifecycle table, outbound pacing and the error boundary (no network)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path

import pytest
from awscrt.exceptions import AwsCrtError
from awscrt.mqtt import SubscribeError

from device_sim.transport import (
    TRANSITIONS,
    ConnectError,
    ConnectFailure,
    ConnectionLost,
    FlowControl,
    Input,
    InvalidSettings,
    MqttProtocol,
    OperationTimeout,
    PublishError,
    QoS,
    SubscribeRejected,
    TransportSettings,
    TransportState,
    TransportUsageError,
    transition,
)
from device_sim.transport._driver import LoopHop, MessageRuns
from device_sim.transport._mqtt311 import OutboundLimiter
from device_sim.transport.errors import BrokerRefusal, Op, translate

CERTS = {"cert": Path("dev.pem"), "key": Path("dev.key")}


# ------------------------------------------------------------------------------------------------------ settings


def test_defaults_follow_the_aws_samples() -> None:
    s = TransportSettings(endpoint="abc-ats.iot.eu-west-1.amazonaws.com", client_id="thing-1", **CERTS)
    assert (s.port, s.alpn, s.tls, s.protocol, s.keepalive_s) == (8883, False, True, MqttProtocol.MQTT5, 30)
    assert s.flow_control is FlowControl.AWS and s.qos is QoS.AT_MOST_ONCE and s.metrics is False


def test_port_443_turns_alpn_on_and_plain_tcp_defaults_to_1883() -> None:
    assert TransportSettings(endpoint="h", client_id="t", port=443, **CERTS).alpn is True
    plain = TransportSettings(endpoint="127.0.0.1", client_id="t", no_tls=True)
    assert (plain.port, plain.alpn, plain.tls) == (1883, False, False)


def test_strings_are_coerced_to_enums_and_paths() -> None:
    s = TransportSettings(
        endpoint="h", client_id="t", cert="c.pem", key="k.pem", protocol="mqtt311", flow_control="none", qos=1
    )  # type: ignore[arg-type]
    assert s.cert == Path("c.pem") and s.protocol is MqttProtocol.MQTT311
    assert s.flow_control is FlowControl.NONE and s.qos is QoS.AT_LEAST_ONCE


@pytest.mark.parametrize(
    ("kwargs", "message", "hint"),
    [
        ({"endpoint": "h", "client_id": "t"}, "needs a client certificate", "--no-tls"),
        ({"endpoint": "h", "client_id": "t", "no_tls": True, "ca": "ca.pem"}, "--no-tls with --ca", "drop"),
        ({"endpoint": "", "client_id": "t", "no_tls": True}, "endpoint is empty", "--endpoint"),
        ({"endpoint": "h", "client_id": "", "no_tls": True}, "client id", "thing name"),
        ({"endpoint": "h", "client_id": "x" * 129, "no_tls": True}, "1-128 bytes", "thing name"),
        ({"endpoint": "h", "client_id": "t", "no_tls": True, "port": 70000}, "not a TCP port", "8883"),
        ({"endpoint": "h", "client_id": "t", "no_tls": True, "keepalive_s": 0}, "keepalive", "30-1200"),
        ({"endpoint": "h", "client_id": "t", "no_tls": True, "alpn": True}, "ALPN needs TLS", None),
        ({"endpoint": "h", "client_id": "t", "no_tls": True, "connect_timeout_s": 0}, "connect timeout", None),
        ({"endpoint": "h", "client_id": "t", "no_tls": True, "reconnect_min_s": 5, "reconnect_max_s": 1}, "min", None),
    ],
)
def test_invalid_settings_say_what_to_do(kwargs: dict[str, object], message: str, hint: str | None) -> None:
    with pytest.raises(InvalidSettings, match=message) as info:
        TransportSettings(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, TransportUsageError)
    if hint is not None:
        assert info.value.hint is not None and hint in info.value.hint


# ----------------------------------------------------------------------------------------------- lifecycle table


@pytest.mark.parametrize("state", list(TransportState))
@pytest.mark.parametrize("event", list(Input))
def test_every_state_input_pair_is_decided(state: TransportState, event: Input) -> None:
    if (state, event) in TRANSITIONS:
        assert transition(state, event) == TRANSITIONS[(state, event)]
    else:
        with pytest.raises(TransportUsageError) as info:
            transition(state, event)
        assert event.value in str(info.value) and state.value in str(info.value)


def test_closed_is_terminal_and_every_live_state_can_close() -> None:
    assert all(transition(TransportState.CLOSED, e) is None for e in Input if e is not Input.CONNECT)
    for state in TransportState:
        if state is not TransportState.CLOSED:
            after = transition(state, Input.CLOSE)
            assert after is TransportState.CLOSING or (state is TransportState.CLOSING and after is None)
    assert transition(TransportState.CLOSING, Input.STOPPED) is TransportState.CLOSED


def test_operations_in_flight_only_resume_through_resubscribing() -> None:
    # A reconnect does not make the transport CONNECTED by itself: RESUMED (after re-subscribing) does.
    assert transition(TransportState.RECONNECTING, Input.CONNACK) is None
    assert transition(TransportState.RECONNECTING, Input.RESUMED) is TransportState.CONNECTED
    assert transition(TransportState.CONNECTED, Input.INTERRUPTED) is TransportState.RECONNECTING


def test_connecting_twice_names_the_input_and_state() -> None:
    with pytest.raises(TransportUsageError, match=r"connect\(\) is not allowed while the transport is connected"):
        transition(TransportState.CONNECTED, Input.CONNECT)
    with pytest.raises(TransportUsageError) as info:
        transition(TransportState.CLOSED, Input.CONNECT)
    assert info.value.hint is not None and "new MqttTransport" in info.value.hint


# ------------------------------------------------------------------------------------------------ outbound pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_spaces_small_publishes_10_ms_apart() -> None:
    clock = FakeClock()
    limiter = OutboundLimiter(100, 512 * 1024, clock=clock)
    delays = [limiter.reserve(50) for _ in range(101)]
    assert delays[0] == 0 and delays[100] == pytest.approx(1.0)
    assert all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(delays))


def test_limiter_caps_bytes_per_second() -> None:
    clock = FakeClock()
    limiter = OutboundLimiter(100, 512 * 1024, clock=clock)
    assert limiter.reserve(256 * 1024) == 0
    assert limiter.reserve(10) == pytest.approx(0.5)  # the first 256 KiB occupy half a second
    clock.now += 10  # idle time is not banked: no burst afterwards beyond one publish
    assert limiter.reserve(10) == 0 and limiter.reserve(10) == pytest.approx(0.01)


# -------------------------------------------------------------------------------------------------- the boundary


def crt(name: str, code: int = 1) -> AwsCrtError:
    return AwsCrtError(code=code, name=name, message="...")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("AWS_IO_SOCKET_CONNECTION_REFUSED", ConnectFailure.UNREACHABLE),
        ("AWS_IO_SOCKET_TIMEOUT", ConnectFailure.UNREACHABLE),
        ("AWS_IO_DNS_INVALID_NAME", ConnectFailure.DNS),
        ("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE", ConnectFailure.TLS),
        ("AWS_IO_TLS_ERROR_READ_FAILURE", ConnectFailure.TLS),
        ("AWS_ERROR_MQTT_UNEXPECTED_HANGUP", ConnectFailure.CLOSED_BY_BROKER),
        ("AWS_ERROR_MQTT5_CONNACK_TIMEOUT", ConnectFailure.TIMEOUT),
        ("AWS_ERROR_SOMETHING_NEW", ConnectFailure.OTHER),
    ],
)
def test_connect_errors_are_classified(name: str, kind: ConnectFailure) -> None:
    error = translate(Op.CONNECT, crt(name), where="h:8883")
    assert isinstance(error, ConnectError) and error.kind is kind
    assert "h:8883" in str(error) and name in str(error)


def test_tls_hints_tell_server_and_client_certificate_problems_apart() -> None:
    server_side = translate(Op.CONNECT, crt("AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE"), where="h:1")
    client_side = translate(Op.CONNECT, crt("AWS_IO_TLS_ERROR_READ_FAILURE"), where="h:1")
    assert server_side is not None and "--ca" in (server_side.hint or "")
    assert client_side is not None and "client certificate" in (client_side.hint or "")


def test_broker_refusals_carry_the_policy_hint() -> None:
    error = translate(Op.CONNECT, BrokerRefusal("NOT_AUTHORIZED", 0x87), where="h:1")
    assert isinstance(error, ConnectError) and error.kind is ConnectFailure.REFUSED
    assert "0x87" in str(error) and "iot:Connect" in (error.hint or "")


def test_operation_errors() -> None:
    assert isinstance(translate(Op.PUBLISH, crt("AWS_ERROR_MQTT5_USER_REQUESTED_STOP"), where="h:1"), ConnectionLost)
    assert isinstance(translate(Op.SUBSCRIBE, crt("AWS_ERROR_MQTT_NOT_CONNECTED"), where="h:1"), ConnectionLost)
    assert isinstance(translate(Op.PUBLISH, crt("AWS_ERROR_MQTT_TIMEOUT"), where="h:1"), OperationTimeout)
    assert isinstance(translate(Op.PUBLISH, crt("AWS_ERROR_MQTT_QUEUE_FULL"), where="h:1"), PublishError)
    usage = translate(Op.PUBLISH, crt("AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION"), where="h:1")
    assert type(usage) is TransportUsageError and "256 bytes" in (usage.hint or "")
    rejected = translate(Op.SUBSCRIBE, SubscribeError("a/b"), where="h:1")
    assert isinstance(rejected, SubscribeRejected) and rejected.rejected == {"a/b": 0x80}


def test_setup_errors_are_the_callers_and_unknown_exceptions_pass_through() -> None:
    setup = translate(Op.SETUP, FileNotFoundError(2, "No such file"), where="h:1")
    assert isinstance(setup, InvalidSettings) and "--key" in (setup.hint or "")
    assert translate(Op.PUBLISH, TypeError("a bug"), where="h:1") is None


# ----------------------------------------------------------------------------------------------- the loop hop


def test_the_hop_batches_a_burst_into_one_wake_up_and_keeps_each_threads_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        hop = LoopHop(loop)
        got: list[tuple[int, int, int]] = []
        all_in = asyncio.Event()
        blocked, posted = threading.Event(), threading.Event()
        waited: list[bool] = []

        def deliver(thread: int, n: int) -> None:
            got.append((thread, n, threading.get_ident()))
            if len(got) == 1000:
                all_in.set()

        def produce() -> None:  # two "awscrt threads" post 500 items each while the loop is busy
            assert blocked.wait(10)
            threads = [
                threading.Thread(target=lambda t=t: [hop.post(deliver, t, i) for i in range(500)]) for t in (0, 1)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            posted.set()

        def block_the_loop() -> None:
            blocked.set()
            waited.append(posted.wait(10))

        loop.call_soon(block_the_loop)
        producer = threading.Thread(target=produce)
        producer.start()
        await asyncio.wait_for(all_in.wait(), 10)
        await asyncio.to_thread(producer.join)
        assert waited == [True]
        assert hop.wakeups == 1  # the first post woke the loop; the other 999 found that drain pending
        for thread in (0, 1):
            assert [n for t, n, _ in got if t == thread] == list(range(500))
        assert {ident for _, _, ident in got} == {threading.get_ident()}

    asyncio.run(main())


def test_items_posted_while_draining_wait_for_the_next_drain() -> None:
    """A flood cannot starve the loop: a drain takes only the items present when it starts."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hop = LoopHop(loop)
        order: list[str] = []
        done = asyncio.Event()

        def first() -> None:
            order.append("first")
            loop.call_soon(order.append, "other work")
            hop.post(lambda: (order.append("posted meanwhile"), done.set()))

        hop.post(first)
        await asyncio.wait_for(done.wait(), 10)
        assert order == ["first", "other work", "posted meanwhile"]
        assert hop.wakeups == 2

    asyncio.run(main())


def test_a_failing_handler_is_reported_and_the_drain_goes_on() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        hop = LoopHop(loop)
        got: list[int] = []
        done = asyncio.Event()

        def boom() -> None:
            raise ValueError("handler bug")

        hop.post(got.append, 1)
        hop.post(boom)
        hop.post(lambda: (got.append(2), done.set()))
        await asyncio.wait_for(done.wait(), 10)
        assert got == [1, 2]
        assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)

    asyncio.run(main())


def test_consecutive_messages_of_one_handler_arrive_as_one_run_in_their_order() -> None:
    """MessageRuns: a run of a handler's messages goes to ``many`` in one call; anything posted in between (another
    handler's message, a lifecycle event) ends the run, so the order of all events stays awscrt's order."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        hop = LoopHop(loop)
        calls: list[tuple[str, object]] = []
        done = asyncio.Event()

        def runs_of(name: str) -> MessageRuns:
            def one(topic: str, payload: bytes) -> None:
                calls.append((f"{name}.one", (topic, payload)))

            def many(messages: list[tuple[str, bytes]]) -> None:
                calls.append((f"{name}.many", list(messages)))
                if any(payload == b"boom" for _, payload in messages):
                    raise ValueError("handler bug")

            return MessageRuns(one, many)

        a, b = runs_of("a"), runs_of("b")
        for i in range(3):
            hop.post(a, "t/a", bytes([i]))
        hop.post(b, "t/b", b"x")
        hop.post(a, "t/a", b"boom")
        hop.post(calls.append, ("event", None))
        hop.post(a, "t/a", b"\x09")
        hop.post(lambda: done.set())
        await asyncio.wait_for(done.wait(), 10)
        assert calls == [
            ("a.many", [("t/a", b"\x00"), ("t/a", b"\x01"), ("t/a", b"\x02")]),
            ("b.many", [("t/b", b"x")]),
            ("a.many", [("t/a", b"boom")]),
            ("event", None),
            ("a.many", [("t/a", b"\x09")]),
        ]
        assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)  # reported, drain went on
        a("t/a", b"direct")  # called as a plain on_message (a transport without a hop)
        assert calls[-1] == ("a.one", ("t/a", b"direct"))

    asyncio.run(main())


def test_posting_to_a_closed_loop_is_dropped_quietly() -> None:
    loop = asyncio.new_event_loop()
    hop = LoopHop(loop)
    loop.close()
    hop.post(print, "nobody listens")  # awscrt may outlive the transport's loop: no exception
    hop.post(print, "still nobody")
    assert hop.wakeups == 2  # each post tried to wake the closed loop, none left a drain pending


def test_with_a_tick_a_busy_hop_drains_on_the_tick_and_an_idle_one_wakes_the_loop_again() -> None:
    """tick_s: a drain that found items schedules the next one itself, so posts meanwhile cost no wake-up; a drain
    that found none leaves the flag cleared, and the next post wakes the loop at once."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hop = LoopHop(loop)
        hop.tick_s = 0.02
        got: list[str] = []
        ticked, woke = asyncio.Event(), asyncio.Event()
        at: dict[str, float] = {}

        def after_first_drain() -> None:  # runs after the drain of "a": the next drain is the tick's
            at["posted"] = loop.time()
            hop.post(got.append, "b")
            hop.post(lambda: (got.append("c"), ticked.set()))

        def first() -> None:
            got.append("a")
            loop.call_soon(after_first_drain)

        hop.post(first)
        await asyncio.wait_for(ticked.wait(), 10)
        assert got == ["a", "b", "c"]
        # the wake-up for "a", the tick that drained "b" and "c", and the tick that drain scheduled in turn
        assert hop.wakeups == 3
        assert loop.time() - at["posted"] >= 0.02 - 0.002  # they waited for the tick (the loop's clock)

        def after_empty_tick() -> None:  # scheduled after the tick above: the tick after it found nothing
            assert not hop._scheduled
            threading.Thread(target=hop.post, args=(lambda: (got.append("d"), woke.set()),)).start()

        loop.call_later(0.05, after_empty_tick)
        await asyncio.wait_for(woke.wait(), 10)
        assert got == ["a", "b", "c", "d"]
        # that tick found nothing and scheduled none; the post after it woke the loop (4), and its drain, which
        # found "d", scheduled the next tick (5)
        assert hop.wakeups == 5

    asyncio.run(main())
