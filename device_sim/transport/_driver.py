"""What the transport needs from a protocol driver (MQTT5 or MQTT 3.1.1 over awscrt).

A driver owns one awscrt client. Its CRT callbacks run on awscrt's event-loop threads and do exactly one thing:
``post(handler, *args)``, i.e. ``loop.call_soon_threadsafe``. Everything else (reading awscrt's event objects,
calling the transport's hooks) runs in the asyncio event loop, in the order awscrt produced the events.
Operations return awscrt's ``concurrent.futures.Future``s; the transport awaits them with ``asyncio.wrap_future``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .settings import QoS

CrtFuture = concurrent.futures.Future[Any]


@dataclass(frozen=True, slots=True)
class DriverHooks:
    """Loop-side handlers the driver reports to (all run in the event loop)."""

    message: Callable[[str, bytes], None]
    connected: Callable[[bool], None]  # session_present; for the first connect and every reconnect
    connect_failed: Callable[[BaseException], None]  # a connect or reconnect attempt failed
    interrupted: Callable[[BaseException], None]  # an established connection dropped
    stopped: Callable[[], None]  # the client is stopped for good (after stop())


class Driver(Protocol):
    def start(self) -> None:
        """Begin connecting; the outcome arrives as ``connected`` or ``connect_failed``."""
        ...

    def subscribe(self, filters: Sequence[str], qos: QoS) -> list[CrtFuture]: ...

    def suback_codes(self, filters: Sequence[str], results: Sequence[object]) -> list[int]:
        """One SUBACK code per filter (>= 0x80 is a failure) from the results (or TransportErrors) of subscribe."""
        ...

    def publish(self, topic: str, payload: bytes, qos: QoS) -> CrtFuture: ...

    def puback_failure(self, result: object) -> tuple[str, int] | None:
        """(reason name, code) when the broker acknowledged a publish with a failure code."""
        ...

    def stop(self) -> None:
        """Begin disconnecting for good; ``stopped`` follows (maybe only after awscrt's own delays)."""
        ...


Post = Callable[..., None]


def make_post(loop: asyncio.AbstractEventLoop) -> Post:
    """``loop.call_soon_threadsafe``, silent once the loop is closed (awscrt may outlive the transport's loop)."""
    call = loop.call_soon_threadsafe

    def post(handler: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            call(handler, *args)

    return post
