"""``device-sim fleet --engine locust``: a fleet on Locust, on one or many machines.

The command checks the options and builds the fleet plan, then runs ``python -m locust -f
device_sim/fleet/locust/locustfile.py`` with Locust's topology options and the plan as data (``--device-sim-plan``,
a worker: ``--device-sim-manifest``, its copy of the manifest), and waits for it (Ctrl-C reaches Locust, which
still writes the reports). Afterwards, on the master (or in one-process mode), it prints the summary table from
the reports (with ``--jobs`` also the jobs line of ``fleet --jobs``, from jobs.json).

Exit codes: those of the run: 0 every device verified; 1 a device failed, never reported, or its worker was lost;
2 bad arguments; 6 the reports could not be written. A worker exits 0 unless its device host failed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from device_sim.cli.jobs import jobs_line
from device_sim.cli.rich_tables import print_summary_table
from device_sim.fleet.plan import FleetPlan

__all__ = ["ENGINE_PATH", "locust_argv", "locust_options", "locust_topology_given", "run_locust"]


class LocustMissing(click.ClickException):
    exit_code = 2


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
            help="With --master: the interface workers connect to. (--processes on one machine listens on "
            "127.0.0.1 only.)",
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


#: The Locust entry point (a file: ``locust -f`` takes paths; importing it would monkey-patch this process).
ENGINE_PATH = Path(__file__).parent.parent / "fleet" / "locust" / "locustfile.py"


def locust_argv(params: Mapping[str, Any], plan: FleetPlan | None) -> list[str]:
    """The ``locust`` command line: the topology options, then the plan as data (a worker: its manifest copy)."""
    argv = [sys.executable, "-m", "locust", "-f", str(ENGINE_PATH)]
    processes = params.get("processes")
    if params.get("worker"):
        argv += ["--worker", "--master-host", params["master_host"], "--master-port", str(params["master_port"])]
        if processes:
            argv += ["--processes", str(processes)]
        # The master's plan applies; the worker only names its own copy of the manifest.
        return [*argv, "--device-sim-manifest", str(params["manifest"]), *params.get("locust_args", ())]
    assert plan is not None
    if params.get("master"):
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
        # The workers are this machine's own processes: the master listens on loopback only.
        argv += ["--processes", str(processes), "--master-bind-host", "127.0.0.1"]
    argv += ["--autostart"] if params.get("web_ui") else ["--headless"]
    if params.get("quiet"):
        argv += ["--only-summary"]
    return [*argv, "--device-sim-plan", plan.to_json(), *params.get("locust_args", ())]


def _check_topology(params: Mapping[str, Any]) -> None:
    processes, master, worker = params.get("processes"), params.get("master"), params.get("worker")
    if master and worker:
        raise click.UsageError("give --master or --worker, not both")
    if master and processes:
        raise click.UsageError("--master runs no devices: start workers with --worker [--processes N] instead")
    if worker and not params.get("master_host"):
        raise click.UsageError("--worker needs --master-host (the machine running --master)")
    if params.get("master_host") and not worker:
        raise click.UsageError("--master-host is for --worker")


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


def run_locust(params: Mapping[str, Any], build_plan: Callable[[dict[str, Any]], FleetPlan]) -> int:
    """Run the fleet on Locust with the parsed options of ``device-sim fleet --engine locust``.

    ``build_plan`` makes the plan from the options (the fleet command's). Returns the run's exit code; raises
    ``click.UsageError``/``BadParameter`` for bad options.
    """
    import importlib.util

    if importlib.util.find_spec("locust") is None:
        raise LocustMissing("Locust is not installed: pip install 'iot-stream-sim[locust]' (or: pip install locust)")
    _check_topology(params)
    plan = None
    if params.get("worker"):
        if not Path(params["manifest"]).is_file():
            raise click.BadParameter(f"{params['manifest']} does not exist on this machine", param_hint="--manifest")
    else:
        plan = build_plan(dict(params))
    argv = locust_argv(params, plan)
    started = time.time()
    proc = subprocess.Popen(argv)
    with _forward_signals(proc):
        code = proc.wait()
    if not params.get("worker"):
        _print_report_summary(Path(params["report_dir"]), started)
    return code


def _print_report_summary(report_dir: Path, started: float) -> None:
    from device_sim.results.metrics import FleetSummary, MetricsFormatError

    path = report_dir / "summary.json"
    try:
        if path.stat().st_mtime < started:
            return  # from an earlier run: this one wrote none
        summary = FleetSummary.from_dict(json.loads(path.read_text())["summary"])
    except (OSError, ValueError, KeyError, MetricsFormatError):
        return
    print_summary_table(summary)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # a jobs run (fleet --jobs) wrote jobs.json
        if (report_dir / "jobs.json").stat().st_mtime >= started:
            jobs = json.loads((report_dir / "jobs.json").read_text())
            click.echo(jobs_line(jobs["job_ids"], len(jobs["devices"]), jobs["by_status"], summary.wall_s))
    click.echo(f"reports: {report_dir}")
