"""``MqttTransport``: an asyncio MQTT client over awscrt, MQTT5 or 3.1.1 behind one interface (layer 4).

How this works:
- awscrt runs its own event-loop threads. A driver (``_mqtt5`` / ``_mqtt311``) owns the awscrt client; its CRT
  callbacks only hop into this loop through the transport's ``LoopHop`` (a deque plus one
  ``loop.call_soon_threadsafe`` per burst). Incoming messages go straight to the user's ``on_message(topic,
  payload)``: no Future, payload as awscrt delivered it (``bytes``).
- Operations (subscribe, publish) return awscrt ``concurrent.futures.Future``s; ``PendingOps`` hops each outcome
  into a loop future it tracks (``_pending``). On a lost connection or close,
  every tracked future fails at once; an awscrt outcome that arrives later is dropped. ``_wait`` is the one place
  that awaits them: it owns the timeout policy and translates foreign exceptions (through ``errors.translate``).
  ``publish_nowait`` skips all that: the awscrt future's outcome is hopped to the caller's ``on_done`` (translated
  by the same function), and a QoS 0 publish that succeeds with no ``on_done`` costs no hop at all.
- The lifecycle is an explicit state machine: ``TRANSITIONS`` is the whole table, ``_fire`` the one choke point.
  awscrt events that do not apply in a state (a reconnect failure while closing...) map to None: ignored, logged.
- awscrt reconnects by itself. After a reconnect (clean session) the transport re-subscribes every filter, and
  only then reports RESUMED, so a device's requests never precede its subscriptions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Self

from device_sim.transport._driver import CrtFuture, Driver, DriverHooks, LoopHop
from device_sim.transport._mqtt5 import Mqtt5Driver
from device_sim.transport._mqtt311 import Mqtt311Driver, OutboundLimiter
from device_sim.transport._pending import PendingOps
from device_sim.transport.crt import CrtResources, build_tls_context, shared_crt_resources
from device_sim.transport.errors import (
    ConnectError,
    ConnectFailure,
    ConnectionLost,
    Op,
    OperationTimeout,
    PublishError,
    SubscribeRejected,
    TransportClosed,
    TransportError,
    TransportUsageError,
    connection_lost,
    foreign_errors,
    translate,
)
from device_sim.transport.settings import MqttProtocol, QoS, TransportSettings
from device_sim.transport.state import ConnectionEvent, ConnectionEventKind, Input, TransportState, transition
from device_sim.transport.tls_probe import diagnose_tls

log = logging.getLogger(__name__)


class MqttTransport:
    """One MQTT connection. Use ``async with MqttTransport(settings, on_message=...) as t:``.

    ``on_message(topic, payload)`` and ``on_connection_event(event)`` run in the event loop.
    """

    def __init__(
        self,
        settings: TransportSettings,
        *,
        on_message: Callable[[str, bytes], None],
        on_connection_event: Callable[[ConnectionEvent], None] | None = None,
        resources: CrtResources | None = None,
    ) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_event = on_connection_event
        self._resources = resources
        self._state = TransportState.DISCONNECTED
        self._where = f"{settings.endpoint}:{settings.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: PendingOps | None = None
        self._hop: LoopHop | None = None
        self._driver: Driver | None = None
        self._limiter: OutboundLimiter | None = None
        self._connect_waiter: asyncio.Future[Any] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._subscriptions: dict[str, QoS] = {}
        self._probe: asyncio.Task[None] | None = None
        self._resubscribing: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------------------------ public API

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def pending_operations(self) -> int:
        return len(self._pending) if self._pending is not None else 0

    @property
    def wakeups(self) -> int:
        """Event-loop wake-ups awscrt's callbacks have cost so far, counted for the event loop (its transports
        share one queue, and a burst of messages, for any of them, shares one wake-up)."""
        return self._hop.wakeups if self._hop is not None else 0

    @property
    def subscriptions(self) -> dict[str, QoS]:
        return dict(self._subscriptions)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect (ConnectError with a hint on failure; the transport is then CLOSED)."""
        self._fire(Input.CONNECT)
        loop = self._loop = asyncio.get_running_loop()
        self._hop = LoopHop.for_loop(loop)
        self._pending = PendingOps(loop, self._hop)
        self._stopped = loop.create_future()
        try:
            self._driver = self._make_driver(loop)
            waiter = self._connect_waiter = self._pending.new()
            with foreign_errors(Op.CONNECT, where=self._where):
                self._driver.start()
            if self.settings.tls and self.settings.tls_probe_after_s is not None:
                self._probe = loop.create_task(self._probe_tls(waiter, self.settings.tls_probe_after_s))
            await self._wait(Op.CONNECT, waiter, self.settings.connect_timeout_s)
        except BaseException:
            await self._shutdown(graceful=False)
            raise
        finally:
            _cancel(self._probe)
        log.info("connected to %s as %s (%s)", self._where, self.settings.client_id, self.settings.protocol.value)

    async def subscribe(self, filters: Sequence[str], qos: QoS | int | None = None) -> list[int]:
        """Subscribe; returns the granted QoS per filter. SubscribeRejected when the broker refuses any filter."""
        self._require_connected(Op.SUBSCRIBE)
        chosen = QoS(qos) if qos is not None else self.settings.qos
        filters = list(filters)
        codes = await self._subscribe_now(filters, chosen)
        granted = [f for f, code in zip(filters, codes, strict=True) if code < 0x80]
        self._subscriptions.update(dict.fromkeys(granted, chosen))  # re-subscribed after a reconnect
        rejected = {f: code for f, code in zip(filters, codes, strict=True) if code >= 0x80}
        if rejected:
            raise SubscribeRejected(rejected)
        return codes

    async def publish(self, topic: str, payload: bytes, qos: QoS | int | None = None) -> None:
        """Publish; returns once sent (QoS 0) or acknowledged (QoS 1). Paced by client-side flow control."""
        self._require_connected(Op.PUBLISH)
        if self._limiter is not None:
            await self._limiter.acquire(len(payload))
            self._require_connected(Op.PUBLISH)
        assert self._driver is not None and self._pending is not None
        chosen = QoS(qos) if qos is not None else self.settings.qos
        with foreign_errors(Op.PUBLISH, where=self._where):
            crt_future = self._driver.publish(topic, payload, chosen)
        result = await self._wait(Op.PUBLISH, self._pending.adopt(crt_future), self.settings.operation_timeout_s)
        refused = self._driver.puback_failure(result)
        if refused is not None:
            raise PublishError(
                f"the broker refused the publish to {topic}: {refused[0]}",
                reason_code=refused[1],
                hint="the policy must allow iot:Publish on this topic",
            )

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: QoS | int | None = None,
        *,
        on_done: Callable[[TransportError | None], None] | None = None,
    ) -> None:
        """Publish without a future to await: for callers that only need to hear of the outcome, if at all.

        Raises at once, like ``publish``, when the transport is not connected. Later, ``on_done(error)`` runs in the
        event loop once the publish left (QoS 0: written to the socket, after client-side flow control) or was
        acknowledged (QoS 1), with ``error`` None, or with the TransportError ``publish`` would have raised (a
        refused PUBACK is a PublishError with ``reason_code``). Without ``on_done`` a failure is logged, and a QoS 0
        publish that succeeds costs the event loop nothing more. No ``operation_timeout_s``: awscrt fails QoS 1
        publishes after its own ack timeout (the same number of seconds) and every publish on a disconnect.
        """
        self._require_connected(Op.PUBLISH)
        chosen = QoS(qos) if qos is not None else self.settings.qos
        delay = self._limiter.reserve(len(payload)) if self._limiter is not None else 0.0
        if delay > 0:
            assert self._loop is not None
            self._loop.call_later(delay, self._publish_now, topic, payload, chosen, on_done)
        else:
            self._publish_now(topic, payload, chosen, on_done)

    async def close(self) -> None:
        """Disconnect; pending operations fail with TransportClosed. Idempotent.

        Waits up to ``close_timeout_s`` for awscrt to confirm the stop (the DISCONNECT went out).
        """
        await self._shutdown(graceful=True)

    # ------------------------------------------------------------------------------------------------ internals

    def _make_driver(self, loop: asyncio.AbstractEventLoop) -> Driver:
        hooks = DriverHooks(
            message=self._on_message,
            connected=self._on_connected,
            connect_failed=self._on_connect_failed,
            interrupted=self._on_interrupted,
            stopped=self._on_stopped,
        )
        resources = self._resources or shared_crt_resources()
        assert self._hop is not None
        with foreign_errors(Op.SETUP, where=self._where):
            tls_ctx = build_tls_context(self.settings)
            if self.settings.protocol is MqttProtocol.MQTT5:
                return Mqtt5Driver(self.settings, resources, tls_ctx, hooks, self._hop)
            driver = Mqtt311Driver(self.settings, resources, tls_ctx, hooks, loop, self._hop)
            self._limiter = driver.limiter
            return driver

    def _publish_now(
        self, topic: str, payload: bytes, qos: QoS, on_done: Callable[[TransportError | None], None] | None
    ) -> None:
        try:
            self._require_connected(Op.PUBLISH)  # again: flow control may have held it back
            assert self._driver is not None
            with foreign_errors(Op.PUBLISH, where=self._where):
                crt_future = self._driver.publish(topic, payload, qos)
        except TransportError as error:
            assert self._hop is not None
            self._hop.post(self._publish_done, topic, on_done, error, None)  # never inside the caller's call
            return
        quiet = on_done is None and qos is QoS.AT_MOST_ONCE
        crt_future.add_done_callback(functools.partial(self._crt_publish_done, topic, on_done, quiet))

    def _crt_publish_done(
        self, topic: str, on_done: Callable[[TransportError | None], None] | None, quiet: bool, future: CrtFuture
    ) -> None:
        """awscrt thread (or the loop, when awscrt completed at once): hop, unless there is nothing to report."""
        if quiet and not future.cancelled() and future.exception() is None:
            return
        if self._hop is not None:
            self._hop.post(self._publish_settled, topic, on_done, future)

    def _publish_settled(
        self, topic: str, on_done: Callable[[TransportError | None], None] | None, future: CrtFuture
    ) -> None:
        if future.cancelled():
            self._publish_done(topic, on_done, TransportClosed(f"the publish to {topic} was cancelled"), None)
            return
        exc = future.exception()
        if exc is not None:
            error = exc if isinstance(exc, TransportError) else translate(Op.PUBLISH, exc, where=self._where)
            if error is None:
                error = PublishError(f"publishing to {topic} failed: {exc}")
            if error.__cause__ is None and error is not exc:
                error.__cause__ = exc
            self._publish_done(topic, on_done, error, None)
            return
        self._publish_done(topic, on_done, None, future.result())

    def _publish_done(
        self,
        topic: str,
        on_done: Callable[[TransportError | None], None] | None,
        error: TransportError | None,
        result: object,
    ) -> None:
        if error is None and self._driver is not None:
            refused = self._driver.puback_failure(result)
            if refused is not None:
                error = PublishError(
                    f"the broker refused the publish to {topic}: {refused[0]}",
                    reason_code=refused[1],
                    hint="the policy must allow iot:Publish on this topic",
                )
        if on_done is not None:
            on_done(error)
        elif error is not None:
            log.warning("%s: publish to %s failed: %s", self._where, topic, error)

    def _fire(self, event: Input) -> bool:
        """The one choke point of state changes. False when ``event`` is ignored in the current state."""
        new = transition(self._state, event)
        if new is None:
            log.debug("%s: %s ignored while %s", self._where, event.value, self._state.value)
            return False
        log.debug("%s: %s -> %s (%s)", self._where, self._state.value, new.value, event.value)
        self._state = new
        return True

    def _require_connected(self, op: Op) -> None:
        state = self._state
        if state is TransportState.CONNECTED:
            return
        if state is TransportState.RECONNECTING:
            raise ConnectionLost(
                f"cannot {op}: the connection to {self._where} is down, awscrt is reconnecting",
                hint="wait for the RESUMED connection event",
            )
        if state in (TransportState.CLOSING, TransportState.CLOSED):
            raise TransportClosed(f"cannot {op}: the transport is {state.value}")
        raise TransportUsageError(f"cannot {op} while {state.value}", hint="await connect() first")

    async def _wait(self, op: Op, waiter: asyncio.Future[Any], timeout_s: float) -> Any:
        """Await one tracked future: the timeout policy and the translation of foreign errors live here."""
        assert self._pending is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TransportError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and waiter.cancelled():  # our deadline, not an error from awscrt
                raise self._timeout_error(op, timeout_s) from exc
            translated = translate(op, exc, where=self._where)
            if translated is None:
                raise
            raise translated from exc
        finally:
            self._pending.discard(waiter)

    def _timeout_error(self, op: Op, timeout_s: float) -> TransportError:
        if op is Op.CONNECT:
            hint = "check --endpoint/--port and that a broker answers there"
            if self.settings.tls:
                hint += "; with TLS, a certificate that does not verify shows up as a 10-30 s delay in awscrt"
            return ConnectError(
                f"no connection to {self._where} within {timeout_s:g} s", kind=ConnectFailure.TIMEOUT, hint=hint
            )
        return OperationTimeout(
            f"{op} got no answer from {self._where} within {timeout_s:g} s",
            hint="the broker or the network is overloaded; raise the operation timeout",
        )

    async def _subscribe_now(self, filters: list[str], qos: QoS) -> list[int]:
        """One SUBACK code per filter (>= 0x80: refused)."""
        assert self._driver is not None and self._pending is not None
        with foreign_errors(Op.SUBSCRIBE, where=self._where):
            crt_futures = self._driver.subscribe(filters, qos)
        waiters = [self._pending.adopt(f) for f in crt_futures]
        timeout = self.settings.operation_timeout_s
        results = await asyncio.gather(*(self._wait(Op.SUBSCRIBE, w, timeout) for w in waiters), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, SubscribeRejected):
                raise result
        return self._driver.suback_codes(filters, results)

    async def _probe_tls(self, waiter: asyncio.Future[Any], after_s: float) -> None:
        await asyncio.sleep(after_s)
        if waiter.done():
            return
        remaining = max(0.5, self.settings.connect_timeout_s - after_s)
        reason = await diagnose_tls(self.settings, remaining)
        if reason is not None and not waiter.done():
            waiter.set_exception(
                ConnectError(
                    f"TLS handshake with {self._where} failed: the server certificate does not verify ({reason})",
                    kind=ConnectFailure.TLS,
                    hint="pass the --ca that signed the server certificate (AmazonRootCA1.pem for AWS IoT) and an "
                    "--endpoint that is a name in that certificate",
                )
            )

    async def _resubscribe(self, session_present: bool) -> None:
        filters_by_qos: dict[QoS, list[str]] = {}
        for f, q in self._subscriptions.items():
            filters_by_qos.setdefault(q, []).append(f)
        try:
            if not session_present:
                for qos, filters in filters_by_qos.items():
                    codes = await self._subscribe_now(filters, qos)
                    rejected = {f: code for f, code in zip(filters, codes, strict=True) if code >= 0x80}
                    if rejected:
                        raise SubscribeRejected(rejected)
        except ConnectionLost:
            return  # dropped again: the next reconnect re-subscribes
        except TransportError as exc:
            log.warning("%s: re-subscribing after a reconnect failed: %s", self._where, exc)
            self._lose(exc)
            return
        if self._fire(Input.RESUMED):
            log.info("%s: connection resumed, %d filters re-subscribed", self._where, len(self._subscriptions))
            self._emit(ConnectionEvent(kind=ConnectionEventKind.RESUMED, session_present=session_present))

    def _lose(self, error: TransportError) -> None:
        _cancel(self._resubscribing)
        if self._fire(Input.LOST):
            self._pending_fail(lambda: ConnectionLost(f"the connection to {self._where} is lost: {error.message}"))
            self._emit(ConnectionEvent(kind=ConnectionEventKind.LOST, error=error))
            self._stop_driver()

    def _emit(self, event: ConnectionEvent) -> None:
        if self._on_event is not None and self._loop is not None:
            self._loop.call_soon(self._on_event, event)

    def _pending_fail(self, make_error: Callable[[], TransportError]) -> None:
        if self._pending is not None:
            self._pending.fail_all(make_error)

    def _stop_driver(self) -> None:
        if self._driver is not None:
            self._driver.stop()
        elif self._loop is not None:
            self._loop.call_soon(self._on_stopped)

    async def _shutdown(self, *, graceful: bool) -> None:
        """Close. ``graceful``: wait for awscrt's stop. Not after a failed connect: awscrt may still sit in a TLS
        failure delay of 10-30 s, and the caller deserves the error now; the stop then completes on its own."""
        if self._state is TransportState.CLOSED:
            return
        self._fire(Input.CLOSE)
        _cancel(self._probe)
        _cancel(self._resubscribing)
        self._pending_fail(lambda: TransportClosed(f"the transport to {self._where} was closed"))
        if self._stopped is None:  # never connected: nothing to stop
            self._fire(Input.STOPPED)
            return
        self._stop_driver()
        if not graceful:
            if not self._stopped.done():
                self._fire(Input.ABANDONED)
            return
        try:
            await self._wait(Op.CLOSE, self._stopped, self.settings.close_timeout_s)
        except OperationTimeout:
            log.warning(
                "%s: awscrt did not confirm the stop within %g s; leaving it to finish on its own",
                self._where,
                self.settings.close_timeout_s,
            )
            self._fire(Input.ABANDONED)

    # ------------------------------------------------------------------------- driver hooks (run in the loop)

    def _on_connected(self, session_present: bool) -> None:
        if self._state is TransportState.CONNECTING:
            if self._fire(Input.CONNACK) and self._connect_waiter is not None and not self._connect_waiter.done():
                self._connect_waiter.set_result(None)
        elif self._state is TransportState.RECONNECTING:
            self._fire(Input.CONNACK)
            assert self._loop is not None
            self._resubscribing = self._loop.create_task(self._resubscribe(session_present))
        else:
            self._fire(Input.CONNACK)

    def _on_connect_failed(self, error: BaseException) -> None:
        waiter = self._connect_waiter
        if self._state is TransportState.CONNECTING and waiter is not None and not waiter.done():
            waiter.set_exception(error)
        elif self._state is TransportState.RECONNECTING:
            log.debug("%s: reconnect attempt failed: %s", self._where, error)
        self._fire(Input.CONNECT_FAILED)

    def _on_interrupted(self, error: BaseException) -> None:
        state = self._state
        if state is TransportState.CONNECTING:
            self._on_connect_failed(error)
            return
        if state not in (TransportState.CONNECTED, TransportState.RECONNECTING):
            self._fire(Input.INTERRUPTED)  # ignored: we are closing
            return
        _cancel(self._resubscribing)
        self._pending_fail(lambda: connection_lost(error, where=self._where))
        lost = connection_lost(error, where=self._where)
        if not self.settings.reconnect:
            self._lose(lost)
        elif self._fire(Input.INTERRUPTED):
            log.warning("%s: %s; awscrt reconnects", self._where, lost.message)
            self._emit(ConnectionEvent(kind=ConnectionEventKind.INTERRUPTED, error=lost))

    def _on_stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if self._state is TransportState.CLOSING:
            self._fire(Input.STOPPED)


def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
