"""Latency, quotas and faults around the protocol core. Sans-IO: time is an input, answers carry a due time.

How this works: ``ServicePipeline.receive(topic, payload, now)`` is what the MQTT adapter calls for every publish.
1. Quotas (optional): the publisher's connection (its thing name, see docs/service.md) must have a publish token,
   or the request is dropped.
2. ``StreamServiceCore.handle`` answers it (due ``now``).
3. Faults (optional, seeded): a successfully answered request may be turned into an injected rejection; the data
   messages of an answer are dropped/duplicated/reordered/delayed; block counters fire world changes: bump the
   stream version or overwrite the S3 object (done here, through the catalog, when the K-th block is served) and
   disconnect a thing (returned as a ``DisconnectClient`` action due after that block; the adapter does it).
4. Each answer's due time: quota pacing (bytes per connection, publishes per account), then ``latency``, then any
   fault delay. Without faults, answers of one request keep their order (due times never decrease).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .catalog import Catalog, CatalogError
from .faults import (
    BumpVersion,
    DisconnectThing,
    FaultCounters,
    FaultInjector,
    FaultSpec,
    OverwriteObject,
    WorldChange,
    overwritten_content,
)
from .quotas import QuotaCounters, Quotas, QuotaSettings
from .service import DEFAULT_CACHE_BYTES, AnswerKind, Outgoing, ServiceStats, StreamServiceCore

__all__ = ["DisconnectClient", "PipelineStats", "ServicePipeline", "ServiceSettings", "thing_of_topic"]

log = logging.getLogger(__name__)

INJECTED_MESSAGE = "Injected by local_iot --faults."


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceSettings:
    """The realism knobs; all off by default."""

    latency_ms: float = 0.0
    quotas: QuotaSettings | None = None
    faults: FaultSpec = field(default_factory=FaultSpec)
    seed: int = 0
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def __post_init__(self) -> None:
        if not math.isfinite(self.latency_ms) or self.latency_ms < 0:
            raise ValueError(f"latency_ms must be a finite number >= 0, got {self.latency_ms}")

    @property
    def plain(self) -> bool:
        """True when answers go out at once, unchanged."""
        return not self.latency_ms and self.quotas is None and not self.faults.active


@dataclass(frozen=True, kw_only=True, slots=True)
class DisconnectClient:
    """Kick the MQTT client of ``thing_name`` off the broker at ``due`` (fault ``disconnect``)."""

    due: float
    thing_name: str


Action = Outgoing | DisconnectClient


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineStats:
    core: ServiceStats
    quotas: QuotaCounters | None
    faults: FaultCounters


def thing_of_topic(topic: str) -> str | None:
    """The thing name of a ``$aws/things/<thing>/...`` topic, without validating the rest."""
    if not topic.startswith("$aws/things/"):
        return None
    thing = topic[12:].partition("/")[0]
    return thing or None


class ServicePipeline:
    """Core + quotas + faults + latency. Not thread-safe: one thread (the service's) calls ``receive``."""

    def __init__(self, catalog: Catalog, settings: ServiceSettings | None = None) -> None:
        self.settings = settings or ServiceSettings()
        self.core = StreamServiceCore(catalog, cache_bytes=self.settings.cache_bytes)
        self._catalog = catalog
        self._latency = self.settings.latency_ms / 1000.0
        self._quotas = Quotas(settings=self.settings.quotas) if self.settings.quotas is not None else None
        self._faults = FaultInjector(spec=self.settings.faults, seed=self.settings.seed)
        self._plain = self.settings.plain

    def stats(self) -> PipelineStats:
        quotas = replace(self._quotas.counters) if self._quotas is not None else None
        return PipelineStats(core=self.core.stats(), quotas=quotas, faults=replace(self._faults.counters))

    def receive(self, topic: str, payload: bytes, now: float, client_id: str | None = None) -> Sequence[Action]:
        """Everything to do for one publish received at ``now``, each with its due time. Never raises."""
        if self._plain:
            return self.core.handle(topic, payload, client_id, now)
        key = client_id or thing_of_topic(topic)
        if self._quotas is not None and key is not None and not self._quotas.admit_request(key, now):
            log.debug("quota: dropped a request of %s", key)
            return []
        answers = self.core.handle(topic, payload, client_id, now)
        if not answers:
            return []
        first = answers[0]
        if first.kind is not AnswerKind.REJECTED and self.settings.faults.rejects:
            code = self._faults.reject_code()
            if code is not None:
                answers = [self.core.rejection(first, code, INJECTED_MESSAGE)]
        changes: list[WorldChange] = []
        shaped = [(answer, 0.0) for answer in answers]
        if answers[0].kind is AnswerKind.DATA:
            shaped = [(s.item, s.extra_delay) for s in self._faults.shape(answers)]
            file_id = answers[0].file_id if answers[0].file_id is not None else 0
            changes = self._faults.count_blocks(first.thing_name, first.stream_id, file_id, len(answers))
        actions: list[Action] = []
        last_due = now
        for answer, extra in shaped:
            due = now
            if self._quotas is not None and key is not None:
                scheduled = self._quotas.schedule_answer(key, now, len(answer.payload) + len(answer.topic))
                if scheduled is None:  # over the connection's publish quota: discarded, as AWS does
                    continue
                due = scheduled
            due += self._latency + extra
            last_due = max(last_due, due)
            actions.append(replace(answer, due=due))
        for change in changes:
            disconnect = self._apply(change, last_due)
            if disconnect is not None:
                actions.append(disconnect)
        return actions

    def _apply(self, change: WorldChange, due: float) -> DisconnectClient | None:
        try:
            if isinstance(change, DisconnectThing):
                log.info("fault: disconnecting %s", change.thing_name)
                return DisconnectClient(due=due, thing_name=change.thing_name)
            if isinstance(change, BumpVersion):
                version = self._catalog.bump_stream_version(change.stream_id)
                log.info("fault: stream %s bumped to version %d", change.stream_id, version)
            elif isinstance(change, OverwriteObject):
                stream = self._catalog.get_stream(change.stream_id)
                file = stream.file(change.file_id) if stream is not None else None
                if file is not None:
                    self._catalog.overwrite_object(file, overwritten_content(self.core.read_file(file)))
                    log.info("fault: overwrote s3://%s/%s of stream %s", file.bucket, file.key, change.stream_id)
        except (CatalogError, KeyError) as failed:
            log.warning("fault %s could not be applied: %s", change, failed)
        except Exception:
            log.exception("fault %s failed", change)
        return None
