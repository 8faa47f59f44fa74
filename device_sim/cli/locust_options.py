"""The click options that choose where a Locust fleet runs (shared by ``device-sim locust-fleet`` and ``device-sim
fleet --engine locust``). Only click here, so ``cli_fleet`` can import it without an import cycle."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

__all__ = ["LOCUST_OPTION_NAMES", "locust_options", "locust_topology_given"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MASTER_PORT = 5557


def locust_options(func: F) -> F:
    """``--processes N | --master [--expect-workers K] | --worker --master-host H``, and the web UI switch."""
    options = [
        click.option(
            "--processes",
            type=click.IntRange(1, 1024),
            default=None,
            help="Run the devices in N Locust worker processes on this machine (one core each) under a master; "
            "with --worker: N workers of a remote master. [default: one process]",
        ),
        click.option(
            "--master",
            is_flag=True,
            help="Be the master of workers started on other machines with --worker (runs no devices itself).",
        ),
        click.option(
            "--expect-workers",
            type=click.IntRange(1),
            default=1,
            show_default=True,
            help="With --master: start once this many workers have connected.",
        ),
        click.option(
            "--master-bind-host",
            default="*",
            show_default=True,
            help="With --master: the interface workers connect to.",
        ),
        click.option(
            "--master-port",
            type=click.IntRange(1, 65535),
            default=DEFAULT_MASTER_PORT,
            show_default=True,
            help="The master's port (with --master: listen on it; with --worker: connect to it).",
        ),
        click.option(
            "--worker",
            is_flag=True,
            help="Be a worker of the master at --master-host: run the devices it grants (needs the manifest and "
            "certificates on this machine: --manifest is this machine's copy).",
        ),
        click.option("--master-host", default=None, help="With --worker: the master's host name or address."),
        click.option(
            "--web-ui",
            is_flag=True,
            help="Serve Locust's web UI (port 8089) instead of running headless; the run starts at once and the "
            "UI stays up afterwards until Ctrl-C.",
        ),
        click.option(
            "--locust-arg",
            "locust_args",
            multiple=True,
            help="One more argument for locust, as is (repeatable), e.g. --locust-arg=--web-port=8090.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


#: The parameter names ``locust_options`` adds.
LOCUST_OPTION_NAMES = (
    "processes",
    "master",
    "expect_workers",
    "master_bind_host",
    "master_port",
    "worker",
    "master_host",
    "web_ui",
    "locust_args",
)


def locust_topology_given(params: Mapping[str, Any]) -> bool:
    """Whether any Locust-only choice was made (``device-sim fleet`` refuses them without ``--engine locust``)."""
    return bool(
        params.get("processes")
        or params.get("master")
        or params.get("worker")
        or params.get("master_host")
        or params.get("web_ui")
        or params.get("locust_args")
    )
