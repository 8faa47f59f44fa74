"""A quick second opinion on a TLS connect that awscrt has not finished.

awscrt's TLS (s2n) reports a failed server-certificate check only after a "blinding" delay of 10-30 s. When a
connect hangs, the transport asks Python's ssl module for the same handshake (same CA, client certificate, host
name and ALPN): a certificate verification failure comes back at once, with OpenSSL's reason ("self-signed
certificate in certificate chain", "Hostname mismatch ..."). Any other outcome is no diagnosis, and the connect
keeps waiting for awscrt's own verdict. This is a diagnostic, not an error path: ssl's exceptions become text here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from device_sim.transport.settings import AWS_MQTT_ALPN, TransportSettings

log = logging.getLogger(__name__)


async def diagnose_tls(settings: TransportSettings, timeout_s: float) -> str | None:
    """OpenSSL's reason why the server certificate does not verify, or None (it verifies, or we cannot tell)."""
    if settings.no_tls or settings.cert is None or settings.key is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.ca) if settings.ca else None)
        context.load_cert_chain(str(settings.cert), str(settings.key))
        if settings.alpn:
            context.set_alpn_protocols([AWS_MQTT_ALPN])
    except (OSError, ssl.SSLError) as exc:
        log.debug("TLS probe not possible: %s", exc)
        return None
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(
                settings.endpoint, settings.resolved_port, ssl=context, server_hostname=settings.endpoint
            )
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_message or str(exc)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        log.debug("TLS probe of %s:%s gave no diagnosis: %s", settings.endpoint, settings.port, exc)
    return None
