"""``device-sim locust-fleet`` (and ``device-sim fleet --engine locust``): a fleet on Locust, on one or many machines.

The command checks the options, then runs ``python -m locust -f device_sim/fleet/locust/locustfile.py`` with Locust's
topology options and the fleet's options, and waits for it (Ctrl-C reaches Locust, which still writes the
reports). Afterwards, on the master (or in one-process mode), it prints the summary table from the reports.

Exit codes: those of the run: 0 every device verified; 1 a device failed, never reported, or its worker was lost;
2 bad arguments; 6 the reports could not be written. A worker exits 0 unless its device host failed.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from device_sim.cli.fleet import fleet_options
from device_sim.cli.locust_options import locust_options
from device_sim.cli.options import download_options

__all__ = ["ENGINE_PATH", "locust_argv", "locust_fleet_command", "locust_options", "run_locust"]


class LocustMissing(click.ClickException):
    exit_code = 2


#: The Locust entry point (a file: ``locust -f`` takes paths; importing it would monkey-patch this process).
ENGINE_PATH = Path(__file__).parent.parent / "fleet" / "locust" / "locustfile.py"


def locust_argv(params: Mapping[str, Any]) -> list[str]:
    """The ``locust`` command line for the parsed options (click errors for impossible combinations)."""
    from device_sim.fleet.locust.options import params_to_args

    processes, master, worker = params.get("processes"), params.get("master"), params.get("worker")
    if master and worker:
        raise click.UsageError("give --master or --worker, not both")
    if master and processes:
        raise click.UsageError("--master runs no devices: start workers with --worker [--processes N] instead")
    if worker and not params.get("master_host"):
        raise click.UsageError("--worker needs --master-host (the machine running --master)")
    if params.get("master_host") and not worker:
        raise click.UsageError("--master-host is for --worker")
    argv = [sys.executable, "-m", "locust", "-f", str(ENGINE_PATH)]
    if worker:
        argv += ["--worker", "--master-host", params["master_host"], "--master-port", str(params["master_port"])]
        if processes:
            argv += ["--processes", str(processes)]
        # The master's fleet options apply; the worker only names its own copy of the manifest.
        return [*argv, "--manifest", str(params["manifest"]), *params.get("locust_args", ())]
    if master:
        argv += [
            "--master",
            "--expect-workers",
            str(params["expect_workers"]),
            "--master-bind-host",
            params["master_bind_host"],
            "--master-bind-port",
            str(params["master_port"]),
        ]
    elif processes:
        argv += ["--processes", str(processes)]
    argv += ["--autostart"] if params.get("web_ui") else ["--headless"]
    if params.get("quiet"):
        argv += ["--only-summary"]
    return [*argv, *params_to_args(params), *params.get("locust_args", ())]


def _check_run(params: Mapping[str, Any]) -> None:
    """Fail early, with click's messages, on what the master would refuse."""
    from device_sim.fleet.locust.options import build_plan

    if params.get("worker"):
        if not Path(params["manifest"]).is_file():
            raise click.BadParameter(f"{params['manifest']} does not exist on this machine", param_hint="--manifest")
        return
    build_plan(params)


@contextlib.contextmanager
def _forward_signals(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Ctrl-C reaches Locust from the terminal (same process group); SIGTERM to us is passed on."""
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def run_locust(params: Mapping[str, Any]) -> int:
    """Run the fleet on Locust with the parsed options of ``locust-fleet`` / ``fleet --engine locust``.

    Returns the run's exit code; raises ``click.UsageError``/``BadParameter`` for bad options.
    """
    import importlib.util

    if importlib.util.find_spec("locust") is None:
        raise LocustMissing("Locust is not installed: pip install 'iot-stream-sim[locust]' (or: pip install locust)")
    argv = locust_argv(params)
    _check_run(params)
    started = time.time()
    proc = subprocess.Popen(argv)
    with _forward_signals(proc):
        code = proc.wait()
    if not params.get("worker"):
        _print_summary(Path(params["report_dir"]), started)
    return code


def _print_summary(report_dir: Path, started: float) -> None:
    from device_sim.results.metrics import FleetSummary, MetricsFormatError

    path = report_dir / "summary.json"
    try:
        if path.stat().st_mtime < started:
            return  # from an earlier run: this one wrote none
        import json

        summary = FleetSummary.from_dict(json.loads(path.read_text())["summary"])
    except (OSError, ValueError, KeyError, MetricsFormatError):
        return
    from rich.console import Console

    from device_sim.cli.rich_tables import rich_summary_table

    Console().print(rich_summary_table(summary))
    click.echo(f"reports: {report_dir}")


@click.command("locust-fleet")
@fleet_options
@locust_options
@download_options
def locust_fleet_command(**params: Any) -> None:
    """Run a fleet on Locust: N processes here (--processes), or a master and workers on many machines.

    \b
    One machine, 2 cores:   device-sim locust-fleet --manifest run.json --processes 2
    Many machines:          device-sim locust-fleet --manifest run.json --master --expect-workers 3
                            device-sim locust-fleet --manifest run.json --worker --master-host M --processes 4
    The run and its options are those of `device-sim fleet`; Locust adds live statistics (and a web UI with
    --web-ui). Each worker machine needs the manifest and the device certificates (--manifest: its copy).
    """
    sys.exit(run_locust(params))
