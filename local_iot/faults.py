"""Seeded fault injection for the stream service (``--faults SPEC --seed N``). Pure logic, no I/O, no clock.

How this works: ``parse_faults`` turns a spec such as
``drop=0.1,dup=0.05,reorder=0.1,delay=0.05:200ms,reject=0.01:Throttling,disconnect=after:200`` into a
``FaultSpec``. A ``FaultInjector`` owns one ``random.Random(seed)`` and draws from it in a fixed order per event
(per request: one draw for ``reject``; per data message: drop, dup, delay, reorder, each only when its rate is
set), so the same seed and the same sequence of events give the same decisions. Block counters per thing and per
stream fire the world-changing faults (disconnect, bump-version, overwrite) after K blocks; the service performs
them. The full syntax is in docs/service.md.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "BumpVersion",
    "DisconnectThing",
    "FaultCounters",
    "FaultInjector",
    "FaultSpec",
    "FaultSpecError",
    "OverwriteObject",
    "Shaped",
    "Trigger",
    "WorldChange",
    "overwritten_content",
    "parse_faults",
]

T = TypeVar("T")


class FaultSpecError(ValueError):
    """The ``--faults`` spec is not understood; the message says which entry and what is expected."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Trigger:
    """``after:K`` fires once when the K-th block has been served; ``every:K`` fires at K, 2K, 3K..."""

    blocks: int
    repeat: bool

    def fired(self, before: int, after: int) -> int:
        """How many times it fires while a counter moves from ``before`` to ``after`` blocks."""
        if self.repeat:
            return after // self.blocks - before // self.blocks
        return 1 if before < self.blocks <= after else 0


@dataclass(frozen=True, kw_only=True, slots=True)
class FaultSpec:
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.0
    rejects: tuple[tuple[float, str], ...] = ()  # (rate, code)
    disconnect: Trigger | None = None  # per thing
    bump_version: Trigger | None = None  # per stream
    overwrite: Trigger | None = None  # per stream (the file whose block crossed K)

    @property
    def active(self) -> bool:
        return self != FaultSpec()

    @property
    def shapes_data(self) -> bool:
        return bool(self.drop or self.duplicate or self.reorder or self.delay)


_CODE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s)?")


def _rate(entry: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise FaultSpecError(f"{entry!r}: the rate must be a number from 0 to 1, got {text!r}")
    return value


def _trigger(entry: str, text: str) -> Trigger:
    kind, _, count = text.partition(":")
    if kind not in ("after", "every") or not count.isdigit() or int(count) < 1:
        raise FaultSpecError(f"{entry!r}: expected after:<K> or every:<K> with K >= 1 blocks")
    return Trigger(blocks=int(count), repeat=kind == "every")


def parse_faults(text: str | None) -> FaultSpec:
    """Parse a ``--faults`` spec (empty or ``none``: no faults). Raises FaultSpecError naming the bad entry."""
    values: dict[str, object] = {}
    rejects: list[tuple[float, str]] = []
    if text is None or text.strip() in ("", "none"):
        return FaultSpec()
    for raw in text.split(","):
        entry = raw.strip()
        key, sep, value = entry.partition("=")
        if not sep:
            raise FaultSpecError(f"{entry!r}: expected key=value (e.g. drop=0.1)")
        if key in values and key != "reject":
            raise FaultSpecError(f"{entry!r}: {key} is given twice")
        if key in ("drop", "dup", "duplicate", "reorder"):
            values[{"dup": "duplicate"}.get(key, key)] = _rate(entry, value)
        elif key == "delay":
            rate, _, duration = value.partition(":")
            match = _DURATION.fullmatch(duration)
            if match is None:
                raise FaultSpecError(f"{entry!r}: expected delay=<rate>:<duration>, e.g. delay=0.05:200ms or :1.5s")
            seconds = float(match[1]) / (1.0 if match[2] == "s" else 1000.0)
            values["delay"], values["delay_seconds"] = _rate(entry, rate), seconds
        elif key == "reject":
            rate, _, code = value.partition(":")
            if _CODE.fullmatch(code) is None:
                raise FaultSpecError(f"{entry!r}: expected reject=<rate>:<ErrorCode>, e.g. reject=0.01:Throttling")
            rejects.append((_rate(entry, rate), code))
        elif key in ("disconnect", "bump-version", "overwrite"):
            values[key.replace("-", "_")] = _trigger(entry, value)
        else:
            raise FaultSpecError(
                f"{entry!r}: unknown fault {key!r}; known: drop, dup, reorder, delay, reject, disconnect, "
                "bump-version, overwrite"
            )
    if sum(rate for rate, _ in rejects) > 1.0:
        raise FaultSpecError(f"the reject rates add up to more than 1 in {text!r}")
    return FaultSpec(rejects=tuple(rejects), **values)  # type: ignore[arg-type]


def overwritten_content(data: bytes) -> bytes:
    """What ``overwrite`` writes: same length, last byte flipped (a new ETag); one zero byte for an empty object."""
    return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else b"\x00"


@dataclass(frozen=True, kw_only=True, slots=True)
class Shaped(Generic[T]):
    """A data message after the network faults: send ``item`` ``extra_delay`` seconds later than planned."""

    item: T
    extra_delay: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectThing:
    thing_name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BumpVersion:
    stream_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class OverwriteObject:
    stream_id: str
    file_id: int


WorldChange = DisconnectThing | BumpVersion | OverwriteObject


@dataclass(kw_only=True, slots=True)
class FaultCounters:
    rejected: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    disconnects: int = 0
    version_bumps: int = 0
    overwrites: int = 0


@dataclass(kw_only=True, slots=True)
class FaultInjector:
    """The decisions of one service run. Not thread-safe: one thread calls it (the service's)."""

    spec: FaultSpec
    seed: int = 0
    counters: FaultCounters = field(default_factory=FaultCounters)
    _rng: random.Random = field(init=False)
    _blocks_per_thing: dict[str, int] = field(default_factory=dict)
    _blocks_per_stream: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reject_code(self) -> str | None:
        """For a request about to be answered: the code to reject it with instead, or None."""
        if not self.spec.rejects:
            return None
        draw = self._rng.random()
        for rate, code in self.spec.rejects:
            if draw < rate:
                self.counters.rejected += 1
                return code
            draw -= rate
        return None

    def shape(self, items: Sequence[T]) -> list[Shaped[T]]:
        """Drop, duplicate, delay and reorder the data messages of one answer (in their planned order)."""
        spec, rng = self.spec, self._rng
        if not spec.shapes_data:
            return [Shaped(item=item) for item in items]
        keyed: list[tuple[float, int, Shaped[T]]] = []
        last = len(items) - 1
        for index, item in enumerate(items):
            dropped = spec.drop > 0 and rng.random() < spec.drop
            copies = 2 if spec.duplicate > 0 and rng.random() < spec.duplicate else 1
            delayed = spec.delay > 0 and rng.random() < spec.delay
            key = float(index)
            if spec.reorder > 0 and rng.random() < spec.reorder and index < last:
                key = rng.uniform(index + 1, last + 1)  # behind a random later message of the same answer
                self.counters.reordered += 1
            if dropped:
                self.counters.dropped += 1
                continue
            self.counters.duplicated += copies - 1
            self.counters.delayed += delayed
            shaped = Shaped(item=item, extra_delay=spec.delay_seconds if delayed else 0.0)
            keyed.extend((key, len(keyed), shaped) for _ in range(copies))
        keyed.sort(key=lambda entry: (entry[0], entry[1]))
        return [entry[2] for entry in keyed]

    def count_blocks(self, thing_name: str, stream_id: str, file_id: int, blocks: int) -> list[WorldChange]:
        """``blocks`` data blocks of ``stream_id`` were served to ``thing_name``: the world changes now due."""
        spec = self.spec
        changes: list[WorldChange] = []
        thing_before = self._blocks_per_thing.get(thing_name, 0)
        stream_before = self._blocks_per_stream.get(stream_id, 0)
        self._blocks_per_thing[thing_name] = thing_before + blocks
        self._blocks_per_stream[stream_id] = stream_before + blocks
        if spec.disconnect and spec.disconnect.fired(thing_before, thing_before + blocks):
            self.counters.disconnects += 1
            changes.append(DisconnectThing(thing_name=thing_name))
        if spec.bump_version and spec.bump_version.fired(stream_before, stream_before + blocks):
            self.counters.version_bumps += 1
            changes.append(BumpVersion(stream_id=stream_id))
        if spec.overwrite and spec.overwrite.fired(stream_before, stream_before + blocks):
            self.counters.overwrites += 1
            changes.append(OverwriteObject(stream_id=stream_id, file_id=file_id))
        return changes
