"""``local-iot``: the offline stand-in for AWS IoT Core."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iot-stream-sim")
def main() -> None:
    """An offline AWS IoT Core for streams: mosquitto with mutual TLS, moto, and a stream service."""
