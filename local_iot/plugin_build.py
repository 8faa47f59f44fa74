"""Build (once, cached) local_iot's mosquitto plugin: the AWS device policy on the mutual-TLS listener.

How this works: ``plugin_path()`` hashes the C source (``local_iot/plugin/local_iot_plugin.c``), the mosquitto
headers it includes and the compiler command; the shared object is cached as
``<cache>/local_iot_plugin-<hash>.so`` (cache: ``$LOCAL_IOT_PLUGIN_CACHE``, else ``$XDG_CACHE_HOME/local-iot``,
else ``~/.cache/local-iot``). A changed source or mosquitto version builds a new one; the build goes to a temporary
file that is renamed into place, so concurrent builds (parallel test workers) are safe. A missing compiler or
missing headers raise ``PluginBuildError`` saying what to install (``./run setup`` installs gcc, mosquitto-dev and
libmosquitto-dev). ``python -m local_iot.plugin_build`` builds it and prints the path (``./run setup`` does this).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PLUGIN_SOURCE", "PluginBuildError", "plugin_path"]

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin" / "local_iot_plugin.c"
_HEADERS = ("mosquitto_broker.h", "mosquitto_plugin.h", "mosquitto.h")
_INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/local/include"))
_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror")
_INSTALL_HINT = "run `./run setup`, or `apt-get install gcc libc6-dev mosquitto-dev libmosquitto-dev`"


class PluginBuildError(Exception):
    """The plugin cannot be built here; the message says what is missing."""


def cache_dir() -> Path:
    explicit = os.environ.get("LOCAL_IOT_PLUGIN_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "local-iot"


def _compiler() -> str:
    for name in (os.environ.get("CC") or "", "cc", "gcc"):
        if name and shutil.which(name):
            return name
    raise PluginBuildError(f"no C compiler (cc/gcc) to build local_iot's mosquitto plugin: {_INSTALL_HINT}")


def _headers() -> list[Path]:
    found = []
    for header in _HEADERS:
        path = next((d / header for d in _INCLUDE_DIRS if (d / header).is_file()), None)
        if path is None:
            raise PluginBuildError(
                f"{header} is missing, needed to build local_iot's mosquitto plugin: {_INSTALL_HINT}"
            )
        found.append(path)
    return found


def plugin_path() -> Path:
    """The built plugin (built now if the cache has none for this source and these headers)."""
    compiler = _compiler()
    digest = hashlib.sha256()
    digest.update(PLUGIN_SOURCE.read_bytes())
    for header in _headers():
        digest.update(header.read_bytes())
    digest.update(" ".join((compiler, *_FLAGS)).encode())
    target = cache_dir() / f"local_iot_plugin-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *_FLAGS, "-o", tmp, str(PLUGIN_SOURCE)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise PluginBuildError(
                f"building local_iot's mosquitto plugin failed ({compiler} exit {result.returncode}):\n"
                f"{result.stderr.strip()[-2000:]}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def main() -> int:
    try:
        print(plugin_path())
    except PluginBuildError as exc:
        print(f"local_iot: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
