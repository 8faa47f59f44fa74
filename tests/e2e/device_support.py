"""Helpers for the device e2e tests: run ``device-sim download`` (in process, through click) against a local_iot."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from device_sim.cli import main
from local_iot.runner import LocalIot


@dataclass(frozen=True, kw_only=True, slots=True)
class Download:
    exit_code: int
    summary: dict[str, Any] | None  # the --json line, when one was printed
    stdout: str
    stderr: str
    seconds: float


def connection_args(iot: LocalIot, thing: str, certs: Path | None) -> list[str]:
    """``--endpoint/--port`` plus ``--cert/--key/--ca`` (mutual TLS, certificate issued for ``thing``) or
    ``--no-tls`` when ``certs`` is None."""
    info = iot.info
    if certs is None:
        return ["--endpoint", "127.0.0.1", "--port", str(info["mqtt_port"]), "--no-tls"]
    paths = iot.issue_device(thing, certs / thing)
    return [
        "--endpoint",
        "localhost",
        "--port",
        str(info["tls_port"]),
        "--cert",
        str(paths.cert_path),
        "--key",
        str(paths.key_path),
        "--ca",
        str(info["ca_cert"]),
    ]


def run_cli(args: Sequence[str]) -> Download:
    """``device-sim <args>`` in this process; the summary is parsed when ``--json`` printed one."""
    started = time.monotonic()
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    seconds = time.monotonic() - started
    summary = None
    lines = result.stdout.strip().splitlines()
    if "--json" in args and lines:
        summary = json.loads(lines[-1])
    return Download(
        exit_code=result.exit_code, summary=summary, stdout=result.stdout, stderr=result.stderr, seconds=seconds
    )


def download(
    iot: LocalIot,
    monkeypatch: pytest.MonkeyPatch,
    *,
    thing: str,
    stream: str,
    certs: Path | None,
    extra: Sequence[str] = (),
) -> Download:
    """``device-sim download --json`` of ``stream`` as ``thing``; boto3 (S3 verification) points at ``iot``."""
    for name, value in iot.environment().items():
        monkeypatch.setenv(name, value)
    args = ["download", *connection_args(iot, thing, certs), "--thing", thing, "--stream", stream, "--json"]
    return run_cli([*args, *extra])
