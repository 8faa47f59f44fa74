"""NaN and infinities are refused everywhere a number comes in (a NaN latency used to spin the scheduler)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from local_iot.cli import main
from local_iot.faults import FaultSpecError, parse_faults
from local_iot.quotas import QuotaSpecError, parse_quotas
from local_iot.runner import LocalIotSettings
from local_iot.service_pipeline import ServiceSettings

BAD = ["nan", "NaN", "inf", "-inf", "infinity"]


@pytest.mark.parametrize("value", BAD)
def test_settings_refuse_non_finite_latency(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finite"):
        LocalIotSettings(state_dir=tmp_path, latency_ms=float(value))
    with pytest.raises(ValueError, match="finite"):
        ServiceSettings(latency_ms=float(value))


@pytest.mark.parametrize("value", BAD)
def test_quota_and_fault_specs_refuse_non_finite_numbers(value: str) -> None:
    with pytest.raises(QuotaSpecError):
        parse_quotas(f"aws:account={value}")
    with pytest.raises(FaultSpecError):
        parse_faults(f"drop={value}")
    with pytest.raises(FaultSpecError):
        parse_faults(f"delay={value}:200ms")


@pytest.mark.parametrize("value", BAD)
def test_the_cli_refuses_non_finite_latency_before_starting_anything(value: str, tmp_path: Path) -> None:
    state = tmp_path / "never"
    result = CliRunner().invoke(main, ["up", "--state-dir", str(state), "--latency-ms", value])
    assert result.exit_code == 2 and "finite" in result.output
    assert not state.exists()


def test_advertised_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalIotSettings(state_dir=tmp_path, advertise=("has space",))
    result = CliRunner().invoke(main, ["up", "--state-dir", str(tmp_path / "x"), "--advertise", "a/b"])
    assert result.exit_code == 2
