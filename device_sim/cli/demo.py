"""``device-sim demo``: the whole tool offline in one command (the README's first command).

It starts local_iot (mosquitto with mutual TLS, moto with the stream API, the stream service with AWS-like latency
and quotas), runs ``provisioner up`` against it exactly as a user would against AWS (generated firmware, a
versioned bucket, a least-privilege stream role, the stream, N things with certificates from the local CA), runs a
fleet download over mutual TLS, verifies every device against the S3 object, prints the summary, writes the
reports, runs ``provisioner cleanup`` and stops everything. Only the endpoints differ from a real account.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

import click

from device_sim.cli.fleet import print_summary, run_with_display
from device_sim.cli.options import SizeType
from device_sim.device.device import DownloadSettings, SinkKind
from device_sim.fleet.plan import FleetPlan, FleetSettings, s3_source
from device_sim.protocol import Format
from device_sim.results.files import ReportWriteError, write_reports
from device_sim.transport import FlowControl


class DemoFailed(click.ClickException):
    exit_code = 1


def _invoke(command: click.Command, name: str, args: list[str], *, tail: int | None = None) -> None:
    """Run one of our click commands in this process, as if typed. With ``tail``, show only its last lines."""
    click.echo(f"$ {name} {' '.join(args)}", err=True)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer) if tail else contextlib.nullcontext():
            command.main(args=args, prog_name=name, standalone_mode=False)
    except click.ClickException as exc:
        click.echo(buffer.getvalue(), nl=False)
        raise DemoFailed(f"{name} failed: {exc.format_message()}") from exc
    if tail:
        click.echo("\n".join(buffer.getvalue().rstrip().splitlines()[-tail:]))


@click.command("demo")
@click.option("--devices", type=click.IntRange(1, 5000), default=50, show_default=True, help="Simulated devices.")
@click.option("--size", type=SizeType(), default="1MiB", show_default=True, help="Size of the generated firmware.")
@click.option("--block-size", type=SizeType(), default="4KiB", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["cbor", "json"]), default="cbor", show_default=True)
@click.option(
    "--latency-ms",
    type=click.FloatRange(0, 10000),
    default=40.0,
    show_default=True,
    help="Delay the emulator adds to every answer (an AWS-like round trip).",
)
@click.option(
    "--quotas",
    type=click.Choice(["aws", "none"]),
    default="aws",
    show_default=True,
    help="AWS's per-connection limits (100 publishes/s, 512 KiB/s) in the emulator.",
)
@click.option("--faults", default=None, help="Emulator fault spec, e.g. drop=0.05,dup=0.02 (see README).")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="Emulator state, certificates and the manifest (recreated on every run).",
)
@click.option(
    "--report-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/demo"), show_default=True
)
@click.option("--keep", is_flag=True, help="Skip `provisioner cleanup` (keep the things and certificates).")
@click.option(
    "--jobs",
    is_flag=True,
    help="The OTA rollout instead: provisioner ota create (signed), the fleet follows the job, ota status.",
)
def demo_command(
    devices: int,
    size: int,
    block_size: int,
    fmt: str,
    latency_ms: float,
    quotas: str,
    faults: str | None,
    seed: int,
    work_dir: Path,
    report_dir: Path,
    keep: bool,
    jobs: bool,
) -> None:
    """Everything offline: local_iot, provisioner up, a fleet download, verification, reports, cleanup.

    With --jobs the rollout goes through AWS IoT Jobs as on real devices: `provisioner ota create` signs the
    firmware and creates the OTA update, every device follows its job (`device-sim fleet --jobs`), and
    `provisioner ota status` must report every execution SUCCEEDED."""
    from local_iot.runner import LocalIot, LocalIotSettings
    from provisioner.cli import main as provisioner
    from provisioner.manifest import load_manifest

    work_dir = work_dir.resolve()
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    click.echo(f"starting local_iot (latency {latency_ms:g} ms, quotas {quotas}, faults {faults or 'none'})", err=True)
    settings = LocalIotSettings(
        state_dir=work_dir / "local-iot", latency_ms=latency_ms, quotas=quotas, faults=faults, seed=seed
    )
    saved_env = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
            "AWS_PROFILE",
        )
    }
    with LocalIot(settings) as iot:
        # The provisioner and the verifier use the standard boto3 chain: point it at the emulator, with dummy
        # credentials, for this process only.
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.update(iot.environment())
        try:
            manifest_path = work_dir / "run.json"
            _invoke(
                provisioner,
                "provisioner",
                [
                    "up",
                    "--local",
                    str(settings.state_dir),
                    "--stream-id",
                    "demo-fw",
                    "--generate",
                    str(size),
                    "--seed",
                    str(seed),
                    "--bucket",
                    "demo-firmware",
                    "--create-bucket",
                    "--create-role",
                    "--things",
                    str(devices),
                    "--thing-prefix",
                    "demo",
                    "--certs-dir",
                    str(work_dir / "certs"),
                    "--manifest",
                    str(manifest_path),
                    "--tps",
                    "1000",
                ],
            )
            manifest = load_manifest(manifest_path)
            if jobs:
                ok = _jobs_rollout(provisioner, settings.state_dir, manifest_path, report_dir, block_size, fmt)
                if not keep:
                    _invoke(
                        provisioner,
                        "provisioner",
                        ["cleanup", "--manifest", str(manifest_path), "--tps", "1000"],
                        tail=1,
                    )
                if not ok:
                    raise DemoFailed(f"the OTA rollout did not succeed on every device (see {report_dir})")
                click.echo(
                    f"demo ok: {devices} devices followed the OTA job to SUCCEEDED ({manifest.firmware[0].size} "
                    "bytes each, signature checked)"
                )
                return
            download = DownloadSettings(format=Format(fmt), block_size=block_size, sink=SinkKind.DIGEST)
            fleet = FleetSettings(
                connect_rate=100.0, start_jitter=0.5, seed=seed, transport={"flow_control": FlowControl.AWS}
            )
            plan = FleetPlan.load(manifest_path, download=download, fleet=fleet, report_dir=report_dir)
            assert plan.target is not None
            click.echo(f"$ device-sim fleet --manifest {manifest_path} --report-dir {report_dir}", err=True)
            title = f"demo fleet of {len(plan.identities)}"
            run = asyncio.run(run_with_display(plan, s3_source(plan.target), quiet=False, title=title))
            print_summary(run)
            try:
                paths = write_reports(report_dir, run.summary, list(run.records))
            except ReportWriteError as exc:
                raise DemoFailed(str(exc)) from exc
            click.echo(f"reports: {paths['report.html']} (and summary.json, devices.csv, junit.xml)")
            if not keep:
                _invoke(
                    provisioner, "provisioner", ["cleanup", "--manifest", str(manifest_path), "--tps", "1000"], tail=1
                )
        finally:
            _restore(saved_env)
    if not run.summary.all_verified or run.interrupted:
        raise DemoFailed(f"{run.summary.failed} of {run.summary.devices} devices did not verify (see {report_dir})")
    click.echo(
        f"demo ok: {run.summary.verified}/{run.summary.devices} devices downloaded and verified "
        f"{manifest.firmware[0].size} bytes each in {run.wall_s:.1f} s"
    )


def _jobs_rollout(
    provisioner: click.Command, state_dir: Path, manifest: Path, report_dir: Path, block_size: int, fmt: str
) -> bool:
    """ota create -> fleet --jobs -> ota status, each as typed; True when every execution SUCCEEDED."""
    from device_sim.cli.fleet import fleet_command

    _invoke(provisioner, "provisioner", ["ota", "create", "--local", str(state_dir), "--manifest", str(manifest)])
    fleet_args = ["fleet", "--jobs", "--manifest", str(manifest), "--report-dir", str(report_dir)]
    fleet_args += ["--block-size", str(block_size), "--format", fmt, "--connect-rate", "100", "--job-wait", "60"]
    click.echo(f"$ device-sim {' '.join(fleet_args)}", err=True)
    try:
        fleet_command.main(args=fleet_args[1:], prog_name="device-sim fleet", standalone_mode=False)
        fleet_ok = True
    except SystemExit as exc:
        fleet_ok = exc.code in (0, None)
    status_args = ["ota", "status", "--local", str(state_dir), "--manifest", str(manifest), "--wait", "30"]
    click.echo(f"$ provisioner {' '.join(status_args)}", err=True)
    code = provisioner.main(args=status_args, prog_name="provisioner", standalone_mode=False)
    return fleet_ok and code in (0, None)


def _restore(saved: dict[str, Any]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
