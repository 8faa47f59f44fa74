"""The master's book of a Locust fleet run: which device went to which worker, which reported, what is missing.

How this works: the master holds the manifest's identities in report order. Locust users on the workers claim
devices (``grant``): each claim takes the next identities, never one twice, so workers never overlap however
Locust spreads its users (and after a worker is lost, Locust's re-spawned users get only what nobody took). Each
grant carries a start delay, seeded per device, spread over one step of Locust's 1-second spawn staircase (plus
``--start-jitter``), so the connect rate is smooth across all workers. Finished devices come back as
``DeviceMetrics`` (``accept``). A worker Locust stops hearing from is ``worker_lost``: its devices that had not
reported get a record naming the worker. ``close`` stops granting (deadline, Ctrl-C); ``done`` is true once
every identity is either unclaimed after ``close`` or has a record; ``final_records`` fills the gaps. Pure: no
Locust, no I/O; times are passed in (seconds since the run started).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from device_sim.fleet.locust.messages import Granted
from device_sim.results.metrics import DeviceMetrics, FailureKind, MetricsFormatError, failure_reason

__all__ = ["LOST", "UNREPORTED", "FleetLedger", "WorkerInfo", "start_delay"]

log = logging.getLogger(__name__)

#: ``failure_reason`` of a device whose worker was lost before it reported.
LOST = failure_reason(FailureKind.ERROR, "worker-lost")
#: ``failure_reason`` of a device claimed by a worker that was still there but never reported it.
UNREPORTED = failure_reason(FailureKind.ERROR, "unreported")


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerInfo:
    node_id: str  # Locust's client id
    pid: int
    hostname: str
    host_pid: int = 0  # its device host

    def describe(self) -> str:
        return f"worker pid {self.pid} on {self.hostname}"


def start_delay(index: int, *, connect_rate: float, start_jitter: float, seed: int) -> float:
    """Seconds device ``index`` waits after its user spawned: uniform over one staircase step plus the jitter.

    Locust spawns users in steps, once a second (every ``1 / rate`` s below 1/s); spreading each step's devices
    over the step turns the staircase into an even connect rate.
    """
    step = 1.0 if connect_rate >= 1 else 1.0 / connect_rate
    return random.Random(f"{seed}/{index}").uniform(0.0, step + start_jitter)


class FleetLedger:
    def __init__(
        self, thing_names: Sequence[str], *, label: str, connect_rate: float, start_jitter: float = 0.0, seed: int = 0
    ) -> None:
        if len(set(thing_names)) != len(thing_names):
            raise ValueError("thing names must be unique")
        self._names = list(thing_names)
        self._label = label
        self._rate = connect_rate
        self._jitter = start_jitter
        self._seed = seed
        self._next = 0
        self._open = True
        self._owner: dict[int, str] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._records: dict[int, DeviceMetrics] = {}
        self._lost: set[str] = set()

    # ------------------------------------------------------------------------------------------------ queries

    @property
    def devices(self) -> int:
        return len(self._names)

    @property
    def granted(self) -> int:
        return self._next

    @property
    def reported(self) -> int:
        return len(self._records)

    @property
    def open(self) -> bool:
        return self._open

    @property
    def done(self) -> bool:
        """Every device has a record, or was never claimed and granting is closed."""
        claimed_all = self._next == len(self._names) or not self._open
        return claimed_all and all(i in self._records for i in range(self._next))

    @property
    def workers(self) -> list[WorkerInfo]:
        return list(self._workers.values())

    def outstanding(self, node_id: str | None = None) -> list[int]:
        """Claimed devices without a record (of one worker, or of all)."""
        return [
            i for i, owner in self._owner.items() if i not in self._records and (node_id is None or owner == node_id)
        ]

    def lost_workers(self) -> list[WorkerInfo]:
        return [self._workers[node] for node in sorted(self._lost)]

    def lost_devices(self) -> list[str]:
        return [self._names[i] for i, r in sorted(self._records.items()) if r.failure_reason == LOST]

    # ------------------------------------------------------------------------------------------------ changes

    def grant(self, worker: WorkerInfo, count: int) -> list[Granted]:
        """The next ``count`` devices (fewer when the fleet is used up or granting is closed) for ``worker``."""
        if count < 1:
            raise ValueError("count must be >= 1")
        self._workers.setdefault(worker.node_id, worker)
        if not self._open or worker.node_id in self._lost:
            return []
        end = min(len(self._names), self._next + count)
        granted = []
        for index in range(self._next, end):
            self._owner[index] = worker.node_id
            delay = start_delay(index, connect_rate=self._rate, start_jitter=self._jitter, seed=self._seed)
            granted.append(Granted(index=index, thing_name=self._names[index], delay_s=delay))
        self._next = end
        return granted

    def accept(self, node_id: str, index: int, data: Mapping[str, object]) -> DeviceMetrics | None:
        """Take a worker's record of device ``index``; returns it, or None when it is ignored (and logged)."""
        if index not in self._owner:
            log.warning("ignoring a record for device #%d that was never granted", index)
            return None
        if self._owner[index] != node_id:
            log.warning("device #%d was granted to %s but %s reported it", index, self._owner[index], node_id)
        thing = self._names[index]
        try:
            record = DeviceMetrics.from_dict(data)
        except (MetricsFormatError, TypeError) as exc:
            record = self._failed(thing, failure_reason(FailureKind.ERROR, "bad-record"), f"unreadable record: {exc}")
        if record.thing_name != thing:
            log.warning("record for device #%d names %s, not %s", index, record.thing_name, thing)
            return None
        if not record.settings:  # made by a worker that could not run it: stamp the run's label
            record = replace(record, settings=self._label)
        previous = self._records.get(index)
        if previous is not None and previous.failure_reason != LOST:
            log.warning("ignoring a second record for %s", thing)
            return None
        self._records[index] = record
        return record

    def worker_lost(self, node_id: str, at: float) -> list[str]:
        """The worker is gone: its unreported devices get a ``worker-lost`` record. Returns their thing names."""
        if node_id in self._lost:
            return []
        self._lost.add(node_id)
        worker = self._workers.get(node_id, WorkerInfo(node_id=node_id, pid=0, hostname="?"))
        names = []
        for index in self.outstanding(node_id):
            thing = self._names[index]
            message = (
                f"lost with {worker.describe()} at +{at:.1f} s (Locust stopped hearing its heartbeats) "
                "before this device reported"
            )
            self._records[index] = self._failed(thing, LOST, message, at=at)
            names.append(thing)
        return names

    def close(self) -> int:
        """Grant nothing more; returns how many devices were never claimed."""
        self._open = False
        return len(self._names) - self._next

    def final_records(self, at: float, *, why_unstarted: str) -> list[DeviceMetrics]:
        """Every device's record in identity order; the gaps get one that says why (``at``: the run's end)."""
        records = []
        for index, thing in enumerate(self._names):
            record = self._records.get(index)
            if record is None and index in self._owner:
                owner = self._workers.get(self._owner[index])
                who = owner.describe() if owner else self._owner[index]
                record = self._failed(thing, UNREPORTED, f"{who} never reported this device", at=at)
            elif record is None:
                record = self._failed(thing, failure_reason(FailureKind.CANCELLED), why_unstarted, at=at)
            records.append(record)
        return records

    def _failed(self, thing: str, reason: str, message: str, *, at: float = 0.0) -> DeviceMetrics:
        return DeviceMetrics(
            thing_name=thing,
            settings=self._label,
            verified=False,
            failure_reason=reason,
            failure_message=message,
            started_at=at,
            ended_at=at,
        )
