"""What the transport needs from a protocol driver (MQTT5 or MQTT 3.1.1 over awscrt).

A driver owns one awscrt client. Its CRT callbacks run on awscrt's event-loop threads and do exactly one thing:
``hop.post(handler, *args)``: append to the event loop's ``LoopHop`` queue (one per loop, shared by its
transports), and wake the event loop with ``loop.call_soon_threadsafe`` only when that queue was empty. Everything
else (reading awscrt's event objects, calling the transport's hooks) runs in the asyncio event loop, in the order
awscrt produced the events: messages, lifecycle events and publish completions share the one queue. Operations
return awscrt's ``concurrent.futures.Future``s; the transport awaits them with ``asyncio.wrap_future`` (or, for
``publish_nowait``, hops their completion through the queue).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from device_sim.transport.settings import QoS

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


#: awscrt threads that keep their Python thread state (``keep_thread_state``).
_kept_thread_states: set[int] = set()


def keep_thread_state() -> None:
    """Let the calling awscrt thread keep a Python thread state for good. Call it from a CRT callback.

    awscrt's event-loop threads are not Python threads: every callback into Python takes the GIL with
    ``PyGILState_Ensure`` and gives it back with ``PyGILState_Release``. When the thread has no thread state, Ensure
    creates one (a ``gettid`` and an ``mmap`` of its 16 KiB frame stack) and Release destroys it again (a ``munmap``,
    whose TLB shoot-down interrupts the other cores too) -- for every received message. One extra Ensure that is
    never released keeps the count of the thread's state above zero: awscrt's own Release then only gives back the
    GIL and the next Ensure reuses the state. Measured with a 1000-device fleet: awscrt's threads' CPU per block
    halved (6.0 -> 3.1 s for 256k blocks), the process's system time fell from 4.2 to 1.2 s. The kept state is
    one per awscrt thread (a few), for the life of the process.
    """
    ident = threading.get_ident()
    if ident in _kept_thread_states:
        return
    _kept_thread_states.add(ident)
    ctypes.pythonapi.PyGILState_Ensure()  # the GIL is held (we are in a callback): only the count goes up


class MessageRuns:
    """An ``on_message`` handler that also takes a run of messages at once: ``one(topic, payload)`` and
    ``many([(topic, payload), ...])`` must do the same.

    awscrt's thread reads a socket's whole buffer per turn, so a fleet's messages come in runs of a few for the same
    connection (4.2 on average with 1000 devices at 4 KiB blocks). ``LoopHop`` hands such a run of consecutive
    messages of one handler to ``many`` in one call, in their order; a handler can then pay once per run for what
    does not depend on the message (the clock, its own lookups, progress). Anything else posted between two
    messages ends the run, so the order of all events is unchanged. An exception from ``many`` goes to the loop's
    exception handler like any handler's; the rest of that run is not delivered.
    """

    __slots__ = ("many", "one")

    def __init__(self, one: Callable[[str, bytes], None], many: Callable[[list[tuple[str, bytes]]], None]) -> None:
        self.one = one
        self.many = many

    def __call__(self, topic: str, payload: bytes) -> None:
        self.one(topic, payload)


class LoopHop:
    """The way from awscrt's threads into one asyncio event loop, batched per burst.

    ``post(handler, *args)`` (any thread) appends to a deque; the append that finds no drain pending schedules one
    with ``loop.call_soon_threadsafe``, so a burst of N messages costs one wake-up (one self-pipe write) instead of
    N. ``_drain`` (in the loop) takes exactly the items present when it starts, in order; an item appended while it
    runs schedules the next drain, so a flood cannot starve the loop. Why it is race-free: the drain clears the flag
    before it counts the items, and a poster appends before it reads the flag; so a poster that still sees the flag
    set appended before the count. An exception in a handler goes to the loop's exception handler (as with
    ``call_soon``) and the drain goes on. Once the loop is closed, posts are dropped (nobody listens any more).
    """

    __slots__ = ("__weakref__", "_call", "_items", "_loop", "_scheduled", "tick_s", "wakeups")

    #: The hop each event loop's transports share (``for_loop``).
    _shared: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopHop]] = weakref.WeakKeyDictionary()

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> LoopHop:
        """The one hop of ``loop``, shared by every transport running in it.

        awscrt's event-loop thread serves many connections per turn (epoll hands it every socket that is ready),
        so a fleet's messages arrive as bursts across devices. With one queue per loop such a burst costs one
        wake-up of the loop; with one queue per transport it cost one wake-up (a ``call_soon_threadsafe`` with its
        self-pipe write, and a turn of the loop) per device in the burst. Order is still awscrt's order, for every
        transport. Created in the loop's thread (the transports' ``connect``), so no lock is needed here.
        """
        hop = cls._shared.get(loop)
        if hop is None:
            hop = cls._shared[loop] = cls(loop)
        return hop

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._call = loop.call_soon_threadsafe
        self._items: collections.deque[tuple[Callable[..., object], tuple[object, ...]]] = collections.deque()
        self._scheduled = False
        self.wakeups = 0  # drains scheduled so far (items per wake-up = items / wakeups)
        #: None: every burst wakes the loop at once. A number: while messages keep coming, the loop drains them
        #: every ``tick_s`` seconds instead (a drain that found items schedules the next one and leaves the flag
        #: set, so posters only append; one that found none clears it and the next post wakes the loop again).
        #: A fleet sets it (``run_until_stopped``): its messages arrive faster than the loop needs a wake-up for
        #: each few, and every wake-up costs a self-pipe write on awscrt's thread, a read and a turn of the loop.
        self.tick_s: float | None = None

    def post(self, handler: Callable[..., object], *args: object) -> None:
        self._items.append((handler, args))
        if not self._scheduled:
            self._scheduled = True
            self.wakeups += 1
            try:
                self._call(self._drain)
            except RuntimeError:  # the loop is closed
                self._scheduled = False

    def _drain(self) -> None:
        self._scheduled = False
        items = self._items
        count = len(items)
        runs: MessageRuns | None = None  # the handler whose consecutive messages ``run`` gathers
        run: list[Any] = []
        for _ in range(count):
            handler, args = items.popleft()
            if handler is runs:
                run.append(args)
                continue
            if runs is not None:
                self._handle(runs.many, (run,))
                runs = None
            if type(handler) is MessageRuns:
                runs, run = handler, [args]
            else:
                self._handle(handler, args)
        if runs is not None:
            self._handle(runs.many, (run,))
        if count and self.tick_s is not None and not self._scheduled and not self._loop.is_closed():
            # Same race-free order as above: a poster that still sees the flag set appended before the next drain.
            self._scheduled = True
            self.wakeups += 1
            self._loop.call_later(self.tick_s, self._drain)

    def _handle(self, handler: Callable[..., object], args: tuple[object, ...]) -> None:
        try:
            handler(*args)
        except Exception as exc:
            self._loop.call_exception_handler(
                {"message": f"exception in {getattr(handler, '__qualname__', handler)!s}", "exception": exc}
            )
