"""``provisioner``: control-plane CLI (firmware, stream role, streams, fleet identities, cleanup)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iot-stream-sim")
def main() -> None:
    """Create and remove AWS IoT streams and device fleets, recorded in a manifest."""
