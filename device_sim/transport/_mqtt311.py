"""MQTT 3.1.1 driver: ``awscrt.mqtt.Connection`` on an ``awscrt.mqtt.Client`` (``tls_ctx=None`` for plain TCP).

awscrt's 3.1.1 client has no client-side flow control, so ``OutboundLimiter`` paces publishes the way
``AWS_IOT_CORE_DEFAULTS`` does for MQTT5 (100 publishes/s, 512 KiB/s) when ``--flow-control aws`` is chosen.
The first connect's outcome comes from the ``connect()`` future; reconnects come from ``on_connection_resumed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

from awscrt import mqtt  # type: ignore[import-untyped]
from awscrt.io import ClientTlsContext  # type: ignore[import-untyped]

from device_sim.protocol.limits import CONNECTION_BYTES_PER_SECOND, CONNECTION_PUBLISHES_PER_SECOND
from device_sim.transport._driver import CrtFuture, DriverHooks, LoopHop, keep_thread_state
from device_sim.transport.crt import CrtResources, socket_options
from device_sim.transport.errors import BrokerRefusal, SubscribeRejected
from device_sim.transport.settings import FlowControl, QoS, TransportSettings


class OutboundLimiter:
    """Paces publishes to ``messages_per_s`` and ``bytes_per_s`` (each publish gets the next free slot, FIFO)."""

    def __init__(self, messages_per_s: float, bytes_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._msg_interval = 1.0 / messages_per_s
        self._byte_interval = 1.0 / bytes_per_s
        self._clock = clock
        self._next_message = 0.0
        self._next_byte = 0.0

    def reserve(self, nbytes: int) -> float:
        """Seconds to wait before a publish of ``nbytes`` may go out (its slot is taken now)."""
        now = self._clock()
        start = max(now, self._next_message, self._next_byte)
        self._next_message = start + self._msg_interval
        self._next_byte = start + nbytes * self._byte_interval
        return start - now

    async def acquire(self, nbytes: int) -> None:
        delay = self.reserve(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)


class Mqtt311Driver:
    def __init__(
        self,
        settings: TransportSettings,
        resources: CrtResources,
        tls_ctx: ClientTlsContext | None,
        hooks: DriverHooks,
        loop: asyncio.AbstractEventLoop,
        hop: LoopHop,
    ) -> None:
        self._hooks = hooks
        self._post = hop.post
        self._deliver = hooks.message
        self._loop = loop
        self._connect_started = False
        self._connect_resolved = False
        self._connected_once = False
        self._stop_requested = False
        self._stopped = False
        self.limiter = (
            OutboundLimiter(CONNECTION_PUBLISHES_PER_SECOND, CONNECTION_BYTES_PER_SECOND)
            if settings.flow_control is FlowControl.AWS
            else None
        )
        client = mqtt.Client(resources.bootstrap, tls_ctx)
        self._conn = mqtt.Connection(
            client,
            settings.endpoint,
            settings.resolved_port,
            settings.client_id,
            clean_session=True,
            on_connection_interrupted=self._crt_interrupted,
            on_connection_resumed=self._crt_resumed,
            reconnect_min_timeout_secs=max(1, round(settings.reconnect_min_s)),
            reconnect_max_timeout_secs=max(1, round(settings.reconnect_max_s)),
            keep_alive_secs=settings.keepalive_s,
            ping_timeout_ms=min(3000, settings.keepalive_s * 500),
            protocol_operation_timeout_ms=int(settings.operation_timeout_s * 1000),
            socket_options=socket_options(settings),
            disable_metrics=not settings.metrics,
        )
        # Two positional parameters: awscrt then calls it as callback(topic=, payload=) without building a QoS enum.
        self._conn.on_message(self._crt_message)

    # -- CRT threads: post and nothing else

    def _crt_message(self, topic: str, payload: bytes) -> None:
        self._post(self._deliver, topic, payload)

    def _crt_interrupted(self, connection: mqtt.Connection, error: BaseException, **kwargs: Any) -> None:
        self._post(self._hooks.interrupted, error)

    def _crt_resumed(self, connection: mqtt.Connection, return_code: Any, session_present: bool, **kwargs: Any) -> None:
        keep_thread_state()  # this connection's messages arrive on this thread
        self._post(self._hooks.connected, session_present)

    def _crt_connect_done(self, future: CrtFuture) -> None:
        keep_thread_state()
        self._post(self._on_connect_done, future)

    def _crt_disconnect_done(self, future: CrtFuture) -> None:
        self._post(self._on_disconnect_done, future)

    # -- event loop

    def _on_connect_done(self, future: CrtFuture) -> None:
        self._connect_resolved = True
        error = future.exception()
        if error is None:
            self._connected_once = True
            if self._stop_requested:  # close() came while awscrt was still connecting
                self._disconnect()
            else:
                self._hooks.connected(bool(future.result().get("session_present", False)))
            return
        if error.args and isinstance(error.args[0], mqtt.ConnectReturnCode):
            code = error.args[0]
            refusal = BrokerRefusal(code.name, int(code))
            refusal.__cause__ = error
            error = refusal
        self._hooks.connect_failed(error)
        if self._stop_requested:
            self._report_stopped()

    def _on_disconnect_done(self, future: concurrent.futures.Future[Any]) -> None:
        future.exception()  # NOT_CONNECTED and the like: stopped either way
        self._report_stopped()

    def _report_stopped(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._hooks.stopped()

    def _disconnect(self) -> None:
        self._conn.disconnect().add_done_callback(self._crt_disconnect_done)

    def start(self) -> None:
        self._connect_started = True
        self._conn.connect().add_done_callback(self._crt_connect_done)

    def subscribe(self, filters: Sequence[str], qos: QoS) -> list[CrtFuture]:
        crt_qos = mqtt.QoS(int(qos))
        return [self._conn.subscribe(f, crt_qos)[0] for f in filters]

    def suback_codes(self, filters: Sequence[str], results: Sequence[object]) -> list[int]:
        codes: list[int] = []
        for result in results:
            if isinstance(result, SubscribeRejected):
                codes.append(next(iter(result.rejected.values())))
            elif isinstance(result, dict):
                codes.append(int(result["qos"]))
        if len(codes) != len(filters):
            raise ValueError(f"SUBACK carried {len(codes)} codes for {len(filters)} filters")
        return codes

    def publish(self, topic: str, payload: bytes, qos: QoS) -> CrtFuture:
        future: CrtFuture = self._conn.publish(topic, payload, mqtt.QoS(int(qos)))[0]
        return future

    def puback_failure(self, result: object) -> tuple[str, int] | None:
        return None  # a 3.1.1 PUBACK has no failure code

    def stop(self) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        if not self._connect_started:
            self._loop.call_soon(self._report_stopped)
        elif not self._connect_resolved:
            pass  # awscrt cannot abort a connect in progress; _on_connect_done finishes the stop
        elif self._connected_once:
            self._disconnect()
        else:
            self._loop.call_soon(self._report_stopped)
