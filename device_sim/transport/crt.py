"""awscrt resources shared by every connection of a process, and the TLS context of one connection.

A fleet of thousands of MQTT clients needs one ``EventLoopGroup`` with a few threads and one ``ClientBootstrap``
(host resolver included), not one per client: ``shared_crt_resources()`` creates them once, lazily. Callers that
want a different thread count build their own ``CrtResources`` and pass it to every transport.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from awscrt import io  # type: ignore[import-untyped]

from device_sim.transport.settings import AWS_MQTT_ALPN, TransportSettings


@dataclass(frozen=True, slots=True)
class CrtResources:
    """The awscrt event-loop threads, resolver and bootstrap one or many connections run on."""

    event_loop_group: io.EventLoopGroup
    host_resolver: io.DefaultHostResolver
    bootstrap: io.ClientBootstrap
    threads: int

    @classmethod
    def create(cls, threads: int | None = None) -> CrtResources:
        """``threads`` awscrt event-loop threads (default: cores, at most 4)."""
        count = threads if threads is not None else min(4, os.cpu_count() or 1)
        if count < 1:
            raise ValueError(f"threads must be >= 1, got {count}")
        group = io.EventLoopGroup(num_threads=count)
        resolver = io.DefaultHostResolver(group)
        return cls(group, resolver, io.ClientBootstrap(group, resolver), count)


@functools.cache
def shared_crt_resources() -> CrtResources:
    """The process-wide resources (created on first use, never replaced)."""
    return CrtResources.create()


def build_tls_context(settings: TransportSettings) -> io.ClientTlsContext | None:
    """Mutual-TLS context from the settings' files (None for ``no_tls``). awscrt reads the files here."""
    if settings.no_tls:
        return None
    assert settings.cert is not None and settings.key is not None
    options = io.TlsContextOptions.create_client_with_mtls_from_path(str(settings.cert), str(settings.key))
    if settings.ca is not None:
        options.override_default_trust_store_from_path(None, str(settings.ca))
    if settings.alpn:
        options.alpn_list = [AWS_MQTT_ALPN]
    return io.ClientTlsContext(options)


def socket_options(settings: TransportSettings) -> io.SocketOptions:
    """TCP options: the connect timeout (awscrt has no TCP_NODELAY switch; see docs/transport.md)."""
    options = io.SocketOptions()
    options.connect_timeout_ms = max(1, int(settings.connect_timeout_s * 1000))
    return options
