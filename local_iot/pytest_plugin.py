"""pytest fixtures for local_iot: ``pytest_plugins = ["local_iot.pytest_plugin"]`` in a conftest.py.

``local_iot``: a running emulator with default settings (no latency, quotas or faults), one per test module.
``local_iot_factory``: start emulators with other settings (``local_iot_factory(faults="drop=0.1", seed=3)``);
every one started is stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .runner import LocalIot, LocalIotSettings


@pytest.fixture(scope="module")
def local_iot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIot]:
    with LocalIot(LocalIotSettings(state_dir=tmp_path_factory.mktemp("local-iot"))) as iot:
        yield iot


@pytest.fixture
def local_iot_factory(tmp_path: Path) -> Iterator[Callable[..., LocalIot]]:
    started: list[LocalIot] = []

    def start(**settings: Any) -> LocalIot:
        state_dir = tmp_path / f"local-iot-{len(started)}"
        iot = LocalIot(LocalIotSettings(state_dir=state_dir, **settings)).start()
        started.append(iot)
        return iot

    yield start
    for iot in reversed(started):
        iot.stop()
