"""The fleet's options under Locust: one set of click options (``device-sim fleet``'s), three ways in.

How this works: the options a Locust run takes are exactly those of ``device-sim fleet`` (``fleet_options`` and
``download_options``), defined once in click. ``device_options_command`` is a click command carrying them, used
only to parse. The ``device-sim locust-fleet`` wrapper turns its parsed values back into arguments
(``params_to_args``) for the ``locust`` process; the Locust entry point mirrors every option into Locust's
argparse parser as a plain string (``add_to_argparse``), so ``locust -f ... --block-size 4KiB`` works too, and
rebuilds the argument list from Locust's namespace (``args_from_namespace``); the master, and on each machine the
device host, parse that list with click again (``parse_device_args``), so validation and messages are the ones
``device-sim fleet`` gives. ``build_plan`` turns the parsed values into what a run needs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from device_sim.cli.fleet import fleet_options
from device_sim.cli.options import build_download_settings, download_options, transport_choices
from device_sim.device.device import DownloadSettings, SinkKind
from device_sim.fleet.runner import (
    DeviceIdentity,
    FleetSettings,
    FleetTarget,
    Shard,
    select_identities,
    target_from_manifest,
)

__all__ = [
    "ARGPARSE_PREFIX",
    "RunPlan",
    "add_to_argparse",
    "args_from_namespace",
    "build_plan",
    "device_options_command",
    "params_to_args",
    "parse_device_args",
]

#: Destination prefix of the mirrored options in Locust's namespace (keeps clear of Locust's own names).
ARGPARSE_PREFIX = "device_sim_"


@functools.cache
def device_options_command() -> click.Command:
    """A click command with the fleet and download options whose callback returns the parsed values."""

    @fleet_options
    @download_options
    def collect(**params: Any) -> dict[str, Any]:
        return params

    return click.Command("device-options", callback=collect, params=getattr(collect, "__click_params__", []))


def parse_device_args(args: Sequence[str]) -> dict[str, Any]:
    """Parse fleet/download arguments; ``click.UsageError`` (or ``BadParameter``) naming the option if wrong."""
    command = device_options_command()
    with command.make_context("device-options", list(args)) as ctx:
        result: dict[str, Any] = command.invoke(ctx)
    return result


def _text(value: Any) -> str:
    if isinstance(value, Shard):
        return f"{value.index}/{value.count}"
    return str(value)


def params_to_args(params: Mapping[str, Any]) -> list[str]:
    """The argument list that parses back to ``params`` (only the device options; other keys are ignored)."""
    args: list[str] = []
    for param in device_options_command().params:
        if not isinstance(param, click.Option) or param.name not in params:
            continue
        value = params[param.name]
        if value is None:
            continue
        if param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            if value:
                args.append(param.opts[0])
        elif param.multiple:
            for item in value:
                args += [param.opts[0], _text(item)]
        else:
            args += [param.opts[0], _text(value)]
    return args


def _dest(param: click.Option) -> str:
    return f"{ARGPARSE_PREFIX}{param.name}"


def add_to_argparse(parser: Any) -> None:
    """Add every device option to Locust's (config)argparse parser, as raw strings (click validates later)."""
    group = parser.add_argument_group(
        "device-sim", "The options of `device-sim fleet` (see `device-sim fleet --help`); --manifest is required."
    )
    for param in device_options_command().params:
        if not isinstance(param, click.Option):
            continue
        help_text = (param.help or "").replace("%", "%%")
        if param.is_flag and param.secondary_opts:
            group.add_argument(*param.opts, dest=_dest(param), action="store_const", const="on", help=help_text)
            group.add_argument(*param.secondary_opts, dest=_dest(param), action="store_const", const="off")
        elif param.is_flag:
            group.add_argument(*param.opts, dest=_dest(param), action="store_const", const="on", help=help_text)
        elif param.multiple:
            group.add_argument(*param.opts, dest=_dest(param), action="append", help=help_text)
        else:
            group.add_argument(*param.opts, dest=_dest(param), default=None, help=help_text)


def args_from_namespace(namespace: Any) -> list[str]:
    """The device arguments given to Locust (the inverse of ``add_to_argparse``)."""
    args: list[str] = []
    for param in device_options_command().params:
        if not isinstance(param, click.Option):
            continue
        value = getattr(namespace, _dest(param), None)
        if value is None:
            continue
        if param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value == "on" else param.secondary_opts[0])
        elif param.is_flag:
            args.append(param.opts[0])
        elif param.multiple:
            for item in value:
                args += [param.opts[0], str(item)]
        else:
            args += [param.opts[0], str(value)]
    return args


@dataclass(frozen=True, kw_only=True, slots=True)
class RunPlan:
    """Everything one Locust fleet run needs, from the parsed options and the manifest."""

    target: FleetTarget
    identities: tuple[DeviceIdentity, ...]
    download: DownloadSettings
    fleet: FleetSettings
    report_dir: Path
    verify_with_s3: bool  # False when --no-verify-s3 or --expect-sha256

    @property
    def label(self) -> str:
        return self.download.label

    def settings_dict(self, workers: int) -> dict[str, Any]:
        """The run's settings as the reports show them (the single-process fleet's keys, plus the engine)."""
        from device_sim.fleet.runner import settings_dict  # one definition of the keys the reports show

        return {
            **settings_dict(self.download, self.fleet, len(self.identities)),
            "engine": "locust",
            "workers": workers,
        }


def build_plan(params: Mapping[str, Any], *, manifest: Path | None = None) -> RunPlan:
    """The run plan from parsed options; ``manifest`` replaces ``--manifest`` (a worker machine's own copy).

    Raises ``click.UsageError``/``click.BadParameter`` with a message that says what to fix.
    """
    from provisioner.errors import ProvisionerError
    from provisioner.manifest import load_manifest

    path = manifest if manifest is not None else params["manifest"]
    try:
        target, identities = target_from_manifest(load_manifest(path), no_tls=params["no_tls"])
    except (ProvisionerError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    if not identities:
        raise click.UsageError(f"{path} has no things with certificates: run `provisioner up --things N`")
    try:
        identities = select_identities(
            identities, shard=params.get("shard"), offset=params.get("offset") or 0, devices=params.get("devices")
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard/--offset/--devices") from None
    download = build_download_settings(dict(params), sink=SinkKind.DIGEST)
    fleet = FleetSettings(
        connect_rate=params["connect_rate"],
        start_jitter=params["start_jitter"],
        deadline_s=params["deadline"],
        seed=params["seed"],
        price_per_million=params["price_per_million"],
        transport=transport_choices(dict(params)),
        crt_threads=params.get("crt_threads"),
    )
    return RunPlan(
        target=target,
        identities=tuple(identities),
        download=download,
        fleet=fleet,
        report_dir=params["report_dir"],
        verify_with_s3=bool(params["verify_s3"]) and params["expect_sha256"] is None,
    )
