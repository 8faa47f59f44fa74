"""``provisioner``'s command-line layer: the only part of the package that imports click (and rich).

``main`` is the click group (console script ``provisioner = "provisioner.cli:main"``); the commands live in
``commands``, shared options, error translation and output in ``support``.
"""

from __future__ import annotations

from .commands import main
from .ota import ota_group
from .support import ProvisionerCliError

main.add_command(ota_group)

__all__ = ["ProvisionerCliError", "main"]
