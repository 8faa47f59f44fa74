"""MQTT5 driver: ``awscrt.mqtt5.Client`` built directly from ``ClientOptions``.

Not through ``awsiot.mqtt5_client_builder``: the builder defaults to port 443 with ALPN, keepalive 1200 s and
``AWS_IOT_CORE_DEFAULTS`` flow control, and has no plain-TCP variant; here every option is explicit. The session is
clean and the offline queue fails everything on disconnect, so no stale request is replayed after a reconnect.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

from awscrt import mqtt5  # type: ignore[import-untyped]
from awscrt.io import ClientTlsContext  # type: ignore[import-untyped]

from device_sim.transport._driver import CrtFuture, DriverHooks, LoopHop, keep_thread_state
from device_sim.transport.crt import CrtResources, socket_options
from device_sim.transport.errors import BrokerRefusal, SubscribeRejected
from device_sim.transport.settings import FlowControl, QoS, TransportSettings

#: AWS IoT accepts at most 8 topic filters per SUBSCRIBE.
_FILTERS_PER_SUBSCRIBE = 8
_FLOW_CONTROL = {
    FlowControl.AWS: mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS,
    FlowControl.NONE: mqtt5.ExtendedValidationAndFlowControlOptions.NONE,
}


class Mqtt5Driver:
    #: Messages that came through awscrt's own publish callback (PublishPacket objects): 0 while the direct path of
    #: ``_DirectPublishCore`` is in use.
    slow_publishes = 0

    def __init__(
        self,
        settings: TransportSettings,
        resources: CrtResources,
        tls_ctx: ClientTlsContext | None,
        hooks: DriverHooks,
        hop: LoopHop,
    ) -> None:
        self._hooks = hooks
        self._post = hop.post
        self._deliver = hooks.message
        self._stopping = False
        keepalive_ms = settings.keepalive_s * 1000
        options = mqtt5.ClientOptions(
            host_name=settings.endpoint,
            port=settings.resolved_port,
            bootstrap=resources.bootstrap,
            socket_options=socket_options(settings),
            tls_ctx=tls_ctx,
            connect_options=mqtt5.ConnectPacket(
                client_id=settings.client_id, keep_alive_interval_sec=settings.keepalive_s
            ),
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            extended_validation_and_flow_control_options=_FLOW_CONTROL[settings.flow_control],
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            min_reconnect_delay_ms=int(settings.reconnect_min_s * 1000),
            max_reconnect_delay_ms=int(settings.reconnect_max_s * 1000),
            ping_timeout_ms=min(3000, keepalive_ms // 2),
            connack_timeout_ms=max(1, int(settings.connect_timeout_s * 1000)),
            ack_timeout_sec=max(1, math.ceil(settings.operation_timeout_s)),
            on_publish_callback_fn=self._crt_publish,
            on_lifecycle_event_connection_success_fn=self._crt_success,
            on_lifecycle_event_connection_failure_fn=self._crt_failure,
            on_lifecycle_event_disconnection_fn=self._crt_disconnection,
            on_lifecycle_event_stopped_fn=self._crt_stopped,
            disable_metrics=not settings.metrics,
        )
        self._client = mqtt5.Client(options)

    # -- CRT threads: post and nothing else

    def _crt_publish(self, data: mqtt5.PublishReceivedData) -> None:
        Mqtt5Driver.slow_publishes += 1
        packet = data.publish_packet
        self._post(self._deliver, packet.topic, packet.payload)

    def _crt_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        keep_thread_state()  # this connection's messages arrive on this thread
        self._post(self._on_success, data)

    def _crt_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        self._post(self._on_failure, data)

    def _crt_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self._post(self._hooks.interrupted, data.exception)

    def _crt_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._post(self._hooks.stopped)

    # -- event loop

    def _on_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        settings = data.negotiated_settings
        self._hooks.connected(bool(settings.rejoined_session) if settings is not None else False)

    def _on_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        error: BaseException = data.exception
        connack = data.connack_packet
        if connack is not None and connack.reason_code is not None and int(connack.reason_code) >= 0x80:
            refusal = BrokerRefusal(
                getattr(connack.reason_code, "name", str(connack.reason_code)), int(connack.reason_code)
            )
            refusal.__cause__ = error
            error = refusal
        self._hooks.connect_failed(error)

    def start(self) -> None:
        self._client.start()

    def subscribe(self, filters: Sequence[str], qos: QoS) -> list[CrtFuture]:
        crt_qos = mqtt5.QoS(int(qos))
        return [
            self._client.subscribe(
                mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(topic_filter=f, qos=crt_qos) for f in chunk])
            )
            for chunk in (
                filters[i : i + _FILTERS_PER_SUBSCRIBE] for i in range(0, len(filters), _FILTERS_PER_SUBSCRIBE)
            )
        ]

    def suback_codes(self, filters: Sequence[str], results: Sequence[object]) -> list[int]:
        codes: list[int] = []
        for result in results:
            if isinstance(result, SubscribeRejected):
                codes.extend(result.rejected.values())
            elif isinstance(result, mqtt5.SubackPacket):
                codes.extend(int(code) for code in result.reason_codes)
        if len(codes) != len(filters):
            raise ValueError(f"SUBACK carried {len(codes)} codes for {len(filters)} filters")
        return codes

    def publish(self, topic: str, payload: bytes, qos: QoS) -> CrtFuture:
        future: CrtFuture = self._client.publish(
            mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(int(qos)))
        )
        return future

    def puback_failure(self, result: object) -> tuple[str, int] | None:
        puback = getattr(result, "puback", None)
        code = getattr(puback, "reason_code", None)
        if code is None or int(code) < 0x80:
            return None
        return getattr(code, "name", str(code)), int(code)

    def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._client.stop()


# awscrt checks each callback of a new client with ``inspect.signature(callback).bind(None)``; a function that
# carries ``__signature__`` skips the introspection (9 -> 4 us per callback, five per device a fleet connects).
for _callback in ("_crt_publish", "_crt_success", "_crt_failure", "_crt_disconnection", "_crt_stopped"):
    _function = getattr(Mqtt5Driver, _callback)
    _function.__signature__ = inspect.signature(_function)


# --------------------------------------------------------------------------------------- direct publish path


def _direct_path_fits() -> bool:
    """Whether awscrt's client core still takes received publishes as ``_on_publish(payload, qos, retain, topic,
    ...)`` and returns whether the callback took over the acknowledgement (awscrt 0.2x-0.3x)."""
    core = getattr(mqtt5, "_ClientCore", None)
    method = getattr(core, "_on_publish", None)
    if core is None or method is None:
        return False
    try:
        names = list(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return False
    return names[:5] == ["self", "payload", "qos", "retain", "topic"]


if _direct_path_fits():

    class _DirectPublishCore(mqtt5._ClientCore):  # type: ignore[misc]  # awscrt is untyped
        """awscrt's client core, with received publishes of ``Mqtt5Driver`` clients handed straight to the driver.

        awscrt turns every received PUBLISH into a ``PublishPacket`` and a ``PublishReceivedData`` (some 15
        attribute assignments, in Python, on its event-loop thread, holding the GIL) before it calls the
        callback, which reads two of them. For a driver's client this core posts ``(topic, payload)`` at once;
        returning False leaves the QoS 1 acknowledgement to awscrt, as the default path does. Other clients
        (awsiotsdk's, say) keep awscrt's path. The signature is checked at import (``_direct_path_fits``); an
        awscrt that changed it keeps its own path everywhere.
        """

        def __init__(self, client_options: Any) -> None:
            super().__init__(client_options)
            driver = getattr(client_options.on_publish_callback_fn, "__self__", None)
            if isinstance(driver, Mqtt5Driver):
                post, deliver = driver._post, driver._deliver

                def on_publish(payload: bytes, qos: int, retain: bool, topic: str, *_rest: object) -> bool:
                    post(deliver, topic, payload)
                    return False

                self._on_publish = on_publish

    mqtt5._ClientCore = _DirectPublishCore
