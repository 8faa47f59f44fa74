"""The transport's registry of operations in flight: a loop future per awscrt future, all failed at once on a
lost connection or a close; an awscrt outcome that arrives after its waiter failed is dropped.

The awscrt future's done callback runs on an awscrt thread and only hops (``LoopHop.post``); the outcome is
copied into the loop future in the event loop. This is ``asyncio.wrap_future`` without its second future and
its ``call_soon_threadsafe`` per operation, and it keeps completions in order with the messages around them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from device_sim.transport._driver import CrtFuture, LoopHop
from device_sim.transport.errors import TransportError


class PendingOps:
    """Loop futures of the operations in flight; ``fail_all`` fails them at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hop: LoopHop) -> None:
        self._loop = loop
        self._hop = hop
        self._waiters: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._waiters)

    def new(self) -> asyncio.Future[Any]:
        waiter = self._loop.create_future()
        self._waiters.add(waiter)
        return waiter

    def adopt(self, crt_future: CrtFuture) -> asyncio.Future[Any]:
        waiter = self.new()
        crt_future.add_done_callback(functools.partial(self._hop.post, _settle, waiter))
        return waiter

    def discard(self, waiter: asyncio.Future[Any]) -> None:
        self._waiters.discard(waiter)

    def fail_all(self, make_error: Callable[[], TransportError]) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(make_error())


def _settle(waiter: asyncio.Future[Any], crt_future: CrtFuture) -> None:
    """(In the loop.) Copy an awscrt outcome into its waiter, unless the waiter already failed (disconnect,
    timeout) or awscrt cancelled the operation."""
    if waiter.done() or crt_future.cancelled():
        return
    error = crt_future.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(crt_future.result())
