"""``local-iot``: the offline stand-in for AWS IoT Core (``local-iot up``)."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from .broker import BrokerError
from .control_plane import ControlPlaneError
from .faults import FaultSpecError, parse_faults
from .quotas import QuotaSpecError, parse_quotas
from .runner import INFO_FILE, LOCAL_HOST, LocalIot, LocalIotError, LocalIotSettings, load_info, reset_state
from .service_mqtt import ServiceError


class LocalIotCliError(click.ClickException):
    exit_code = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iot-stream-sim")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """An offline AWS IoT Core for streams: mosquitto with mutual TLS, moto, and a stream service."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class FiniteFloat(click.ParamType):  # type: ignore[type-arg]
    """A float in [low, high] (``(low, high]`` with ``above_low``); NaN and infinities are refused (click's
    FloatRange lets NaN through)."""

    name = "float"

    def __init__(self, low: float, high: float, *, above_low: bool = False) -> None:
        self.low, self.high, self.above_low = low, high, above_low

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        low_ok = number > self.low if self.above_low else number >= self.low
        if not math.isfinite(number) or not low_ok or number > self.high:
            what = f"above {self.low:g} and at most" if self.above_low else f"from {self.low:g} to"
            self.fail(f"{value!r} is not a finite number {what} {self.high:g}", param, ctx)
        return number


def _advertise(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if any(c.isspace() or c in "/" for c in name):
            raise click.BadParameter(f"{name!r} is not a host name or address", param=param)
    return names


def _check_spec(parse, value: str | None, param: str) -> str | None:  # type: ignore[no-untyped-def]
    try:
        parse(value)
    except (FaultSpecError, QuotaSpecError) as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None
    return value


@main.command("up")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".local-iot"),
    show_default=True,
    help="Where the CA, certificates, broker files and local-iot.json go.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the devices' mutual-TLS port binds to (e.g. a LAN address, or 0.0.0.0). The plain MQTT port and "
    "the control plane always stay on 127.0.0.1.",
)
@click.option(
    "--advertise",
    callback=_advertise,
    metavar="NAME[,NAME]",
    help="Host names/addresses devices dial: put into the server certificate (re-issued when they change) and into "
    "local-iot.json as the device endpoint (the first one).",
)
@click.option(
    "--plain-port/--no-plain-port",
    default=True,
    show_default=True,
    help="The anonymous plain MQTT port on 127.0.0.1 (every topic, for local tools). Off: none; the stream service "
    "then uses a Unix socket in the state dir.",
)
@click.option(
    "--mqtt-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Plain MQTT port (0: the one recorded in local-iot.json, else a free port).",
)
@click.option(
    "--tls-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Mutual-TLS MQTT port (0: the one recorded in local-iot.json, else a free port).",
)
@click.option(
    "--aws-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Control-plane HTTP port for AWS_ENDPOINT_URL (0: the recorded one, else a free port).",
)
@click.option("--region", default="us-east-1", show_default=True)
@click.option(
    "--latency-ms",
    type=FiniteFloat(0, 60000),
    default=0.0,
    show_default=True,
    help="Delay added to every answer (a WAN round trip).",
)
@click.option(
    "--quotas",
    default="none",
    show_default=True,
    help="'none', or 'aws' for AWS's per-connection limits (100 publishes/s, 512 KiB/s).",
)
@click.option("--faults", default=None, help="Fault spec, e.g. 'drop=0.1,dup=0.05,reorder=0.1' (see README).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for fault injection.")
@click.option(
    "--jobs-minute-s",
    type=FiniteFloat(0, 86400, above_low=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a Jobs minute lasts: step timeouts (stepTimeoutInMinutes), in-progress timeouts and rollout "
    "rates (maximumPerMinute) count in it. Shorten it to see timeouts and rollouts pass quickly.",
)
@click.option(
    "--fresh", is_flag=True, help="Forget the state dir's saved control plane and ports first (keeps the CA)."
)
def up(
    state_dir: Path,
    host: str,
    advertise: tuple[str, ...],
    plain_port: bool,
    mqtt_port: int,
    tls_port: int,
    aws_port: int,
    region: str,
    latency_ms: float,
    quotas: str,
    faults: str | None,
    seed: int,
    jobs_minute_s: float,
    fresh: bool,
) -> None:
    """Start everything, write STATE_DIR/local-iot.json, and run until Ctrl-C or SIGTERM.

    Run again on the same --state-dir, it keeps the ports, the CA and server certificate, and the control plane's
    state (buckets, roles, things, certificates, policies, streams): manifests and flashed devices stay valid.
    `local-iot reset` (or --fresh) starts clean on purpose.
    """
    _check_spec(parse_quotas, quotas, "--quotas")
    _check_spec(parse_faults, faults, "--faults")
    if fresh:
        try:
            reset_state(state_dir)
        except LocalIotError as exc:
            raise LocalIotCliError(str(exc)) from exc
    settings = LocalIotSettings(
        state_dir=state_dir,
        host=host,
        advertise=advertise,
        plain_port=plain_port,
        mqtt_port=mqtt_port,
        tls_port=tls_port,
        aws_port=aws_port,
        region=region,
        latency_ms=latency_ms,
        quotas=quotas,
        faults=faults,
        seed=seed,
        jobs_minute_s=jobs_minute_s,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            iot = LocalIot(settings).start()
        except (LocalIotError, BrokerError, ControlPlaneError, ServiceError, OSError) as exc:
            raise LocalIotCliError(f"local_iot could not start: {exc}") from exc
        try:
            info = iot.info
            click.echo(f"local_iot is up (state in {info['state_dir']})")
            click.echo(
                f"  devices        {info['device_endpoint']}:{info['tls_port']}  mutual TLS, bound to "
                f"{info['tls_host']}, names {','.join(info['advertise'])}  (CA {info['ca_cert']})"
            )
            if info["mqtt_port"] is not None:
                click.echo(
                    f"  MQTT plain     {LOCAL_HOST}:{info['mqtt_port']}  LOCAL TOOLS ONLY: anonymous, every topic"
                )
            else:
                click.echo("  MQTT plain     off (--no-plain-port)")
            click.echo(
                f"  AWS endpoint   {info['aws_endpoint_url']}  (region {info['region']})  LOCAL TOOLS ONLY: "
                "unauthenticated, anyone who reaches it can change or reset everything"
            )
            click.echo(f"  latency {latency_ms} ms, quotas {quotas}, faults {faults or 'none'}, seed {seed}")
            if jobs_minute_s != 60.0:
                click.echo(f"  a Jobs minute lasts {jobs_minute_s:g} s")
            click.echo(f"  written: {Path(info['state_dir']) / INFO_FILE}")
            click.echo("# use it from another shell (dummy credentials; never your real ones):")
            for key, value in iot.environment().items():
                click.echo(f"export {key}={value}")
            click.echo("# Ctrl-C to stop", err=True)
            while not stop.wait(0.2):
                if iot.wait_failed(0):
                    break
        finally:
            iot.stop()
            click.echo("local_iot stopped", err=True)
        if iot.failure is not None:
            click.echo(f"local-iot: {iot.failure}", err=True)
            sys.exit(4)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@main.command("env")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".local-iot"),
    show_default=True,
    help="The state dir of a running `local-iot up`.",
)
def env(state_dir: Path) -> None:
    """Print `export` lines that point boto3 (and so provisioner/device-sim) at a running local_iot.

    Use: eval "$(local-iot env --state-dir DIR)". The credentials are dummies; never your real ones.
    """
    from .control_plane import aws_environment

    try:
        info = load_info(state_dir)
    except LocalIotError as exc:
        raise LocalIotCliError(str(exc)) from exc
    for key, value in aws_environment(info["aws_endpoint_url"], info["region"]).items():
        click.echo(f"export {key}={value}")


@main.command("reset")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".local-iot"),
    show_default=True,
)
@click.option("--ca/--keep-ca", "remove_ca", default=False, help="Also forget the CA (flashed devices then fail).")
def reset(state_dir: Path, remove_ca: bool) -> None:
    """Forget a stopped local-iot's saved control plane, ports and broker files, so the next `up` starts clean."""
    try:
        removed = reset_state(state_dir, keep_ca=not remove_ca)
    except LocalIotError as exc:
        raise LocalIotCliError(str(exc)) from exc
    for path in removed:
        click.echo(f"removed {path}")
