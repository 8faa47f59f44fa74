"""The broker plugin's build: cached by source and headers, and a clear error when the compiler is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from local_iot.plugin_build import PLUGIN_SOURCE, PluginBuildError, plugin_path


def test_built_once_then_taken_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_IOT_PLUGIN_CACHE", str(tmp_path))
    first = plugin_path()
    assert first.parent == tmp_path and first.name.startswith("local_iot_plugin-") and first.suffix == ".so"
    built_at = first.stat().st_mtime_ns
    assert plugin_path() == first and first.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left behind
    assert first.read_bytes()[:4] == b"\x7fELF"


def test_a_missing_compiler_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_IOT_PLUGIN_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(PluginBuildError, match=r"no C compiler.*apt-get install gcc"):
        plugin_path()


def test_the_source_ships_with_the_package() -> None:
    assert PLUGIN_SOURCE.is_file() and os.access(PLUGIN_SOURCE, os.R_OK)
