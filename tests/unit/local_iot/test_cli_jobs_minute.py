"""`local-iot up --jobs-minute-s`: checked before anything starts, and handed to the emulator's settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from local_iot import cli
from local_iot.runner import LocalIotError, LocalIotSettings


class Recorder:
    """Stands in for LocalIot: keeps the settings it is given and refuses to start (nothing is started)."""

    settings: ClassVar[list[LocalIotSettings]] = []

    def __init__(self, settings: LocalIotSettings) -> None:
        Recorder.settings.append(settings)

    def start(self) -> Recorder:
        raise LocalIotError("not started in this test")


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[LocalIotSettings]:
    Recorder.settings = []
    monkeypatch.setattr(cli, "LocalIot", Recorder)
    return Recorder.settings


@pytest.mark.parametrize(("args", "minute"), [([], 60.0), (["--jobs-minute-s", "0.25"], 0.25)])
def test_the_jobs_minute_reaches_the_settings(
    args: list[str], minute: float, recorded: list[LocalIotSettings], tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli.main, ["up", "--state-dir", str(tmp_path / "state"), *args])
    assert result.exit_code == 3 and "not started in this test" in result.output
    assert [s.jobs_minute_s for s in recorded] == [minute]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "1e9", "soon"])
def test_a_bad_jobs_minute_is_refused_before_anything_starts(
    value: str, recorded: list[LocalIotSettings], tmp_path: Path
) -> None:
    state = tmp_path / "never"
    result = CliRunner().invoke(cli.main, ["up", "--state-dir", str(state), "--jobs-minute-s", value])
    assert result.exit_code == 2 and "--jobs-minute-s" in result.output
    assert "finite number above 0" in result.output or "is not a number" in result.output
    assert recorded == [] and not state.exists()


def test_the_help_explains_it() -> None:
    result = CliRunner().invoke(cli.main, ["up", "--help"])
    assert result.exit_code == 0 and "--jobs-minute-s SECONDS" in result.output and "step timeouts" in result.output
