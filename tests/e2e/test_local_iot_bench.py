"""Bench devices on the network: `--host` binds only the devices' mutual-TLS port there (the plain port and the
control plane stay on 127.0.0.1), `--advertise` names go into the server certificate's SANs (re-issued when the
list changes) and into local-iot.json as the device endpoint, which `provisioner --local` uses. 127.0.0.2 stands
in for the machine's LAN address (every 127/8 address is loopback on Linux)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from local_iot.ca import CertPaths
from local_iot.runner import LocalIot, LocalIotSettings
from provisioner.local import read_local_config

pytestmark = pytest.mark.e2e
BENCH = "127.0.0.2"


def tls_handshake(iot: LocalIot, host: str, server_name: str, paths: CertPaths) -> str:
    """A verified TLS handshake with the device certificate; returns the negotiated version."""
    context = ssl.create_default_context(cafile=iot.info["ca_cert"])
    context.load_cert_chain(str(paths.cert_path), str(paths.key_path))
    with (
        socket.create_connection((host, iot.info["tls_port"]), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return str(tls.version())


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


def test_device_port_on_a_bench_address_verified_under_an_advertised_name(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = LocalIotSettings(state_dir=state, host=BENCH, advertise=("bench-pc.lan", BENCH))
    with LocalIot(settings) as iot:
        info = iot.info
        assert info["device_endpoint"] == "bench-pc.lan" and info["tls_host"] == BENCH
        assert {"bench-pc.lan", BENCH} <= set(info["advertise"])
        paths = iot.issue_device("bench-0", tmp_path / "certs")
        assert tls_handshake(iot, BENCH, "bench-pc.lan", paths).startswith("TLS")
        assert tls_handshake(iot, BENCH, BENCH, paths).startswith("TLS")
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_handshake(iot, BENCH, "not-advertised.lan", paths)
        # only the device port is on the bench address; the local-tools ports stay on 127.0.0.1
        assert refused("127.0.0.1", info["tls_port"])
        assert refused(BENCH, info["mqtt_port"]) and not refused("127.0.0.1", info["mqtt_port"])
        aws_port = int(info["aws_endpoint_url"].rsplit(":", 1)[1])
        assert info["aws_endpoint_url"].startswith("http://127.0.0.1:") and refused(BENCH, aws_port)
        # provisioner --local writes the advertised name into the manifest's endpoint
        local = read_local_config(state)
        assert (local.mqtt_host, local.tls_port) == ("bench-pc.lan", info["tls_port"])
        server_cert = (state / "ca" / "server.cert.pem").read_bytes()

    # same names: the same server certificate; a changed list: re-issued with the new names
    with LocalIot(settings) as iot:
        assert (state / "ca" / "server.cert.pem").read_bytes() == server_cert
    renamed = LocalIotSettings(state_dir=state, host=BENCH, advertise=("bench-2.lan",))
    with LocalIot(renamed) as iot:
        assert (state / "ca" / "server.cert.pem").read_bytes() != server_cert
        paths = iot.issue_device("bench-1", tmp_path / "certs")
        assert tls_handshake(iot, BENCH, "bench-2.lan", paths).startswith("TLS")
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_handshake(iot, BENCH, "bench-pc.lan", paths)
