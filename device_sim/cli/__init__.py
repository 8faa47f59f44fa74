"""``device-sim``: the command-line interface (thin click commands over the device and fleet layers)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iot-stream-sim")
def main() -> None:
    """Simulated devices for AWS IoT MQTT-based file delivery (streams)."""


from device_sim.cli.decode import decode_command  # noqa: E402  (commands register after the group is defined)

main.add_command(decode_command, "decode")

from device_sim.cli.download import download_command  # noqa: E402

main.add_command(download_command, "download")

from device_sim.cli.fleet import fleet_command, sweep_command  # noqa: E402

main.add_command(fleet_command, "fleet")
main.add_command(sweep_command, "sweep")

from device_sim.cli.demo import demo_command  # noqa: E402

main.add_command(demo_command, "demo")

from device_sim.cli.report import report_group  # noqa: E402

main.add_command(report_group, "report")
